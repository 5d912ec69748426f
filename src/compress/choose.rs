//! One storage per tensor under one budget (`--size-ratio`, `--max-error`): every float
//! tensor of rank ≥ 2 may be stored raw, cast to f16, quantized to 8, 4, 3 or 2 bits, or
//! predicted (when a predictor was trained for it); each option has a cost in bytes and an
//! error, and [`allocate`] picks one per tensor.
//!
//! Errors add in quadrature: the error of a model with several tensors changed is estimated
//! as `√Σ eᵢ²` of the errors measured with each tensor changed alone (independent
//! perturbations; the compressor checks the estimate with one run of the chosen model).

use crate::compress::calibrate::Calibration;
use crate::error::{Error, Result};
use crate::format::{self, DType};
use crate::ingest::{SourceModel, SourceTensor};

/// How a float tensor that is not predicted is stored (spec section 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Codec {
    /// As is (byte-grouped zstd): lossless.
    #[default]
    Raw,
    /// f32/f64 values cast to f16 (format 3); other dtypes stay raw.
    F16,
    /// f32/f64 values cast to bf16 (format 3); other dtypes stay raw.
    Bf16,
    /// Quantized to int8, one f16 scale per row (format 3).
    Int8,
    /// Quantized to 6 bits, groups as int4 (format 3).
    Int6,
    /// Quantized to 5 bits, groups as int4 (format 3).
    Int5,
    /// Quantized to int4, one f16 scale per row or per group of at most 128 values (format 3).
    Int4,
    /// Quantized to 3 bits, groups as int4 (format 3).
    Int3,
    /// Quantized to 2 bits, groups as int4 (format 3).
    Int2,
}

impl Codec {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Codec::Raw => "raw",
            Codec::F16 => "f16",
            Codec::Bf16 => "bf16",
            Codec::Int8 => "int8",
            Codec::Int6 => "int6",
            Codec::Int5 => "int5",
            Codec::Int4 => "int4",
            Codec::Int3 => "int3",
            Codec::Int2 => "int2",
        }
    }

    /// Bits per value of a quantizing codec.
    pub fn bits(self) -> Option<u8> {
        match self {
            Codec::Int8 => Some(8),
            Codec::Int6 => Some(6),
            Codec::Int5 => Some(5),
            Codec::Int4 => Some(4),
            Codec::Int3 => Some(3),
            Codec::Int2 => Some(2),
            _ => None,
        }
    }

    /// The codecs [`allocate`] chooses among (bf16 is left out: on weights of ordinary range
    /// it has f16's size and 8× its error). Int6 and int5 fill the gap between int8 and int4
    /// (error ×16 for half the bytes): without them, the PP-OCR recognizer's CTC head (29% of
    /// its weights) had to take int4 at half the fp16 file.
    pub const CHOICES: [Codec; 8] = [
        Codec::Raw,
        Codec::F16,
        Codec::Int8,
        Codec::Int6,
        Codec::Int5,
        Codec::Int4,
        Codec::Int3,
        Codec::Int2,
    ];
}

/// Values per scale when quantizing rows of `row` values to `bits` bits: the whole row for
/// int8 or rows of at most 128 values, else the largest divisor of the row at most 128 (at
/// least 16; else the whole row) — fewer bits need small groups to keep the error down.
pub fn quant_group(row: u64, bits: u8) -> u64 {
    if bits >= 8 || row <= 128 {
        return row;
    }
    (16..=128).rev().find(|g| row.is_multiple_of(*g)).unwrap_or(row)
}

/// A tensor encoded by a codec: what the storage entry says, and the section's decoded bytes.
#[derive(Debug, Clone, PartialEq)]
pub enum Encoded {
    /// The source bytes (the codec does not apply to this tensor, or is `raw`).
    Raw,
    /// Cast to `to` (f16 or bf16).
    Cast { to: DType, bytes: Vec<u8> },
    /// Quantized ([`format::quant`]'s encoded form).
    Quantized { bits: u8, group: u64, bytes: Vec<u8> },
}

