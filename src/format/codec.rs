//! Byte codecs of the format: little-endian dtype conversion, byte grouping (the
//! `zstd_bytegroup` encoding) and bit-packed permutations (spec section 4).

use super::DType;

/// Regroups bytes by their position inside `element`-byte elements (a trailing partial element
/// is left as is).
pub fn bytegroup(data: &[u8], element: usize) -> Vec<u8> {
    if element <= 1 {
        return data.to_vec();
    }
    let n = data.len() / element;
    let mut out = Vec::with_capacity(data.len());
    for b in 0..element {
        out.extend((0..n).map(|i| data[i * element + b]));
    }
    out.extend_from_slice(&data[n * element..]);
    out
}

/// Inverse of [`bytegroup`].
pub fn ungroup(data: &[u8], element: usize) -> Vec<u8> {
    if element <= 1 {
        return data.to_vec();
    }
    let n = data.len() / element;
    let mut out = vec![0u8; data.len()];
    for b in 0..element {
        for i in 0..n {
            out[i * element + b] = data[b * n + i];
        }
    }
    out[n * element..].copy_from_slice(&data[n * element..]);
    out
}

/// Bits per entry of a packed permutation of `n` items.
pub fn perm_bits(n: u64) -> u32 {
    (64 - n.saturating_sub(1).leading_zeros()).max(1)
}

/// Bytes of a packed permutation of `n` items.
pub fn packed_len(n: u64) -> u64 {
    (n * perm_bits(n) as u64).div_ceil(8)
}

/// Packs a permutation, `perm_bits(n)` bits per entry, least significant bit first.
pub fn pack_permutation(perm: &[u32]) -> Vec<u8> {
    let bits = perm_bits(perm.len() as u64);
    let mut out = vec![0u8; packed_len(perm.len() as u64) as usize];
    for (i, &v) in perm.iter().enumerate() {
        let pos = i as u64 * bits as u64;
        for b in 0..bits as u64 {
            if (v >> b) & 1 == 1 {
                let bit = pos + b;
                out[(bit / 8) as usize] |= 1 << (bit % 8);
            }
        }
    }
    out
}

/// Unpacks and checks a permutation of `n` items (each index below `n`, each exactly once);
/// no bytes is the identity (spec section 4).
pub fn unpack_permutation(bytes: &[u8], n: usize) -> Result<Vec<u32>, String> {
    if bytes.is_empty() {
        return Ok((0..n as u32).collect());
    }
    if bytes.len() as u64 != packed_len(n as u64) {
        return Err(format!("{} bytes, expected {}", bytes.len(), packed_len(n as u64)));
    }
    let bits = perm_bits(n as u64) as u64;
    let mut seen = vec![false; n];
    let mut out = Vec::with_capacity(n);
    for i in 0..n as u64 {
        let mut v = 0u64;
        for b in 0..bits {
            let bit = i * bits + b;
            v |= (((bytes[(bit / 8) as usize] >> (bit % 8)) & 1) as u64) << b;
        }
        match seen.get_mut(v as usize) {
            Some(s) if !*s => *s = true,
            _ => return Err(format!("entry {i} ({v}) is out of range or repeated: not a permutation")),
        }
        out.push(v as u32);
    }
    Ok(out)
}

/// Converts little-endian bytes of `dtype` to f32 values.
pub fn to_f32(dtype: DType, bytes: &[u8]) -> Option<Vec<f32>> {
    let n = dtype.size();
    let chunks = bytes.chunks_exact(n);
    Some(match dtype {
        DType::F32 => chunks.map(|c| f32::from_le_bytes(c.try_into().expect("4"))).collect(),
        DType::F16 => chunks.map(|c| half::f16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        DType::Bf16 => chunks.map(|c| half::bf16::from_le_bytes([c[0], c[1]]).to_f32()).collect(),
        DType::F64 => chunks.map(|c| f64::from_le_bytes(c.try_into().expect("8")) as f32).collect(),
        _ => return None,
    })
}

/// Converts f32 values to little-endian bytes of a float `dtype`.
pub fn from_f32(dtype: DType, values: &[f32]) -> Option<Vec<u8>> {
    Some(match dtype {
        DType::F32 => values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::F16 => {
            let mut out = vec![0u8; 2 * values.len()];
            for (o, &v) in out.chunks_exact_mut(2).zip(values) {
                o.copy_from_slice(&half::f16::from_f32(v).to_le_bytes());
            }
            out
        }
        DType::Bf16 => values.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect(),
        DType::F64 => values.iter().flat_map(|&v| (v as f64).to_le_bytes()).collect(),
        _ => return None,
    })
}
