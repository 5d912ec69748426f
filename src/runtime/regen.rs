//! File + device → weights: runs the predictor over every coordinate, undoes the ordering and
//! scaling, and decodes the raw tensors.

use crate::error::{Error, FormatError, Result};
use crate::format::codec::{from_f32, to_f32};
use crate::format::geometry::{coordinates, prediction_ranges, scatter, LayerPlan};
use crate::format::predictor::OUTPUTS;
use crate::format::{read, DType, NerpFile, PredictorSpec, Storage};
use crate::predictor::{self, Predictor};
use crate::runtime::device::Device;
use candle_core::Tensor;
use std::borrow::Cow;

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
            &predictor::decode_weights(
                spec.dtype,
                spec.hidden as usize,
                spec.embedding.levels as usize,
                stored,
            )?,
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
    check_budget(file)?;
    let h = file.header();
    let plans = layer_plans(file)?;
    let predicted = match &h.predictor {
        Some(spec) if !plans.is_empty() => {
            let stored = file.decode_section(spec.section)?;
            read::predictor_params(spec, &stored).map_err(|kind| file.fmt_error(kind))?;
            predict_stored(spec, &stored, &plans, device)?
        }
        _ => Vec::new(),
    };
    let mut by_tensor = vec![None; h.tensors.len()];
    for (p, range) in plans.iter().zip(prediction_ranges(&plans)) {
        by_tensor[p.tensor] = Some((p, &predicted[range]));
    }
    // Tensors decode independently, one per core: a 10 M-weight `coded` file regenerated 1.4×
    // faster on 2 cores that a compress kept busy (benches/README.md).
    let one = |i: usize| -> Result<WeightTensor> {
        let (t, pred) = (&h.tensors[i], by_tensor[i]);
        let data = match (&t.storage, pred) {
            (Storage::Predicted { .. }, Some((p, pred))) => predicted_bytes(file, p, pred)?,
            (Storage::Predicted { .. }, None) => {
                return Err(Error::Rebuild(format!("tensor {} has no layer plan", t.name)))
            }
            _ => unpredicted_bytes(file, t)?.into_owned(),
        };
        Ok(WeightTensor { name: t.name.clone(), dtype: t.dtype, shape: t.shape.clone(), data })
    };
    crate::linalg::parallel(h.tensors.len(), crate::linalg::threads(), one).into_iter().collect()
}

/// The bytes of a tensor that is not predicted, in its dtype: a `raw` section as stored (borrowed
/// where it is plain), any other by [`stored_bytes`]. The one reading of such a tensor shared by
/// regeneration, the streaming safetensors writer and the lazy candle backend.
pub fn unpredicted_bytes<'a>(file: &'a NerpFile, t: &crate::format::TensorEntry) -> Result<Cow<'a, [u8]>> {
    match t.storage {
        Storage::Raw { section } => file.decode_section(section),
        _ => Ok(Cow::Owned(stored_bytes(file, t)?)),
    }
}

/// The bytes of a tensor stored `quantized`, `coded` or `cast`, in its dtype: decoded by its
/// codec ([`crate::codec::decode`]: spec sections 4.3 and 4.5, the section's scales, steps and
/// codes checked, checks 32 and 33; or widened), converted to the tensor's dtype and checked to
/// be finite in it (check 31).
pub fn stored_bytes(file: &NerpFile, t: &crate::format::TensorEntry) -> Result<Vec<u8>> {
    let section = match t.storage {
        Storage::Quantized { section, .. }
        | Storage::Coded { section, .. }
        | Storage::Cast { section, .. } => section,
        _ => return Err(Error::Rebuild(format!("tensor {} is not quantized, coded or cast", t.name))),
    };
    let values = decode_section(file, t, &t.storage, section, "data")?;
    let data = from_f32(t.dtype, &values).expect("quantized and cast tensors are float");
    if let Some((i, v)) = first_non_finite(t.dtype, &data) {
        return Err(file.fmt_error(FormatError::Tensor {
            tensor: t.name.clone(),
            what: format!(
                "dequantizes to {v} at element {i} (in {:?}), outside its dtype (spec check 31)",
                t.dtype
            ),
        }));
    }
    Ok(data)
}

/// The stored bytes of one predicted tensor from its predictions (`blocks × 9`, chain order):
/// scattered, scaled, its residual added (spec section 5.3b), converted to the tensor's dtype
/// and checked to be finite in it (spec check 31), so that no NaN or infinity ever reaches a
/// model.
fn predicted_bytes(file: &NerpFile, p: &LayerPlan, pred: &[f32]) -> Result<Vec<u8>> {
    let t = &file.header().tensors[p.tensor];
    let mut values = vec![0f32; p.grid.numel()];
    scatter(pred, p, &mut values);
    if let Storage::Predicted { residual: Some(r), .. } = t.storage {
        let residual = decode_section(file, t, &r.as_storage(), r.section(), "residual")?;
        for (v, r) in values.iter_mut().zip(residual) {
            *v += r;
        }
    }
    let data = from_f32(t.dtype, &values).expect("predicted tensors are float");
    if let Some((i, v)) = first_non_finite(t.dtype, &data) {
        return Err(file.fmt_error(FormatError::Tensor {
            tensor: t.name.clone(),
            what: format!(
                "regenerates to {v} at element {i} (in {:?}); the predictor weights or scales are \
                 corrupt or hostile (spec check 31)",
                t.dtype
            ),
        }));
    }
    Ok(data)
}

