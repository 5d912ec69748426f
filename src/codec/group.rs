//! Group-wise int (spec section 4.3; the zero point is format 4): `bits` bits per value, one
//! f16 scale per group of `group` contiguous values of a row — along the input dimension of a
//! `[out, in]` matrix, as transformer weights are laid out — and optionally one f16 minimum
//! per group (a zero point: unsigned codes `0..2^bits`, read back as `q·s + m`). Chosen per
//! tensor without data, on the weight error; the codec of the LLM path
//! ([`crate::compress::stream`]).
//!
//! The scale of each group is searched on the group's squared error over [`CLIP_RATIOS`] in
//! one pass (clipping the range trades the outliers' error for everyone else's step), and with
//! a zero point refined once by least squares on the chosen codes (HQQ's alternating step).
//! Rounding is to nearest even by the `2^23` trick, not a `roundf` call: `roundf` was 4.8% of
//! the whole compress profile on the 0.5 B layout (docs/results/llm.md), and the trick lets the
//! loops vectorize. The symmetric form is byte-for-byte the `quantized` section of [`super::int`]
//! (the reader cannot tell them apart); only the choice of scale and group differs.

use crate::format::quant::{self, levels, qmax, CLIP_RATIOS};
use crate::format::{codec::to_f32, DType, Encoding, FileBuilder, SectionKind, Storage};
use half::f16;

/// Adding and subtracting it rounds an f32 of magnitude below 2^22 to the nearest integer
/// (ties to even).
const ROUND: f32 = 12_582_912.0; // 1.5 · 2^23

/// Groups of this many values a group codec may name: 32, 64 and 128 (and 0, the row).
pub const GROUPS: [u16; 3] = [32, 64, 128];

/// The values per group of codec group `named` (0: the whole row) on rows of `row` values,
/// `None` where it does not divide the row.
pub fn group_len(named: u16, row: u64) -> Option<u64> {
    match named {
        0 => (row > 0).then_some(row),
        g => (row.is_multiple_of(g as u64) && row > 0).then_some(g as u64),
    }
}

/// Bytes of the section of `numel` values in groups of `group`.
pub fn section_len(numel: u64, group: u64, bits: u8, zero: bool) -> Option<u64> {
    match zero {
        false => quant::encoded_len(numel, group, bits),
        true => quant::encoded_len_zero_point(numel, group, bits),
    }
}

/// The values of a group-wise section (the reader's decoding, spec check 32).
pub fn decode(bits: u8, group: u64, zero: bool, bytes: &[u8], numel: usize) -> Result<Vec<f32>, String> {
    match zero {
        false => super::int::decode(bits, group, bytes, numel),
        true => {
            let group = usize::try_from(group).map_err(|_| format!("group {group} is too large"))?;
            quant::decode_zero_point(bytes, numel, group, bits, crate::format::limits::MAX_ABS_VALUE)
        }
    }
}

/// Writes a group-wise tensor's section.
pub fn store(b: &mut FileBuilder, bits: u8, group: u64, zero: bool, bytes: &[u8]) -> (Storage, usize) {
    let section = b.add(SectionKind::Quantized, Encoding::Zstd, bytes);
    (Storage::Quantized { bits, group, zero_point: zero, section }, section)
}

/// `s` rounded up to an f16, `None` if not finite in f16.
fn round_up_f16(s: f32) -> Option<f16> {
    let h = f16::from_f32(s);
    let h = if h.to_f32() < s { f16::from_bits(h.to_bits() + 1) } else { h };
    h.is_finite().then_some(h)
}

/// The code of `v` on the symmetric grid of step `1 / inv` clamped to `±q`, as a float. One
/// definition for the measuring loops, the encoder and GPTQ's grid; inlined so that the
/// measuring loops still vectorize.
#[inline(always)]
fn code_sym(v: f32, inv: f32, q: f32) -> f32 {
    ((v * inv).max(-q).min(q) + ROUND) - ROUND
}

