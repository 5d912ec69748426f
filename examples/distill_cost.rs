//! Cost of one distillation step's pieces on the shared ResNet-20, each measured in this
//! process (compare ratios: the machine may be shared):
//! network forward (no gradient), forward + backward with nerp's im2col conv and with
//! candle's conv2d, and the predictor over all kernels (forward + backward).
//!
//! `cargo run --release --example distill_cost -- [MODEL.onnx] [BATCH] [HIDDEN] [REPEATS]`

use candle_core::{Device, Tensor, Var};
use nerp::compress::graph::{ConvImpl, Graph};
use nerp::predictor::Predictor;
use std::collections::HashMap;
use std::time::Instant;

fn time<T>(repeats: usize, mut f: impl FnMut() -> nerp::Result<T>) -> nerp::Result<f64> {
    f()?; // warm-up
    let start = Instant::now();
    for _ in 0..repeats {
        f()?;
    }
    Ok(start.elapsed().as_secs_f64() / repeats as f64)
}

fn main() -> nerp::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let model = args.first().cloned().unwrap_or("examples/models/resnet20_fashion_mnist.onnx".into());
    let batch: usize = args.get(1).map_or(32, |s| s.parse().expect("batch"));
    let hidden: usize = args.get(2).map_or(64, |s| s.parse().expect("hidden"));
    let repeats: usize = args.get(3).map_or(3, |s| s.parse().expect("repeats"));
    let mut graph = Graph::from_onnx_file(model.as_ref())?;
    let mut rng = nerp::compress::train::Rng::new(1);
    let x: Vec<f32> = (0..batch * 784).map(|_| rng.uniform() as f32 - 0.5).collect();
    let x = Tensor::from_vec(x, (batch, 1, 28, 28), &Device::Cpu)?;
    let convs = graph.conv_weights();
    let vars: HashMap<String, Var> = convs
        .iter()
        .map(|n| Ok((n.clone(), Var::from_tensor(&graph.constants[n].copy()?)?)))
        .collect::<nerp::Result<_>>()?;
    let weights: HashMap<String, Tensor> =
        vars.iter().map(|(k, v)| (k.clone(), v.as_tensor().clone())).collect();
    println!("| piece | ms |\n|---|---|");
    let fwd = time(repeats, || graph.forward(&x, &HashMap::new(), false))?;
    println!("| forward, batch {batch}, no gradient | {:.0} |", fwd * 1e3);
    let tract = nerp::runtime::Model::from_onnx_file(model.as_ref())?;
    let xs = x.flatten_all()?.to_vec1::<f32>()?;
    let t = time(repeats, || tract.run_f32(&xs, &[batch, 1, 28, 28]))?;
    println!("| tract forward, batch {batch} | {:.0} |", t * 1e3);
    for imp in [ConvImpl::Gemm, ConvImpl::Im2col, ConvImpl::Candle] {
        graph.conv_impl = imp;
        let t = time(repeats, || {
            let y = graph.forward(&x, &weights, false)?.output;
            Ok(y.sqr()?.sum_all()?.backward()?)
        })?;
        println!("| forward + backward, batch {batch}, conv {imp:?} | {:.0} |", t * 1e3);
    }
    let n = 29_712;
    let p = nerp::compress::train::init_predictor(
        hidden,
        nerp::format::Embedding { base: 1.25, levels: 20 },
        1,
        &Device::Cpu,
    )?;
    let coords: Vec<f32> = (0..n * 3).map(|_| rng.uniform() as f32).collect();
    let inputs = nerp::predictor::embed(&Tensor::from_vec(coords, (n, 3), &Device::Cpu)?, p.embedding)?;
    let t = time(repeats, || {
        let vars: Vec<(Var, Var)> = p
            .layers
            .iter()
            .map(|l| Ok((Var::from_tensor(&l.w)?, Var::from_tensor(&l.b)?)))
            .collect::<nerp::Result<_>>()?;
        let layers = vars
            .iter()
            .map(|(w, b)| nerp::predictor::Linear { w: w.as_tensor().clone(), b: b.as_tensor().clone() })
            .collect();
        let q = Predictor { layers, ..p.clone() };
        Ok(q.forward(&inputs)?.sqr()?.sum_all()?.backward()?)
    })?;
    println!("| predictor h={hidden} over {n} kernels, forward + backward | {:.0} |", t * 1e3);
    Ok(())
}
