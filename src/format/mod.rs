//! The `.nerp` container: constants, limits and the header types (spec/nerp-v1.md).
//!
//! Layout: a 32-byte little-endian preamble, a JSON header, zero padding up to a 64-byte
//! boundary, then the data section: the sections in header order, each starting at the previous
//! end rounded up to 64 bytes, the last one ending exactly at the end of the file.

pub mod budget;
pub mod codec;
pub mod entropy;
pub mod geometry;
pub mod metadata;
pub mod output;
pub mod predictor;
pub mod quant;
pub mod read;
pub mod write;

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

pub use read::{layer_plans, read_header, NerpFile};
pub use write::{write_atomic, FileBuilder};

/// Magic bytes at offset 0 (PNG-style: a high byte, the name, CR LF, EOF marker).
pub const MAGIC: [u8; 8] = *b"\x89NERP\r\n\x1a";
/// Newest major version: 4 (entropy-coded tensors and residuals; 3: compressed header, f16
/// scales, quantized predictor and tensors).
/// A file is written with the lowest major version that expresses it ([`major_for`]), so that
/// older readers open what they can.
pub const MAJOR: u16 = 4;
/// Oldest major version this reader opens.
pub const MIN_MAJOR: u16 = 1;
/// Minor version: bumped for additions an older reader of the same major version may ignore.
pub const MINOR: u16 = 0;
/// Length of the fixed preamble.
pub const PREAMBLE_LEN: u64 = 32;
/// Alignment of the data section and of every section in it.
pub const ALIGN: u64 = 64;

/// Hard limits a reader enforces before using any count or size from the header.
pub mod limits {
    /// Largest header (JSON) accepted; in format 3 also the largest the compressed header may
    /// decompress to (checked from the zstd frame header before allocating).
    pub const MAX_HEADER_LEN: u64 = 16 << 20;
    /// Most tensors in one file.
    pub const MAX_TENSORS: usize = 1 << 16;
    /// Most sections in one file.
    pub const MAX_SECTIONS: usize = 2 * MAX_TENSORS + 16;
    /// Largest tensor rank.
    pub const MAX_RANK: usize = 8;
    /// Largest element count of one tensor.
    pub const MAX_TENSOR_ELEMENTS: u64 = 1 << 32;
    /// Largest decoded size of one section.
    pub const MAX_DECODED_SECTION: u64 = 1 << 34;
    /// Largest length of a tensor name or metadata key/value.
    pub const MAX_NAME_LEN: usize = 4096;
    /// Largest predictor hidden width.
    pub const MAX_HIDDEN: u32 = 1 << 14;
    /// Most positional-embedding levels.
    pub const MAX_LEVELS: u32 = 256;
    /// Largest magnitude of a stored scale or predictor parameter. Trained values are below
    /// 10^3 (ResNet-20/56 predictors: |w| < 10, scales < 1); anything near f32's range only
    /// serves to overflow regeneration, which is checked anyway (spec check 31).
    pub const MAX_ABS_VALUE: f32 = 1e30;
    /// Largest zstd window a section's frame may need: zstd's own default decoder limit
    /// (2^27, 128 MiB); the reference writer's level-19 frames use at most 2^23.
    pub const MAX_ZSTD_WINDOW: u64 = 1 << 27;
}

/// The JSON header: everything needed to interpret the data section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// What the file was compressed from and how to rebuild it.
    pub source: Source,
    /// The predictor network, absent when no tensor is predicted.
    pub predictor: Option<PredictorSpec>,
    /// Every tensor of the source model, in source order.
    pub tensors: Vec<TensorEntry>,
    /// The sections of the data section, in file order.
    pub sections: Vec<SectionEntry>,
    /// Free-form string metadata (e.g. `preprocess`, safetensors `__metadata__` entries).
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

impl Header {
    /// Names of the predicted tensors, in header order.
    pub fn predicted_names(&self) -> Vec<&str> {
        let predicted = self.tensors.iter().filter(|t| matches!(t.storage, Storage::Predicted { .. }));
        predicted.map(|t| t.name.as_str()).collect()
    }
}

/// The kind of model a file was compressed from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    Onnx,
    Safetensors,
}

