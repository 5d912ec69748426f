//! Entropy coding of integer codes (spec section 4.4): a context-adaptive binary arithmetic
//! coder in the spirit of DeepCABAC, written here (no crate: the coder is ~150 lines and its
//! exact arithmetic is part of the format, so it is spelled out in the spec rather than
//! delegated to a crate whose internals could change).
//!
//! **Binarization** of a code `v` (rows of `row` codes, row-major): a significance bin
//! (`v ≠ 0`); then the sign; then the magnitude class `e = bitlen(|v|) − 1` in unary (`e` ones
//! and a terminating zero, omitted for the last class); then, for `e ≥ 1`, the bit below the
//! leading one as a context bin and the `e − 1` bits under it as one bypass value.
//!
//! **Contexts** come from the two codes before `v` in its row, `a` (just before) and `b`:
//! the significance, class and top-bit bins use the bucket `min(bitlen(2|a| + |b|), 6)`, the
//! sign bin the signs of `a` and `b` (9 contexts). Measured on the shared ResNet-20 kernels
//! (`examples/entropy_rate.rs`, variants in docs/results/entropy_coder.md): the signs of
//! neighbouring weights are correlated enough that a sign context saves 4.7% of the stream
//! at 2 bits/weight against a bypass sign; adding the code above (`v`'s column in the
//! previous row) to the bucket or to the sign context made the stream 0.2–0.4% *larger*
//! (contexts diluted), a running magnitude or a longer history of zeros gained at most 0.1%;
//! a context for the second bit below the leading one saved 0.4% at 3–4 bits but cost 5–7%
//! of the decode speed at 6–7 bits; Exp-Golomb-k binarization with `k` from the bucket (fewer
//! bins for large codes) gave 3–11% decode speed at 5.5 bits for 0.1–0.5% more bytes.
//!
//! **Probabilities** are 15-bit integers with a per-context bit count: a context moves its
//! estimate by `1/2^s` of the way to the observed bit, `s = min(bitlen(n + 1), 7)` after `n`
//! bits, i.e. about a running average at first and a window of ~128 bits later. Against one
//! fixed shift (6) or the two-speed mix of VVC (shifts 4 and 7) this saved 0.9–1.3% of the
//! ResNet-20 kernels' streams (small tensors: the first bins of each context matter) and
//! halved the gap to the entropy on i.i.d. Laplacian codes (1.2% → 0.5%).
//!
//! **Range coder**: LZMA-style, 32-bit range, byte-wise renormalisation, carry propagation in
//! the encoder; the flush writes one byte (the reader reads the 3 bytes after the end as
//! zeros). The reader checks that it ends having read exactly the stream plus those 3 bytes,
//! that the stream is the one the encoder writes (no other byte string decodes), and every
//! code against the header's `max_abs`.
//!
//! Speed (one core of the shared 2-core EPYC, thread CPU time, `examples/entropy_rate.rs`):
//! decoding is bound by the instructions and branch mispredictions of its ~10-cycle bins, not
//! by the coder's serial dependency (decoding two independent streams interleaved in one loop
//! was no faster), so it scales with the bins per code: ~140 M codes/s at 1 bit per code,
//! ~60 M/s at 3 bits, ~40 M/s at 6 bits (below the 50 M/s aim; see the results page).

/// Largest `|code|` a stream may carry.
pub const MAX_CODE: u32 = 1 << 15;

/// A stream of `len` bytes holds fewer than `MAX_CODES_PER_BYTE · len` codes: every code has a
/// significance bin, and a bin shrinks the range by a factor of at most `1 − 31/2^15 +
/// 31/2^24` (probabilities stay in `31..=2^15 − 31`, the range at least 2^24), i.e. costs at
/// least 0.0013628 of the `8·len` bits the stream holds (5870.1 codes per byte). A reader
/// refuses a larger `n` before allocating or decoding anything.
pub const MAX_CODES_PER_BYTE: usize = 5871;

