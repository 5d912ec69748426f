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

/// Reads a safetensors file.
pub fn load(path: &Path, bytes: &[u8]) -> Result<SourceModel> {
    let err = |what: String| Error::Ingest { path: path.to_path_buf(), what };
    let st =
        SafeTensors::deserialize(bytes).map_err(|e| err(format!("not a valid safetensors file: {e}")))?;
    let (_, meta) = SafeTensors::read_metadata(bytes).map_err(|e| err(format!("{e}")))?;
    let metadata =
        meta.metadata().iter().flatten().map(|(k, v)| (format!("{META_PREFIX}{k}"), v.clone())).collect();
    let mut tensors = Vec::new();
    let mut names: Vec<String> = st.names().into_iter().map(str::to_string).collect();
    names.sort();
    for name in names {
        let view = st.tensor(&name).map_err(|e| err(format!("tensor {name}: {e}")))?;
        let dtype = dtype_of(view.dtype())
            .ok_or_else(|| err(format!("tensor {name}: dtype {:?} is not supported", view.dtype())))?;
        let shape: Vec<u64> = view.shape().iter().map(|&d| d as u64).collect();
        let role = match shape.len() {
            0 | 1 => Role::Other,
            2 | 3 => Role::Matrix,
            _ => Role::ConvKernel,
        };
        tensors.push(SourceTensor { name, dtype, shape, data: view.data().to_vec(), role });
    }
    Ok(SourceModel {
        kind: SourceKind::Safetensors,
        file_bytes: bytes.len() as u64,
        tensors,
        skeleton: None,
        metadata,
    })
}