/// The source model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Source {
    pub kind: SourceKind,
    /// Size of the source file in bytes (for ratios).
    pub file_bytes: u64,
    /// Section holding the ONNX graph without its tensor data (ONNX sources only).
    pub skeleton: Option<usize>,
}

/// Element types of stored tensors (little-endian).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DType {
    F32,
    F16,
    Bf16,
    F64,
    I8,
    U8,
    I16,
    U16,
    I32,
    U32,
    I64,
    U64,
    Bool,
}

impl DType {
    /// The spec's name (section 3): `f32`, `f16`, `bf16`, ….
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::Bf16 => "bf16",
            DType::F64 => "f64",
            DType::I8 => "i8",
            DType::U8 => "u8",
            DType::I16 => "i16",
            DType::U16 => "u16",
            DType::I32 => "i32",
            DType::U32 => "u32",
            DType::I64 => "i64",
            DType::U64 => "u64",
            DType::Bool => "bool",
        }
    }

    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            DType::I8 | DType::U8 | DType::Bool => 1,
            DType::F16 | DType::Bf16 | DType::I16 | DType::U16 => 2,
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::F64 | DType::I64 | DType::U64 => 8,
        }
    }

    /// Whether values of this type can be predicted (floating point).
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::Bf16 | DType::F64)
    }
}

/// One tensor of the source model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TensorEntry {
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<u64>,
    pub storage: Storage,
}

/// How a tensor's values are stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Storage {
    /// The values are in a `tensor` section, in `dtype`, row-major.
    Raw { section: usize },
    /// The values are regenerated by the predictor, one 3×3 block per coordinate; `layout`
    /// says how the tensor is cut into blocks (spec section 5.1).
    Predicted {
        /// Index of this tensor among the predicted ones (the `l` coordinate).
        layer: u32,
        /// `permutation` section: chain position → kernel index `f·C + c`.
        permutation: usize,
        /// Optional `scales` section: one value per grid row the prediction is multiplied by.
        scales: Option<usize>,
        /// How the tensor maps to blocks; absent means `conv` (format 2.0; v1 files omit it).
        #[serde(default, skip_serializing_if = "Layout::is_conv")]
        layout: Layout,
        /// Element type of the `scales` section; absent means `f32` (format 3 adds `f16`).
        #[serde(default, skip_serializing_if = "ScaleDtype::is_f32")]
        scale_dtype: ScaleDtype,
        /// Format 3: a quantized correction added to the (scaled) prediction (spec section
        /// 5.3b); absent means none.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        residual: Option<Residual>,
    },
    /// Format 3: the values quantized by [`quant`] (symmetric, `bits` bits, one f16 scale per
    /// `group` contiguous values; `group` divides the row length, spec section 4.3) in a
    /// `quantized` section. Float tensors only.
    ///
    /// Format 4 adds `zero_point`: one f16 scale and one f16 minimum per group, unsigned codes
    /// `0..2^bits` read back as `q·s + m` ([`quant::decode_zero_point`]); absent means false.
    Quantized {
        bits: u8,
        group: u64,
        #[serde(default, skip_serializing_if = "is_false")]
        zero_point: bool,
        section: usize,
    },
    /// Format 3: a float tensor's values stored in the narrower float `to` (`f16` or `bf16`,
    /// round-to-nearest-even) in a `tensor` section.
    Cast { to: DType, section: usize },
    /// Format 4: the values as integer codes times a step size (one per tensor, optionally
    /// times an f16 scale per row), the codes entropy-coded (spec sections 4.4 and 4.5), in a
    /// `coded` section. Every code is within `±max_code`. Float tensors only.
    Coded {
        max_code: u32,
        #[serde(default, skip_serializing_if = "is_false")]
        row_scales: bool,
        section: usize,
    },
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The residual of a predicted tensor: `value − prediction` (row-major in the tensor's own
/// element order) stored like a tensor of its shape. The predictor takes the smooth part of the
/// weights, so the residual is smaller than the weight and needs fewer bits for the same error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "ResidualRepr", into = "ResidualRepr")]
pub enum Residual {
    /// Format 3: quantized like [`Storage::Quantized`] (`bits` bits, one f16 scale per `group`
    /// values of a row) in a `quantized` section; its JSON has no `kind`.
    Quantized { bits: u8, group: u64, section: usize },
    /// Format 4: like [`Storage::Coded`] in a `coded` section (`"kind": "coded"`).
    Coded { max_code: u32, row_scales: bool, section: usize },
}

impl Residual {
    /// The section holding it.
    pub fn section(&self) -> usize {
        match *self {
            Residual::Quantized { section, .. } | Residual::Coded { section, .. } => section,
        }
    }

    /// The storage a tensor of its own would have (the residual is decoded as one).
    pub fn as_storage(&self) -> Storage {
        match *self {
            Residual::Quantized { bits, group, section } => {
                Storage::Quantized { bits, group, zero_point: false, section }
            }
            Residual::Coded { max_code, row_scales, section } => {
                Storage::Coded { max_code, row_scales, section }
            }
        }
    }
}

/// The JSON form of a [`Residual`]: format 3's members (no `kind`), or `kind: "coded"`.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ResidualRepr {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    kind: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    bits: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    group: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    max_code: Option<u32>,
    #[serde(default, skip_serializing_if = "is_false")]
    row_scales: bool,
    section: usize,
}

