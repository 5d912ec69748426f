//! Measures the quantizer's scale rules (max-abs vs MSE clip search, `nerp::format::quant`) on
//! a model: per-channel int-k PTQ of its Conv/Gemm/MatMul weights, top-1 on the full
//! Fashion-MNIST test set. Usage: `cargo run --release --example quant_rule -- MODEL.onnx [BITS…]`
//! (preprocessing mean=0.286,std=0.353, the shared ResNets'; `QUANT_RULE_LIMIT=N`: first N
//! test images). Results: docs/results/format3.md.

use nerp::data::{self, DataSource, Preprocess, Split};
use nerp::eval::baselines;
use nerp::format::quant::ScaleRule;
use nerp::{eval, ingest, runtime, Result};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let path = args.first().expect("usage: quant_rule MODEL.onnx [BITS…]");
    let bits: Vec<u8> = if args.len() > 1 {
        args[1..].iter().map(|b| b.parse().expect("bits")).collect()
    } else {
        vec![8, 4, 3]
    };
    let model = ingest::load(std::path::Path::new(path))?;
    let pre = Preprocess::parse("mean=0.286,std=0.353")?;
    // QUANT_RULE_LIMIT=N evaluates the first N test images only.
    let limit = std::env::var("QUANT_RULE_LIMIT").ok().and_then(|v| v.parse().ok());
    let data = data::load(&DataSource::FashionMnist(None), Split::Test, limit, &pre)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let skeleton = model.skeleton.as_deref().expect("an ONNX model");
    for b in bits {
        for rule in [ScaleRule::MaxAbs, ScaleRule::Mse] {
            let q = baselines::int_per_channel(&model, b, rule)?;
            let m = runtime::Model::from_proto(&runtime::patch_skeleton(skeleton, &q.weights)?)?;
            let acc = eval::evaluate(&m, None, &data, threads, &|_| {})?.regenerated_accuracy;
            println!(
                "{:<34} {:>9} bytes  top-1 {:.2}%  ({} images)",
                q.name,
                q.bytes,
                100.0 * acc,
                data.len()
            );
        }
    }
    Ok(())
}