/// The values of section `section` of tensor `t` (its data or its residual, `what`) decoded
/// as `storage` says, checked (spec checks 32 and 33).
fn decode_section(
    file: &NerpFile,
    t: &crate::format::TensorEntry,
    storage: &Storage,
    section: usize,
    what: &str,
) -> Result<Vec<f32>> {
    crate::codec::decode(storage, &file.decode_section(section)?, &t.shape).map_err(|why| {
        let (tensor, what) = (t.name.clone(), format!("{what}: {why}"));
        file.fmt_error(match storage {
            Storage::Coded { .. } => FormatError::Coded { tensor, what: format!("{what} (spec check 33)") },
            _ => FormatError::Quantization { tensor, what: format!("{what} (spec check 32)") },
        })
    })
}

/// The first NaN or infinite value of little-endian float `bytes` of `dtype`: an all-ones
/// exponent, tested on the bits (converting each element through a `Vec` made this 40% of
/// `decompress` on the 0.5 B LLM layout).
fn first_non_finite(dtype: DType, bytes: &[u8]) -> Option<(usize, f32)> {
    let n = dtype.size();
    let exponent: u64 = match dtype {
        DType::F16 => 0x7C00,
        DType::Bf16 => 0x7F80,
        DType::F32 => 0x7F80_0000,
        DType::F64 => 0x7FF0_0000_0000_0000,
        _ => return None,
    };
    let bits = |c: &[u8]| c.iter().rev().fold(0u64, |a, &b| (a << 8) | b as u64);
    let i = bytes.chunks_exact(n).position(|c| bits(c) & exponent == exponent)?;
    Some((i, to_f32(dtype, &bytes[i * n..(i + 1) * n])?[0]))
}

/// Checks every predicted tensor of `file` regenerates to finite values, one tensor at a time
/// on the CPU (so memory stays within the largest tensor), without keeping the results.
pub fn check_predicted(file: &NerpFile) -> Result<()> {
    let plans = layer_plans(file)?;
    let Some(spec) = &file.header().predictor else { return Ok(()) };
    if plans.is_empty() {
        return Ok(());
    }
    let stored = file.decode_section(spec.section)?;
    read::predictor_params(spec, &stored).map_err(|kind| file.fmt_error(kind))?;
    let p = Predictor::from_stored(spec, &stored, &candle_core::Device::Cpu)?;
    for plan in &plans {
        let pred = predict_layers(&p, std::slice::from_ref(plan), spec.layers)?;
        predicted_bytes(file, plan, &pred)?;
    }
    Ok(())
}

/// Checks, before anything is allocated, that regenerating `file` and rebuilding its model
/// fit the memory budget ([`crate::format::budget`]): each tensor alone, then an estimate of
/// the peak (the file, every tensor three times — regenerated, patched into the model,
/// serialized —, the skeleton, 52 bytes per predicted block for coordinates, predictions and
/// permutation, and the predictor's activations for one batch).
pub fn check_budget(file: &NerpFile) -> Result<()> {
    let budget = crate::format::budget::current();
    let h = file.header();
    let path = file.path().display();
    let (mut weights, mut blocks) = (0u64, 0u64);
    let mut largest = (0u64, "");
    for t in &h.tensors {
        let numel: u64 = t.shape.iter().product();
        let bytes = numel * t.dtype.size() as u64;
        let working = match t.storage {
            Storage::Raw { .. } => bytes,
            Storage::Quantized { .. } | Storage::Coded { .. } | Storage::Cast { .. } => bytes + 4 * numel,
            Storage::Predicted { layout, residual, .. } => {
                let dims: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
                let grid = crate::format::geometry::Grid::new(layout, &dims)
                    .map_err(|what| file.fmt_error(FormatError::Tensor { tensor: t.name.clone(), what }))?;
                blocks += grid.blocks() as u64;
                let residual = if residual.is_some() { 4 * numel } else { 0 };
                bytes + 4 * numel + residual + 52 * grid.blocks() as u64
            }
        };
        budget.check(|| format!("{path}: tensor {} ({:?} {:?})", t.name, t.dtype, t.shape), working)?;
        weights += bytes;
        if bytes > largest.0 {
            largest = (bytes, &t.name);
        }
    }
    let skeleton = h.source.skeleton.map_or(0, |s| h.sections[s].decoded_length);
    let (params, activations) = match &h.predictor {
        Some(p) => {
            let k = p.embedding.levels as u64;
            let params = crate::format::predictor::param_count(p.hidden as usize, k as usize) as u64;
            let width = (p.hidden as u64).max(6 * k);
            (params, 16 * blocks.min(BATCH as u64) * width)
        }
        None => (0, 0),
    };
    budget.check(
        || format!("{path}: predictor activations (hidden width, {BATCH} coordinates per batch)"),
        activations,
    )?;
    let total = file.file_len() + 3 * weights + skeleton + 52 * blocks + activations + 8 * params;
    budget.check(
        || {
            format!(
                "{path}: regenerating and rebuilding the model ({} of weights, the largest tensor {} \
                 {}; {blocks} predicted blocks)",
                crate::error::human_bytes(weights),
                largest.1,
                crate::error::human_bytes(largest.0)
            )
        },
        total,
    )
}