impl TryFrom<ResidualRepr> for Residual {
    type Error = String;

    fn try_from(r: ResidualRepr) -> Result<Self, String> {
        match (r.kind.as_deref(), r.bits, r.group, r.max_code) {
            (None, Some(bits), Some(group), None) if !r.row_scales => {
                Ok(Residual::Quantized { bits, group, section: r.section })
            }
            (Some("coded"), None, None, Some(max_code)) => {
                Ok(Residual::Coded { max_code, row_scales: r.row_scales, section: r.section })
            }
            _ => Err("a residual is {bits, group, section} or {kind: \"coded\", max_code, section}".into()),
        }
    }
}

impl From<Residual> for ResidualRepr {
    fn from(r: Residual) -> Self {
        match r {
            Residual::Quantized { bits, group, section } => ResidualRepr {
                kind: None,
                bits: Some(bits),
                group: Some(group),
                max_code: None,
                row_scales: false,
                section,
            },
            Residual::Coded { max_code, row_scales, section } => ResidualRepr {
                kind: Some("coded".into()),
                bits: None,
                group: None,
                max_code: Some(max_code),
                row_scales,
                section,
            },
        }
    }
}

/// Element type of a predicted tensor's `scales` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ScaleDtype {
    #[default]
    F32,
    /// Format 3. On the ResNet-20 the accuracy is unchanged (docs/results/format3.md).
    F16,
}

impl ScaleDtype {
    /// Whether this is the default (formats 1 and 2).
    pub fn is_f32(&self) -> bool {
        *self == ScaleDtype::F32
    }

    /// The tensor element type.
    pub fn dtype(self) -> DType {
        match self {
            ScaleDtype::F32 => DType::F32,
            ScaleDtype::F16 => DType::F16,
        }
    }
}

/// Row length of a tensor for row-wise quantization: `numel / shape[0]` for rank ≥ 2, else
/// `numel` (a vector or scalar is one row).
pub fn row_len(shape: &[u64]) -> Option<u64> {
    let numel = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d))?;
    match shape {
        [first, _, ..] => numel.checked_div(*first),
        _ => Some(numel),
    }
}

/// How a predicted tensor is cut into 3×3 blocks (spec section 5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// A kernel `[F, C, spatial…]`: each `kh×kw` kernel (`kh` = product of all spatial dims
    /// but the last, `kw` = the last) is cut into centred 3×3 tiles; block `(f, c·T + t)`.
    #[default]
    Conv,
    /// A matrix `[R, K]` (leading dims flattened into `R`): each row is cut into
    /// `ceil(K/9)` strips of 9 values; block `(r, g)`.
    Matrix,
}

impl Layout {
    /// Whether this is the default (v1) layout.
    pub fn is_conv(&self) -> bool {
        *self == Layout::Conv
    }

    /// The name used in messages and in the spec.
    pub fn name(self) -> &'static str {
        match self {
            Layout::Conv => "conv",
            Layout::Matrix => "matrix",
        }
    }
}

