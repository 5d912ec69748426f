//! Baselines for docs/results/real-models.md, on the same weights as nerp: byte-grouped zstd
//! (every tensor raw, lossless: a .nerp with nothing predicted) and fp16 (every f32 weight
//! tensor, i.e. of rank ≥ 2 as nerp predicts, rounded to f16; rank < 2 tensors such as
//! BatchNorm variances stay f32: PP-OCR's detector has variances up to 1e8, beyond f16).
//!
//! `cargo run --release --example baselines -- MODEL OUT_DIR` writes `OUT_DIR/zstd.nerp`,
//! `OUT_DIR/fp16.nerp` (the f16-rounded weights stored raw, to evaluate with `nerp eval`) and
//! prints one JSON object: the original size, the zstd file size and time, and the size the
//! model would have with those f32 weights stored as f16 (original − half their bytes).

use nerp::compress::select::Selection;
use nerp::compress::{compress, CompressOptions};
use nerp::format::{DType, SourceKind};
use std::path::Path;
use std::time::Instant;

fn main() -> nerp::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let [_, model, out] = &args[..] else {
        eprintln!("usage: baselines MODEL OUT_DIR");
        std::process::exit(2);
    };
    let (model, out) = (Path::new(model), Path::new(out));
    std::fs::create_dir_all(out).map_err(|e| nerp::Error::io(out, "creating", e))?;
    let source = nerp::ingest::load(model)?;
    let is_weight = |dtype: DType, shape: &[u64]| dtype == DType::F32 && shape.len() >= 2;
    let f32_bytes: u64 =
        source.tensors.iter().filter(|t| is_weight(t.dtype, &t.shape)).map(|t| t.data.len() as u64).sum();
    let raw = CompressOptions {
        selection: Selection { exclude: vec!["*".into()], ..Default::default() },
        check_runnable: false,
        ..Default::default()
    };
    let t = Instant::now();
    let zstd = out.join("zstd.nerp");
    let report = compress(model, &zstd, &raw, &mut |_: usize, _: f64| {})?;
    let zstd_s = t.elapsed().as_secs_f64();

    // The same weights rounded to f16 (kept as f32 so that the model is unchanged otherwise).
    let file = nerp::open(&zstd)?;
    let mut weights = nerp::runtime::regen::regenerate(&file, &nerp::Device::Cpu)?;
    for w in weights.iter_mut().filter(|w| is_weight(w.dtype, &w.shape)) {
        let v: Vec<f32> = w.to_f32().expect("f32").iter().map(|&x| half::f16::from_f32(x).to_f32()).collect();
        w.data = nerp::format::codec::from_f32(DType::F32, &v).expect("f32");
    }
    let rounded = match source.kind {
        SourceKind::Onnx => {
            let p = out.join("fp16.onnx");
            let proto = nerp::runtime::rebuild_onnx(&file, &weights)?;
            nerp::format::write_atomic(&p, &nerp::runtime::onnx_bytes(&proto))?;
            p
        }
        SourceKind::Safetensors => {
            let p = out.join("fp16.safetensors");
            nerp::runtime::write_safetensors(&file, &weights, &p)?;
            p
        }
    };
    compress(&rounded, &out.join("fp16.nerp"), &raw, &mut |_: usize, _: f64| {})?;
    let v = serde_json::json!({
        "original_bytes": report.source_bytes,
        "zstd_bytes": report.file_bytes,
        "zstd_seconds": zstd_s,
        "fp16_bytes": report.source_bytes - f32_bytes / 2,
        "f32_weight_bytes": f32_bytes,
    });
    println!("{v}");
    Ok(())
}
