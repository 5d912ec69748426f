//! Per-tensor storage codecs: how a float tensor that is not predicted — or a predicted
//! tensor's residual, `value − prediction` — is stored. A [`Codec`] owns its name, its
//! encoding (data-aware where the compressor has its layer's input moments), its decoding (the
//! reader's, spec sections 4.3 and 5.3a), its cost in bytes and its storage entry; the
//! per-tensor choice, the writer, the reader, `nerp inspect` and the compressor's report all
//! go through it. One codec is one file here (and its section of the spec): [`raw`], [`cast`],
//! [`int`], [`coded`].

pub mod cast;
pub mod coded;
#[cfg(feature = "compress")]
pub mod gptq;
pub mod int;
pub mod raw;

use crate::format::{DType, FileBuilder, Residual, Storage};
use std::fmt;

/// How a float tensor (or a residual) is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(into = "String")]
pub enum Codec {
    /// As is (byte-grouped zstd): lossless.
    #[default]
    Raw,
    /// f32/f64 values cast to `f16` or `bf16` (format 3); other dtypes stay raw.
    Cast(DType),
    /// Quantized to this many bits (2..=8), one f16 scale per row or group (format 3).
    Int(u8),
    /// Uniform steps of rung `k` ([`coded::step`]: the tensor's RMS times `2^(k/4)`), the codes
    /// entropy-coded (format 4).
    Coded(i8),
}

impl Codec {
    pub const F16: Codec = Codec::Cast(DType::F16);
    pub const BF16: Codec = Codec::Cast(DType::Bf16);
    pub const INT8: Codec = Codec::Int(8);
    pub const INT6: Codec = Codec::Int(6);
    pub const INT5: Codec = Codec::Int(5);
    pub const INT4: Codec = Codec::Int(4);
    pub const INT3: Codec = Codec::Int(3);
    pub const INT2: Codec = Codec::Int(2);
    /// `--raw-codec coded`: steps of an eighth of the tensor's RMS (about 5 bits per value).
    pub const CODED: Codec = Codec::Coded(-12);

    /// Every codec a user can name (`--raw-codec`), in the order of [`Self::CHOICES`] with
    /// bf16 after f16.
    pub const ALL: [Codec; 9] = [
        Codec::Raw,
        Codec::F16,
        Codec::BF16,
        Codec::INT8,
        Codec::INT6,
        Codec::INT5,
        Codec::INT4,
        Codec::INT3,
        Codec::INT2,
    ];

    /// The codecs the per-tensor choice considers, more bytes first (bf16 is left out: on
    /// weights of ordinary range it has f16's size and 8× its error). Int6 and int5 fill the
    /// gap between int8 and int4 (error ×16 for half the bytes): without them, the PP-OCR
    /// recognizer's CTC head (29% of its weights) had to take int4 at half the fp16 file.
    pub const CHOICES: [Codec; 8] = [
        Codec::Raw,
        Codec::F16,
        Codec::INT8,
        Codec::INT6,
        Codec::INT5,
        Codec::INT4,
        Codec::INT3,
        Codec::INT2,
    ];

    /// Residual codecs the per-tensor choice tries on predicted tensors: int2…int4 (an int8
    /// residual costs as much as int8 alone).
    pub const RESIDUALS: [Codec; 3] = [Codec::INT2, Codec::INT3, Codec::INT4];

    /// The name on the command line and in reports (`raw`, `f16`, `int4`, …).
    pub fn name(self) -> String {
        match self {
            Codec::Raw => "raw".into(),
            Codec::Cast(to) => to.name().into(),
            Codec::Int(bits) => format!("int{bits}"),
            Codec::Coded(_) => "coded".into(),
        }
    }

    /// The codec of a stored tensor that is not predicted, or of a predicted tensor's
    /// residual (`None`: a predicted tensor without one).
    pub fn of(storage: &Storage) -> Option<Codec> {
        match storage {
            Storage::Raw { .. } => Some(Codec::Raw),
            Storage::Cast { to, .. } => Some(Codec::Cast(*to)),
            Storage::Quantized { bits, .. } => Some(Codec::Int(*bits)),
            // The file stores the step, not the rung it was chosen from.
            Storage::Coded { .. } => Some(Codec::CODED),
            Storage::Predicted { residual, .. } => {
                residual.map(|r| Codec::of(&r.as_storage()).expect("stored"))
            }
        }
    }

