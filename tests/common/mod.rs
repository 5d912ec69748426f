//! Shared helpers for the integration tests.
#![allow(dead_code)]

use std::path::PathBuf;

/// A reference model from `../shared/models`, or the copy bundled in `examples/models`.
pub fn shared_model(name: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let shared = root.join("../shared/models").join(name);
    if shared.exists() {
        return shared;
    }
    root.join("examples/models").join(name)
}

/// The Fashion-MNIST preprocessing of the reference models.
pub const PREPROCESS: &str = "mean=0.286,std=0.353";

/// Deterministic pseudo-random f32 values in [-1, 1).
pub fn noise(n: usize, seed: u64) -> Vec<f32> {
    let mut rng = nerp::compress::train::Rng::new(seed);
    (0..n).map(|_| (rng.uniform() * 2.0 - 1.0) as f32).collect()
}

/// Whether an optional input of an `#[ignore]`d test is there. Those tests run only on request
/// (`cargo test -- --ignored`); when their input is absent they print why and return, unless
/// `NERP_REQUIRE_<THING>=1` says the input must be there (CI sets it where it provides the
/// input), and then they fail.
pub fn optional_input(thing: &str, present: bool, how: &str) -> bool {
    if present {
        return true;
    }
    let var = format!("NERP_REQUIRE_{thing}");
    if required(thing) {
        panic!("{var}=1 but the input is missing: {how}");
    }
    eprintln!("not run: {how} (set {var}=1 to make this a failure)");
    false
}

/// Whether `NERP_REQUIRE_<THING>=1` says the optional input `thing` must be there.
pub fn required(thing: &str) -> bool {
    std::env::var(format!("NERP_REQUIRE_{thing}")).is_ok_and(|v| v == "1")
}

/// The Fashion-MNIST train split (Debian package dataset-fashion-mnist, installed by
/// tools/setup.sh, which the README's test command runs). Fails, saying so, when it is absent.
pub fn train_set() -> PathBuf {
    let dir = PathBuf::from("/usr/share/datasets/fashion-mnist");
    let images = dir.join("train-images-idx3-ubyte.gz");
    assert!(images.is_file(), "{} is missing: run tools/setup.sh", images.display());
    dir
}

/// THE reference predictor of the tests: the predictor of `hidden` units and `embedding` with
/// flat parameters `weights` (storage order) at one coordinate, written from spec section 5.2
/// independently of nerp's code (candle, gemm, CUDA, the format's description): frequencies
/// `ω_k = f32(π·base^k)`; embedding `[sin(p_j·ω_k)…, cos(p_j·ω_k)…]` per coordinate with the
/// product `p_j·ω_k` in f32, as the spec says, and sin/cos in f64; then five linear layers
/// `6K → h → h → h → h → 9` (`w` stored `(in, out)` row-major, then `b`) with ReLU between
/// them, in f64.
pub fn reference_predict(
    hidden: usize,
    embedding: nerp::format::Embedding,
    weights: &[f32],
    coord: [f32; 3],
) -> [f64; 9] {
    let (k, h) = (embedding.levels as usize, hidden);
    let freqs: Vec<f32> =
        (0..k).map(|i| (std::f64::consts::PI * embedding.base.powi(i as i32)) as f32).collect();
    let mut x: Vec<f64> = Vec::with_capacity(6 * k);
    for p in coord {
        x.extend(freqs.iter().map(|&w| ((p * w) as f64).sin()));
        x.extend(freqs.iter().map(|&w| ((p * w) as f64).cos()));
    }
    let mut at = 0;
    let dims = [(6 * k, h), (h, h), (h, h), (h, h), (h, 9)];
    for (layer, (i, o)) in dims.into_iter().enumerate() {
        assert_eq!(x.len(), i);
        let w = &weights[at..at + i * o];
        let b = &weights[at + i * o..at + i * o + o];
        at += i * o + o;
        x = (0..o)
            .map(|col| {
                let y = b[col] as f64 + (0..i).map(|row| x[row] * w[row * o + col] as f64).sum::<f64>();
                if layer + 1 < dims.len() {
                    y.max(0.0)
                } else {
                    y
                }
            })
            .collect();
    }
    assert_eq!(at, weights.len());
    x.try_into().unwrap()
}

/// A generated f16 LLM of `layout` (`nerp::synth`, random weights from `seed`) in a fresh
/// folder: the folder (removed when dropped) and its `model.safetensors`.
pub fn small_llm(layout: &nerp::synth::LlmLayout, seed: u64) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let values = nerp::synth::LlmValues { seed, ..Default::default() };
    nerp::synth::write_llm(layout, nerp::format::DType::F16, &values, dir.path()).unwrap();
    let src = dir.path().join("model.safetensors");
    (dir, src)
}