/// Encodes `t` with `codec`: [`eligible`] tensors only (rank < 2 tensors, biases and norms,
/// stay raw: they are few bytes, and quantizing them is what made `--raw-codec int4` lose 2.9
/// points on ResNet-20); a cast applies to f32/f64 tensors, a quantization to any eligible
/// one; anything else stays [`Encoded::Raw`]. Fails (naming the tensor) when a value cannot
/// be quantized (non-finite, beyond f16 scales).
///
/// With the input moments `h` of the tensor's layer ([`crate::compress::gptq`]), quantization rounds
/// data-aware when `h` fits the tensor's shape ([`crate::compress::gptq::Moments::quantize`]).
pub fn encode(
    t: &SourceTensor,
    codec: Codec,
    h: Option<&crate::compress::gptq::Moments>,
) -> Result<Encoded, String> {
    if !eligible(t) {
        return Ok(Encoded::Raw);
    }
    let wide = matches!(t.dtype, DType::F32 | DType::F64);
    let values = || format::codec::to_f32(t.dtype, &t.data).expect("float");
    match codec {
        Codec::F16 | Codec::Bf16 if wide => {
            let to = if codec == Codec::F16 { DType::F16 } else { DType::Bf16 };
            Ok(Encoded::Cast { to, bytes: format::codec::from_f32(to, &values()).expect("half dtype") })
        }
        _ => match codec.bits() {
            Some(bits) if t.dtype.is_float() && !t.data.is_empty() => quantize(t, &values(), bits, h)
                .map_err(|e| format!("tensor {} cannot be stored as int{bits}: {e}", t.name)),
            _ => Ok(Encoded::Raw),
        },
    }
}

/// `values` (of `t`'s shape, row-major) quantized to `bits` bits in groups of [`quant_group`]
/// of `t`'s row length: data-aware (GPTQ) with the input moments `h` of its layer when they
/// match the rows, else to the nearest level with MSE-chosen scales.
fn quantize(
    t: &SourceTensor,
    values: &[f32],
    bits: u8,
    h: Option<&crate::compress::gptq::Moments>,
) -> Result<Encoded> {
    let row = format::row_len(&t.shape).expect("ingested shapes fit");
    let group = quant_group(row, bits);
    let q = match h.and_then(|m| m.quantize(values, row as usize, group as usize, bits)) {
        Some(q) => q?,
        None => format::quant::quantize(values, group as usize, bits, Default::default())
            .map_err(|e| Error::Training(e.to_string()))?,
    };
    Ok(Encoded::Quantized { bits, group, bytes: q.encode() })
}

/// The residual of a predicted tensor (spec section 5.3b): `original − predicted` quantized to
/// `bits` bits like a tensor of `t`'s shape (data-aware with `h`, which sees only the
/// residual's error: the prediction is fixed). Returns the encoding and the values the file
/// regenerates, `predicted` plus the decoded residual.
pub fn encode_residual(
    t: &SourceTensor,
    original: &[f32],
    predicted: &[f32],
    bits: u8,
    h: Option<&crate::compress::gptq::Moments>,
) -> Result<(Encoded, Vec<f32>)> {
    let r: Vec<f32> = original.iter().zip(predicted).map(|(a, b)| a - b).collect();
    let encoded = quantize(t, &r, bits, h).map_err(|e| {
        Error::Training(format!("tensor {}: residual cannot be stored as int{bits}: {e}", t.name))
    })?;
    let back = encoded.decode(t);
    let values = predicted.iter().zip(back).map(|(p, r)| p + r).collect();
    Ok((encoded, values))
}

impl Encoded {
    /// The values the file gives back, as f32.
    pub fn decode(&self, t: &SourceTensor) -> Vec<f32> {
        match self {
            Encoded::Raw => format::codec::to_f32(t.dtype, &t.data).expect("float"),
            Encoded::Cast { to, bytes } => format::codec::to_f32(*to, bytes).expect("half dtype"),
            Encoded::Quantized { bits, group, bytes } => {
                let n = bytes_to_values(t);
                format::quant::decode(bytes, n, *group as usize, *bits, f32::MAX)
                    .expect("own encoding decodes")
                    .dequantize()
            }
        }
    }

    /// Bytes of the section before zstd (what the budget counts: quantized codes hardly
    /// compress; raw f32 compresses by ~10%, so raw is slightly overcounted).
    pub fn len(&self, t: &SourceTensor) -> u64 {
        match self {
            Encoded::Raw => t.data.len() as u64,
            Encoded::Cast { bytes, .. } | Encoded::Quantized { bytes, .. } => bytes.len() as u64,
        }
    }
}