/// Probability precision: P(bit = 1) is an integer in `P_LOW..=P_HIGH` out of `2^PROB_BITS`.
const PROB_BITS: u32 = 15;
const PROB_ONE: i32 = 1 << PROB_BITS;
/// A context's estimate moves towards `P_HIGH` after a 1 and `P_LOW` after a 0, so it never
/// reaches 0 or 1.
const P_LOW: i32 = 31;
const P_HIGH: i32 = PROB_ONE - P_LOW;
/// Largest adaptation shift (a window of ~128 bits).
const RATE_MAX: u32 = 7;
/// The range is renormalised (shifted left a byte) while below this.
const TOP: u32 = 1 << 24;
/// Magnitude classes: class `e` holds `2^e ..= 2^(e+1) − 1`, the last (15) holds `MAX_CODE`.
const CLASSES: usize = 16;
/// Neighbourhood buckets.
const BUCKETS: usize = 7;

/// Adaptation shift after `n` bits: `min(bitlen(n + 1), RATE_MAX)` (`n` saturates at 63).
const SHIFT: [u8; 64] = {
    let mut t = [0u8; 64];
    let mut n = 0;
    while n < 64 {
        let s = 32 - (n as u32 + 1).leading_zeros();
        t[n] = if s < RATE_MAX { s as u8 } else { RATE_MAX as u8 };
        n += 1;
    }
    t
};

/// `min(bitlen(t), BUCKETS − 1)` for `t < 64` (larger `t` are clamped to 63 first).
const BUCKET_OF: [u8; 64] = {
    let mut t = [0u8; 64];
    let mut i = 0;
    while i < 64 {
        let b = (32 - (i as u32).leading_zeros()) as usize;
        t[i] = if b < BUCKETS { b as u8 } else { (BUCKETS - 1) as u8 };
        i += 1;
    }
    t
};

/// One adaptive binary context: P(bit = 1) out of 2^15 and how many bits it has seen
/// (saturating at 63).
#[derive(Clone, Copy)]
struct Prob {
    p: u16,
    n: u16,
}

impl Prob {
    const INIT: Prob = Prob { p: 1 << (PROB_BITS - 1), n: 0 };

    #[inline(always)]
    fn update(&mut self, bit: bool) {
        let n = self.n as usize & 63;
        let p = self.p as i32;
        let target = if bit { P_HIGH } else { P_LOW };
        // Arithmetic shift: the step rounds towards −∞, so p stays within P_LOW..=P_HIGH.
        self.p = (p + ((target - p) >> SHIFT[n])) as u16;
        self.n = if n < 63 { n as u16 + 1 } else { 63 };
    }
}

/// Every context of a stream.
struct Models {
    sig: [Prob; BUCKETS],
    sign: [Prob; 9],
    /// `prefix[k][i]`: the `i`-th unary bin of the class (`i < CLASSES − 1`).
    prefix: [[Prob; CLASSES]; BUCKETS],
    /// `msb[k][e]`: the bit below the leading one of a class-`e` magnitude (`e ≥ 1`).
    msb: [[Prob; CLASSES]; BUCKETS],
}

impl Models {
    fn new() -> Self {
        Models {
            sig: [Prob::INIT; BUCKETS],
            sign: [Prob::INIT; 9],
            prefix: [[Prob::INIT; CLASSES]; BUCKETS],
            msb: [[Prob::INIT; CLASSES]; BUCKETS],
        }
    }
}

/// The two codes before the current one in its row (zero at the start of a row), as the
/// contexts need them: magnitudes and sign classes (0 zero, 1 positive, 2 negative).
#[derive(Clone, Copy, Default)]
struct Neighbours {
    mag_a: u32,
    mag_b: u32,
    sign_a: u8,
    sign_b: u8,
}

impl Neighbours {
    /// The magnitude bucket `min(bitlen(2|a| + |b|), BUCKETS − 1)`.
    #[inline(always)]
    fn bucket(self) -> usize {
        let t = 2 * self.mag_a + self.mag_b;
        BUCKET_OF[t.min(63) as usize] as usize
    }

    /// The sign context `sign(a) + 3·sign(b)`.
    #[inline(always)]
    fn sign(self) -> usize {
        (self.sign_a + 3 * self.sign_b) as usize
    }

    #[inline(always)]
    fn push(&mut self, mag: u32, negative: bool) {
        self.mag_b = self.mag_a;
        self.sign_b = self.sign_a;
        self.mag_a = mag;
        self.sign_a = if mag == 0 { 0 } else { 1 + negative as u8 };
    }
}

