//! Minimal `.npy` (NumPy array file) reading and writing for `nerp run`: little-endian
//! f32/f64/i64/i32/u8 arrays in C order.

use crate::error::{Error, Result};
use std::path::Path;
use tract_onnx::prelude::Tensor;

const MAGIC: &[u8] = b"\x93NUMPY";

/// Reads an array as a tract tensor.
pub fn read(path: &Path) -> Result<Tensor> {
    let len = std::fs::metadata(path).map_err(|e| Error::io(path, "reading metadata of", e))?.len();
    // The file, then the tensor built from it.
    crate::format::budget::current().check(|| format!("reading input {}", path.display()), 2 * len)?;
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, "reading", e))?;
    let bad =
        |what: String| Error::Usage { option: "--input".into(), what: format!("{}: {what}", path.display()) };
    let t = parse(&bytes).map_err(bad)?;
    if let Some((i, v)) = first_non_finite(&t) {
        return Err(bad(format!("element {i} is {v}; a model input must be finite")));
    }
    Ok(t)
}

/// The first NaN or infinity of a float tensor.
fn first_non_finite(t: &Tensor) -> Option<(usize, f64)> {
    let plain = t.try_as_plain_ram().ok()?;
    let f = |v: f64| !v.is_finite();
    if let Ok(v) = plain.as_slice::<f32>() {
        return v.iter().position(|&x| f(x as f64)).map(|i| (i, v[i] as f64));
    }
    if let Ok(v) = plain.as_slice::<f64>() {
        return v.iter().position(|&x| f(x)).map(|i| (i, v[i]));
    }
    None
}

fn parse(b: &[u8]) -> std::result::Result<Tensor, String> {
    if b.len() < 10 || &b[..6] != MAGIC {
        return Err("not a .npy file (bad magic)".into());
    }
    let (len, start) = match b[6] {
        1 => (u16::from_le_bytes([b[8], b[9]]) as usize, 10),
        2 | 3 if b.len() >= 12 => (u32::from_le_bytes([b[8], b[9], b[10], b[11]]) as usize, 12),
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let header = b.get(start..start + len).ok_or("truncated .npy header")?;
    let header = std::str::from_utf8(header).map_err(|_| "header is not text")?;
    let field = |key: &str| -> Option<&str> {
        let at = header.find(&format!("'{key}':"))? + key.len() + 3;
        Some(header[at..].trim_start())
    };
    let descr = field("descr").and_then(|s| s.split('\'').nth(1)).ok_or("header has no descr")?;
    if field("fortran_order").is_some_and(|s| s.starts_with("True")) {
        return Err("Fortran-ordered arrays are not supported; save with np.ascontiguousarray".into());
    }
    let shape_src = field("shape").and_then(|s| s.strip_prefix('(')).and_then(|s| s.split(')').next());
    let shape: Vec<usize> = shape_src
        .ok_or("header has no shape")?
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().map_err(|_| format!("bad dimension {s:?}")))
        .collect::<std::result::Result<_, _>>()?;
    let data = &b[start + len..];
    let numel = shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d)).ok_or("shape overflows")?;
    match descr {
        "<f4" => typed::<f32, 4>(data, numel, &shape, f32::from_le_bytes),
        "<f8" => typed::<f64, 8>(data, numel, &shape, f64::from_le_bytes),
        "<i8" => typed::<i64, 8>(data, numel, &shape, i64::from_le_bytes),
        "<i4" => typed::<i32, 4>(data, numel, &shape, i32::from_le_bytes),
        "|u1" => typed::<u8, 1>(data, numel, &shape, u8::from_le_bytes),
        d => Err(format!("dtype {d} is not supported (use float32, float64, int64, int32 or uint8)")),
    }
}

fn typed<T: tract_onnx::prelude::Datum + Copy, const N: usize>(
    data: &[u8],
    numel: usize,
    shape: &[usize],
    conv: fn([u8; N]) -> T,
) -> std::result::Result<Tensor, String> {
    let need = numel.saturating_mul(N);
    if data.len() != need {
        return Err(format!("data is {} bytes, shape {shape:?} needs {need}", data.len()));
    }
    let v: Vec<T> = data.chunks_exact(N).map(|c| conv(c.try_into().expect("N bytes"))).collect();
    Tensor::from_shape(shape, &v).map_err(|e| e.to_string())
}

/// Writes f32 values of `shape` as a `.npy` file (atomically).
pub fn write_f32(path: &Path, values: &[f32], shape: &[usize]) -> Result<()> {
    write(path, "<f4", values.iter().flat_map(|v| v.to_le_bytes()), shape)
}

/// Writes int64 values of `shape` as a `.npy` file (atomically): token ids, for example.
pub fn write_i64(path: &Path, values: &[i64], shape: &[usize]) -> Result<()> {
    write(path, "<i8", values.iter().flat_map(|v| v.to_le_bytes()), shape)
}

fn write(path: &Path, descr: &str, data: impl Iterator<Item = u8>, shape: &[usize]) -> Result<()> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let shape_str =
        if dims.len() == 1 { format!("({},)", dims[0]) } else { format!("({})", dims.join(", ")) };
    let mut header = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape_str}, }}");
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = Vec::with_capacity(10 + header.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.extend(data);
    crate::format::write_atomic(path, &out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.npy");
        let v: Vec<f32> = (0..24).map(|i| i as f32 * 0.5).collect();
        super::write_f32(&p, &v, &[2, 3, 4]).unwrap();
        let t = super::read(&p).unwrap();
        assert_eq!(t.shape(), &[2, 3, 4]);
        assert_eq!(t.try_as_plain_ram().unwrap().as_slice::<f32>().unwrap(), &v[..]);
    }

    #[test]
    fn rejects_garbage() {
        assert!(super::parse(b"not numpy at all").is_err());
        assert!(super::parse(b"\x93NUMPY\x01\x00\xff\xff{").is_err());
    }
}