fn bytes_to_values(t: &SourceTensor) -> usize {
    t.data.len() / t.dtype.size()
}

/// What a tensor gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Choice {
    /// The predictor's output (times the stored row scales).
    Predicted,
    /// Stored with a codec.
    Stored(Codec),
    /// The predictor's output plus a residual of this many bits (spec section 5.3b).
    Residual(u8),
}

impl Choice {
    /// The name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Choice::Predicted => "predicted",
            Choice::Stored(c) => c.name(),
            Choice::Residual(2) => "predicted+int2",
            Choice::Residual(3) => "predicted+int3",
            Choice::Residual(4) => "predicted+int4",
            Choice::Residual(_) => "predicted+residual",
        }
    }

    /// Whether the predictor's output is used (predicted, with or without a residual).
    pub fn uses_predictor(self) -> bool {
        matches!(self, Choice::Predicted | Choice::Residual(_))
    }

    /// Residual widths tried: int2…int4 (int8 residuals cost as much as int8 alone).
    pub const RESIDUAL_BITS: [u8; 3] = [2, 3, 4];
}

/// One option for one tensor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub choice: Choice,
    /// Bytes it adds to the file.
    pub bytes: u64,
    /// The error it causes alone (relative output error, or relative weight error over the
    /// whole model where no calibration inputs exist).
    pub error: f64,
}

/// What to keep within.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Budget {
    /// The whole file at most this many bytes: the smallest estimated error.
    Bytes(u64),
    /// The estimated error at most this: the fewest bytes.
    Error(f64),
}

/// The pick of [`allocate`].
#[derive(Debug, Clone, PartialEq)]
pub struct Allocation {
    /// Index into each tensor's candidates.
    pub picks: Vec<usize>,
    /// Bytes of the picks plus the fixed bytes.
    pub bytes: u64,
    /// Estimated error, `√Σ eᵢ²`.
    pub error: f64,
    /// Whether the budget is met.
    pub feasible: bool,
}

/// Picks one candidate per tensor (each tensor needs at least one) under `budget`, counting
/// `fixed` bytes for everything else. Greedy on each tensor's lower convex hull of
/// (bytes, error²): start from the cheapest option of every tensor and take the upgrade with
/// the largest decrease of error² per byte while the budget allows (a byte budget: upgrades
/// that fit; an error budget: until the estimate is within it). Ties go to the lower tensor
/// index, so the result is deterministic.
pub fn allocate(candidates: &[Vec<Candidate>], fixed: u64, budget: Budget) -> Allocation {
    let hulls: Vec<Vec<usize>> = candidates.iter().map(|c| hull(c)).collect();
    let mut at = vec![0usize; hulls.len()];
    let point = |t: usize, k: usize| candidates[t][hulls[t][k]];
    let mut bytes = fixed + (0..hulls.len()).map(|t| point(t, 0).bytes).sum::<u64>();
    let mut sq: f64 = (0..hulls.len()).map(|t| point(t, 0).error.powi(2)).sum();
    loop {
        if let Budget::Error(e) = budget {
            if sq <= e * e {
                break;
            }
        }
        let mut best: Option<(f64, usize)> = None;
        for t in 0..hulls.len() {
            let Some(next) = hulls[t].get(at[t] + 1) else { continue };
            let (a, b) = (point(t, at[t]), candidates[t][*next]);
            let extra = b.bytes - a.bytes;
            if matches!(budget, Budget::Bytes(max) if bytes + extra > max) {
                continue;
            }
            let gain = (a.error.powi(2) - b.error.powi(2)) / extra.max(1) as f64;
            if best.is_none_or(|(g, _)| gain > g) {
                best = Some((gain, t));
            }
        }
        let Some((_, t)) = best else { break };
        let (a, b) = (point(t, at[t]), point(t, at[t] + 1));
        bytes += b.bytes - a.bytes;
        sq += b.error.powi(2) - a.error.powi(2);
        at[t] += 1;
    }
    let sq = sq.max(0.0);
    let feasible = match budget {
        Budget::Bytes(max) => bytes <= max,
        Budget::Error(e) => sq <= e * e,
    };
    let picks = at.iter().zip(&hulls).map(|(&k, h)| h[k]).collect();
    Allocation { picks, bytes, error: sq.sqrt(), feasible }
}

