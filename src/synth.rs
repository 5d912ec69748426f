//! Fixtures for benchmarks and tests: a synthetic model of large 3×3 convolutions, and `.nerp`
//! files with an untrained (randomly initialized) predictor, which cost no training time but
//! exercise every step of reading, regeneration and rebuilding.

use crate::compress::{build_file, make_plan, CompressOptions};
use crate::error::{Error, Result};
use crate::format::WeightDtype;
use crate::ingest::SourceModel;
use crate::predictor::Predictor;
use crate::train::{init_predictor, Rng};
use candle_core::Device;

/// Safetensors bytes of `layers` 3×3 convolution kernels `[channels, channels, 3, 3]` named
/// `conv{i}.weight`, with He-uniform random values from `seed` (so per-filter scales and
/// orderings see realistic statistics).
pub fn conv_stack_safetensors(channels: usize, layers: usize, seed: u64) -> Result<Vec<u8>> {
    let mut rng = Rng::new(seed);
    let bound = (6.0 / (channels * 9) as f64).sqrt();
    let tensors: Vec<(String, Vec<u8>)> = (0..layers)
        .map(|i| {
            let data = (0..channels * channels * 9)
                .flat_map(|_| (((rng.uniform() * 2.0 - 1.0) * bound) as f32).to_le_bytes())
                .collect();
            (format!("conv{i}.weight"), data)
        })
        .collect();
    let views = tensors
        .iter()
        .map(|(name, data)| {
            let shape = vec![channels, channels, 3, 3];
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape, data)
                .map(|v| (name.clone(), v))
                .map_err(|e| Error::Rebuild(format!("tensor {name}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(views, None).map_err(|e| Error::Rebuild(format!("serializing safetensors: {e}")))
}

/// A complete `.nerp` (bytes) of `model` whose predictor (width `hidden`, stored as `dtype`) is
/// freshly initialized from `seed` instead of trained; with the predictor it holds.
pub fn untrained_file(
    model: &SourceModel,
    hidden: usize,
    dtype: WeightDtype,
    seed: u64,
) -> Result<(Vec<u8>, Predictor)> {
    let opts = CompressOptions { predictor_dtype: dtype, hidden: Some(hidden), ..Default::default() };
    opts.validate()?;
    let (plans, values) = make_plan(model, &opts)?;
    let p = init_predictor(hidden, opts.embedding, seed, &Device::Cpu)?.rounded(dtype)?;
    let (bytes, _, _) = build_file(model, &plans, &values, Some(&p), &opts)?;
    Ok((bytes, p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{NerpFile, Storage};

    #[test]
    fn conv_stack_is_all_predicted_and_regenerates_to_its_shapes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stack.safetensors");
        std::fs::write(&path, conv_stack_safetensors(8, 3, 1).unwrap()).unwrap();
        let model = crate::ingest::load(&path).unwrap();
        assert_eq!(model.tensors.len(), 3);
        let (bytes, _) = untrained_file(&model, 16, WeightDtype::F16, 2).unwrap();
        let file = NerpFile::from_bytes(bytes, "stack.nerp").unwrap();
        let h = file.header();
        assert!(h.tensors.iter().all(|t| matches!(t.storage, Storage::Predicted { .. })));
        let w = crate::regen::regenerate(&file, &Device::Cpu).unwrap();
        assert!(w.iter().all(|t| t.shape == [8, 8, 3, 3] && t.data.len() == 8 * 8 * 9 * 4));
    }

    #[test]
    fn same_seed_same_bytes() {
        assert_eq!(conv_stack_safetensors(4, 2, 7).unwrap(), conv_stack_safetensors(4, 2, 7).unwrap());
        assert_ne!(conv_stack_safetensors(4, 2, 7).unwrap(), conv_stack_safetensors(4, 2, 8).unwrap());
    }
}