/// Where the encoder's bytes go: a buffer, or only a count (for [`encoded_len`]).
trait Sink {
    fn push(&mut self, byte: u8);
    fn push_run(&mut self, byte: u8, count: u64);
}

impl Sink for Vec<u8> {
    #[inline(always)]
    fn push(&mut self, byte: u8) {
        Vec::push(self, byte)
    }

    fn push_run(&mut self, byte: u8, count: u64) {
        self.extend(std::iter::repeat_n(byte, count as usize))
    }
}

struct Count(usize);

impl Sink for Count {
    #[inline(always)]
    fn push(&mut self, _: u8) {
        self.0 += 1
    }

    fn push_run(&mut self, _: u8, count: u64) {
        self.0 += count as usize
    }
}

struct Encoder<S: Sink> {
    /// The interval's low end: 32 bits and a carry.
    low: u64,
    range: u32,
    /// The last byte not yet written (a carry may still reach it) and how many 0xFF bytes
    /// follow it.
    cache: u8,
    pending: u64,
    /// False until the first byte leaves the cache: that byte is always 0 (the code value is
    /// below 1) and is not written.
    started: bool,
    out: S,
}

impl<S: Sink> Encoder<S> {
    fn new(out: S) -> Self {
        Encoder { low: 0, range: u32::MAX, cache: 0, pending: 0, started: false, out }
    }

    #[inline(always)]
    fn shift_low(&mut self) {
        if self.low < 0xFF00_0000 || self.low >= 1 << 32 {
            let carry = (self.low >> 32) as u8;
            if self.started {
                self.out.push(self.cache.wrapping_add(carry));
            } else {
                debug_assert_eq!(carry, 0, "the code value is below 1");
                self.started = true;
            }
            if self.pending > 0 {
                self.out.push_run(0xFFu8.wrapping_add(carry), self.pending);
                self.pending = 0;
            }
            self.cache = (self.low >> 24) as u8;
        } else {
            self.pending += 1;
        }
        self.low = (self.low & 0x00FF_FFFF) << 8;
    }

    #[inline(always)]
    fn normalize(&mut self) {
        while self.range < TOP {
            self.range <<= 8;
            self.shift_low();
        }
    }

    #[inline(always)]
    fn bit(&mut self, prob: &mut Prob, bit: bool) {
        let bound = (self.range >> PROB_BITS) * prob.p as u32;
        if bit {
            self.range = bound;
        } else {
            self.low += bound as u64;
            self.range -= bound;
        }
        prob.update(bit);
        self.normalize();
    }

    /// `k ∈ 1..=14` equiprobable bits: the value `v < 2^k`.
    #[inline(always)]
    fn bypass(&mut self, v: u32, k: u32) {
        let r = self.range >> k;
        self.low += (v * r) as u64;
        self.range = r;
        self.normalize();
    }

    /// Writes the shortest tail: the range is at least 2^24, so the interval holds a value
    /// whose low three bytes are zero; only its top byte is written.
    fn finish(mut self) -> S {
        self.low = (self.low + 0xFF_FFFF) & !0xFF_FFFF;
        self.shift_low();
        self.shift_low();
        self.out
    }
}

fn encode_into<S: Sink>(codes: &[i32], row: usize, out: S) -> S {
    assert!(row > 0, "entropy::encode: row length 0");
    let mut enc = Encoder::new(out);
    let mut m = Models::new();
    for cur in codes.chunks(row) {
        let mut nb = Neighbours::default();
        for &v in cur {
            let k = nb.bucket();
            let mag = v.unsigned_abs();
            assert!(mag <= MAX_CODE, "entropy::encode: |code| {mag} above MAX_CODE");
            enc.bit(&mut m.sig[k], mag != 0);
            if mag != 0 {
                enc.bit(&mut m.sign[nb.sign()], v < 0);
                let e = (31 - mag.leading_zeros()) as usize;
                for i in 0..e {
                    enc.bit(&mut m.prefix[k][i], true);
                }
                if e < CLASSES - 1 {
                    enc.bit(&mut m.prefix[k][e], false);
                }
                if e >= 1 {
                    enc.bit(&mut m.msb[k][e], (mag >> (e - 1)) & 1 == 1);
                    if e >= 2 {
                        enc.bypass(mag & ((1 << (e - 1)) - 1), e as u32 - 1);
                    }
                }
            }
            nb.push(mag, v < 0);
        }
    }
    enc.finish()
}

