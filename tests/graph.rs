//! The differentiable forward (`nerp::compress::graph`) against tract on the same weights.

mod common;

use candle_core::{Device, Tensor};
use nerp::compress::graph::Graph;
use std::collections::HashMap;

/// Max |tract − graph| over the logits of `n` noise images.
fn max_diff(path: &std::path::Path, n: usize) -> f32 {
    let x = common::noise(n * 28 * 28, 11);
    let model = nerp::runtime::Model::from_onnx_file(path).unwrap();
    let (expect, shape) = model.run_f32(&x, &[n, 1, 28, 28]).unwrap();
    let graph = Graph::from_onnx_file(path).unwrap();
    let input = Tensor::from_slice(&x, (n, 1, 28, 28), &Device::Cpu).unwrap();
    let out = graph.forward(&input, &HashMap::new(), false).unwrap().output;
    assert_eq!(out.dims(), &shape[..]);
    let got = out.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let max = expect.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    let scale = expect.iter().map(|v| v.abs()).fold(0f32, f32::max);
    println!("{}: max |tract - graph| = {max:.3e} (logits up to {scale:.2})", path.display());
    max
}

#[test]
fn resnet20_forward_matches_tract() {
    assert!(max_diff(&common::shared_model("resnet20_fashion_mnist.onnx"), 8) < 1e-4);
}

#[test]
#[ignore = "needs ../shared/models/resnet56_fashion_mnist.onnx; run with --ignored"]
fn resnet56_forward_matches_tract() {
    let path = common::shared_model("resnet56_fashion_mnist.onnx");
    let how = format!("{} not found (it lives in ../shared/models)", path.display());
    if !common::optional_input("SHARED_MODELS", path.exists(), &how) {
        return;
    }
    assert!(max_diff(&path, 4) < 1e-4);
}
