//! `raw`: the source bytes as they are, in a `tensor` section (spec section 4.2), zstd with
//! the bytes grouped by their position in each element (`zstd_bytegroup`, element = dtype
//! size; 1-byte dtypes plain `zstd`). Lossless; every tensor can be stored so.

use crate::format::{codec, DType, Encoding, FileBuilder, SectionKind, Storage};

/// The source values as f32 (float dtypes only).
pub fn values(dtype: DType, source: &[u8]) -> Vec<f32> {
    codec::to_f32(dtype, source).expect("a float tensor")
}

/// Writes `source` (little-endian `dtype`) as a raw tensor's section.
pub fn store(b: &mut FileBuilder, dtype: DType, source: &[u8]) -> (Storage, usize) {
    let encoding = match dtype.size() {
        1 => Encoding::Zstd,
        n => Encoding::ZstdBytegroup { element: n as u8 },
    };
    let section = b.add(SectionKind::Tensor, encoding, source);
    (Storage::Raw { section }, section)
}
