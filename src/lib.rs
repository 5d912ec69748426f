//! nerp stores a neural network's weights as a small *predictor network* that maps each
//! convolution kernel's coordinate (layer, filter, channel) to its values (the NeRN method,
//! with the improvements of Choi et al. 2024), in a compact `.nerp` file.
//!
//! Every weight tensor gets the storage that serves it best under one budget: predicted by the
//! predictor, predicted plus a quantized residual, or a codec (f16, int8…int2 with data-aware
//! rounding). The format is specified in `spec/nerp-v1.md`. The modules follow the data flow,
//! each layer importing only those below it (`tools/check_modules.py` checks it):
//!
//! | layer | modules |
//! |---|---|
//! | the format | [`format`] (the spec in code: header, sections, limits, reader and writer, block geometry, the predictor's description, the quantizer), [`mmap`], [`error`] |
//! | codecs | [`codec`]: per-tensor storage — name, encoding, decoding, cost, storage entry |
//! | the predictor | [`predictor`]: its executors — candle, gemm (the trainer's), gpu (CUDA, or a stand-in without the `cuda` feature) |
//! | inputs | [`ingest`] (ONNX, safetensors → named tensors), [`data`] (datasets, `.npy`) |
//! | the runtime | [`runtime`]: [`runtime::regen`] (file + device → weights), [`runtime::device`], ONNX/tract and safetensors hand-off, [`runtime::candle`], [`runtime::verify`] |
//! | the compressor (feature `compress`) | [`compress`]: options → plan (select, permute, plan) → measure (calibrate, moments) → fit (train, distill, graph) → choose → finetune → build → report |
//! | evaluation | [`eval`]: accuracy, fidelity, the demo, baselines; [`synth`]: fixtures |
//! | the command line (feature `cli`) | `cli` |
//!
//! ```no_run
//! # fn main() -> nerp::Result<()> {
//! let file = nerp::open("model.nerp")?;
//! let weights = nerp::runtime::regen::regenerate(&file, &nerp::runtime::device::open("auto")?)?;
//! let model = nerp::runtime::Model::from_proto(&nerp::runtime::rebuild_onnx(&file, &weights)?)?;
//! let (logits, shape) = model.run_f32(&vec![0.0; 28 * 28], &[1, 1, 28, 28])?;
//! # Ok(()) }
//! ```

#[cfg(feature = "cli")]
pub mod cli;
pub mod codec;
#[cfg(feature = "compress")]
pub mod compress;
pub mod data;
pub mod error;
pub mod eval;
pub mod format;
pub mod ingest;
pub mod linalg;
pub mod mmap;
pub mod predictor;
pub mod runtime;
#[cfg(feature = "compress")]
pub mod synth;

pub use error::{Error, FormatError, Result};
pub use format::NerpFile;
pub use runtime::device::Device;

/// Opens and fully validates a `.nerp` file (read into an aligned buffer; see [`NerpFile::open`]).
pub fn open(path: impl AsRef<std::path::Path>) -> Result<NerpFile> {
    NerpFile::open(path)
}

/// Opens a `.nerp` file compressed from ONNX, regenerates its weights on `device` and returns
/// the model ready to run in tract.
pub fn load_model(path: impl AsRef<std::path::Path>, device: &Device) -> Result<runtime::Model> {
    runtime::Model::from_file(&open(path)?, device)
}
