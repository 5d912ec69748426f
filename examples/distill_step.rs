//! Time of one decoupled distillation step on the shared ResNet-20, broken into its pieces
//! (`Distiller::step_cpu_on`): predictor forward over every block, gather into the network's
//! tensors, teacher forward, student forward + losses (KL at T = 4 + feature maps), backward
//! through the network, scatter onto the block outputs, predictor backward, AdamW. With `old`,
//! also the previous path (candle autograd through network and predictor, `Distiller::grads`,
//! without its AdamW) for comparison. Fashion-MNIST training images (tools/setup.sh).
//!
//! `cargo run --release --example distill_step -- [MODEL.onnx] [BATCH] [HIDDEN] [REPEATS] [old]`
//!
//! Prints one JSON line per configuration (milliseconds, mean over REPEATS after one warm-up
//! step); `tools/distill_throughput.sh` runs it next to `tools/distill_throughput.py`.

use nerp::compress::distill::{kernels::PredictedKernels, DistillOptions, Distiller, StepTimes, Student};
use nerp::compress::graph::Graph;
use nerp::compress::train::TrainConfig;
use nerp::compress::{make_plan, CompressOptions};
use nerp::data::{DataSource, Preprocess};
use std::time::Instant;

fn main() -> nerp::Result<()> {
    nerp::linalg::single_threaded_candle(); // as the `nerp` binary does
    let args: Vec<String> = std::env::args().skip(1).collect();
    let model = args.first().cloned().unwrap_or("examples/models/resnet20_fashion_mnist.onnx".into());
    let batch: usize = args.get(1).map_or(32, |s| s.parse().expect("batch"));
    let hidden: usize = args.get(2).map_or(64, |s| s.parse().expect("hidden"));
    let repeats: usize = args.get(3).map_or(3, |s| s.parse().expect("repeats"));
    let old = args.get(4).is_some_and(|s| s == "old");
    let device = candle_core::Device::Cpu;
    let path = std::path::Path::new(&model);
    let source = nerp::ingest::load(path)?;
    let opts = CompressOptions::default();
    let plans = make_plan(&source, &opts)?.layers;
    let kernels = PredictedKernels::new(&plans, &source, opts.embedding, &device)?;
    let blocks = kernels.len();
    let student = Student { graph: Graph::from_onnx_file(path)?, kernels };
    let kd = DistillOptions {
        kd_batch: batch,
        data: DataSource::FashionMnist(None),
        data_limit: Some(4096),
        ..DistillOptions::default()
    };
    let pre = Preprocess::parse("mean=0.286,std=0.353")?;
    let mut d = Distiller::new(student, &kd, &pre, 0, &device)?;
    let p = nerp::compress::train::init_predictor(hidden, opts.embedding, 0, &device)?;
    let cfg = TrainConfig {
        hidden,
        embedding: opts.embedding,
        steps: 1000,
        batch: 1,
        lr: 1e-4,
        lr_min: 1e-6,
        warmup: 1,
        betas: (0.9, 0.999),
        weight_decay: 0.0,
        magnitude_fraction: 0.0,
        seed: 0,
        quantize: None,
        qat_fraction: 0.0,
    };
    let mut kt = d.kernel_trainer(&p)?;
    let mut sum = StepTimes::default();
    let mut wall = 0.0;
    for step in 0..=repeats {
        let x = d.batch()?;
        let start = Instant::now();
        let (_, t) = d.step_cpu_on(&x, &mut kt, &cfg, step)?;
        if step == 0 {
            continue; // warm-up
        }
        wall += start.elapsed().as_secs_f64();
        for (s, v) in [
            (&mut sum.predict, t.predict),
            (&mut sum.gather, t.gather),
            (&mut sum.teacher, t.teacher),
            (&mut sum.forward, t.forward),
            (&mut sum.backward, t.backward),
            (&mut sum.scatter, t.scatter),
            (&mut sum.predictor_backward, t.predictor_backward),
            (&mut sum.adamw, t.adamw),
        ] {
            *s += v;
        }
    }
    let ms = |v: f64| (v / repeats as f64 * 1e4).round() / 10.0;
    let mut old_ms = serde_json::Value::Null;
    if old {
        d.grads(&p.layers, p.hidden, p.embedding)?; // warm-up
        let start = Instant::now();
        for _ in 0..repeats {
            d.grads(&p.layers, p.hidden, p.embedding)?;
        }
        old_ms = ms(start.elapsed().as_secs_f64()).into();
    }
    let line = serde_json::json!({
        "impl": "nerp",
        "batch": batch,
        "hidden": hidden,
        "blocks": blocks,
        "threads": nerp::linalg::threads(),
        "repeats": repeats,
        "step_ms": ms(wall),
        "predict_ms": ms(sum.predict),
        "gather_ms": ms(sum.gather),
        "teacher_ms": ms(sum.teacher),
        "forward_ms": ms(sum.forward),
        "backward_ms": ms(sum.backward),
        "scatter_ms": ms(sum.scatter),
        "predictor_backward_ms": ms(sum.predictor_backward),
        "adamw_ms": ms(sum.adamw),
        "old_candle_autograd_ms": old_ms,
    });
    println!("{line}");
    Ok(())
}