    /// Bits per value of a quantizing codec.
    pub fn bits(self) -> Option<u8> {
        match self {
            Codec::Int(bits) => Some(bits),
            _ => None,
        }
    }

    /// Whether this codec can store a residual (a correction added to a prediction).
    pub fn stores_residuals(self) -> bool {
        matches!(self, Codec::Int(_) | Codec::Coded(_))
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl From<Codec> for String {
    fn from(c: Codec) -> String {
        c.name()
    }
}

impl std::str::FromStr for Codec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        if s == "coded" {
            return Ok(Codec::CODED);
        }
        Codec::ALL.into_iter().find(|c| c.name() == s).ok_or_else(|| {
            let names: Vec<String> = Codec::ALL.iter().map(|c| c.name()).collect();
            format!("unknown codec {s:?}; one of {}, coded", names.join(", "))
        })
    }
}

/// Whether a tensor may get a lossy codec: float, rank ≥ 2, not empty. The others (biases,
/// norms, integer tensors) stay raw: they are few bytes, and quantizing them is what made
/// `--raw-codec int4` lose 2.9 points on ResNet-20.
pub fn eligible(dtype: DType, shape: &[u64], bytes: usize) -> bool {
    dtype.is_float() && shape.len() >= 2 && bytes > 0
}

/// A tensor's values as a codec stored them: what its storage entry records and its section's
/// decoded content (written by [`Encoded::store`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Encoded {
    /// The source bytes (lossless; also what an ineligible tensor keeps).
    Raw,
    /// Cast to `to` (f16 or bf16): `numel` little-endian values.
    Cast { to: DType, bytes: Vec<u8> },
    /// Quantized (spec section 4.3): the group scales, then the packed codes.
    Int { bits: u8, group: u64, bytes: Vec<u8> },
    /// Coded (spec section 4.5): the step (and row scales), then the entropy-coded codes of
    /// rows of `row` values.
    Coded { rung: i8, max_code: u32, row_scales: bool, row: u64, bytes: Vec<u8> },
}

impl Encoded {
    /// The codec that gave this encoding.
    pub fn codec(&self) -> Codec {
        match self {
            Encoded::Raw => Codec::Raw,
            Encoded::Cast { to, .. } => Codec::Cast(*to),
            Encoded::Int { bits, .. } => Codec::Int(*bits),
            Encoded::Coded { rung, .. } => Codec::Coded(*rung),
        }
    }

    /// The bytes the per-tensor choice counts: the section's content before its encoding
    /// (`source_bytes` for raw). Quantized codes hardly compress; raw f32 compresses by about
    /// 10%, so raw is slightly overcounted.
    pub fn cost(&self, source_bytes: u64) -> u64 {
        match self {
            Encoded::Raw => source_bytes,
            Encoded::Cast { bytes, .. } | Encoded::Int { bytes, .. } | Encoded::Coded { bytes, .. } => {
                bytes.len() as u64
            }
        }
    }

    /// The f32 values the file gives back for a tensor of `numel` values of `dtype` whose
    /// source bytes are `source` — through the reader's own decoding ([`decode`]).
    pub fn values(&self, dtype: DType, source: &[u8], numel: usize) -> Vec<f32> {
        match self {
            Encoded::Raw => raw::values(dtype, source),
            Encoded::Cast { to, bytes } => cast::decode(*to, bytes, numel).expect("own encoding decodes"),
            Encoded::Int { bits, group, bytes } => {
                int::decode(*bits, *group, bytes, numel).expect("own encoding decodes")
            }
            Encoded::Coded { max_code, row_scales, row, bytes, .. } => {
                coded::decode(bytes, numel, *row as usize, *max_code, *row_scales)
                    .expect("own encoding decodes")
            }
        }
    }
}