/// Encodes `codes` (row-major, rows of `row` values; the last row may be shorter). The same
/// codes give the same bytes on every machine.
///
/// # Panics
/// If `row` is 0 or a code's magnitude exceeds [`MAX_CODE`] (the caller's quantizer bounds
/// its codes).
pub fn encode(codes: &[i32], row: usize) -> Vec<u8> {
    encode_into(codes, row, Vec::with_capacity(codes.len() / 4 + 16))
}

/// `encode(codes, row).len()` without writing the bytes: the same modelling and arithmetic,
/// only the renormalisations are counted (~20% faster than [`encode`]).
///
/// # Panics
/// As [`encode`].
pub fn encoded_len(codes: &[i32], row: usize) -> usize {
    encode_into(codes, row, Count(0)).0
}

struct Decoder<'a> {
    code: u32,
    range: u32,
    bytes: &'a [u8],
    /// Bytes read so far, counting those read past the end (as zeros).
    pos: usize,
}

/// Why a stream is refused in the middle of a code.
enum Fault {
    Bypass,
    Range(u32),
}

impl<'a> Decoder<'a> {
    fn new(bytes: &'a [u8]) -> Self {
        let mut d = Decoder { code: 0, range: u32::MAX, bytes, pos: 0 };
        for _ in 0..4 {
            d.code = (d.code << 8) | d.next() as u32;
        }
        d
    }

    #[inline(always)]
    fn next(&mut self) -> u8 {
        let b = self.bytes.get(self.pos).copied().unwrap_or(0);
        self.pos += 1;
        b
    }

    #[inline(always)]
    fn normalize(&mut self) {
        while self.range < TOP {
            self.range <<= 8;
            self.code = (self.code << 8) | self.next() as u32;
        }
    }

    #[inline(always)]
    fn bit(&mut self, prob: &mut Prob) -> bool {
        let bound = (self.range >> PROB_BITS) * prob.p as u32;
        let bit = self.code < bound;
        if bit {
            self.range = bound;
        } else {
            self.code -= bound;
            self.range -= bound;
        }
        prob.update(bit);
        self.normalize();
        bit
    }

    /// `k` bypass bits; `None` if the stream holds a value the encoder never writes.
    #[inline(always)]
    fn bypass(&mut self, k: u32) -> Option<u32> {
        let r = self.range >> k;
        let v = self.code / r;
        if v >> k != 0 {
            return None;
        }
        self.code -= v * r;
        self.range = r;
        self.normalize();
        Some(v)
    }

    /// One code's magnitude and sign.
    #[inline(always)]
    fn code(&mut self, m: &mut Models, nb: Neighbours, max_abs: u32) -> Result<(u32, bool), Fault> {
        let k = nb.bucket();
        if !self.bit(&mut m.sig[k]) {
            return Ok((0, false));
        }
        let negative = self.bit(&mut m.sign[nb.sign()]);
        let mut e = 0;
        while e < CLASSES - 1 && self.bit(&mut m.prefix[k][e]) {
            e += 1;
        }
        let mut mag = 1u32;
        if e >= 1 {
            mag = 2 | self.bit(&mut m.msb[k][e]) as u32;
            if e >= 2 {
                let low_bits = e as u32 - 1;
                mag = (mag << low_bits) | self.bypass(low_bits).ok_or(Fault::Bypass)?;
            }
        }
        if mag > max_abs {
            return Err(Fault::Range(mag));
        }
        Ok((mag, negative))
    }
}

/// Checks the parameters a header declares before anything is decoded.
fn check_params(len: usize, n: usize, row: usize, max_abs: u32) -> Result<(), String> {
    if row == 0 {
        return Err("entropy stream: row length 0".into());
    }
    if max_abs > MAX_CODE {
        return Err(format!("entropy stream: max_abs {max_abs} above {MAX_CODE}"));
    }
    if len == 0 {
        return Err("entropy stream: empty (a stream is at least 1 byte)".into());
    }
    if n / MAX_CODES_PER_BYTE >= len {
        return Err(format!("entropy stream: {n} codes cannot fit in {len} bytes"));
    }
    Ok(())
}

