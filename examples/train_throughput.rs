//! Training throughput of nerp's reconstruction loop (steps/s) for one predictor size, on
//! random kernels. Used by `tools/train_throughput.py` to compare with PyTorch in one run.
//!
//! `cargo run --release --example train_throughput -- HIDDEN BATCH STEPS [LEVELS] [QAT]`: with
//! `QAT` = 8 or 4, every step trains on the int8/int4 round trip of the parameters (the cost of
//! quantization-aware training).

use nerp::compress::train::{train, Rng, TrainConfig, TrainData};
use nerp::format::Embedding;
use std::time::Instant;

fn main() -> nerp::Result<()> {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("numbers")).collect();
    let (hidden, batch, steps) = (
        args.first().copied().unwrap_or(180),
        args.get(1).copied().unwrap_or(4096),
        args.get(2).copied().unwrap_or(50),
    );
    let levels = args.get(3).copied().unwrap_or(20) as u32;
    let quantize = match args.get(4) {
        Some(8) => Some(nerp::format::WeightDtype::Int8),
        Some(4) => Some(nerp::format::WeightDtype::Int4),
        _ => None,
    };
    let n = 29_712; // kernels of the shared ResNet-20
    let mut rng = Rng::new(1);
    let data = TrainData {
        coords: (0..n * 3).map(|_| rng.uniform() as f32).collect(),
        targets: (0..n * 9).map(|_| rng.uniform() as f32 - 0.5).collect(),
        masks: vec![1.0; n * 9],
    };
    let cfg = TrainConfig {
        hidden,
        embedding: Embedding { base: 1.25, levels },
        steps,
        batch,
        lr: 1e-3,
        lr_min: 1e-6,
        warmup: 1,
        betas: (0.9, 0.999),
        weight_decay: 0.0,
        magnitude_fraction: 0.2,
        seed: 0,
        quantize,
        qat_fraction: 1.0,
    };
    // Warm up (allocator, thread pool), then time.
    let warm = TrainConfig { steps: 3, ..cfg.clone() };
    train(&warm, &data, None, &candle_core::Device::Cpu, &mut |_, _| {})?;
    let t = Instant::now();
    train(&cfg, &data, None, &candle_core::Device::Cpu, &mut |_, _| {})?;
    let s = t.elapsed().as_secs_f64();
    println!("{{\"impl\": \"nerp-candle\", \"hidden\": {hidden}, \"batch\": {batch}, \"steps\": {steps}, \"seconds\": {s:.4}, \"steps_per_s\": {:.3}, \"qat\": \"{quantize:?}\"}}", steps as f64 / s);
    if let Some(d) = quantize {
        // The refresh alone: one round trip of the parameters per optimizer step.
        let flat =
            nerp::compress::train::init_predictor(hidden, cfg.embedding, 0, &candle_core::Device::Cpu)?
                .to_flat()?;
        let reps = 20;
        let t = Instant::now();
        for _ in 0..reps {
            std::hint::black_box(nerp::predictor::round_trip(d, hidden, levels as usize, &flat)?);
        }
        let ms = t.elapsed().as_secs_f64() * 1e3 / reps as f64;
        println!("{{\"round_trip_ms\": {ms:.3}, \"step_ms\": {:.3}}}", s * 1e3 / steps as f64);
    }
    Ok(())
}