impl Encoded {
    /// Writes the section of tensor `t` stored with this encoding; returns its storage entry
    /// and the section's index.
    pub fn store(&self, b: &mut FileBuilder, t: Tensor) -> (Storage, usize) {
        match self {
            Encoded::Raw => raw::store(b, t.dtype, t.source),
            Encoded::Cast { to, bytes } => cast::store(b, *to, bytes),
            Encoded::Int { bits, group, bytes } => int::store(b, *bits, *group, bytes),
            Encoded::Coded { max_code, row_scales, bytes, .. } => {
                coded::store(b, *max_code, *row_scales, bytes)
            }
        }
    }

    /// Writes this encoding of a residual; `None` for a codec that stores no residuals.
    pub fn store_residual(&self, b: &mut FileBuilder) -> Option<Residual> {
        match self {
            Encoded::Int { bits, group, bytes } => Some(int::store_residual(b, *bits, *group, bytes)),
            Encoded::Coded { max_code, row_scales, bytes, .. } => {
                Some(coded::store_residual(b, *max_code, *row_scales, bytes))
            }
            Encoded::Raw | Encoded::Cast { .. } => None,
        }
    }
}

/// The f32 values of a tensor of `shape` stored `quantized`, `coded` or `cast` (spec sections
/// 4.3, 4.5 and 5.3a): its section's decoded content `bytes`. The codes, steps and scales are
/// checked (spec checks 32 and 33); `Err` says what is wrong.
pub fn decode(storage: &Storage, bytes: &[u8], shape: &[u64]) -> Result<Vec<f32>, String> {
    let numel = shape.iter().product::<u64>() as usize;
    match *storage {
        Storage::Quantized { bits, group, .. } => int::decode(bits, group, bytes, numel),
        Storage::Coded { max_code, row_scales, .. } => {
            let row = crate::format::row_len(shape).ok_or("shape overflows")? as usize;
            coded::decode(bytes, numel, row, max_code, row_scales)
        }
        Storage::Cast { to, .. } => cast::decode(to, bytes, numel),
        Storage::Raw { .. } | Storage::Predicted { .. } => {
            Err("raw and predicted tensors are not decoded by a codec".into())
        }
    }
}

/// What the compressor knows of a tensor when encoding it.
#[derive(Debug, Clone, Copy)]
pub struct Tensor<'a> {
    pub name: &'a str,
    pub dtype: DType,
    pub shape: &'a [u64],
    /// Its source bytes (little-endian `dtype`, row-major).
    pub source: &'a [u8],
}

impl<'a> Tensor<'a> {
    /// Whether a lossy codec applies (see [`eligible`]).
    pub fn eligible(&self) -> bool {
        eligible(self.dtype, self.shape, self.source.len())
    }

    /// Number of values.
    pub fn numel(&self) -> usize {
        self.source.len() / self.dtype.size()
    }

    /// The source values as f32 (float tensors only).
    pub fn values(&self) -> Vec<f32> {
        raw::values(self.dtype, self.source)
    }
}

#[cfg(feature = "compress")]
impl Codec {
    /// Encodes `t` (eligible tensors only; the others, and casts of tensors that are not
    /// f32/f64, stay [`Encoded::Raw`]). With the input moments `h` of its layer
    /// ([`gptq::Moments`]) a quantization rounds data-aware. Fails, naming the tensor, when a
    /// value cannot be quantized (non-finite, beyond f16 scales).
    pub fn encode(self, t: Tensor, h: Option<&gptq::Moments>) -> crate::Result<Encoded> {
        if !t.eligible() {
            return Ok(Encoded::Raw);
        }
        match self {
            Codec::Raw => Ok(Encoded::Raw),
            Codec::Cast(to) => Ok(cast::encode(t, to)),
            Codec::Int(bits) => int::encode(t, &t.values(), bits, h),
            Codec::Coded(k) => coded::encode(t, &t.values(), k, h),
        }
    }