/// The code of `v` on the grid of step `1 / inv` from minimum `m`, clamped to `0..=l`.
#[inline(always)]
fn code_zp(v: f32, inv: f32, m: f32, l: f32) -> f32 {
    (((v - m) * inv).max(0.0).min(l) + ROUND) - ROUND
}

/// Squared error of `x` quantized symmetrically with step `s` to `±q` (`s > 0`).
fn sse_sym(x: &[f32], s: f32, q: f32) -> f32 {
    let inv = 1.0 / s;
    let mut acc = [0f32; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for k in 0..8 {
            let r = code_sym(c[k], inv, q);
            let d = c[k] - r * s;
            acc[k] += d * d;
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for &v in chunks.remainder() {
        let r = code_sym(v, inv, q);
        sum += (v - r * s) * (v - r * s);
    }
    sum
}

/// Squared error of `x` quantized with step `s` from minimum `m` to codes `0..=l` (`s > 0`).
fn sse_zp(x: &[f32], s: f32, m: f32, l: f32) -> f32 {
    let inv = 1.0 / s;
    let mut acc = [0f32; 8];
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        for k in 0..8 {
            let r = code_zp(c[k], inv, m, l);
            let d = c[k] - (r * s + m);
            acc[k] += d * d;
        }
    }
    let mut sum: f32 = acc.iter().sum();
    for &v in chunks.remainder() {
        let r = code_zp(v, inv, m, l);
        sum += (v - (r * s + m)) * (v - (r * s + m));
    }
    sum
}

/// One group, symmetric: its scale (searched), its codes into `codes` and its squared error.
/// `None` when the scale exceeds f16's range.
fn group_sym(x: &[f32], bits: u8, codes: &mut [i8]) -> Option<(f16, f64)> {
    let max = x.iter().fold(0f32, |a, v| a.max(v.abs()));
    let q = qmax(bits) as f32;
    let mut best: Option<(f32, f16)> = None;
    for &r in &CLIP_RATIOS {
        let s = round_up_f16(max * r / q)?;
        if s.to_f32() == 0.0 {
            best = Some((x.iter().map(|v| v * v).sum(), s));
            break;
        }
        let e = sse_sym(x, s.to_f32(), q);
        if best.is_none_or(|(b, _)| e < b) {
            best = Some((e, s));
        }
    }
    let (e, s) = best?;
    let sf = s.to_f32();
    let inv = if sf == 0.0 { 0.0 } else { 1.0 / sf };
    for (c, &v) in codes.iter_mut().zip(x) {
        *c = code_sym(v, inv, q) as i8;
    }
    Some((s, e as f64))
}

/// One group with a zero point: its scale and minimum (searched, then refined by least
/// squares), its codes into `codes` and its squared error. `None` when a scale or minimum
/// exceeds f16's range.
fn group_zp(x: &[f32], bits: u8, codes: &mut [u8]) -> Option<(f16, f16, f64)> {
    let (lo, hi) = x.iter().fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &v| (a.min(v), b.max(v)));
    let l = levels(bits) as f32;
    let (mid, half) = (0.5 * lo + 0.5 * hi, 0.5 * hi - 0.5 * lo);
    let mut best: Option<(f32, f16, f16)> = None;
    for &r in &CLIP_RATIOS {
        let s = round_up_f16(2.0 * half * r / l)?;
        let m = f16::from_f32(mid - half * r);
        if !m.is_finite() {
            return None;
        }
        if s.to_f32() == 0.0 {
            let m = f16::from_f32(lo);
            best = Some((x.iter().map(|v| (v - m.to_f32()) * (v - m.to_f32())).sum(), s, m));
            break;
        }
        let e = sse_zp(x, s.to_f32(), m.to_f32(), l);
        if best.is_none_or(|(b, _, _)| e < b) {
            best = Some((e, s, m));
        }
    }
    let (mut e, mut s, mut m) = best?;
    let fill = |codes: &mut [u8], s: f16, m: f16| {
        let (sf, mf) = (s.to_f32(), m.to_f32());
        let inv = if sf == 0.0 { 0.0 } else { 1.0 / sf };
        for (c, &v) in codes.iter_mut().zip(x) {
            *c = code_zp(v, inv, mf, l) as u8;
        }
    };
    fill(&mut *codes, s, m);
    // Least squares of x on the codes: the scale and minimum that fit them best.
    let n = x.len() as f64;
    let (mut sq, mut sqq, mut sx, mut sqx) = (0f64, 0f64, 0f64, 0f64);
    for (&c, &v) in codes.iter().zip(x) {
        let (c, v) = (c as f64, v as f64);
        sq += c;
        sqq += c * c;
        sx += v;
        sqx += c * v;
    }
    let det = n * sqq - sq * sq;
    if det > 0.0 {
        let s2 = (n * sqx - sq * sx) / det;
        let m2 = (sx - s2 * sq) / n;
        let (s2, m2) = (f16::from_f64(s2), f16::from_f64(m2));
        if s2.is_finite() && m2.is_finite() && s2.to_f32() > 0.0 {
            let e2 = sse_zp(x, s2.to_f32(), m2.to_f32(), l);
            if e2 < e {
                (e, s, m) = (e2, s2, m2);
                fill(&mut *codes, s, m);
            }
        }
    }
    Some((s, m, e as f64))
}

