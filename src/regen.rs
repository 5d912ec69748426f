//! File + device → weights: runs the predictor over every coordinate, undoes the ordering and
//! scaling, and decodes the raw tensors.

use crate::device::Device;
use crate::error::{Error, Result};
use crate::format::codec::{from_f32, to_f32};
use crate::format::geometry::{coordinates, prediction_ranges, scatter, LayerPlan};
use crate::format::predictor::OUTPUTS;
use crate::format::{DType, NerpFile, PredictorSpec, Storage};
use crate::predictor::{self, Predictor};
use candle_core::Tensor;

/// The predicted layers of a file, permutations and scales decoded and checked (by the reader).
pub use crate::format::layer_plans;

/// Coordinates run through the predictor at once.
pub const BATCH: usize = 1 << 16;

/// One tensor of the rebuilt model, little-endian bytes of `dtype`, row-major.
#[derive(Debug, Clone, PartialEq)]
pub struct WeightTensor {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<u64>,
    pub data: Vec<u8>,
}

impl WeightTensor {
    /// The values as f32 (float tensors only).
    pub fn to_f32(&self) -> Option<Vec<f32>> {
        to_f32(self.dtype, &self.data)
    }
}

/// Runs the predictor over all chain positions of `plans` (in order), `BATCH` rows at a time;
/// returns the predictions, `N×9` in chain order, on the CPU.
pub fn predict_layers(predictor: &Predictor, plans: &[LayerPlan], layers: u32) -> Result<Vec<f32>> {
    predict_coords(predictor, &layer_coordinates(plans, layers))
}

/// The flat `N×3` coordinates of all chain positions of `plans`, in order.
pub fn layer_coordinates(plans: &[LayerPlan], layers: u32) -> Vec<f32> {
    plans.iter().flat_map(|p| coordinates(p.layer, layers, p.grid.rows, p.grid.cols)).collect()
}

/// Runs the stored predictor (`spec`, its section's bytes) over `plans` on `device`.
fn predict_stored(
    spec: &PredictorSpec,
    stored: &[u8],
    plans: &[LayerPlan],
    device: &Device,
) -> Result<Vec<f32>> {
    match device {
        Device::Cpu => {
            let p = Predictor::from_stored(spec, stored, &candle_core::Device::Cpu)?;
            predict_layers(&p, plans, spec.layers)
        }
        Device::Cuda(gpu) => gpu.predict(
            spec.hidden as usize,
            spec.embedding,
            &predictor::decode_weights(spec.dtype, stored),
            &layer_coordinates(plans, spec.layers),
            BATCH,
        ),
    }
}

/// Runs the predictor over flat `N×3` coordinates, `BATCH` rows at a time.
pub fn predict_coords(predictor: &Predictor, coords: &[f32]) -> Result<Vec<f32>> {
    let n = coords.len() / 3;
    let mut out = Vec::with_capacity(n * OUTPUTS);
    for start in (0..n).step_by(BATCH) {
        let end = (start + BATCH).min(n);
        let c = Tensor::from_slice(&coords[start * 3..end * 3], (end - start, 3), predictor.device())?;
        out.extend(predictor.predict(&c)?.flatten_all()?.to_vec1::<f32>()?);
    }
    Ok(out)
}

/// Regenerates every tensor of the file, in header order, on `device`.
pub fn regenerate(file: &NerpFile, device: &Device) -> Result<Vec<WeightTensor>> {
    let h = file.header();
    let plans = layer_plans(file)?;
    let predicted = match &h.predictor {
        Some(spec) if !plans.is_empty() => {
            predict_stored(spec, &file.decode_section(spec.section)?, &plans, device)?
        }
        _ => Vec::new(),
    };
    let mut by_tensor = vec![None; h.tensors.len()];
    for (p, range) in plans.iter().zip(prediction_ranges(&plans)) {
        by_tensor[p.tensor] = Some((p, &predicted[range]));
    }
    h.tensors
        .iter()
        .zip(by_tensor)
        .map(|(t, pred)| {
            let data = match (t.storage.clone(), pred) {
                (Storage::Raw { section }, _) => file.decode_section(section)?.into_owned(),
                (Storage::Predicted { .. }, Some((p, pred))) => {
                    let mut values = vec![0f32; p.grid.numel()];
                    scatter(pred, p, &mut values);
                    from_f32(t.dtype, &values).expect("predicted tensors are float")
                }
                (Storage::Predicted { .. }, None) => {
                    return Err(Error::Rebuild(format!("tensor {} has no layer plan", t.name)))
                }
            };
            Ok(WeightTensor { name: t.name.clone(), dtype: t.dtype, shape: t.shape.clone(), data })
        })
        .collect()
}