/// What a section holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SectionKind {
    /// ONNX `ModelProto` bytes with the data of extracted tensors removed.
    Skeleton,
    /// Predictor weights.
    Predictor,
    /// A raw tensor's values.
    Tensor,
    /// A bit-packed permutation.
    Permutation,
    /// Per-row scales (f32, or f16 in format 3).
    Scales,
    /// Format 3: a quantized tensor (group scales, then packed values).
    Quantized,
    /// Format 4: an entropy-coded tensor (step, optional row scales, then the coded stream).
    Coded,
}

impl SectionKind {
    /// The name used in messages and in the spec.
    pub fn name(self) -> &'static str {
        match self {
            SectionKind::Skeleton => "skeleton",
            SectionKind::Predictor => "predictor",
            SectionKind::Tensor => "tensor",
            SectionKind::Permutation => "permutation",
            SectionKind::Scales => "scales",
            SectionKind::Quantized => "quantized",
            SectionKind::Coded => "coded",
        }
    }
}

/// How a section's bytes encode its decoded content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Encoding {
    /// Stored as is.
    Plain,
    /// One zstd frame.
    Zstd,
    /// Bytes regrouped by position within each element (all byte 0s, then all byte 1s, …),
    /// then one zstd frame. `element` is the element size.
    ZstdBytegroup { element: u8 },
}

/// One section of the data section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SectionEntry {
    pub kind: SectionKind,
    /// Offset from the start of the data section; a multiple of [`ALIGN`].
    pub offset: u64,
    /// Stored length in bytes.
    pub length: u64,
    pub encoding: Encoding,
    /// Length after decoding.
    pub decoded_length: u64,
    /// CRC-32 (IEEE) of the stored bytes.
    pub crc32: u32,
}

/// Kernel ordering used to smooth the target (method.md §1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Ordering {
    /// Kernels in their natural `f·C + c` order.
    None,
    /// Chain inside each filter, filters in natural order.
    Infilter,
    /// One chain over all kernels of a layer.
    #[default]
    Crossfilter,
}

/// Storage precision of the predictor weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WeightDtype {
    F32,
    F16,
    Bf16,
    /// Format 3: weights int8, one f16 scale per output unit; biases f16 (spec section 5.2).
    Int8,
    /// Format 3: as `int8` with 4-bit values, two per byte.
    Int4,
}

impl WeightDtype {
    /// The float element type of every parameter, `None` for the quantized dtypes.
    pub fn float(self) -> Option<DType> {
        match self {
            WeightDtype::F32 => Some(DType::F32),
            WeightDtype::F16 => Some(DType::F16),
            WeightDtype::Bf16 => Some(DType::Bf16),
            WeightDtype::Int8 | WeightDtype::Int4 => None,
        }
    }

    /// Bits per quantized weight, `None` for the float dtypes.
    pub fn bits(self) -> Option<u8> {
        match self {
            WeightDtype::Int8 => Some(8),
            WeightDtype::Int4 => Some(4),
            _ => None,
        }
    }

    /// The name used in the header and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            WeightDtype::F32 => "f32",
            WeightDtype::F16 => "f16",
            WeightDtype::Bf16 => "bf16",
            WeightDtype::Int8 => "int8",
            WeightDtype::Int4 => "int4",
        }
    }
}

/// Sinusoidal positional embedding: for each coordinate `p` and level `k`,
/// `sin(π·p·base^k)` and `cos(π·p·base^k)`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Embedding {
    pub base: f64,
    pub levels: u32,
}

/// The predictor network as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PredictorSpec {
    /// Architecture name; v1 knows only `mlp_relu` (5 linear layers, ReLU, 9 outputs).
    pub arch: String,
    pub hidden: u32,
    pub embedding: Embedding,
    pub dtype: WeightDtype,
    /// The ordering the permutations were built with (informational).
    pub ordering: Ordering,
    /// Number of predicted tensors (`L` in the coordinate `l/L`).
    pub layers: u32,
    /// The `predictor` section.
    pub section: usize,
}

/// Rounds `n` up to a multiple of [`ALIGN`], `None` on overflow.
pub fn align_up(n: u64) -> Option<u64> {
    n.checked_add(ALIGN - 1).map(|v| v / ALIGN * ALIGN)
}