/// A group-wise encoding of a run of whole rows: the group scales, minimums (with a zero
/// point) and packed codes, and its squared error.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Part {
    pub scales: Vec<u8>,
    pub mins: Vec<u8>,
    pub codes: Vec<u8>,
    pub sse: f64,
}

/// Encodes `values` (whole rows; a multiple of 8 values unless it ends the tensor, so that
/// parts concatenate) in groups of `group`. `Err` names the group whose scale overflows f16.
pub fn encode_part(values: &[f32], group: usize, bits: u8, zero: bool) -> Result<Part, String> {
    let groups = values.len() / group;
    let mut part = Part {
        scales: Vec::with_capacity(2 * groups),
        mins: Vec::with_capacity(if zero { 2 * groups } else { 0 }),
        ..Part::default()
    };
    let too_large = |g: usize| format!("group {g}: the scale exceeds the f16 range (values too large)");
    if let Some(x) = values.iter().find(|x| !x.is_finite()) {
        return Err(format!("it holds {x}, which cannot be quantized"));
    }
    if zero {
        let mut codes = vec![0u8; values.len()];
        for (g, (x, c)) in values.chunks_exact(group).zip(codes.chunks_exact_mut(group)).enumerate() {
            let (s, m, e) = group_zp(x, bits, c).ok_or_else(|| too_large(g))?;
            part.scales.extend(s.to_le_bytes());
            part.mins.extend(m.to_le_bytes());
            part.sse += e;
        }
        part.codes = quant::pack_unsigned(&codes, bits);
    } else {
        let mut codes = vec![0i8; values.len()];
        for (g, (x, c)) in values.chunks_exact(group).zip(codes.chunks_exact_mut(group)).enumerate() {
            let (s, e) = group_sym(x, bits, c).ok_or_else(|| too_large(g))?;
            part.scales.extend(s.to_le_bytes());
            part.sse += e;
        }
        part.codes = quant::pack(&codes, bits);
    }
    Ok(part)
}