    /// Encodes the residual `original − predicted` of predicted tensor `t` (spec section
    /// 5.3b; data-aware with `h`, which sees only the residual's error: the prediction is
    /// fixed). Returns the encoding and the values the file regenerates, `predicted` plus the
    /// decoded residual.
    pub fn encode_residual(
        self,
        t: Tensor,
        original: &[f32],
        predicted: &[f32],
        h: Option<&gptq::Moments>,
    ) -> crate::Result<(Encoded, Vec<f32>)> {
        let r: Vec<f32> = original.iter().zip(predicted).map(|(a, b)| a - b).collect();
        let encoded = match self {
            Codec::Int(bits) => int::encode(t, &r, bits, h)?,
            Codec::Coded(k) => coded::encode(t, &r, k, h)?,
            _ => return Err(crate::Error::usage("--residual", format!("{self} cannot store a residual"))),
        };
        let back = encoded.values(DType::F32, &[], r.len());
        Ok((encoded, predicted.iter().zip(back).map(|(p, r)| p + r).collect()))
    }
}

#[cfg(all(test, feature = "compress"))]
mod tests {
    use super::*;
    use crate::format::{codec::from_f32, quant};

    fn matrix(values: &[f32], rows: u64) -> (Vec<u8>, Vec<u64>) {
        (from_f32(DType::F32, values).unwrap(), vec![rows, values.len() as u64 / rows])
    }

    #[test]
    fn names_parse_back() {
        for c in Codec::ALL {
            assert_eq!(c.name().parse::<Codec>(), Ok(c));
        }
        assert!("int9".parse::<Codec>().unwrap_err().contains("int8"));
    }

    #[test]
    fn every_codec_round_trips_and_more_bits_mean_less_error() {
        // A 64 × 256 matrix of bell-shaped values (sums of uniforms), as weights are.
        let mut rng = crate::compress::train::Rng::new(3);
        let values: Vec<f32> =
            (0..64 * 256).map(|_| ((0..4).map(|_| rng.uniform()).sum::<f64>() - 2.0) as f32).collect();
        let (source, shape) = matrix(&values, 64);
        let t = Tensor { name: "w", dtype: DType::F32, shape: &shape, source: &source };
        let norm = values.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
        let mut last = (0.0, 0);
        for codec in Codec::CHOICES {
            let e = codec.encode(t, None).unwrap();
            assert_eq!(e.codec(), codec);
            let back = e.values(t.dtype, t.source, t.numel());
            assert_eq!(back.len(), values.len(), "{codec}");
            let err =
                values.iter().zip(&back).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>().sqrt() / norm;
            if let Encoded::Int { bits, group, bytes } = &e {
                // The reader's decoding gives the same values.
                let storage = Storage::Quantized { bits: *bits, group: *group, section: 0 };
                assert_eq!(decode(&storage, bytes, &shape).unwrap(), back);
                // Each value within half a step of its group's scale, or clipped (MSE scales).
                let read = quant::decode(bytes, values.len(), *group as usize, *bits, f32::MAX).unwrap();
                for (k, (a, b)) in values.iter().zip(&back).enumerate() {
                    let s = read.scales[k / *group as usize].to_f32();
                    assert!((a - b).abs() <= 0.5 * s * 1.0001 || a.abs() > b.abs(), "{codec}: {a} vs {b}");
                }
            }
            // In CHOICES order the bytes fall and the error grows.
            let len = e.cost(source.len() as u64);
            if codec != Codec::Raw {
                assert!(len < last.1 && err > last.0, "{codec}: {len} bytes, error {err} after {last:?}");
            }
            last = (err, len);
        }
    }

    #[test]
    fn ineligible_tensors_and_narrow_casts_stay_raw() {
        let (source, _) = matrix(&[1.0, 2.0, 3.0, 4.0], 1);
        let bias = Tensor { name: "b", dtype: DType::F32, shape: &[4], source: &source };
        assert_eq!(Codec::INT4.encode(bias, None).unwrap(), Encoded::Raw);
        let half = from_f32(DType::F16, &[1.0, 2.0, 3.0, 4.0]).unwrap();
        let w = Tensor { name: "w", dtype: DType::F16, shape: &[2, 2], source: &half };
        assert_eq!(Codec::F16.encode(w, None).unwrap(), Encoded::Raw);
        assert!(matches!(Codec::INT8.encode(w, None).unwrap(), Encoded::Int { bits: 8, .. }));
    }

