//! Reading a source model (ONNX or safetensors) into one ordered list of named tensors plus
//! what is needed to rebuild the model.

pub mod onnx;
pub mod safetensors;

use crate::error::{Error, Result};
use crate::format::{DType, SourceKind};
use std::collections::BTreeMap;
use std::path::Path;

/// One tensor of the source model.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceTensor {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<u64>,
    /// Little-endian values, row-major.
    pub data: Vec<u8>,
    /// How the model uses it (decides the predictor layout, see [`crate::compress::select`]).
    pub role: Role,
}

/// What a tensor is to the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A convolution kernel `[F, C/groups, k…]` (ONNX `Conv` input 1) or transposed
    /// convolution kernel `[C, F/groups, k…]` (`ConvTranspose` input 1); safetensors: rank ≥ 4.
    ConvKernel,
    /// A weight matrix: ONNX `Gemm`/`MatMul` operand, `LSTM`/`GRU`/`RNN` `W`/`R`, `Gather`
    /// table; safetensors: rank 2 or 3.
    Matrix,
    /// A float value that decides other values' shapes or lengths (ONNX `Resize`'s roi and
    /// scales, `Upsample`'s scales, `Range`'s bounds): stored losslessly, since a scale of 2
    /// stored as 2.0026 made PP-OCR det's upsampled maps 94 wide against 96.
    Shape,
    /// Anything else (biases, norms, integer shapes, …).
    Other,
}

/// A source model, ready to plan.
#[derive(Debug, Clone)]
pub struct SourceModel {
    pub kind: SourceKind,
    pub file_bytes: u64,
    pub tensors: Vec<SourceTensor>,
    /// ONNX only: the `ModelProto` bytes with the extracted tensors' data removed.
    pub skeleton: Option<Vec<u8>>,
    pub metadata: BTreeMap<String, String>,
}

/// Reads a model, choosing the reader by the file's first bytes (safetensors starts with an
/// 8-byte header length followed by `{`), else by extension.
pub fn load(path: &Path) -> Result<SourceModel> {
    let file = std::fs::File::open(path).map_err(|e| Error::io(path, "opening model", e))?;
    let len = file.metadata().map_err(|e| Error::io(path, "reading metadata of model", e))?.len();
    // Every tensor's data is copied out of the mapping, and the skeleton once more.
    crate::format::budget::current().check(|| format!("reading model {}", path.display()), 2 * len)?;
    let bytes = crate::mmap::FileBytes::map(&file).map_err(|e| Error::io(path, "memory-mapping model", e))?;
    let looks_safetensors = bytes.len() > 9 && bytes[8] == b'{';
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("").to_ascii_lowercase();
    if ext == "safetensors" || (ext != "onnx" && looks_safetensors) {
        safetensors::load(path, &bytes)
    } else if ext == "onnx" || !looks_safetensors {
        onnx::load(path, &bytes)
    } else {
        Err(Error::Ingest {
            path: path.to_path_buf(),
            what: "unknown model format: expected a .onnx or .safetensors file".into(),
        })
    }
}
