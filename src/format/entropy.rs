//! Entropy coding of integer codes (spec section 4.4): a context-adaptive binary arithmetic
//! coder in the spirit of DeepCABAC, written here (no crate).
//!
//! DRAFT: parameters under measurement.

/// Largest `|code|` a stream may carry.
pub const MAX_CODE: u32 = 1 << 15;

/// Probability precision: a probability is an integer in `1..2^PROB_BITS`.
const PROB_BITS: u32 = 15;
const PROB_ONE: u16 = 1 << PROB_BITS;
/// Slowest adaptation: a context's shift grows with the bits it has seen up to this.
const RATE_MAX: u32 = 7;
/// Where a context's probability moves after a 1 and after a 0: it stays in
/// `P_LOW..=P_HIGH`.
const P_HIGH: i32 = PROB_ONE as i32 - P_LOW;
const P_LOW: i32 = 31;
/// The bit count after one more bit (saturating at 63).
const NEXT_N: [u16; 64] = {
    let mut t = [0u16; 64];
    let mut n = 0;
    while n < 64 {
        t[n] = if n < 63 { n as u16 + 1 } else { 63 };
        n += 1;
    }
    t
};
/// Adaptation shift after `n` bits: `min(bitlen(n + 1), RATE_MAX)`.
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
/// The range is renormalised (shifted by a byte) when it falls below this.
const TOP: u32 = 1 << 24;
/// Magnitude classes: class `e` holds `2^e ..= 2^(e+1) − 1`; `MAX_CODE` is in the last.
const CLASSES: usize = 16;
/// Neighbourhood buckets.
const BUCKETS: usize = 7;

/// One adaptive binary context: P(bit = 1) in units of 2^-15 and how many bits it has seen
/// (saturating at 63).
#[derive(Clone, Copy)]
struct Prob {
    p: u16,
    n: u16,
}

impl Prob {
    const HALF: Prob = Prob { p: PROB_ONE / 2, n: 0 };

    #[inline(always)]
    fn p1(self) -> u32 {
        self.p as u32
    }

    #[inline(always)]
    fn update(&mut self, bit: bool) {
        let n = self.n as usize & 63;
        let s = SHIFT[n] as u32;
        let p = self.p as i32;
        let target = if bit { P_HIGH } else { P_LOW };
        self.p = (p + ((target - p) >> s)) as u16;
        self.n = NEXT_N[n];
    }
}

/// Every context of a stream, at its initial state.
#[derive(Clone)]
struct Models {
    sig: [Prob; BUCKETS],
    sign: [Prob; 9],
    prefix: [[Prob; CLASSES]; BUCKETS],
    msb: [[Prob; CLASSES]; BUCKETS],
}

impl Models {
    fn new() -> Self {
        Models {
            sig: [Prob::HALF; BUCKETS],
            sign: [Prob::HALF; 9],
            prefix: [[Prob::HALF; CLASSES]; BUCKETS],
            msb: [[Prob::HALF; CLASSES]; BUCKETS],
        }
    }
}

/// The neighbourhood bucket of a code from the codes before it in its row (`a` just before,
/// `b` two before) and the code above it (`u`, the same column of the previous row).
/// `min(bitlen(t), BUCKETS - 1)` for `t < 64`.
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

/// The two codes before the current one in its row (zero at the start of a row), as the
/// contexts need them: magnitudes and sign classes (0: zero, 1: positive, 2: negative).
#[derive(Clone, Copy, Default)]
struct Neighbours {
    mag_a: u32,
    mag_b: u32,
    sign_a: u8,
    sign_b: u8,
}

impl Neighbours {
    /// The magnitude bucket: `min(bitlen(2·|a| + |b|), BUCKETS − 1)`.
    #[inline(always)]
    fn bucket(self) -> usize {
        let t = 2 * self.mag_a + self.mag_b;
        BUCKET_OF[t.min(63) as usize] as usize
    }

    /// The sign context: `sign_a + 3·sign_b`.
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

/// Where the encoder's bytes go: a buffer, or only a count.
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
        for _ in 0..count {
            Vec::push(self, byte)
        }
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
    low: u64,
    range: u32,
    /// The byte not yet written (a carry may still reach it), and how many 0xFF bytes follow it.
    cache: u8,
    pending: u64,
    /// False until the first byte leaves the cache: that byte is always 0 and is not written.
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
                debug_assert_eq!(carry, 0);
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
        let bound = (self.range >> PROB_BITS) * prob.p1();
        if bit {
            self.range = bound;
        } else {
            self.low += bound as u64;
            self.range -= bound;
        }
        prob.update(bit);
        self.normalize();
    }

    /// `k ≤ 16` equiprobable bits, the value `v < 2^k`.
    #[inline(always)]
    fn bypass(&mut self, v: u32, k: u32) {
        let r = self.range >> k;
        self.low += (v * r) as u64;
        self.range = r;
        self.normalize();
    }

    fn finish(mut self) -> S {
        // Any value in [low, low + range) decodes the same; range ≥ 2^24, so one with its low
        // three bytes zero exists: only its top byte is written.
        self.low = (self.low + 0xFF_FFFF) & !0xFF_FFFF;
        self.shift_low();
        self.shift_low();
        self.out
    }
}