/// Indices of the lower convex hull of `(bytes, error²)`, cheapest first, each later point
/// strictly more bytes and strictly less error, with decreasing gain per byte.
fn hull(c: &[Candidate]) -> Vec<usize> {
    assert!(!c.is_empty(), "every tensor has a candidate");
    let mut order: Vec<usize> = (0..c.len()).collect();
    order.sort_by(|&a, &b| {
        c[a].bytes.cmp(&c[b].bytes).then(c[a].error.total_cmp(&c[b].error)).then(a.cmp(&b))
    });
    let mut h: Vec<usize> = Vec::new();
    for i in order {
        let (x, y) = (c[i].bytes as f64, c[i].error.powi(2));
        if let Some(&last) = h.last() {
            if c[last].bytes == c[i].bytes || y >= c[last].error.powi(2) {
                continue; // same bytes with more error, or not better: dominated
            }
        }
        // Drop points above the segment from their predecessor to this one.
        while h.len() >= 2 {
            let (p, q) = (c[h[h.len() - 2]], c[h[h.len() - 1]]);
            let (px, py, qx, qy) = (p.bytes as f64, p.error.powi(2), q.bytes as f64, q.error.powi(2));
            // q is on or above the line p→i: the slope p→q is no steeper than p→i.
            if (py - qy) * (x - px) <= (py - y) * (qx - px) {
                h.pop();
            } else {
                break;
            }
        }
        h.push(i);
    }
    h
}

/// How a candidate's error is measured.
pub enum Measure<'a> {
    /// Relative output error on calibration inputs, the tensor changed alone.
    Output(&'a Calibration),
    /// `‖ΔW‖ / total_norm`: the tensor's share of the relative error of all eligible weights
    /// (no calibration inputs).
    Weights { total_norm: f64 },
}

impl Measure<'_> {
    /// The name in reports.
    pub fn name(&self) -> &'static str {
        match self {
            Measure::Output(_) => "output",
            Measure::Weights { .. } => "weights",
        }
    }

    /// The error of tensor `tensor` holding `values` instead of `original`, alone.
    pub fn error(&self, tensor: usize, original: &[f32], values: &[f32]) -> Result<f64> {
        if original == values {
            return Ok(0.0);
        }
        match self {
            Measure::Output(c) => c.error(&[(tensor, values)]),
            Measure::Weights { total_norm } => {
                let d: f64 = original.iter().zip(values).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
                Ok(d.sqrt() / total_norm.max(f64::MIN_POSITIVE))
            }
        }
    }
}

/// Whether a tensor may get any codec (float, rank ≥ 2, not empty); the others stay raw.
pub fn eligible(t: &SourceTensor) -> bool {
    t.dtype.is_float() && t.shape.len() >= 2 && !t.data.is_empty()
}

