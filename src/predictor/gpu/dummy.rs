//! Stand-in for builds without the `cuda` feature: opening a GPU is a clear error.

use crate::error::{Error, Result};
use crate::format::Embedding;

/// A GPU that cannot exist in this build.
#[derive(Debug)]
pub enum Gpu {}

impl Gpu {
    /// Always fails: this nerp was built without the `cuda` feature.
    pub fn open(ordinal: usize) -> Result<Gpu> {
        Err(Error::Device {
            device: format!("cuda:{ordinal}"),
            what: "this nerp was built without CUDA support; rebuild with `--features cuda`, or use --device cpu"
                .into(),
        })
    }

    /// Why no GPU can be used (always: not compiled in).
    pub fn unavailable_reason() -> Option<String> {
        Some("built without the `cuda` feature".into())
    }

    pub fn ordinal(&self) -> usize {
        match *self {}
    }

    pub fn name(&self) -> &str {
        match *self {}
    }

    pub fn predict(&self, _: usize, _: Embedding, _: &[f32], _: &[f32], _: usize) -> Result<Vec<f32>> {
        match *self {}
    }
}