fn decode_each(
    bytes: &[u8],
    n: usize,
    row: usize,
    max_abs: u32,
    mut out: impl FnMut(usize, i32),
) -> Result<(), String> {
    check_params(bytes.len(), n, row, max_abs)?;
    let mut dec = Decoder::new(bytes);
    if dec.code == u32::MAX {
        return Err("entropy stream: corrupt (starts with 4 bytes 0xFF)".into());
    }
    let mut m = Models::new();
    // The reader ends having read the stream and 3 zero bytes after it.
    let limit = bytes.len() + 3;
    let (mut nb, mut col) = (Neighbours::default(), 0usize);
    for i in 0..n {
        if col == row {
            (nb, col) = (Neighbours::default(), 0);
        }
        let (mag, negative) = dec.code(&mut m, nb, max_abs).map_err(|f| match f {
            Fault::Bypass => format!("entropy stream: corrupt at code {i} (bypass bits out of range)"),
            Fault::Range(mag) => format!("entropy stream: |code| {mag} at {i} above the limit {max_abs}"),
        })?;
        if dec.pos > limit {
            return Err(format!("entropy stream: truncated ({} bytes) at code {i} of {n}", bytes.len()));
        }
        out(i, if negative { -(mag as i32) } else { mag as i32 });
        nb.push(mag, negative);
        col += 1;
    }
    if dec.pos != limit {
        return Err(format!("entropy stream: {} trailing bytes after {n} codes", limit - dec.pos));
    }
    // The encoder's last value is the smallest multiple of 2^24 in the final interval.
    if dec.code > 0xFF_FFFF {
        return Err("entropy stream: corrupt (not the encoder's final byte)".into());
    }
    Ok(())
}

/// Decodes exactly `n` codes; every `|code|` must be within `max_abs` (≤ [`MAX_CODE`], from the
/// header). A truncated stream, bytes left after the last code, a stream the encoder cannot
/// have written, or a code out of range is an `Err` naming what is wrong; `n` above
/// [`MAX_CODES_PER_BYTE`] times the stream length is refused before allocating. Never panics.
pub fn decode(bytes: &[u8], n: usize, row: usize, max_abs: u32) -> Result<Vec<i32>, String> {
    check_params(bytes.len(), n, row, max_abs)?;
    let mut out = vec![0i32; n];
    decode_into(bytes, row, max_abs, &mut out)?;
    Ok(out)
}

/// [`decode`] into the caller's buffer: exactly `out.len()` codes (the fastest form).
pub fn decode_into(bytes: &[u8], row: usize, max_abs: u32, out: &mut [i32]) -> Result<(), String> {
    let n = out.len();
    decode_each(bytes, n, row, max_abs, |i, v| out[i] = v)
}

