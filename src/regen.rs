//! File + device → weights: runs the predictor over every coordinate, undoes the ordering and
//! scaling, and decodes the raw tensors.

use crate::device::Device;
use crate::error::{Error, FormatError, Result};
use crate::format::{read, DType, NerpFile, PredictorSpec, Storage};
use crate::plan::{self, LayerPlan};
use crate::predictor::{self, Predictor, OUTPUTS};
use candle_core::Tensor;

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
        read::to_f32(self.dtype, &self.data)
    }
}

/// The predicted layers of a file, with their permutations and scales decoded and checked.
pub fn layer_plans(file: &NerpFile) -> Result<Vec<LayerPlan>> {
    let mut plans = Vec::new();
    for (tensor, t) in file.header().tensors.iter().enumerate() {
        let Storage::Predicted { layer, permutation, scales, layout } = t.storage else { continue };
        let bad = |what: String| file.fmt_error(FormatError::Tensor { tensor: t.name.clone(), what });
        // The grid was validated at open; this cannot fail for an open file.
        let dims: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
        let grid = plan::Grid::new(layout, &dims).map_err(&bad)?;
        let perm = read::unpack_permutation(&file.decode_section(permutation)?, grid.blocks())
            .map_err(|e| bad(format!("permutation: {e}")))?;
        let scales = match scales {
            Some(s) => {
                let v = read::to_f32(DType::F32, &file.decode_section(s)?).expect("f32");
                if let Some(x) = v.iter().find(|x| !x.is_finite()) {
                    return Err(bad(format!("scale {x} is not finite")));
                }
                Some(v)
            }
            None => None,
        };
        plans.push(LayerPlan { tensor, layer, grid, perm, scales });
    }
    plans.sort_by_key(|p| p.layer);
    Ok(plans)
}

/// Runs the predictor over all chain positions of `plans` (in order), `BATCH` rows at a time;
/// returns the predictions, `N×9` in chain order, on the CPU.
pub fn predict_layers(predictor: &Predictor, plans: &[LayerPlan], layers: u32) -> Result<Vec<f32>> {
    predict_coords(predictor, &layer_coordinates(plans, layers))
}

/// The flat `N×3` coordinates of all chain positions of `plans`, in order.
pub fn layer_coordinates(plans: &[LayerPlan], layers: u32) -> Vec<f32> {
    plans.iter().flat_map(|p| plan::coordinates(p.layer, layers, p.grid.rows, p.grid.cols)).collect()
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
    let mut at = 0;
    for p in &plans {
        let n = p.blocks() * OUTPUTS;
        by_tensor[p.tensor] = Some((p, &predicted[at..at + n]));
        at += n;
    }
    h.tensors
        .iter()
        .zip(by_tensor)
        .map(|(t, pred)| {
            let data = match (t.storage.clone(), pred) {
                (Storage::Raw { section }, _) => file.decode_section(section)?.into_owned(),
                (Storage::Predicted { .. }, Some((p, pred))) => {
                    let mut values = vec![0f32; p.grid.numel()];
                    plan::scatter(pred, p, &mut values);
                    read::from_f32(t.dtype, &values).expect("predicted tensors are float")
                }
                (Storage::Predicted { .. }, None) => {
                    return Err(Error::Rebuild(format!("tensor {} has no layer plan", t.name)))
                }
            };
            Ok(WeightTensor { name: t.name.clone(), dtype: t.dtype, shape: t.shape.clone(), data })
        })
        .collect()
}