/// [`encode_part`] with GPTQ's rounding ([`super::gptq`]) for the layer inputs' moments `m`
/// (a weight stored `[out, in]`, rows of `row` values): each group's scale (and minimum) is
/// searched as [`encode_part`] searches it, from the group's values as the rounding of the
/// columns before it has changed them, and each value's rounding error is spread over the
/// columns not yet rounded. The same stored form; only the codes differ. `None` when `m` does
/// not fit rows of `row`.
#[cfg(feature = "compress")]
pub fn encode_part_gptq(
    values: &[f32],
    row: usize,
    group: usize,
    bits: u8,
    zero: bool,
    m: &super::gptq::Moments,
) -> Option<Result<Part, String>> {
    if let Some(x) = values.iter().find(|x| !x.is_finite()) {
        return Some(Err(format!("it holds {x}, which cannot be quantized")));
    }
    let rows = values.len().checked_div(row)?;
    let mut grid = GroupGrid { bits, zero, groups: row / group.max(1), scales: vec![], mins: vec![] };
    grid.scales = vec![f16::ZERO; rows * grid.groups];
    grid.mins = vec![f16::ZERO; if zero { rows * grid.groups } else { 0 }];
    let codes = match m.round(values, row, group, &mut grid)? {
        Ok(c) => c,
        Err(e) => return Some(Err(e.to_string())),
    };
    let mut part = Part::default();
    for (k, &c) in codes.iter().enumerate() {
        let d = values[k] - grid.value(k / group, c);
        part.sse += (d as f64) * (d as f64);
    }
    part.scales = grid.scales.iter().flat_map(|s| s.to_le_bytes()).collect();
    part.mins = grid.mins.iter().flat_map(|s| s.to_le_bytes()).collect();
    part.codes = match zero {
        true => quant::pack_unsigned(&codes.iter().map(|&c| c as u8).collect::<Vec<_>>(), bits),
        false => quant::pack(&codes.iter().map(|&c| c as i8).collect::<Vec<_>>(), bits),
    };
    Some(Ok(part))
}

/// The group-wise grid for GPTQ's rounding: each group's scale (and minimum) chosen by the
/// search of [`group_sym`] / [`group_zp`] when its first column is reached.
#[cfg(feature = "compress")]
struct GroupGrid {
    bits: u8,
    zero: bool,
    /// Groups per row.
    groups: usize,
    scales: Vec<f16>,
    mins: Vec<f16>,
}

#[cfg(feature = "compress")]
impl GroupGrid {
    /// The value code `c` of group `k` (counted over all rows) decodes to.
    fn value(&self, k: usize, c: i32) -> f32 {
        match self.zero {
            true => c as f32 * self.scales[k].to_f32() + self.mins[k].to_f32(),
            false => c as f32 * self.scales[k].to_f32(),
        }
    }
}

#[cfg(feature = "compress")]
impl super::gptq::Grid for GroupGrid {
    fn begin(&mut self, r: usize, g: usize, current: &[f32]) -> crate::Result<()> {
        let k = r * self.groups + g;
        let too_large =
            || crate::Error::Training(format!("row {r}, group {g}: the scale exceeds the f16 range"));
        if self.zero {
            let (s, m, _) =
                group_zp(current, self.bits, &mut vec![0u8; current.len()]).ok_or_else(too_large)?;
            (self.scales[k], self.mins[k]) = (s, m);
        } else {
            let (s, _) =
                group_sym(current, self.bits, &mut vec![0i8; current.len()]).ok_or_else(too_large)?;
            self.scales[k] = s;
        }
        Ok(())
    }

    fn round(&mut self, r: usize, g: usize, x: f32) -> (i32, f32) {
        let k = r * self.groups + g;
        let s = self.scales[k].to_f32();
        let inv = if s == 0.0 { 0.0 } else { 1.0 / s };
        let code = match self.zero {
            true => code_zp(x, inv, self.mins[k].to_f32(), levels(self.bits) as f32),
            false => code_sym(x, inv, qmax(self.bits) as f32),
        } as i32;
        (code, self.value(k, code))
    }
}

/// The squared error only (what measuring a candidate needs; no codes kept).
pub fn error_of(values: &[f32], group: usize, bits: u8, zero: bool) -> Option<f64> {
    let mut sse = 0f64;
    let mut codes = vec![0u8; group];
    let mut signed = vec![0i8; group];
    for x in values.chunks_exact(group) {
        sse += match zero {
            true => group_zp(x, bits, &mut codes)?.2,
            false => group_sym(x, bits, &mut signed)?.1,
        };
    }
    Some(sse)
}