/// Where a section of `kind` starts when the previous one ends at `end` (spec section 2):
/// a `coded` section right there (it is decoded, never read in place; on the shared ResNet-20
/// at 30× the 44 gaps were 1,464 bytes, 4% of the file), every other one at the next multiple
/// of [`ALIGN`]. `None` on overflow.
pub fn section_start(kind: SectionKind, end: u64) -> Option<u64> {
    match kind {
        SectionKind::Coded => Some(end),
        _ => align_up(end),
    }
}

/// Why a tensor cannot be stored in format 1 (the `major == 1` rules of spec check 23), or
/// `None` when it can: a predicted tensor of rank 4 `[F≥1, C≥1, kh, kw]` with `kh, kw ≤ 3` and
/// the `conv` layout. The one rule behind the major version, for writer and reader.
pub fn needs_format_2(t: &TensorEntry) -> Option<String> {
    let Storage::Predicted { layout, .. } = t.storage else { return None };
    let [f, c, kh, kw] = t.shape[..] else {
        return Some(format!("predicted tensors have rank 4 in format 1, found shape {:?}", t.shape));
    };
    if f == 0 || c == 0 || !(1..=3).contains(&kh) || !(1..=3).contains(&kw) {
        return Some(format!("shape {:?} is not [F≥1, C≥1, 1..3, 1..3] (format 1)", t.shape));
    }
    if layout != Layout::Conv {
        return Some(format!("layout {} needs format 2, the file says 1", layout.name()));
    }
    None
}

/// Why a tensor cannot be stored in format 1 or 2 (the `major < 3` rules of spec check 23),
/// or `None`: quantized and cast storage, f16 scales and residuals are format 3.
pub fn needs_format_3(t: &TensorEntry) -> Option<String> {
    match t.storage {
        Storage::Quantized { .. } => Some("quantized storage needs format 3".into()),
        Storage::Cast { .. } => Some("cast storage needs format 3".into()),
        Storage::Predicted { scale_dtype: ScaleDtype::F16, .. } => Some("f16 scales need format 3".into()),
        Storage::Predicted { residual: Some(_), .. } => Some("a residual needs format 3".into()),
        _ => None,
    }
}

/// Why a tensor cannot be stored in formats 1 to 3, or `None`: coded storage and coded
/// residuals are format 4.
pub fn needs_format_4(t: &TensorEntry) -> Option<String> {
    match t.storage {
        Storage::Coded { .. } => Some("coded storage needs format 4".into()),
        Storage::Quantized { zero_point: true, .. } => Some("zero points need format 4".into()),
        Storage::Predicted { residual: Some(Residual::Coded { .. }), .. } => {
            Some("a coded residual needs format 4".into())
        }
        _ => None,
    }
}

/// Why a predictor cannot be stored in format 1 or 2 (spec check 20), or `None`.
pub fn predictor_needs_format_3(p: &PredictorSpec) -> Option<String> {
    p.dtype.bits().map(|_| format!("predictor dtype {} needs format 3", p.dtype.name()))
}

/// The lowest major version that expresses a file: 3 if the predictor or a tensor
/// [`needs_format_3`] or a permutation is the identity (an empty section), else 2 if a tensor
/// [`needs_format_2`], else 1 — so that files an older reader can open are written in its version.
pub fn major_for(h: &Header) -> u16 {
    let tensors = &h.tensors;
    let identity = |t: &TensorEntry| match t.storage {
        Storage::Predicted { permutation, .. } => {
            h.sections.get(permutation).is_some_and(|s| s.decoded_length == 0)
        }
        _ => false,
    };
    let predicted = tensors.iter().filter(|t| matches!(t.storage, Storage::Predicted { .. })).count();
    let unused_layers = h.predictor.as_ref().is_some_and(|p| p.layers as usize != predicted);
    if tensors.iter().any(|t| needs_format_4(t).is_some()) {
        4
    } else if tensors.iter().any(|t| needs_format_3(t).is_some() || identity(t))
        || h.predictor.as_ref().and_then(predictor_needs_format_3).is_some()
        || unused_layers
    {
        3
    } else if tensors.iter().any(|t| needs_format_2(t).is_some()) {
        2
    } else {
        1
    }
}