fn encode_into<S: Sink>(codes: &[i32], row: usize, out: S) -> S {
    let mut enc = Encoder::new(out);
    let mut m = Models::new();
    for cur in codes.chunks(row.max(1)) {
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

/// Encodes `codes` (row-major, rows of `row` values; `row` 0 is taken as 1).
///
/// # Panics
/// If a code's magnitude exceeds [`MAX_CODE`].
pub fn encode(codes: &[i32], row: usize) -> Vec<u8> {
    encode_into(codes, row, Vec::with_capacity(codes.len() / 2 + 16))
}

/// `encode(codes, row).len()`, without writing the bytes.
pub fn encoded_len(codes: &[i32], row: usize) -> usize {
    encode_into(codes, row, Count(0)).0
}

struct Decoder<'a> {
    code: u32,
    range: u32,
    bytes: &'a [u8],
    /// Bytes read so far, including those read past the end as zero.
    pos: usize,
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
        let bound = (self.range >> PROB_BITS) * prob.p1();
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

    /// `k` bypass bits; `None` if the stream holds a value no encoder writes.
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
}

/// Why a stream is refused.
enum Fault {
    Bypass,
    Range(u32),
}

impl Decoder<'_> {
    /// One code's magnitude and sign.
    #[inline(always)]
    fn code(&mut self, m: &mut Models, nb: Neighbours, max_abs: u32) -> Result<(u32, bool), Fault> {
        let k = nb.bucket();
        if !self.bit(&mut m.sig[k]) {
            return Ok((0, false));
        }
        let neg = self.bit(&mut m.sign[nb.sign()]);
        let mut e = 0;
        while e < CLASSES - 1 && self.bit(&mut m.prefix[k][e]) {
            e += 1;
        }
        let mut mag = 1u32;
        if e >= 1 {
            mag = 2 | self.bit(&mut m.msb[k][e]) as u32;
            if e >= 2 {
                let k = e as u32 - 1;
                mag = (mag << k) | self.bypass(k).ok_or(Fault::Bypass)?;
            }
        }
        if mag > max_abs {
            return Err(Fault::Range(mag));
        }
        Ok((mag, neg))
    }
}

fn decode_each(
    bytes: &[u8],
    n: usize,
    row: usize,
    max_abs: u32,
    mut out: impl FnMut(usize, i32),
) -> Result<(), String> {
    if row == 0 {
        return Err("entropy stream: row length 0".into());
    }
    if max_abs > MAX_CODE {
        return Err(format!("entropy stream: max_abs {max_abs} above {MAX_CODE}"));
    }
    let mut dec = Decoder::new(bytes);
    let mut m = Models::new();
    let limit = bytes.len() + 3;
    let (mut nb, mut c) = (Neighbours::default(), 0usize);
    for i in 0..n {
        if c == row {
            (nb, c) = (Neighbours::default(), 0);
        }
        let (mag, neg) = match dec.code(&mut m, nb, max_abs) {
            Ok(v) => v,
            Err(Fault::Bypass) => return Err(format!("entropy stream: corrupt at code {i} (bypass bits out of range)")),
            Err(Fault::Range(mag)) => {
                return Err(format!("entropy stream: |code| {mag} at {i} above the limit {max_abs}"))
            }
        };
        if dec.pos > limit {
            return Err(format!("entropy stream: truncated ({} bytes) at code {i} of {n}", bytes.len()));
        }
        out(i, if neg { -(mag as i32) } else { mag as i32 });
        nb.push(mag, neg);
        c += 1;
    }
    if dec.pos != limit {
        return Err(format!("entropy stream: {} trailing bytes after {n} codes", limit - dec.pos));
    }
    Ok(())
}

/// Decodes exactly `out.len()` codes into `out`.
pub fn decode_into(bytes: &[u8], row: usize, max_abs: u32, out: &mut [i32]) -> Result<(), String> {
    let n = out.len();
    decode_each(bytes, n, row, max_abs, |i, v| out[i] = v)
}

/// Decodes exactly `n` codes, calling `out(i, code)` for each in order.
pub fn decode_with(bytes: &[u8], n: usize, row: usize, max_abs: u32, out: impl FnMut(usize, i32)) -> Result<(), String> {
    decode_each(bytes, n, row, max_abs, out)
}

/// Decodes exactly `n` codes.
pub fn decode(bytes: &[u8], n: usize, row: usize, max_abs: u32) -> Result<Vec<i32>, String> {
    let mut out = vec![0i32; n];
    decode_into(bytes, row, max_abs, &mut out)?;
    Ok(out)
}
