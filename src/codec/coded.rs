//! `coded` (format 4, spec sections 4.4 and 4.5): uniform scalar quantization with one step
//! size per tensor — the value of code `q` in row `r` is `q · step` (times an f16 scale per
//! row when the tensor has row scales) — and the codes entropy-coded by
//! [`crate::format::entropy`] in a `coded` section (plain: the stream does not compress).
//! Any step, not only `max|w| / (2^(k−1) − 1)`: the per-tensor choice picks it on a ladder of
//! [`RUNG`]-spaced steps relative to the tensor's RMS.

use crate::format::{entropy, limits, Encoding, FileBuilder, Residual, SectionKind, Storage};
use half::f16;

/// Ratio of neighbouring steps on the ladder (`2^(1/4)`: about 0.35 bits per weight between
/// rungs at high rate).
pub const RUNG: f64 = 1.189_207_115_002_721;

/// The dead zone of the second coded candidate of every matrix rung (the budget keeps the
/// better of rounding to nearest and this at each size).
pub const DEAD_ZONE: f32 = 0.2;

/// The step of rung `k` for values of RMS `rms`: `rms · RUNG^k`, in f32.
pub fn step(rms: f64, k: i8) -> f32 {
    (rms * RUNG.powi(k as i32)) as f32
}

/// The f32 values of a `coded` section's content `bytes` for `numel` values in rows of `row`
/// (spec section 4.5): the step (finite, positive, at most `MAX_ABS_VALUE`), the row scales when
/// `row_scales` (each finite, at most `MAX_ABS_VALUE` in magnitude), then a stream of `numel`
/// codes within `±max_code` and nothing after it (spec check 33).
pub fn decode(
    bytes: &[u8],
    numel: usize,
    row: usize,
    max_code: u32,
    row_scales: bool,
) -> Result<Vec<f32>, String> {
    let (steps, stream) = row_steps(bytes, numel, row, row_scales)?;
    // Before allocating: no stream of this length holds that many codes (spec 4.4).
    if numel as u128 >= entropy::MAX_CODES_PER_BYTE as u128 * stream.len() as u128 {
        return Err(format!("a stream of {} bytes cannot hold {numel} codes", stream.len()));
    }
    let mut out = vec![0f32; numel];
    let row = row.max(1);
    entropy::decode_with(stream, numel, row, max_code, |i, q| out[i] = q as f32 * steps[i / row])?;
    Ok(out)
}

/// The step of every row (the step times the row's scale, in f32) and the stream after them.
fn row_steps(bytes: &[u8], numel: usize, row: usize, row_scales: bool) -> Result<(Vec<f32>, &[u8]), String> {
    let rows = numel.checked_div(row).unwrap_or(0).max(1);
    let (head, rest) = bytes.split_at_checked(4).ok_or("no step: the section is shorter than 4 bytes")?;
    let step = f32::from_le_bytes(head.try_into().expect("4 bytes"));
    if !(step.is_finite() && step > 0.0 && step <= limits::MAX_ABS_VALUE) {
        return Err(format!(
            "step {step} is not a positive finite number at most {:e}",
            limits::MAX_ABS_VALUE
        ));
    }
    if !row_scales {
        return Ok((vec![step; rows], rest));
    }
    let (scales, stream) = rest.split_at_checked(2 * rows).ok_or(format!("{rows} row scales do not fit"))?;
    let steps = scales
        .chunks_exact(2)
        .enumerate()
        .map(|(r, c)| {
            let s = f16::from_le_bytes([c[0], c[1]]).to_f32();
            match s.is_finite() && s.abs() <= limits::MAX_ABS_VALUE {
                true => Ok(step * s),
                false => Err(format!("row {r}: scale {s} is not finite")),
            }
        })
        .collect::<Result<_, _>>()?;
    Ok((steps, stream))
}

/// Writes a coded tensor's section.
pub fn store(b: &mut FileBuilder, max_code: u32, row_scales: bool, bytes: &[u8]) -> (Storage, usize) {
    let section = b.add(SectionKind::Coded, Encoding::Plain, bytes);
    (Storage::Coded { max_code, row_scales, section }, section)
}

/// Writes a coded residual's section.
pub fn store_residual(b: &mut FileBuilder, max_code: u32, row_scales: bool, bytes: &[u8]) -> Residual {
    Residual::Coded { max_code, row_scales, section: b.add(SectionKind::Coded, Encoding::Plain, bytes) }
}

