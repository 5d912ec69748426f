//! THE quantizer of nerp (spec section 4.3): symmetric, `bits` ∈ 2..=8, one f16 scale per
//! group of contiguous values. Value `x` of a group with scale `s` is stored as
//! `q = clamp(round(x / s), −Q, Q)` with `Q = 2^(bits−1) − 1` and read back as `q · s` (in
//! f32). The scale is rounded to f16 *before* quantizing, so decoding is exact.
//!
//! Encoded form: the group scales (little-endian f16), then the values bit-packed, `bits`
//! bits each in two's complement, least significant bit first (int4: two values per byte, the
//! first in the low nibble; int8: one byte each). The predictor's int weights, the
//! `quantized` tensor storage and the int-k baselines all go through this module.

use half::f16;

/// Fewest bits per value.
pub const MIN_BITS: u8 = 2;
/// Most bits per value.
pub const MAX_BITS: u8 = 8;

/// How a group's scale is chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ScaleRule {
    /// `max|x| / Q`: nothing is clipped, every value is within half a step.
    MaxAbs,
    /// The clip ratio of [`CLIP_RATIOS`] (times `max|x| / Q`) with the smallest squared error;
    /// the first on ties.
    #[default]
    Mse,
}

/// Clip ratios [`ScaleRule::Mse`] tries, largest first: 1.00, 0.95, …, 0.50.
pub const CLIP_RATIOS: [f32; 11] = [1.0, 0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.55, 0.5];

/// Largest stored magnitude `Q = 2^(bits−1) − 1` (127 for int8, 7 for int4).
pub fn qmax(bits: u8) -> i32 {
    (1i32 << (bits - 1)) - 1
}

/// Whether `bits` is a supported width.
pub fn valid_bits(bits: u8) -> bool {
    (MIN_BITS..=MAX_BITS).contains(&bits)
}

/// Bytes of `n` packed `bits`-bit values, `None` on overflow.
pub fn packed_len(n: u64, bits: u8) -> Option<u64> {
    n.checked_mul(bits as u64).map(|b| b.div_ceil(8))
}

/// Bytes of the encoded form of `n` values in groups of `group` (`group` divides `n`).
pub fn encoded_len(n: u64, group: u64, bits: u8) -> Option<u64> {
    let groups = n.checked_div(group)?;
    groups.checked_mul(2)?.checked_add(packed_len(n, bits)?)
}

/// The f16 scale of one group under `rule`: the smallest f16 at least the exact scale (so
/// max-abs never clips), 0 for an all-zero group. `None` if the scale exceeds f16's range.
pub fn group_scale(values: &[f32], bits: u8, rule: ScaleRule) -> Option<f16> {
    let max = values.iter().fold(0f32, |a, v| a.max(v.abs()));
    let q = qmax(bits) as f32;
    let candidate = |ratio: f32| round_up_f16(max * ratio / q);
    match rule {
        ScaleRule::MaxAbs => candidate(1.0),
        ScaleRule::Mse => {
            let mut best: Option<(f64, f16)> = None;
            for &r in &CLIP_RATIOS {
                let s = candidate(r)?;
                let err: f64 =
                    values.iter().map(|&x| ((x - dequant(quant(x, s, bits), s)) as f64).powi(2)).sum();
                if best.is_none_or(|(e, _)| err < e) {
                    best = Some((err, s));
                }
            }
            best.map(|(_, s)| s)
        }
    }
}

/// `s` rounded up to an f16, `None` if it is not finite in f16.
fn round_up_f16(s: f32) -> Option<f16> {
    let h = f16::from_f32(s);
    let h = if h.to_f32() < s { f16::from_bits(h.to_bits() + 1) } else { h };
    h.is_finite().then_some(h)
}

/// One value quantized with scale `s`.
pub fn quant(x: f32, s: f16, bits: u8) -> i8 {
    let s = s.to_f32();
    if s == 0.0 {
        return 0;
    }
    let q = qmax(bits) as f32;
    (x / s).round().clamp(-q, q) as i8
}