    proptest::proptest! {
        /// A coded tensor round-trips at any rung: the reader's decoding gives the encoder's
        /// values, each within half a step of the original (rounded to nearest), the cost is
        /// the section's length, and encoding twice gives the same bytes.
        #[test]
        fn coded_round_trips_at_any_step(
            rows in 1u64..5,
            row in 1u64..50,
            k in -40i8..20,
            seed in 0u64..1000,
        ) {
            let n = (rows * row) as usize;
            let values: Vec<f32> = (0..n as u64)
                .map(|i| (((i + 1).wrapping_mul(2_654_435_761) ^ seed) % 2001) as f32 / 700.0 - 1.4)
                .collect();
            let (source, shape) = matrix(&values, rows);
            let t = Tensor { name: "w", dtype: DType::F32, shape: &shape, source: &source };
            let Ok(e) = Codec::Coded(k).encode(t, None) else {
                // Only a step too small for MAX_CODE codes may fail.
                let rms = (values.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / n as f64).sqrt();
                let largest = values.iter().fold(0f32, |a, v| a.max(v.abs()));
                proptest::prop_assert!(largest / coded::step(rms, k) > crate::format::entropy::MAX_CODE as f32);
                return Ok(());
            };
            proptest::prop_assert_eq!(&e, &Codec::Coded(k).encode(t, None).unwrap());
            let Encoded::Coded { max_code, row_scales, ref bytes, .. } = e else { panic!("not coded") };
            let back = e.values(t.dtype, t.source, n);
            let storage = Storage::Coded { max_code, row_scales, section: 0 };
            proptest::prop_assert_eq!(&decode(&storage, bytes, &shape).unwrap(), &back);
            proptest::prop_assert_eq!(e.cost(source.len() as u64), bytes.len() as u64);
            let step = f32::from_le_bytes(bytes[..4].try_into().unwrap());
            for (a, b) in values.iter().zip(&back) {
                proptest::prop_assert!((a - b).abs() <= 0.5 * step * 1.0001, "{} vs {} (step {})", a, b, step);
            }
        }

        /// A residual round-trips: the file's values are the prediction plus the decoded
        /// residual, each within half of its group's largest residual of the original.
        #[test]
        fn a_residual_round_trips_within_half_its_groups_largest_residual(
            rows in 1usize..4,
            row in 1usize..40,
            bits in 2u8..=8,
            seed in 0u64..1000,
        ) {
            let n = rows * row;
            let noise = |s: u64| -> Vec<f32> {
                (0..n as u64).map(|i| ((((i + 1) * 2_654_435_761) ^ s) % 2001) as f32 / 1000.0 - 1.0).collect()
            };
            let original = noise(seed);
            let predicted: Vec<f32> = noise(seed + 7).iter().zip(&original).map(|(e, w)| w + 0.3 * e).collect();
            let (source, shape) = matrix(&original, rows as u64);
            let t = Tensor { name: "w", dtype: DType::F32, shape: &shape, source: &source };
            let (encoded, values) = Codec::Int(bits).encode_residual(t, &original, &predicted, None).unwrap();
            let Encoded::Int { bits: b, group, ref bytes } = encoded else { panic!("not quantized") };
            proptest::prop_assert_eq!(b, bits);
            proptest::prop_assert_eq!(bytes.len() as u64, encoded.cost(source.len() as u64));
            let decoded = encoded.values(DType::F32, &[], n);
            for g in 0..n / group as usize {
                let range = g * group as usize..(g + 1) * group as usize;
                let largest = range.clone().map(|i| (original[i] - predicted[i]).abs()).fold(0f32, f32::max);
                for i in range {
                    proptest::prop_assert_eq!(values[i], predicted[i] + decoded[i]);
                    proptest::prop_assert!((original[i] - values[i]).abs() <= 0.5 * largest * 1.002 + 1e-7);
                }
            }
        }
    }
}