/// [`decode`] calling `out(i, code)` for each code in order, so that the caller dequantizes
/// without a second pass. On `Err`, `out` has seen a prefix of the codes.
pub fn decode_with(
    bytes: &[u8],
    n: usize,
    row: usize,
    max_abs: u32,
    out: impl FnMut(usize, i32),
) -> Result<(), String> {
    decode_each(bytes, n, row, max_abs, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Deterministic Laplacian codes of scale `scale` (splitmix64 + inverse CDF).
    fn laplace(n: usize, scale: f64, seed: u64) -> Vec<i32> {
        let mut state = seed;
        let mut uniform = move || {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
        };
        (0..n)
            .map(|_| {
                let u = uniform() - 0.5;
                let x = -scale * u.signum() * (1.0 - 2.0 * u.abs()).ln();
                (x.round() as i32).clamp(-(MAX_CODE as i32), MAX_CODE as i32)
            })
            .collect()
    }

    fn round_trip(codes: &[i32], row: usize) -> Vec<u8> {
        let bytes = encode(codes, row);
        assert_eq!(encoded_len(codes, row), bytes.len());
        let max_abs = codes.iter().map(|c| c.unsigned_abs()).max().unwrap_or(0);
        assert_eq!(decode(&bytes, codes.len(), row, max_abs).unwrap(), codes);
        let mut seen = Vec::new();
        decode_with(&bytes, codes.len(), row, MAX_CODE, |i, v| seen.push((i, v))).unwrap();
        assert!(seen.iter().enumerate().all(|(j, &(i, v))| i == j && v == codes[i]));
        bytes
    }

    /// The test vectors of spec section 4.4: a change of the format fails here.
    #[test]
    fn spec_vectors() {
        let vectors: [(&[i32], usize, &[u8]); 3] = [
            (&[0, 1, -1, 2, 0, 0, 5, -3], 4, &[0x99, 0x81, 0x64, 0xbe]),
            (&[32768, -32768, 0, 1000, 7], 5, &[0x40, 0, 0, 0, 0, 0, 0x40, 0, 0xd3, 0x10, 0x7d, 0x39]),
            (&[0; 20], 20, &[0xeb]),
        ];
        for (codes, row, bytes) in vectors {
            assert_eq!(encode(codes, row), bytes);
            assert_eq!(decode(bytes, codes.len(), row, MAX_CODE).unwrap(), codes);
        }
    }

    #[test]
    fn empty_stream_is_one_zero_byte() {
        assert_eq!(round_trip(&[], 5), [0]);
        assert!(decode(&[], 0, 1, 0).is_err());
        assert!(decode(&[0, 0], 0, 1, 0).unwrap_err().contains("trailing"));
    }

    #[test]
    fn extremes_round_trip() {
        let m = MAX_CODE as i32;
        round_trip(&[m, -m, m, m, -m, 0, 1, -1, m - 1, -(m - 1)], 3);
        round_trip(&vec![-m; 1000], 7);
        round_trip(&[0], 1);
        round_trip(&[-1], 1);
    }

    #[test]
    fn laplacian_codes_come_within_one_percent_of_the_entropy() {
        for scale in [0.3, 1.5, 8.0] {
            let codes = laplace(200_000, scale, 1);
            let bytes = round_trip(&codes, 576);
            let mut counts = std::collections::HashMap::new();
            for &c in &codes {
                *counts.entry(c).or_insert(0usize) += 1;
            }
            let n = codes.len() as f64;
            let entropy: f64 = counts.values().map(|&k| -(k as f64) * (k as f64 / n).log2()).sum();
            let ratio = bytes.len() as f64 * 8.0 / entropy;
            // Measured: 1.0045–1.0062 on 2^20 codes.
            assert!(ratio < 1.01, "scale {scale}: {ratio}");
        }
    }

    #[test]
    fn zeros_stay_under_the_density_bound() {
        let n = 4_000_000;
        let bytes = round_trip(&vec![0; n], 64);
        let per_byte = n / bytes.len();
        // Zeros approach the bound (measured: 5847 per byte).
        assert!(per_byte < MAX_CODES_PER_BYTE && per_byte > 5800, "{per_byte}");
        let err = decode(&bytes, MAX_CODES_PER_BYTE * bytes.len(), 64, 0).unwrap_err();
        assert!(err.contains("cannot fit"), "{err}");
    }

    #[test]
    fn encoding_is_deterministic() {
        let codes = laplace(50_000, 2.0, 9);
        assert_eq!(encode(&codes, 100), encode(&codes, 100));
    }

    #[test]
    fn every_truncation_and_extension_is_refused() {
        let codes = laplace(3_000, 1.0, 3);
        let bytes = encode(&codes, 30);
        for len in 0..bytes.len() {
            let err = decode(&bytes[..len], codes.len(), 30, MAX_CODE).unwrap_err();
            assert!(
                err.contains("truncated")
                    || err.contains("cannot fit")
                    || err.contains("empty")
                    || err.contains("corrupt"),
                "{len}: {err}"
            );
        }
        for extra in [0u8, 1, 0xFF] {
            let mut longer = bytes.clone();
            longer.push(extra);
            assert!(decode(&longer, codes.len(), 30, MAX_CODE).is_err());
        }
        // Fewer codes than the stream holds: bytes are left over.
        let err = decode(&bytes, codes.len() - 100, 30, MAX_CODE).unwrap_err();
        assert!(err.contains("trailing"), "{err}");
    }

    #[test]
    fn codes_above_max_abs_are_refused() {
        let codes = [0, 3, -7, 2, 8, 0];
        let bytes = encode(&codes, 6);
        assert_eq!(decode(&bytes, 6, 6, 8).unwrap(), codes);
        let err = decode(&bytes, 6, 6, 7).unwrap_err();
        assert!(err.contains("|code| 8 at 4"), "{err}");
        assert!(decode(&bytes, 6, 6, MAX_CODE + 1).is_err());
        assert!(decode(&bytes, 6, 0, 8).is_err());
    }

    #[test]
    fn a_huge_count_fails_before_allocating() {
        // 2^60 codes would need 4 EiB: the density bound refuses it at once.
        let err = decode(&[0, 0, 0], 1 << 60, 1, 0).unwrap_err();
        assert!(err.contains("cannot fit"), "{err}");
        // Within the bound, a stream of zeros runs out of bytes long before n codes.
        let err = decode(&[0x12, 0x34, 0x56], 17_000, 1, MAX_CODE).unwrap_err();
        assert!(err.contains("truncated") || err.contains("corrupt"), "{err}");
    }

    #[test]
    fn every_short_stream_that_decodes_is_the_encoders() {
        let mut accepted = 0;
        for n in 0..6 {
            for x in 0..=u16::MAX {
                let bytes = x.to_be_bytes();
                for len in 1..=2 {
                    if let Ok(codes) = decode(&bytes[..len], n, 2, MAX_CODE) {
                        assert_eq!(encode(&codes, 2), &bytes[..len]);
                        accepted += 1;
                    }
                }
            }
        }
        // Measured: 42 622 of the 786 432 (stream, length, n) triples decode.
        assert!(accepted > 1000, "{accepted}");
    }

    #[test]
    fn a_stream_of_ff_is_refused() {
        assert!(decode(&[0xFF; 8], 4, 2, MAX_CODE).unwrap_err().contains("corrupt"));
    }

    /// Codes from several distributions: all zero, all at ±max, Laplacian, heavy-tailed.
    fn codes_strategy() -> impl Strategy<Value = (Vec<i32>, usize)> {
        let m = MAX_CODE as i32;
        let code = prop_oneof![
            Just(0),
            prop_oneof![Just(m), Just(-m)],
            -3i32..=3,
            -300i32..=300,
            // Heavy tail: a random magnitude class, then a value in it.
            (0u32..16, any::<bool>(), any::<u16>()).prop_map(move |(e, neg, low)| {
                let mag = ((1u32 << e) | (low as u32 & ((1u32 << e) - 1))).min(MAX_CODE) as i32;
                if neg {
                    -mag
                } else {
                    mag
                }
            }),
        ];
        let mix = prop_oneof![
            prop::collection::vec(Just(0), 0..300),
            prop::collection::vec(prop_oneof![Just(m), Just(-m)], 0..300),
            prop::collection::vec(code, 0..2000),
        ];
        (mix, 1usize..400)
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(300))]

        #[test]
        fn round_trips((codes, row) in codes_strategy()) {
            let bytes = encode(&codes, row);
            prop_assert_eq!(encoded_len(&codes, row), bytes.len());
            prop_assert_eq!(decode(&bytes, codes.len(), row, MAX_CODE).unwrap(), codes);
        }

        #[test]
        fn random_bytes_never_panic_and_what_decodes_re_encodes_to_itself(
            bytes in prop::collection::vec(any::<u8>(), 0..64),
            n in 0usize..3000,
            row in 0usize..50,
            max_abs in prop_oneof![Just(MAX_CODE), 0u32..20, Just(MAX_CODE + 1)],
        ) {
            if let Ok(codes) = decode(&bytes, n, row, max_abs) {
                prop_assert_eq!(encode(&codes, row), bytes);
            }
        }

        #[test]
        fn flipped_bits_never_panic((codes, row) in codes_strategy(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mut bytes = encode(&codes, row);
            let i = at.index(bytes.len());
            bytes[i] ^= 1 << bit;
            if let Ok(decoded) = decode(&bytes, codes.len(), row, MAX_CODE) {
                prop_assert_eq!(encode(&decoded, row), bytes);
            }
        }
    }
}
