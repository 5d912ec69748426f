//! `int2`…`int8` (format 3, spec section 4.3): symmetric quantization to `bits` bits with one
//! f16 scale per group of contiguous values of a row, in a `quantized` section (zstd). The
//! codes are rounded data-aware (GPTQ, [`super::gptq`]) where the compressor has the layer's
//! input moments, else to the nearest step with MSE-chosen scales ([`quant::quantize`]). Also
//! the codec of residuals (spec section 5.3b).

use crate::format::{limits, quant, Encoding, FileBuilder, Residual, SectionKind, Storage};

/// Values per scale when quantizing rows of `row` values to `bits` bits: the whole row for
/// int8 or rows of at most 128 values, else the largest divisor of the row at most 128 (at
/// least 16; else the whole row) — fewer bits need small groups to keep the error down.
pub fn group(row: u64, bits: u8) -> u64 {
    if bits >= 8 || row <= 128 {
        return row;
    }
    (16..=128).rev().find(|g| row.is_multiple_of(*g)).unwrap_or(row)
}

/// The values of a `quantized` section (`numel` values, groups of `group`), codes and scales
/// checked (spec check 32).
pub fn decode(bits: u8, group: u64, bytes: &[u8], numel: usize) -> Result<Vec<f32>, String> {
    let group = usize::try_from(group).map_err(|_| format!("group {group} is too large"))?;
    Ok(quant::decode(bytes, numel, group, bits, limits::MAX_ABS_VALUE)?.dequantize())
}

/// Writes a quantized tensor's section.
pub fn store(b: &mut FileBuilder, bits: u8, group: u64, bytes: &[u8]) -> (Storage, usize) {
    let section = b.add(SectionKind::Quantized, Encoding::Zstd, bytes);
    (Storage::Quantized { bits, group, zero_point: false, section }, section)
}

/// Writes a residual's section.
pub fn store_residual(b: &mut FileBuilder, bits: u8, group: u64, bytes: &[u8]) -> Residual {
    Residual::Quantized { bits, group, section: b.add(SectionKind::Quantized, Encoding::Zstd, bytes) }
}

/// `values` (of `t`'s shape, row-major: the tensor's or its residual's) quantized to `bits`
/// bits in groups of [`group`] of `t`'s row length: data-aware with the input moments `h` of
/// its layer when they match the rows, else to the nearest level.
#[cfg(feature = "compress")]
pub fn encode(
    t: super::Tensor,
    values: &[f32],
    bits: u8,
    h: Option<&super::gptq::Moments>,
) -> crate::Result<super::Encoded> {
    let row = crate::format::row_len(t.shape).expect("ingested shapes fit");
    let group = group(row, bits);
    let q = match h.and_then(|m| m.quantize(values, row as usize, group as usize, bits)) {
        Some(q) => q,
        None => quant::quantize(values, group as usize, bits, Default::default())
            .map_err(|e| crate::Error::Training(e.to_string())),
    }
    .map_err(|e| crate::Error::Training(format!("tensor {} cannot be stored as int{bits}: {e}", t.name)))?;
    Ok(super::Encoded::Int { bits, group, bytes: q.encode() })
}