/// One value read back.
pub fn dequant(q: i8, s: f16) -> f32 {
    q as f32 * s.to_f32()
}

/// Values quantized in groups: `scales[g]` belongs to `values[g·group..(g+1)·group]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Quantized {
    pub bits: u8,
    pub group: usize,
    pub scales: Vec<f16>,
    pub values: Vec<i8>,
}

impl Quantized {
    /// The values as f32 (`q · scale`).
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.values.len());
        for (g, chunk) in self.values.chunks(self.group.max(1)).enumerate() {
            out.extend(chunk.iter().map(|&q| dequant(q, self.scales[g])));
        }
        out
    }

    /// The encoded form: scales, then the packed values.
    pub fn encode(&self) -> Vec<u8> {
        let mut out: Vec<u8> = self.scales.iter().flat_map(|s| s.to_le_bytes()).collect();
        out.extend(pack(&self.values, self.bits));
        out
    }
}

/// Quantizes `values` in groups of `group` contiguous values (`group` must divide the length
/// and `bits` be in 2..=8). Fails, naming the group, when a scale exceeds f16's range.
pub fn quantize(values: &[f32], group: usize, bits: u8, rule: ScaleRule) -> Result<Quantized, String> {
    if !valid_bits(bits) {
        return Err(format!("{bits} bits is not in {MIN_BITS}..={MAX_BITS}"));
    }
    if group == 0 || !values.len().is_multiple_of(group) {
        return Err(format!("group of {group} does not divide {} values", values.len()));
    }
    let mut scales = Vec::with_capacity(values.len() / group);
    let mut q = Vec::with_capacity(values.len());
    for (g, chunk) in values.chunks(group).enumerate() {
        if let Some(x) = chunk.iter().find(|x| !x.is_finite()) {
            return Err(format!("group {g} holds {x}, which cannot be quantized"));
        }
        let s = group_scale(chunk, bits, rule)
            .ok_or_else(|| format!("group {g}: the scale exceeds the f16 range (values too large)"))?;
        scales.push(s);
        q.extend(chunk.iter().map(|&x| quant(x, s, bits)));
    }
    Ok(Quantized { bits, group, scales, values: q })
}

/// `values` quantized and read back (what storing them does).
pub fn fake_quantize(values: &[f32], group: usize, bits: u8, rule: ScaleRule) -> Result<Vec<f32>, String> {
    quantize(values, group, bits, rule).map(|q| q.dequantize())
}

/// Packs values of `bits` bits (two's complement), least significant bit first.
pub fn pack(values: &[i8], bits: u8) -> Vec<u8> {
    if bits == 8 {
        return values.iter().map(|&v| v as u8).collect();
    }
    let len = packed_len(values.len() as u64, bits).expect("in-memory length") as usize;
    let mut out = vec![0u8; len];
    let mask = (1u16 << bits) - 1;
    for (i, &v) in values.iter().enumerate() {
        let word = (v as u8 as u16) & mask;
        let bit = i * bits as usize;
        let (byte, shift) = (bit / 8, bit % 8);
        let shifted = word << shift;
        out[byte] |= shifted as u8;
        if shift + bits as usize > 8 {
            out[byte + 1] |= (shifted >> 8) as u8;
        }
    }
    out
}