/// Rounds one group `g` in place to nearest on the grid of AWQ's and GPTQ's round-to-nearest
/// baselines: `2^bits` codes from the group's minimum to its maximum, the scale in f16 and an
/// integer zero point in `0..2^bits` (stored in `bits` bits). Not a codec of the format: the
/// reference the default budget of a decoder checkpoint matches ([`crate::compress::stream`]).
pub fn round_nearest_zero_point(g: &mut [f32], bits: u8) {
    let top = levels(bits) as f32;
    let f16 = |x: f32| f16::from_f32(x).to_f32();
    let lo = g.iter().copied().fold(f32::INFINITY, f32::min);
    let hi = g.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let s = f16((hi - lo) / top);
    if s == 0.0 || !s.is_finite() {
        g.iter_mut().for_each(|x| *x = f16(lo));
        return;
    }
    let zero = (-lo / s).round().clamp(0.0, top);
    for x in g.iter_mut() {
        *x = (((*x / s).round() + zero).clamp(0.0, top) - zero) * s;
    }
}

/// The squared error of [`round_nearest_zero_point`] on `values` (whole rows of `row` values)
/// in groups of `group` along each row, the last group of a row shorter where `group` does not
/// divide it.
pub fn nearest_zero_point_error(values: &[f32], row: usize, group: usize, bits: u8) -> f64 {
    let mut sse = 0f64;
    let mut g = Vec::with_capacity(group);
    for r in values.chunks(row.max(1)) {
        for x in r.chunks(group.max(1)) {
            g.clear();
            g.extend_from_slice(x);
            round_nearest_zero_point(&mut g, bits);
            sse += x.iter().zip(&g).map(|(a, b)| ((a - b) as f64).powi(2)).sum::<f64>();
        }
    }
    sse
}

/// Bytes [`round_nearest_zero_point`] stores for `rows × cols` values in groups of `group`
/// along each row: packed `bits`-bit codes, an f16 scale and a `bits`-bit zero point per group.
pub fn nearest_zero_point_bytes(rows: u64, cols: u64, group: u64, bits: u8) -> u64 {
    let groups = rows * cols.div_ceil(group.max(1));
    (rows * cols * bits as u64).div_ceil(8) + 2 * groups + (groups * bits as u64).div_ceil(8)
}

/// Joins parts (in row order) into the section's decoded content.
pub fn join(parts: &[Part]) -> Vec<u8> {
    let len: usize = parts.iter().map(|p| p.scales.len() + p.mins.len() + p.codes.len()).sum();
    let mut out = Vec::with_capacity(len);
    for p in parts {
        out.extend_from_slice(&p.scales);
    }
    for p in parts {
        out.extend_from_slice(&p.mins);
    }
    for p in parts {
        out.extend_from_slice(&p.codes);
    }
    out
}

/// The f32 values of `source` (little-endian `dtype`) into `out` (cleared first).
pub fn widen(dtype: DType, source: &[u8], out: &mut Vec<f32>) {
    out.clear();
    match dtype {
        DType::F16 => out.extend(
            source.chunks_exact(2).map(|c| f16::from_bits(u16::from_le_bytes([c[0], c[1]])).to_f32()),
        ),
        DType::Bf16 => out.extend(
            source.chunks_exact(2).map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16)),
        ),
        _ => out.extend(to_f32(dtype, source).unwrap_or_default()),
    }
}

