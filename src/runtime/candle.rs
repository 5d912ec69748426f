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
use crate::format::{DType, NerpFile, Storage};
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
    let dtype = candle_dtype(w.dtype).ok_or_else(|| Error::Rebuild(no_candle_type(&w.name, w.dtype)))?;
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

/// `file`'s tensors as a [`VarBuilder`] on `on` whose tensors come as `dtype`. A file with
/// predicted tensors is regenerated on `regen` first (the predictor runs over whole layers); a
/// file without them (the LLM path) is decoded tensor by tensor as the model asks for each, so
/// that no second copy of the model is held ([`Lazy`]). Either way a tensor candle has no type
/// for is refused here, naming it.
pub fn var_builder<'a>(
    file: &'a NerpFile,
    regen: &crate::Device,
    on: &CandleDevice,
    dtype: CandleDType,
) -> Result<VarBuilder<'a>> {
    let h = file.header();
    if h.tensors.iter().any(|t| matches!(t.storage, Storage::Predicted { .. })) {
        return Ok(VarBuilder::from_tensors(tensors(file, regen, on, Some(dtype))?, dtype, on));
    }
    if let Some(t) = h.tensors.iter().find(|t| candle_dtype(t.dtype).is_none()) {
        return Err(Error::Rebuild(format!(
            "{}: {}",
            file.path().display(),
            no_candle_type(&t.name, t.dtype)
        )));
    }
    let index = h.tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
    Ok(VarBuilder::from_backend(Box::new(Lazy { file, index }), dtype, on.clone()))
}

fn no_candle_type(name: &str, dtype: DType) -> String {
    format!(
        "tensor {name} is {dtype:?}, which candle has no type for; use `nerp decompress` to \
         safetensors and convert it, or leave it out of the model"
    )
}

/// The tensors of a file without predicted tensors, each decoded (and checked, as
/// `decompress` does) when asked for: the candle hand-off of [`var_builder`] in the memory of
/// the tensors the model keeps.
struct Lazy<'a> {
    file: &'a NerpFile,
    index: HashMap<String, usize>,
}

impl Lazy<'_> {
    /// The header entry of tensor `name`.
    fn entry(&self, name: &str) -> candle_core::Result<&crate::format::TensorEntry> {
        match self.index.get(name) {
            Some(&i) => Ok(&self.file.header().tensors[i]),
            None => Err(candle_core::Error::CannotFindTensor { path: name.to_string() }),
        }
    }

    /// Tensor `t` decoded (raw sections as stored, the others by their codec) on `on` as `dtype`.
    fn load(
        &self,
        t: &crate::format::TensorEntry,
        dtype: CandleDType,
        on: &CandleDevice,
    ) -> candle_core::Result<Tensor> {
        let load = || -> Result<Tensor> {
            let data = crate::runtime::regen::unpredicted_bytes(self.file, t)?.into_owned();
            let w = WeightTensor { name: t.name.clone(), dtype: t.dtype, shape: t.shape.clone(), data };
            Ok(to_candle(&w, on)?.to_dtype(dtype)?)
        };
        load().map_err(|e| candle_core::Error::Msg(e.to_string()))
    }
}

impl candle_nn::var_builder::SimpleBackend for Lazy<'_> {
    /// The shape is checked against the header before anything is decoded.
    fn get(
        &self,
        s: candle_core::Shape,
        name: &str,
        _: candle_nn::Init,
        dtype: CandleDType,
        dev: &CandleDevice,
    ) -> candle_core::Result<Tensor> {
        let t = self.entry(name)?;
        let dims: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
        if dims != s.dims() {
            return Err(candle_core::Error::UnexpectedShape {
                msg: format!("shape mismatch for {name}"),
                expected: s,
                got: dims.into(),
            });
        }
        self.load(t, dtype, dev)
    }

    fn get_unchecked(
        &self,
        name: &str,
        dtype: CandleDType,
        dev: &CandleDevice,
    ) -> candle_core::Result<Tensor> {
        self.load(self.entry(name)?, dtype, dev)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.index.contains_key(name)
    }
}
