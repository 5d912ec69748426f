#![no_main]

use libfuzzer_sys::fuzz_target;
use nerp::format::entropy::{decode, decode_with, encode, MAX_CODE};

// The entropy decoder on arbitrary streams and parameters: the first 7 bytes give `n` (u32,
// at most 2^20 so that a run stays fast), the row length (u16) and `max_abs` (one byte: 0..=255,
// or MAX_CODE − 1..=MAX_CODE + 1 for 253..=255); the rest is the stream. Decoding returns Ok or
// Err without panicking; whatever decodes is exactly what the encoder writes for those codes
// (the stream is canonical), and the callback form agrees with the vector form.
fuzz_target!(|data: &[u8]| {
    let Some((head, stream)) = data.split_first_chunk::<7>() else { return };
    let n = (u32::from_le_bytes([head[0], head[1], head[2], head[3]]) & 0xF_FFFF) as usize;
    let row = u16::from_le_bytes([head[4], head[5]]) as usize;
    let max_abs = match head[6] {
        m @ 0..=252 => m as u32,
        m => MAX_CODE + m as u32 - 254,
    };
    let decoded = decode(stream, n, row, max_abs);
    let mut seen = Vec::new();
    let with = decode_with(stream, n, row, max_abs, |i, v| {
        assert_eq!(i, seen.len());
        seen.push(v)
    });
    assert_eq!(decoded.is_ok(), with.is_ok());
    if let Ok(codes) = decoded {
        assert_eq!(codes, seen);
        assert!(codes.iter().all(|c| c.unsigned_abs() <= max_abs));
        assert_eq!(encode(&codes, row), stream);
    }
});