/// Unpacks `n` values of `bits` bits; checks the length, that every value is in `−Q..=Q`
/// (the code `−2^(bits−1)` is never written) and that the unused high bits of the last byte
/// are zero.
pub fn unpack(bytes: &[u8], n: usize, bits: u8) -> Result<Vec<i8>, String> {
    if !valid_bits(bits) {
        return Err(format!("{bits} bits is not in {MIN_BITS}..={MAX_BITS}"));
    }
    let need = packed_len(n as u64, bits).ok_or("value count overflows")?;
    if bytes.len() as u64 != need {
        return Err(format!("{} bytes of packed values, {n} values of {bits} bits need {need}", bytes.len()));
    }
    let q = qmax(bits);
    let mask = (1u16 << bits) - 1;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let bit = i * bits as usize;
        let (byte, shift) = (bit / 8, bit % 8);
        let mut word = bytes[byte] as u16;
        if shift + bits as usize > 8 {
            word |= (bytes[byte + 1] as u16) << 8;
        }
        let raw = (word >> shift) & mask;
        // Sign-extend from `bits` bits.
        let v = ((raw << (16 - bits)) as i16 >> (16 - bits)) as i32;
        if v < -q {
            return Err(format!("value {i} is {v}, outside ±{q} (the code −2^(bits−1) is not used)"));
        }
        out.push(v as i8);
    }
    let used = n * bits as usize;
    if !used.is_multiple_of(8) && bytes[used / 8] >> (used % 8) != 0 {
        return Err("unused bits of the last byte are not zero".into());
    }
    Ok(out)
}

/// Decodes the encoded form of `n` values in groups of `group` with `bits` bits; checks every
/// length and that each scale is finite with magnitude at most `max_abs`.
pub fn decode(bytes: &[u8], n: usize, group: usize, bits: u8, max_abs: f32) -> Result<Quantized, String> {
    if !valid_bits(bits) {
        return Err(format!("{bits} bits is not in {MIN_BITS}..={MAX_BITS}"));
    }
    if group == 0 || !n.is_multiple_of(group) {
        return Err(format!("group of {group} does not divide {n} values"));
    }
    let need = encoded_len(n as u64, group as u64, bits).ok_or("length overflows")?;
    if bytes.len() as u64 != need {
        return Err(format!(
            "{} bytes, {n} values of {bits} bits in groups of {group} need {need}",
            bytes.len()
        ));
    }
    let groups = n / group;
    let (sb, vb) = bytes.split_at(2 * groups);
    let scales: Vec<f16> = sb.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]])).collect();
    if let Some((g, s)) =
        scales.iter().enumerate().find(|(_, s)| !(s.is_finite() && s.to_f32().abs() <= max_abs))
    {
        return Err(format!("scale {g} is {s}; scales must be finite and at most {max_abs:e} in magnitude"));
    }
    let values = unpack(vb, n, bits)?;
    Ok(Quantized { bits, group, scales, values })
}

/// Bytes of the zero-point form (format 4) of `n` values in groups of `group`: the group
/// scales, the group minimums (f16 each), then the packed unsigned codes.
pub fn encoded_len_zero_point(n: u64, group: u64, bits: u8) -> Option<u64> {
    let groups = n.checked_div(group)?;
    groups.checked_mul(4)?.checked_add(packed_len(n, bits)?)
}

/// Largest code of the zero-point form, `2^bits − 1` (15 for int4).
pub fn levels(bits: u8) -> u32 {
    (1u32 << bits) - 1
}

/// Packs unsigned codes of `bits` bits (each below `2^bits`), least significant bit first.
pub fn pack_unsigned(codes: &[u8], bits: u8) -> Vec<u8> {
    match bits {
        8 => return codes.to_vec(),
        4 => {
            let mut out: Vec<u8> = codes.chunks_exact(2).map(|p| p[0] | (p[1] << 4)).collect();
            if let [.., last] = codes {
                if codes.len() % 2 == 1 {
                    out.push(*last);
                }
            }
            return out;
        }
        _ => {}
    }
    let len = packed_len(codes.len() as u64, bits).expect("in-memory length") as usize;
    let mut out = vec![0u8; len];
    for (i, &v) in codes.iter().enumerate() {
        let bit = i * bits as usize;
        let (byte, shift) = (bit / 8, bit % 8);
        let shifted = (v as u16) << shift;
        out[byte] |= shifted as u8;
        if shift + bits as usize > 8 {
            out[byte + 1] |= (shifted >> 8) as u8;
        }
    }
    out
}

