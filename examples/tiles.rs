//! Large kernels (k > 3): 3×3 tiles (the `conv` layout) against strips of 9 over each filter's
//! flattened kernels (the `matrix` layout on the `[F, C·k·k]` view), same predictor and steps.
//!
//! `cargo run --release --example tiles -- [MODEL.onnx]` (default: the kinds fixture; e.g.
//! `target/models/ppocr/det.onnx` for PP-OCRv4's real 5×5 depthwise kernels). Prints a table.

use candle_core::Device;
use nerp::compress::plan::{self, Grid, LayerPlan};
use nerp::compress::train::{self, TrainConfig};
use nerp::compress::train_data;
use nerp::format::{Embedding, Layout, Ordering};
use nerp::ingest::Role;

fn fit(name: &str, layout: Layout, shapes: &[Vec<usize>], values: &[Vec<f32>], hidden: usize, steps: usize) {
    let plans: Vec<LayerPlan> = shapes
        .iter()
        .zip(values)
        .enumerate()
        .map(|(i, (s, v))| {
            let view = match layout {
                Layout::Conv => s.clone(),
                Layout::Matrix => vec![s[0], s[1..].iter().product()],
            };
            let grid = Grid::new(layout, &view).expect("valid shape");
            let scales = plan::filter_scales(v, grid.rows);
            let perm =
                plan::order(&plan::blocks(v, &grid, Some(&scales)), grid.rows, grid.cols, Ordering::None);
            LayerPlan { tensor: i, layer: i as u32, grid, perm, scales: Some(scales) }
        })
        .collect();
    let data = train_data(&plans, values);
    let cfg = TrainConfig {
        hidden,
        embedding: Embedding { base: 1.25, levels: 20 },
        steps,
        batch: 4096,
        lr: 5e-3,
        lr_min: 1e-6,
        warmup: steps / 50,
        betas: (0.9, 0.999),
        weight_decay: 0.0,
        magnitude_fraction: 0.2,
        seed: 0,
        quantize: None,
        qat_fraction: 0.0,
    };
    let (p, _) = train::train(&cfg, &data, None, &Device::Cpu, &mut |_: usize, _: f64| {}).expect("trains");
    let pred = nerp::runtime::regen::predict_layers(&p, &plans, plans.len() as u32).expect("predicts");
    let (mut at, mut errs) = (0, Vec::new());
    for (pl, v) in plans.iter().zip(values) {
        let mut out = vec![0f32; v.len()];
        plan::scatter(&pred[at..at + pl.blocks() * 9], pl, &mut out);
        at += pl.blocks() * 9;
        errs.push(nerp::linalg::relative_error(v, &out));
    }
    let blocks: usize = plans.iter().map(|p| p.blocks()).sum();
    let mean = errs.iter().sum::<f64>() / errs.len() as f64;
    println!("| {name} | {} | {blocks} | {:.3} |", layout.name(), mean);
}

fn main() -> nerp::Result<()> {
    let path = std::env::args()
        .nth(1)
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/kinds/kinds.onnx").into());
    let model = nerp::ingest::load(std::path::Path::new(&path))?;
    let big: Vec<_> = model
        .tensors
        .iter()
        .filter(|t| t.role == Role::ConvKernel && t.shape.len() == 4 && t.shape[2] > 3)
        .collect();
    let shapes: Vec<Vec<usize>> = big.iter().map(|t| t.shape.iter().map(|&d| d as usize).collect()).collect();
    let values: Vec<Vec<f32>> =
        big.iter().map(|t| nerp::format::codec::to_f32(t.dtype, &t.data).expect("float")).collect();
    let n: usize = values.iter().map(Vec::len).sum();
    println!("{path}: {} kernels with k > 3, {n} values; h = 32, 600 steps, no ordering", big.len());
    println!("| model | layout | blocks | mean relative error |");
    println!("|---|---|---|---|");
    let name = std::path::Path::new(&path).file_name().map_or(String::new(), |f| f.to_string_lossy().into());
    for layout in [Layout::Conv, Layout::Matrix] {
        fit(&name, layout, &shapes, &values, 32, 600);
    }
    Ok(())
}
