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
    let mut rng = nerp::train::Rng::new(seed);
    (0..n).map(|_| (rng.uniform() * 2.0 - 1.0) as f32).collect()
}
