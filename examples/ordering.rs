//! How much smoothness the blocked kernel chain gives up against NeRN's exact greedy chain, and
//! what each costs, on real kernels; plus the time for a 512×512 layer (262,144 kernels).
//!
//! `cargo run --release --example ordering -- [MODEL.safetensors]` (default: the shared ResNet-56)

use nerp::compress::plan::{chain_with, normalized, smoothness};
use std::time::Instant;

fn main() -> nerp::Result<()> {
    let path =
        std::env::args().nth(1).unwrap_or("../shared/models/resnet56_fashion_mnist.safetensors".into());
    let model = nerp::ingest::load(std::path::Path::new(&path))?;
    let layers: Vec<Vec<f32>> = model
        .tensors
        .iter()
        .filter(|t| {
            nerp::compress::plan::is_predictable(t.dtype, &t.shape, nerp::format::Layout::Conv)
                && t.shape[2] == 3
        })
        .map(|t| nerp::format::codec::to_f32(t.dtype, &t.data).expect("float"))
        .collect();
    let big: Vec<&Vec<f32>> = layers.iter().filter(|l| l.len() / 9 >= 4096).collect();
    println!("{path}: {} 3×3 layers, {} with ≥ 4096 kernels", layers.len(), big.len());
    println!("| order | mean neighbour cosine (layers ≥ 4096 kernels) | time per layer |");
    println!("|---|---|---|");
    let exact = usize::MAX;
    for (name, limit, block) in [
        ("natural", 0, 0),
        ("exact greedy", exact, 0),
        ("blocked 2048", 0, 2048),
        ("blocked 1024", 0, 1024),
        ("blocked 512", 0, 512),
    ] {
        let (mut s, t) = (0.0, Instant::now());
        for l in &big {
            let n = l.len() / 9;
            let idx: Vec<u32> = (0..n as u32).collect();
            let order =
                if name == "natural" { idx } else { chain_with(&normalized(l, 9), 9, &idx, limit, block) };
            s += smoothness(l, 9, &order);
        }
        let per = t.elapsed().as_secs_f64() / big.len().max(1) as f64;
        println!("| {name} | {:.4} | {:.3} s |", s / big.len().max(1) as f64, per);
    }
    // A 512×512 layer: every kernel of the model, repeated with a small deterministic jitter.
    let all: Vec<f32> = layers.iter().flatten().copied().collect();
    let n = 512 * 512;
    let mut rng = nerp::compress::train::Rng::new(5);
    let synth: Vec<f32> =
        (0..n * 9).map(|i| all[i % all.len()] + 1e-3 * (rng.uniform() as f32 - 0.5)).collect();
    let idx: Vec<u32> = (0..n as u32).collect();
    let t = Instant::now();
    let order = nerp::compress::plan::chain(&normalized(&synth, 9), 9, &idx);
    println!(
        "512×512 layer (262,144 kernels), default blocked chain: {:.2} s, smoothness {:.4} (natural {:.4})",
        t.elapsed().as_secs_f64(),
        smoothness(&synth, 9, &order),
        smoothness(&synth, 9, &idx)
    );
    Ok(())
}
