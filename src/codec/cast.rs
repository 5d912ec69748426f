//! `cast` (format 3, spec section 5.3a): f32/f64 values stored as `f16` or `bf16`
//! (round-to-nearest-even) in a `tensor` section, zstd with 2-byte groups; read back by
//! widening exactly. Other dtypes (f16/bf16 sources already are) stay raw.

use super::{Encoded, Tensor};
use crate::format::{codec, DType, Encoding, FileBuilder, SectionKind, Storage};

/// `t` cast to `to` (f16 or bf16): raw unless `t` is f32/f64.
pub fn encode(t: Tensor, to: DType) -> Encoded {
    if !matches!(t.dtype, DType::F32 | DType::F64) || !matches!(to, DType::F16 | DType::Bf16) {
        return Encoded::Raw;
    }
    Encoded::Cast { to, bytes: codec::from_f32(to, &t.values()).expect("a half dtype") }
}

/// The values of a section holding `numel` little-endian `to` values.
pub fn decode(to: DType, bytes: &[u8], numel: usize) -> Result<Vec<f32>, String> {
    if !matches!(to, DType::F16 | DType::Bf16) || bytes.len() != numel.saturating_mul(to.size()) {
        return Err(format!("{} bytes of {} for {numel} values", bytes.len(), to.name()));
    }
    Ok(codec::to_f32(to, bytes).expect("a half dtype"))
}

/// Writes a cast tensor's section.
pub fn store(b: &mut FileBuilder, to: DType, bytes: &[u8]) -> (Storage, usize) {
    let section = b.add(SectionKind::Tensor, Encoding::ZstdBytegroup { element: 2 }, bytes);
    (Storage::Cast { to, section }, section)
}
