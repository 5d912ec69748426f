//! Function-preserving channel orderings (`--ordering channels`, src/permute.rs): the permuted
//! ResNet-20 computes the same outputs on real images, and compressing with it is
//! deterministic and stores no permutation.

mod common;

use common::shared_model;
use nerp::compress::{compress, CompressOptions};
use nerp::data::{DataSource, Preprocess, Split};
use nerp::format::{Ordering, Storage};
use nerp::{compress::permute, ingest, runtime};

#[test]
fn resnet20_channel_permutation_preserves_outputs_on_real_images() {
    let path = shared_model("resnet20_fashion_mnist.onnx");
    let mut model = ingest::load(&path).unwrap();
    let report = permute::permute_model(&mut model).unwrap();
    // Three residual streams (stem, shortcut convs and every block's second conv write into
    // them; the classifier reads the last one) and one group inside each of the 9 blocks.
    assert_eq!(
        report.groups.len(),
        12,
        "{:?}",
        report.groups.iter().map(|(g, _)| g.size).collect::<Vec<_>>()
    );
    let moved = report.groups.iter().filter(|(_, o)| o.iter().enumerate().any(|(i, &c)| i != c as usize));
    assert_eq!(moved.count(), 12, "every group is reordered");
    let proto =
        runtime::patch_skeleton(model.skeleton.as_ref().unwrap(), &permute::as_weights(&model)).unwrap();
    let permuted = runtime::Model::from_proto(&proto).unwrap();
    let original = runtime::Model::from_onnx_file(&path).unwrap();
    let pre = Preprocess::parse(common::PREPROCESS).unwrap();
    let n = 64;
    let data = nerp::data::load(&DataSource::FashionMnist(None), Split::Test, Some(n), &pre).unwrap();
    let shape = [n, 1, 28, 28];
    let (a, sa) = original.run_f32(&data.images, &shape).unwrap();
    let (b, sb) = permuted.run_f32(&data.images, &shape).unwrap();
    assert_eq!(sa, sb);
    let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
    let diff = a.iter().zip(&b).fold(0f32, |m, (x, y)| m.max((x - y).abs()));
    eprintln!("max |logit| {scale}, max |difference| {diff}");
    assert!(diff <= 1e-5 * scale.max(1.0), "outputs differ by {diff} (logits up to {scale})");
    // The permutation is not a no-op on the weights: every conv kernel and bias (the norms
    // are folded into them) and the classifier's matrix move; only the classifier's bias stays.
    let orig = ingest::load(&path).unwrap();
    let changed = orig.tensors.iter().zip(&model.tensors).filter(|(x, y)| x.data != y.data).count();
    assert_eq!(changed, 21 + 21 + 1, "tensors changed");
}

fn channel_options() -> CompressOptions {
    CompressOptions {
        hidden: Some(8),
        steps: 20,
        ordering: Ordering::None,
        channels: true,
        // The predictor's file as trained (20 steps do not keep the weights).
        error_budget: nerp::compress::ErrorBudget::Off,
        ..Default::default()
    }
}

#[test]
fn channel_ordering_is_deterministic_and_stores_empty_permutations() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("res.onnx");
    std::fs::write(&src, nerp::synth::residual_onnx("Relu", 5)).unwrap();
    let (a, b) = (dir.path().join("a.nerp"), dir.path().join("b.nerp"));
    compress(&src, &a, &channel_options(), &mut |_: usize, _: f64| {}).unwrap();
    compress(&src, &b, &channel_options(), &mut |_: usize, _: f64| {}).unwrap();
    let bytes = std::fs::read(&a).unwrap();
    assert_eq!(bytes, std::fs::read(&b).unwrap(), "same input, options and seed: same bytes");
    let file = nerp::open(&a).unwrap();
    let h = file.header();
    assert!(h.metadata.contains_key(permute::CHANNEL_ORDER_KEY));
    let mut predicted = 0;
    for t in &h.tensors {
        if let Storage::Predicted { permutation, .. } = t.storage {
            assert_eq!(h.sections[permutation].decoded_length, 0, "{}: identity stored as no bytes", t.name);
            predicted += 1;
        }
    }
    assert!(predicted >= 3);
    // It regenerates and runs (the permuted network, with an 8-wide predictor).
    let m = nerp::load_model(&a, &nerp::Device::Cpu).unwrap();
    let (y, shape) = m.run_f32(&[0.5; 72], &[1, 2, 6, 6]).unwrap();
    assert_eq!(shape, vec![1, 3]);
    assert!(y.iter().all(|v| v.is_finite()));
    // The crossfilter chain of the same model stores permutations.
    let c = dir.path().join("c.nerp");
    let opts = CompressOptions { ordering: Ordering::Crossfilter, channels: false, ..channel_options() };
    compress(&src, &c, &opts, &mut |_: usize, _: f64| {}).unwrap();
    let file = nerp::open(&c).unwrap();
    let h = file.header();
    assert!(h.tensors.iter().any(|t| matches!(t.storage, Storage::Predicted { permutation, .. }
        if h.sections[permutation].decoded_length > 0)));
}

#[test]
fn safetensors_sources_fall_back_to_the_stored_chain() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("s.safetensors");
    std::fs::write(&src, nerp::synth::conv_stack_safetensors(4, 2, 1).unwrap()).unwrap();
    let out = dir.path().join("s.nerp");
    compress(&src, &out, &channel_options(), &mut |_: usize, _: f64| {}).unwrap();
    let file = nerp::open(&out).unwrap();
    assert_eq!(file.header().predictor.as_ref().unwrap().ordering, Ordering::Crossfilter);
    assert!(!file.header().metadata.contains_key(permute::CHANNEL_ORDER_KEY));
}