/// The uniform grid of one step: code `round(x / step)` (within `±MAX_CODE`), value
/// `code · step` — the reader's arithmetic.
#[cfg(feature = "compress")]
struct Uniform {
    step: f32,
    /// Rounds `|u|` down when its fraction is below `0.5 + dead_zone` (0: to nearest).
    dead_zone: f32,
}

#[cfg(feature = "compress")]
impl super::gptq::Grid for Uniform {
    fn begin(&mut self, _: usize, _: usize, _: &[f32]) -> crate::Result<()> {
        Ok(())
    }

    fn round(&mut self, _: usize, _: usize, x: f32) -> (i32, f32) {
        let m = entropy::MAX_CODE as f32;
        let u = x / self.step;
        let q = ((u.abs() + 0.5 - self.dead_zone).floor().max(0.0) * u.signum()).clamp(-m, m) as i32;
        (q, q as f32 * self.step)
    }
}

/// `values` (of `t`'s shape: the tensor's or its residual's) on the uniform grid of rung `k`
/// of the RMS of `t`'s own values — data-aware with the input moments `h` of its layer when
/// they match the rows, else rounded to nearest — and entropy-coded. Fails, naming the tensor,
/// when a value is not finite or lies beyond `MAX_CODE` steps.
#[cfg(feature = "compress")]
pub fn encode(
    t: super::Tensor,
    values: &[f32],
    k: i8,
    h: Option<&super::gptq::Moments>,
) -> crate::Result<super::Encoded> {
    encode_with(t, values, k, h, 0.0)
}

/// [`encode`] with a dead zone: `|x / step|` is rounded down unless its fraction is at least
/// `0.5 + dead_zone`, so more codes are 0 or smaller (fewer bits, more error: the budget
/// weighs both; see [`DEAD_ZONE`]).
#[cfg(feature = "compress")]
pub fn encode_with(
    t: super::Tensor,
    values: &[f32],
    k: i8,
    h: Option<&super::gptq::Moments>,
    dead_zone: f32,
) -> crate::Result<super::Encoded> {
    let (step, codes) = codes(t, values, k, h, dead_zone)?;
    let row = crate::format::row_len(t.shape).expect("ingested shapes fit") as usize;
    Ok(encoded(k, step, &codes, row))
}

/// The coded form of `codes` (rows of `row`) on steps of `step`, from rung `k`.
pub fn encoded(k: i8, step: f32, codes: &[i32], row: usize) -> super::Encoded {
    let max_code = codes.iter().map(|q| q.unsigned_abs()).max().unwrap_or(0).max(1);
    let mut bytes = step.to_le_bytes().to_vec();
    bytes.extend(entropy::encode(codes, row));
    super::Encoded::Coded { rung: k, max_code, row_scales: false, row: row as u64, bytes }
}

/// What [`encode_with`] rounds: the step of rung `k`, and the codes.
#[cfg(feature = "compress")]
fn codes(
    t: super::Tensor,
    values: &[f32],
    k: i8,
    h: Option<&super::gptq::Moments>,
    dead_zone: f32,
) -> crate::Result<(f32, Vec<i32>)> {
    use super::gptq::Grid;
    let fail = |what: String| crate::Error::Training(format!("tensor {} cannot be coded: {what}", t.name));
    let own = t.values();
    let rms = (own.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / own.len().max(1) as f64).sqrt();
    let step = step(rms.max(f64::from(f32::MIN_POSITIVE)), k);
    let largest = values.iter().fold(0f32, |a, v| a.max(v.abs()));
    if !(step.is_finite() && step > 0.0 && largest.is_finite()) {
        return Err(fail(format!("step {step}, largest value {largest}")));
    }
    if f64::from(largest / step) > f64::from(entropy::MAX_CODE) {
        return Err(fail(format!("{largest} is more than {} steps of {step}", entropy::MAX_CODE)));
    }
    let row = crate::format::row_len(t.shape).expect("ingested shapes fit") as usize;
    let mut grid = Uniform { step, dead_zone };
    let codes = match h.and_then(|m| m.round(values, row, row, &mut grid)) {
        Some(codes) => codes?,
        None => values.iter().map(|&x| grid.round(0, 0, x).0).collect(),
    };
    Ok((step, codes))
}