/// Decodes the zero-point form (format 4, spec section 4.3) of `n` values in groups of
/// `group` with `bits` bits: value `k` of group `g` is `q·s_g + m_g` (an f32 product, then an
/// f32 sum) with `q` its unsigned code. Checks every length, that each scale and minimum is
/// finite with magnitude at most `max_abs`, and that the unused high bits of the last byte
/// are zero (every code of `bits` bits is valid).
pub fn decode_zero_point(
    bytes: &[u8],
    n: usize,
    group: usize,
    bits: u8,
    max_abs: f32,
) -> Result<Vec<f32>, String> {
    if !valid_bits(bits) {
        return Err(format!("{bits} bits is not in {MIN_BITS}..={MAX_BITS}"));
    }
    if group == 0 || !n.is_multiple_of(group) {
        return Err(format!("group of {group} does not divide {n} values"));
    }
    let need = encoded_len_zero_point(n as u64, group as u64, bits).ok_or("length overflows")?;
    if bytes.len() as u64 != need {
        return Err(format!(
            "{} bytes, {n} values of {bits} bits in groups of {group} with zero points need {need}",
            bytes.len()
        ));
    }
    let groups = n / group;
    let (sb, rest) = bytes.split_at(2 * groups);
    let (mb, codes) = rest.split_at(2 * groups);
    let read = |b: &[u8], what: &str| -> Result<Vec<f32>, String> {
        let v: Vec<f32> = b.chunks_exact(2).map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()).collect();
        match v.iter().position(|x| !(x.is_finite() && x.abs() <= max_abs)) {
            Some(g) => Err(format!(
                "{what} {g} is {}; {what}s must be finite and at most {max_abs:e} in magnitude",
                v[g]
            )),
            None => Ok(v),
        }
    };
    let (scales, mins) = (read(sb, "scale")?, read(mb, "minimum")?);
    let used = n * bits as usize;
    if !used.is_multiple_of(8) && codes[used / 8] >> (used % 8) != 0 {
        return Err("unused bits of the last byte are not zero".into());
    }
    let mut out = vec![0f32; n];
    match bits {
        8 => {
            for (g, (o, c)) in out.chunks_exact_mut(group).zip(codes.chunks_exact(group)).enumerate() {
                let (s, m) = (scales[g], mins[g]);
                for (o, &q) in o.iter_mut().zip(c) {
                    *o = q as f32 * s + m;
                }
            }
        }
        4 if group.is_multiple_of(2) => {
            let half = group / 2;
            for (g, (o, c)) in out.chunks_exact_mut(group).zip(codes.chunks_exact(half)).enumerate() {
                let (s, m) = (scales[g], mins[g]);
                for (o, &b) in o.chunks_exact_mut(2).zip(c) {
                    o[0] = (b & 15) as f32 * s + m;
                    o[1] = (b >> 4) as f32 * s + m;
                }
            }
        }
        _ => {
            let mask = (1u16 << bits) - 1;
            for (g, o) in out.chunks_exact_mut(group).enumerate() {
                let (s, m) = (scales[g], mins[g]);
                for (k, o) in o.iter_mut().enumerate() {
                    let bit = (g * group + k) * bits as usize;
                    let (byte, shift) = (bit / 8, bit % 8);
                    let mut word = codes[byte] as u16;
                    if shift + bits as usize > 8 {
                        word |= (codes[byte + 1] as u16) << 8;
                    }
                    *o = ((word >> shift) & mask) as f32 * s + m;
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn max_abs_round_trip_is_within_half_a_step(
            values in proptest::collection::vec(-1e4f32..1e4, 1..200),
            bits in 2u8..=8,
            groups in 1usize..4,
        ) {
            let n = values.len() - values.len() % groups;
            prop_assume!(n > 0);
            let values = &values[..n];
            let group = n / groups;
            let q = quantize(values, group, bits, ScaleRule::MaxAbs).unwrap();
            let bytes = q.encode();
            prop_assert_eq!(bytes.len() as u64, encoded_len(n as u64, group as u64, bits).unwrap());
            let back = decode(&bytes, n, group, bits, 1e30).unwrap();
            prop_assert_eq!(&back, &q);
            let deq = back.dequantize();
            for (i, (x, y)) in values.iter().zip(&deq).enumerate() {
                let step = q.scales[i / group].to_f32();
                prop_assert!((x - y).abs() <= 0.5 * step * (1.0 + 1e-6), "{} vs {} step {}", x, y, step);
            }
        }

        #[test]
        fn requantizing_decoded_values_is_the_identity(
            values in proptest::collection::vec(-50f32..50.0, 1..64),
            bits in 2u8..=8,
            mse in any::<bool>(),
        ) {
            let rule = if mse { ScaleRule::Mse } else { ScaleRule::MaxAbs };
            let n = values.len();
            let q = quantize(&values, n, bits, rule).unwrap();
            prop_assert_eq!(quantize(&q.dequantize(), n, bits, rule).unwrap(), q);
        }

        #[test]
        fn mse_never_has_more_error_than_max_abs(values in proptest::collection::vec(-3f32..3.0, 1..64), bits in 2u8..=8) {
            let sse = |v: &[f32]| -> f64 { values.iter().zip(v).map(|(a, b)| ((a - b) as f64).powi(2)).sum() };
            let n = values.len();
            let m = fake_quantize(&values, n, bits, ScaleRule::MaxAbs).unwrap();
            let e = fake_quantize(&values, n, bits, ScaleRule::Mse).unwrap();
            prop_assert!(sse(&e) <= sse(&m));
        }

        #[test]
        fn pack_unpack_round_trips(values in proptest::collection::vec(-7i8..=7, 0..100)) {
            prop_assert_eq!(unpack(&pack(&values, 4), values.len(), 4).unwrap(), values.clone());
            let v3: Vec<i8> = values.iter().map(|v| v.clamp(&-3, &3)).copied().collect();
            prop_assert_eq!(unpack(&pack(&v3, 3), v3.len(), 3).unwrap(), v3);
        }
    }

    #[test]
    fn int4_packs_two_per_byte_low_nibble_first() {
        assert_eq!(pack(&[1, -1, 7], 4), vec![0xF1, 0x07]);
        assert_eq!(unpack(&[0xF1, 0x07], 3, 4).unwrap(), vec![1, -1, 7]);
        assert_eq!(pack(&[-127, 127], 8), vec![0x81, 0x7F]);
    }

    #[test]
    fn decode_checks_lengths_codes_and_scales() {
        assert!(unpack(&[0x08], 1, 4).unwrap_err().contains("outside")); // −8
        assert!(unpack(&[0x80], 1, 8).unwrap_err().contains("outside")); // −128
        assert!(unpack(&[0x11], 1, 4).unwrap_err().contains("unused bits"));
        assert!(unpack(&[0x11], 3, 4).unwrap_err().contains("need 2"));
        assert!(decode(&[0, 0, 1], 1, 1, 9, 1e30).unwrap_err().contains("bits"));
        assert!(decode(&[0, 0, 1, 1], 2, 3, 8, 1e30).unwrap_err().contains("divide"));
        let inf = f16::INFINITY.to_le_bytes();
        assert!(decode(&[inf[0], inf[1], 1], 1, 1, 8, 1e30).unwrap_err().contains("finite"));
        let big = f16::from_f32(1000.0).to_le_bytes();
        assert!(decode(&[big[0], big[1], 1], 1, 1, 8, 100.0).unwrap_err().contains("at most"));
        assert!(quantize(&[1e9], 1, 8, ScaleRule::MaxAbs).unwrap_err().contains("f16 range"));
        assert!(quantize(&[1.0, 2.0, 3.0], 2, 8, ScaleRule::MaxAbs).is_err());
    }

    #[test]
    fn zero_groups_decode_to_zero_and_scales_never_clip_under_max_abs() {
        let q = quantize(&[0.0, 0.0, 0.3, -0.7], 2, 4, ScaleRule::MaxAbs).unwrap();
        assert_eq!(q.scales[0].to_f32(), 0.0);
        assert_eq!(q.values[3], -7);
        assert!(q.scales[1].to_f32() * 7.0 >= 0.7);
    }
}