/// Encodes tensor `t` (eligible, its row divisible by the group) whole.
#[cfg(feature = "compress")]
pub fn encode(t: super::Tensor, bits: u8, named: u16, zero: bool) -> crate::Result<super::Encoded> {
    let row = crate::format::row_len(t.shape).expect("ingested shapes fit");
    let fail =
        |e: String| crate::Error::Training(format!("tensor {} cannot be stored as int{bits}: {e}", t.name));
    let group = group_len(named, row)
        .ok_or_else(|| fail(format!("groups of {named} do not divide its rows of {row}")))?;
    let mut values = Vec::new();
    widen(t.dtype, t.source, &mut values);
    let part = encode_part(&values, group as usize, bits, zero).map_err(fail)?;
    Ok(super::Encoded::Group { bits, named, group, zero, bytes: join(&[part]) })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bell(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        (0..n)
            .map(|_| {
                (0..4)
                    .map(|_| {
                        s = s.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
                        (s >> 40) as f32 / (1u64 << 24) as f32
                    })
                    .sum::<f32>()
                    - 2.0
            })
            .collect()
    }

    #[test]
    fn parts_decode_to_their_error_and_concatenate() {
        let v = bell(4 * 256, 1);
        for zero in [false, true] {
            for bits in [2u8, 3, 4, 5, 8] {
                let whole = encode_part(&v, 64, bits, zero).unwrap();
                let bytes = join(std::slice::from_ref(&whole));
                let back = decode(bits, 64, zero, &bytes, v.len()).unwrap();
                let sse: f64 = v.iter().zip(&back).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
                assert!(
                    (sse - whole.sse).abs() <= 1e-4 * sse.max(1e-9),
                    "{bits} {zero}: {sse} vs {}",
                    whole.sse
                );
                assert_eq!(error_of(&v, 64, bits, zero).unwrap(), whole.sse);
                let halves = [
                    encode_part(&v[..512], 64, bits, zero).unwrap(),
                    encode_part(&v[512..], 64, bits, zero).unwrap(),
                ];
                assert_eq!(join(&halves), bytes, "{bits} {zero}");
            }
        }
    }

    /// GPTQ's codes decode with the reader's decoding to the error it reports, and change the
    /// layer's outputs less than rounding to nearest where the inputs are correlated.
    #[cfg(feature = "compress")]
    #[test]
    fn gptq_codes_decode_and_lower_the_output_change() {
        let (rows, d) = (16, 256);
        let w = bell(rows * d, 5);
        // Inputs of 4 underlying factors plus a little noise: a strongly correlated H.
        let (n, factors) = (512, bell(512 * 4, 6));
        let noise = bell(n * d, 7);
        let mix = bell(4 * d, 8);
        let mut h = vec![0f64; d * d];
        for t in 0..n {
            let x: Vec<f64> = (0..d)
                .map(|j| {
                    (0..4).map(|f| factors[t * 4 + f] as f64 * mix[f * d + j] as f64).sum::<f64>()
                        + 0.1 * noise[t * d + j] as f64
                })
                .collect();
            for a in 0..d {
                for b in 0..d {
                    h[a * d + b] += x[a] * x[b] / n as f64;
                }
            }
        }
        let m = crate::codec::gptq::Moments::new(d, h, crate::codec::gptq::Layout::OutputRows);
        for (bits, zero) in [(3u8, true), (4, false), (4, true)] {
            let part = encode_part_gptq(&w, d, 64, bits, zero, &m).unwrap().unwrap();
            let back = decode(bits, 64, zero, &join(std::slice::from_ref(&part)), w.len()).unwrap();
            let sse: f64 = w.iter().zip(&back).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
            assert!((sse - part.sse).abs() <= 1e-4 * sse, "{bits} {zero}: {sse} vs {}", part.sse);
            let rtn = encode_part(&w, 64, bits, zero).unwrap();
            let near = decode(bits, 64, zero, &join(&[rtn]), w.len()).unwrap();
            let change = |q: &[f32]| {
                let delta: Vec<f32> = w.iter().zip(q).map(|(a, b)| a - b).collect();
                m.output_change(&delta, d).unwrap()
            };
            assert!(
                change(&back) < 0.7 * change(&near),
                "{bits} {zero}: {} vs {}",
                change(&back),
                change(&near)
            );
        }
        // Moments of another width do not apply.
        assert!(encode_part_gptq(&w[..rows * 128], 128, 64, 4, false, &m).is_none());
    }

    #[test]
    fn a_zero_point_helps_one_sided_groups() {
        // Values in [0.5, 1.5]: symmetric int4 wastes half its levels.
        let v: Vec<f32> = bell(1024, 2).iter().map(|x| 1.0 + x / 4.0).collect();
        let sym = error_of(&v, 128, 4, false).unwrap();
        let zp = error_of(&v, 128, 4, true).unwrap();
        assert!(zp < 0.5 * sym, "{zp} vs {sym}");
    }
}
