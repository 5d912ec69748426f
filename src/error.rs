//! The one error type of nerp: a variant per kind of failure, each naming what failed and,
//! where a user can act on it, what to do.

use std::path::PathBuf;

/// Result alias used across the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in nerp.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O operation on a named file failed.
    #[error("{path}: {action}: {source}")]
    Io {
        path: PathBuf,
        action: &'static str,
        #[source]
        source: std::io::Error,
    },
    /// A `.nerp` file broke a rule of the format spec (spec/nerp-v1.md).
    #[error("{path}: invalid .nerp file: {kind}")]
    Format { path: PathBuf, kind: FormatError },
    /// The input model cannot be read or contains something nerp does not support.
    #[error("{path}: {what}")]
    Ingest { path: PathBuf, what: String },
    /// An option or argument is invalid; `option` names the flag.
    #[error("invalid value for {option}: {what}")]
    Usage { option: String, what: String },
    /// A dataset file is missing or malformed.
    #[error("dataset {path}: {what}")]
    Dataset { path: PathBuf, what: String },
    /// Training failed (e.g. the loss became NaN or diverged).
    #[error("training failed: {0}")]
    Training(String),
    /// A device was requested that is not available in this build or on this machine.
    #[error("device {device}: {what}")]
    Device { device: String, what: String },
    /// A GPU operation failed while regenerating (driver, cuBLAS or kernel error).
    #[error("GPU {device}: {what}")]
    Gpu { device: String, what: String },
    /// candle reported an error during a tensor computation.
    #[error("tensor computation: {0}")]
    Candle(#[from] candle_core::Error),
    /// tract could not build or run the model.
    #[error("inference engine: {0:#}")]
    Tract(tract_onnx::prelude::TractError),
    /// The model rebuilt from the file does not match what the file declares.
    #[error("model rebuild: {0}")]
    Rebuild(String),
    /// An operation would need more memory than the budget (`--max-memory`) allows; checked
    /// before the memory is allocated.
    #[error("{what} needs about {} ({need} bytes), more than the memory budget of {} ({limit} bytes); raise --max-memory if the machine has the memory", human_bytes(*need), human_bytes(*limit))]
    Budget { what: String, need: u64, limit: u64 },
    /// A model input or output holds NaN or an infinity.
    #[error("{what} contains {value} at element {index}; {advice}")]
    NonFinite { what: String, value: f32, index: usize, advice: String },
}

/// `bytes` as a short human-readable size (binary units).
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// The first value of `values` that is NaN or infinite, with its index.
pub fn first_non_finite(values: &[f32]) -> Option<(usize, f32)> {
    values.iter().position(|v| !v.is_finite()).map(|i| (i, values[i]))
}

/// Fails with [`Error::NonFinite`] if `values` holds NaN or an infinity.
pub fn check_finite(what: impl FnOnce() -> String, values: &[f32], advice: &str) -> Result<()> {
    match first_non_finite(values) {
        Some((index, value)) => Err(Error::NonFinite { what: what(), value, index, advice: advice.into() }),
        None => Ok(()),
    }
}

/// One variant per validation rule of the `.nerp` format (see spec/nerp-v1.md, "Validation").
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("file is {len} bytes, shorter than the {need}-byte preamble; the file is truncated or not a .nerp file")]
    TooShort { len: u64, need: u64 },
    #[error("bad magic bytes {found:02x?}: not a .nerp file")]
    BadMagic { found: [u8; 8] },
    #[error(
        "major version {found} is not supported by this reader (supports 1..={supported}); upgrade nerp"
    )]
    UnsupportedVersion { found: u16, supported: u16 },
    #[error("reserved flags {0:#x} are set; the file was written by a newer nerp or is corrupt")]
    UnknownFlags(u32),
    #[error("header length {len} exceeds the limit of {limit} bytes")]
    HeaderTooLarge { len: u64, limit: u64 },
    #[error("header ({len} bytes at offset {offset}) extends past the end of the file ({file_len} bytes); the file is truncated")]
    HeaderOutOfFile { offset: u64, len: u64, file_len: u64 },
    #[error(
        "header checksum mismatch (stored {stored:#010x}, computed {computed:#010x}); the header is corrupt"
    )]
    HeaderChecksum { stored: u32, computed: u32 },
    #[error("header is not valid JSON for this version: {0}")]
    HeaderJson(String),
    #[error("non-zero padding byte at file offset {offset}")]
    NonZeroPadding { offset: u64 },
    #[error("{what}: {count} exceeds the limit of {limit}")]
    LimitExceeded { what: String, count: u64, limit: u64 },
    #[error("section {index} ({kind}) starts at data offset {found}, expected {expected}: sections must follow each other in order, each aligned to 64 bytes, without holes or overlaps")]
    SectionOffset { index: usize, kind: String, found: u64, expected: u64 },
    #[error("section {index} ({kind}) ends at file offset {end}, past the end of the file ({file_len} bytes); the file is truncated")]
    SectionOutOfFile { index: usize, kind: String, end: u64, file_len: u64 },
    #[error("file has {extra} bytes after its last section; sections must cover the file exactly")]
    TrailingBytes { extra: u64 },
    #[error("section {index} ({kind}) checksum mismatch (stored {stored:#010x}, computed {computed:#010x}); the file is corrupt")]
    SectionChecksum { index: usize, kind: String, stored: u32, computed: u32 },
    #[error("arithmetic overflow computing {0}")]
    Overflow(String),
    #[error("tensor {tensor}: {what}")]
    Tensor { tensor: String, what: String },
    #[error("section {index}: {what}")]
    Section { index: usize, what: String },
    #[error("predictor: {0}")]
    Predictor(String),
    #[error("compressed header (format 3): {0}")]
    HeaderCompression(String),
    #[error("tensor {tensor}: quantized storage: {what}")]
    Quantization { tensor: String, what: String },
    /// Format 4: a `coded` section's step, row scales or entropy-coded stream (spec check 33).
    #[error("tensor {tensor}: coded storage: {what}")]
    Coded { tensor: String, what: String },
}

impl Error {
    /// Wraps an I/O error with the file it concerns.
    pub fn io(path: impl Into<PathBuf>, action: &'static str, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), action, source }
    }

    /// An invalid option value.
    pub fn usage(option: impl Into<String>, what: impl Into<String>) -> Self {
        Error::Usage { option: option.into(), what: what.into() }
    }

    /// Whether this error is a usage error: a bad option or an unavailable device (CLI exit code 2).
    pub fn is_usage(&self) -> bool {
        matches!(self, Error::Usage { .. } | Error::Device { .. })
    }
}

impl From<tract_onnx::prelude::TractError> for Error {
    fn from(e: tract_onnx::prelude::TractError) -> Self {
        Error::Tract(e)
    }
}