/// The candidates of every tensor of `model`: for an [`eligible`] one each of
/// [`Codec::CHOICES`] (those that change nothing else than raw are left out) and, where
/// `predicted[i]` gives the predictor's values and the bytes the tensor adds beside the
/// predictor (its scales and permutation), [`Choice::Predicted`]; the others only raw.
/// Errors are measured on `threads` threads (one tract model per candidate).
pub fn candidates(
    model: &SourceModel,
    predicted: &[Option<(Vec<f32>, u64)>],
    measure: &Measure,
    hessians: &crate::compress::gptq::Hessians,
    threads: usize,
) -> Result<Vec<Vec<Candidate>>> {
    let raw = |t: &SourceTensor| Candidate {
        choice: Choice::Stored(Codec::Raw),
        bytes: t.data.len() as u64,
        error: 0.0,
    };
    let one = |i: usize| -> Result<Vec<Candidate>> {
        let t = &model.tensors[i];
        let mut out = vec![raw(t)];
        if !eligible(t) {
            return Ok(out);
        }
        let original = format::codec::to_f32(t.dtype, &t.data).expect("float");
        for codec in Codec::CHOICES.into_iter().filter(|&c| c != Codec::Raw) {
            let encoded = encode(t, codec, hessians.0.get(&t.name)).map_err(Error::Training)?;
            if encoded == Encoded::Raw {
                continue;
            }
            let values = encoded.decode(t);
            let error = measure.error(i, &original, &values)?;
            out.push(Candidate { choice: Choice::Stored(codec), bytes: encoded.len(t), error });
        }
        if let Some((values, bytes)) = &predicted[i] {
            let error = measure.error(i, &original, values)?;
            out.push(Candidate { choice: Choice::Predicted, bytes: *bytes, error });
        }
        Ok(out)
    };
    let next = std::sync::atomic::AtomicUsize::new(0);
    let n = model.tensors.len();
    let done: Vec<Vec<(usize, Result<Vec<Candidate>>)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads.clamp(1, n.max(1)))
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= n {
                            return mine;
                        }
                        mine.push((i, one(i)));
                    }
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("calibration thread panicked")).collect()
    });
    let mut out: Vec<Option<Vec<Candidate>>> = vec![None; n];
    for (i, r) in done.into_iter().flatten() {
        out[i] = Some(r?);
    }
    Ok(out.into_iter().map(|c| c.expect("every tensor measured")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cand(bytes: u64, error: f64) -> Candidate {
        Candidate { choice: Choice::Stored(Codec::Raw), bytes, error }
    }

    /// Exhaustive search: the smallest error within `max` bytes.
    fn best_within(c: &[Vec<Candidate>], max: u64) -> f64 {
        let mut best = f64::INFINITY;
        let mut idx = vec![0usize; c.len()];
        loop {
            let bytes: u64 = idx.iter().enumerate().map(|(t, &k)| c[t][k].bytes).sum();
            if bytes <= max {
                best = best.min(idx.iter().enumerate().map(|(t, &k)| c[t][k].error.powi(2)).sum::<f64>());
            }
            let mut t = 0;
            loop {
                if t == c.len() {
                    return best.sqrt();
                }
                idx[t] += 1;
                if idx[t] < c[t].len() {
                    break;
                }
                idx[t] = 0;
                t += 1;
            }
        }
    }

    #[test]
    fn a_byte_budget_is_respected_and_spent_where_error_falls_fastest() {
        // Tensor 0 is sensitive (error falls a lot per byte), tensor 1 is not.
        let c = vec![
            vec![cand(100, 0.0), cand(25, 0.02), cand(13, 0.5)],
            vec![cand(100, 0.0), cand(25, 0.001), cand(13, 0.01)],
        ];
        let a = allocate(&c, 10, Budget::Bytes(10 + 25 + 13));
        assert!(a.feasible && a.bytes <= 48, "{a:?}");
        assert_eq!(a.picks, vec![1, 2], "the sensitive tensor gets the bytes");
        assert!((a.error - (0.02f64.powi(2) + 0.01f64.powi(2)).sqrt()).abs() < 1e-12);
        // Not enough for the cheapest of everything: infeasible, cheapest picks.
        let a = allocate(&c, 10, Budget::Bytes(20));
        assert!(!a.feasible);
        assert_eq!(a.picks, vec![2, 2]);
    }

    #[test]
    fn an_error_budget_takes_the_fewest_bytes_that_meet_it() {
        let c = vec![
            vec![cand(100, 0.0), cand(25, 0.02), cand(13, 0.5)],
            vec![cand(100, 0.0), cand(25, 0.001), cand(13, 0.01)],
        ];
        let a = allocate(&c, 0, Budget::Error(0.03));
        assert!(a.feasible && a.error <= 0.03, "{a:?}");
        assert_eq!((a.picks.clone(), a.bytes), (vec![1, 2], 38));
        // Zero error: everything lossless.
        assert_eq!(allocate(&c, 0, Budget::Error(0.0)).picks, vec![0, 0]);
    }

    #[test]
    fn dominated_options_are_never_picked() {
        // The 50-byte option has more error than the 25-byte one.
        let c = vec![vec![cand(100, 0.0), cand(50, 0.3), cand(25, 0.1), cand(13, 0.5)]];
        assert_eq!(hull(&c[0]), vec![3, 2, 0]);
        for max in [13, 30, 60, 100] {
            let a = allocate(&c, 0, Budget::Bytes(max));
            assert_ne!(a.picks[0], 1, "budget {max}");
        }
    }

    #[test]
    fn every_codec_round_trips_and_more_bits_mean_less_error() {
        // A 64 × 256 matrix of bell-shaped values (sums of uniforms), as weights are.
        let mut rng = crate::compress::train::Rng::new(3);
        let values: Vec<f32> =
            (0..64 * 256).map(|_| ((0..4).map(|_| rng.uniform()).sum::<f64>() - 2.0) as f32).collect();
        let t = SourceTensor {
            name: "w".into(),
            dtype: DType::F32,
            shape: vec![64, 256],
            data: format::codec::from_f32(DType::F32, &values).unwrap(),
            role: crate::ingest::Role::Matrix,
        };
        let norm = values.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
        let mut last = (0.0, 0);
        for codec in Codec::CHOICES {
            let e = encode(&t, codec, None).unwrap();
            let back = e.decode(&t);
            assert_eq!(back.len(), values.len(), "{}", codec.name());
            let err =
                values.iter().zip(&back).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>().sqrt() / norm;
            if let Encoded::Quantized { bits, group, bytes } = &e {
                assert_eq!(Some(*bits), codec.bits());
                // The reader's decoding gives the same values.
                let read =
                    format::quant::decode(bytes, values.len(), *group as usize, *bits, f32::MAX).unwrap();
                assert_eq!(read.dequantize(), back);
                // Each value within half a step of its group's scale, or clipped (MSE scales).
                for (k, (a, b)) in values.iter().zip(&back).enumerate() {
                    let s = read.scales[k / *group as usize].to_f32();
                    assert!(
                        (a - b).abs() <= 0.5 * s * 1.0001 || a.abs() > b.abs(),
                        "{}: {a} vs {b}",
                        codec.name()
                    );
                }
            }
            // In CHOICES order the bytes fall and the error grows.
            let len = e.len(&t);
            if codec != Codec::Raw {
                assert!(
                    len < last.1 && err > last.0,
                    "{}: {len} bytes, error {err} after {last:?}",
                    codec.name()
                );
            }
            last = (err, len);
        }
    }

    proptest::proptest! {
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
            let t = SourceTensor {
                name: "w".into(),
                dtype: DType::F32,
                shape: vec![rows as u64, row as u64],
                data: format::codec::from_f32(DType::F32, &original).unwrap(),
                role: crate::ingest::Role::Matrix,
            };
            let (encoded, values) = encode_residual(&t, &original, &predicted, bits, None).unwrap();
            let Encoded::Quantized { bits: b, group, ref bytes } = encoded else { panic!("not quantized") };
            proptest::prop_assert_eq!(b, bits);
            proptest::prop_assert_eq!(bytes.len() as u64, encoded.len(&t));
            let decoded = encoded.decode(&t);
            for g in 0..n / group as usize {
                let range = g * group as usize..(g + 1) * group as usize;
                let largest = range.clone().map(|i| (original[i] - predicted[i]).abs()).fold(0f32, f32::max);
                for i in range {
                    proptest::prop_assert_eq!(values[i], predicted[i] + decoded[i]);
                    proptest::prop_assert!((original[i] - values[i]).abs() <= 0.5 * largest * 1.002 + 1e-7);
                }
            }
        }

        /// The greedy pick stays within any byte budget the cheapest picks meet, is never worse
        /// than them, and where it spent every byte it is the exhaustive optimum (greedy on
        /// convex hulls solves the relaxed problem, and an integral solution of it is optimal).
        #[test]
        fn greedy_is_feasible_and_near_the_exhaustive_optimum(
            raw in proptest::collection::vec(proptest::collection::vec((1u64..200, 0.0f64..1.0), 1..5), 1..5),
            slack in 0u64..400,
        ) {
            let c: Vec<Vec<Candidate>> =
                raw.iter().map(|t| t.iter().map(|&(b, e)| cand(b, e)).collect()).collect();
            let min: u64 = c.iter().map(|t| t.iter().map(|x| x.bytes).min().unwrap()).sum();
            let a = allocate(&c, 0, Budget::Bytes(min + slack));
            proptest::prop_assert!(a.feasible && a.bytes <= min + slack);
            let opt = best_within(&c, min + slack);
            proptest::prop_assert!(a.error >= opt - 1e-12);
            if a.bytes == min + slack {
                proptest::prop_assert!(a.error <= opt + 1e-9, "greedy {} optimum {}", a.error, opt);
            }
            // Never worse than the cheapest picks.
            let cheapest = allocate(&c, 0, Budget::Bytes(min));
            proptest::prop_assert!(a.error <= cheapest.error + 1e-12);
        }
    }
}
