//! safetensors: every tensor, sorted by name; `__metadata__` is kept as `safetensors.KEY`.

use super::{Role, SourceModel, SourceTensor};
use crate::error::{Error, Result};
use crate::format::{DType, SourceKind};
use safetensors::{Dtype, SafeTensors};
use std::path::Path;

/// Prefix of metadata keys carried over from the safetensors header.
pub use crate::format::metadata::SAFETENSORS_PREFIX as META_PREFIX;

/// Maps a safetensors dtype to a stored dtype.
pub fn dtype_of(d: Dtype) -> Option<DType> {
    Some(match d {
        Dtype::F32 => DType::F32,
        Dtype::F16 => DType::F16,
        Dtype::BF16 => DType::Bf16,
        Dtype::F64 => DType::F64,
        Dtype::I8 => DType::I8,
        Dtype::U8 => DType::U8,
        Dtype::I16 => DType::I16,
        Dtype::U16 => DType::U16,
        Dtype::I32 => DType::I32,
        Dtype::U32 => DType::U32,
        Dtype::I64 => DType::I64,
        Dtype::U64 => DType::U64,
        Dtype::BOOL => DType::Bool,
        _ => return None,
    })
}

/// The safetensors dtype of a stored dtype.
pub fn to_safetensors(d: DType) -> Dtype {
    match d {
        DType::F32 => Dtype::F32,
        DType::F16 => Dtype::F16,
        DType::Bf16 => Dtype::BF16,
        DType::F64 => Dtype::F64,
        DType::I8 => Dtype::I8,
        DType::U8 => Dtype::U8,
        DType::I16 => Dtype::I16,
        DType::U16 => Dtype::U16,
        DType::I32 => Dtype::I32,
        DType::U32 => Dtype::U32,
        DType::I64 => Dtype::I64,
        DType::U64 => Dtype::U64,
        DType::Bool => Dtype::BOOL,
    }
}

/// One tensor of a safetensors file, without its data: where its bytes are in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorView {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<u64>,
    /// Its bytes within the whole file.
    pub range: std::ops::Range<usize>,
}

impl TensorView {
    /// How the model uses it (by rank: safetensors has no graph).
    pub fn role(&self) -> Role {
        match self.shape.len() {
            0 | 1 => Role::Other,
            2 | 3 => Role::Matrix,
            _ => Role::ConvKernel,
        }
    }
}

/// The tensors of a safetensors file (sorted by name) and its `__metadata__` (as
/// `safetensors.KEY`), checked, nothing copied.
pub fn views(
    path: &Path,
    bytes: &[u8],
) -> Result<(Vec<TensorView>, std::collections::BTreeMap<String, String>)> {
    let err = |what: String| Error::Ingest { path: path.to_path_buf(), what };
    precheck(bytes).map_err(err)?;
    let st =
        SafeTensors::deserialize(bytes).map_err(|e| err(format!("not a valid safetensors file: {e}")))?;
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| err(format!("{e}")))?;
    let metadata =
        meta.metadata().iter().flatten().map(|(k, v)| (format!("{META_PREFIX}{k}"), v.clone())).collect();
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let view = st.tensor(&name).map_err(|e| err(format!("tensor {name}: {e}")))?;
        let dtype = dtype_of(view.dtype())
            .ok_or_else(|| err(format!("tensor {name}: dtype {:?} is not supported", view.dtype())))?;
        let shape: Vec<u64> = view.shape().iter().map(|&d| d as u64).collect();
        // The view borrows `bytes`: its offset is where its data starts.
        let start = view.data().as_ptr() as usize - bytes.as_ptr() as usize;
        out.push(TensorView { name, dtype, shape, range: start..start + view.data().len() });
    }
    Ok((out, metadata))
}

/// Reads a safetensors file.
pub fn load(path: &Path, bytes: &[u8]) -> Result<SourceModel> {
    let (views, metadata) = views(path, bytes)?;
    let tensors = views
        .into_iter()
        .map(|v| {
            let role = v.role();
            SourceTensor { data: bytes[v.range].to_vec(), name: v.name, dtype: v.dtype, shape: v.shape, role }
        })
        .collect();
    Ok(SourceModel {
        kind: SourceKind::Safetensors,
        file_bytes: bytes.len() as u64,
        tensors,
        skeleton: None,
        metadata,
    })
}

/// Largest safetensors header accepted (the safetensors crate's own limit).
const MAX_HEADER: u64 = 100_000_000;

/// Bytes per element of a safetensors dtype nerp stores (`None`: not supported).
fn dtype_size(name: &str) -> Option<u64> {
    Some(match name {
        "F64" | "I64" | "U64" => 8,
        "F32" | "I32" | "U32" => 4,
        "F16" | "BF16" | "I16" | "U16" => 2,
        "I8" | "U8" | "BOOL" => 1,
        _ => return None,
    })
}

/// Checks the header before the safetensors crate parses it, so that every error names the
/// tensor at fault and what to do: a header length past the end of the file, an unsupported
/// dtype (F8, …), offsets past the end of the data or not matching the shape.
fn precheck(bytes: &[u8]) -> std::result::Result<(), String> {
    let n: [u8; 8] = bytes
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .ok_or("file is shorter than the 8-byte safetensors header length")?;
    let header_len = u64::from_le_bytes(n);
    if header_len > MAX_HEADER {
        return Err(format!(
            "header length {header_len} exceeds the safetensors limit of {MAX_HEADER} bytes"
        ));
    }
    let file_len = bytes.len() as u64;
    if 8 + header_len > file_len {
        return Err(format!(
            "header length {header_len} runs past the end of the file ({file_len} bytes): the file is \
             truncated or not safetensors"
        ));
    }
    let json = &bytes[8..8 + header_len as usize];
    let header: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(json).map_err(|e| format!("header is not a JSON object: {e}"))?;
    let data_len = file_len - 8 - header_len;
    for (name, v) in header.iter().filter(|(k, _)| *k != "__metadata__") {
        let bad = |what: String| format!("tensor {name:?}: {what}");
        let dtype = v.get("dtype").and_then(|d| d.as_str()).ok_or_else(|| bad("has no dtype".into()))?;
        let size = dtype_size(dtype).ok_or_else(|| {
            bad(format!(
                "dtype {dtype} is not supported (nerp stores F64, F32, F16, BF16 and integer/bool \
                 tensors); convert the tensor first"
            ))
        })?;
        let shape: Option<Vec<u64>> =
            v.get("shape").and_then(|s| s.as_array()).and_then(|a| a.iter().map(|d| d.as_u64()).collect());
        let shape = shape.ok_or_else(|| bad("shape is not a list of non-negative integers".into()))?;
        let offsets: Option<Vec<u64>> = v
            .get("data_offsets")
            .and_then(|s| s.as_array())
            .and_then(|a| a.iter().map(|d| d.as_u64()).collect());
        let [start, end] = offsets.as_deref().unwrap_or(&[]) else {
            return Err(bad("data_offsets is not a pair of non-negative integers".into()));
        };
        if start > end || *end > data_len {
            return Err(bad(format!(
                "data_offsets [{start}, {end}] run past the end of the data ({data_len} bytes): the file \
                 is truncated or its header is wrong"
            )));
        }
        let need = shape.iter().try_fold(size, |a, &d| a.checked_mul(d));
        if need != Some(end - start) {
            return Err(bad(format!(
                "data_offsets cover {} bytes, but shape {shape:?} of {dtype} needs {}",
                end - start,
                need.map_or("more than 2^64".into(), |n| n.to_string())
            )));
        }
    }
    Ok(())
}
