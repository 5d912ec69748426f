//! The candle hand-off: a file's regenerated tensors as [candle](https://github.com/huggingface/candle)
//! tensors or a [`VarBuilder`] on a device of the caller's choice — the tensors `nerp
//! decompress` writes to safetensors, as candle's own safetensors loader would read them.
//!
//! ```no_run
//! # fn main() -> nerp::Result<()> {
//! let file = nerp::open("model.nerp")?;
//! let vb = nerp::runtime::candle::var_builder(&file, &nerp::Device::Cpu, &candle_core::Device::Cpu, candle_core::DType::F32)?;
//! let w = vb.get((384, 384), "encoder.layer.0.attention.self.query.weight")?;
//! # Ok(()) }
//! ```

use crate::error::{Error, Result};
use crate::format::{DType, NerpFile};
use crate::runtime::regen::WeightTensor;
use candle_core::{DType as CandleDType, Device as CandleDevice, Tensor};
use std::collections::HashMap;

pub use candle_nn::VarBuilder;

/// The candle dtype a stored dtype loads as, the mapping of candle's safetensors loader: u16
/// widens to u32; i8, u64 and bool have no candle type (`None`).
pub fn candle_dtype(dtype: DType) -> Option<CandleDType> {
    Some(match dtype {
        DType::F32 => CandleDType::F32,
        DType::F16 => CandleDType::F16,
        DType::Bf16 => CandleDType::BF16,
        DType::F64 => CandleDType::F64,
        DType::U8 => CandleDType::U8,
        DType::I16 => CandleDType::I16,
        DType::U16 | DType::U32 => CandleDType::U32,
        DType::I32 => CandleDType::I32,
        DType::I64 => CandleDType::I64,
        DType::I8 | DType::U64 | DType::Bool => return None,
    })
}

/// One regenerated tensor as a candle tensor on `on`, with its shape and dtype (see
/// [`candle_dtype`]).
pub fn to_candle(w: &WeightTensor, on: &CandleDevice) -> Result<Tensor> {
    let shape: Vec<usize> = w.shape.iter().map(|&d| d as usize).collect();
    let numel: usize = shape.iter().product();
    if w.data.len() != numel * w.dtype.size() {
        return Err(Error::Rebuild(format!(
            "tensor {}: {} bytes for {numel} values of {:?}",
            w.name,
            w.data.len(),
            w.dtype
        )));
    }
    let dtype = candle_dtype(w.dtype).ok_or_else(|| {
        Error::Rebuild(format!(
            "tensor {} is {:?}, which candle has no type for; use `nerp decompress` to safetensors \
             and convert it, or leave it out of the model",
            w.name, w.dtype
        ))
    })?;
    Ok(if w.dtype == DType::U16 {
        let wide: Vec<u32> =
            w.data.chunks_exact(2).map(|c| u32::from(u16::from_le_bytes([c[0], c[1]]))).collect();
        Tensor::from_vec(wide, shape, on)?
    } else {
        Tensor::from_raw_buffer(&w.data, dtype, &shape, on)?
    })
}

/// Regenerates `file` on `regen` and gives its tensors by name on `on`; with `dtype`, float
/// tensors are converted to it (integer tensors keep theirs).
pub fn tensors(
    file: &NerpFile,
    regen: &crate::Device,
    on: &CandleDevice,
    dtype: Option<CandleDType>,
) -> Result<HashMap<String, Tensor>> {
    let in_file = |e: Error| match e {
        Error::Rebuild(what) => Error::Rebuild(format!("{}: {what}", file.path().display())),
        e => e,
    };
    let mut out = HashMap::new();
    for w in crate::runtime::regen::regenerate(file, regen)? {
        let mut t = to_candle(&w, on).map_err(in_file)?;
        if let Some(d) = dtype.filter(|_| w.dtype.is_float()) {
            t = t.to_dtype(d)?;
        }
        out.insert(w.name, t);
    }
    Ok(out)
}

/// Regenerates `file` on `regen` and gives its tensors as a [`VarBuilder`] on `on` whose
/// tensors come as `dtype` (candle converts them on `get`).
pub fn var_builder(
    file: &NerpFile,
    regen: &crate::Device,
    on: &CandleDevice,
    dtype: CandleDType,
) -> Result<VarBuilder<'static>> {
    Ok(VarBuilder::from_tensors(tensors(file, regen, on, Some(dtype))?, dtype, on))
}
