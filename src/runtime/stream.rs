//! Streaming decompress to safetensors for files without a predictor (the LLM path): the
//! safetensors header is computed from the shapes, then each tensor is decoded (checked as the
//! reader does: spec checks 31–33) and written in turn to a temporary file beside the target,
//! renamed over it at the end. Peak memory: one tensor (its f32 values and its bytes), not the
//! model — phase 1 held the whole image and a copy (2.74 GB for the 0.5 B layout).

use crate::error::{Error, Result};
use crate::format::{NerpFile, Storage};
use crate::ingest::safetensors::META_PREFIX;
use std::io::Write;
use std::path::Path;

/// The safetensors dtype name of a stored dtype.
fn dtype_name(d: crate::format::DType) -> String {
    format!("{:?}", crate::ingest::safetensors::to_safetensors(d))
}

/// Writes the tensors of `file` as a safetensors file at `path` one at a time; `Ok(None)` (and
/// nothing written) when a tensor is predicted (the predictor runs over whole layers: use
/// [`super::regen::regenerate`]). Returns the bytes written.
pub fn write_safetensors(file: &NerpFile, path: &Path) -> Result<Option<u64>> {
    let h = file.header();
    if h.tensors.iter().any(|t| matches!(t.storage, Storage::Predicted { .. })) {
        return Ok(None);
    }
    let mut map = serde_json::Map::new();
    let meta: serde_json::Map<String, serde_json::Value> = h
        .metadata
        .iter()
        .filter_map(|(k, v)| k.strip_prefix(META_PREFIX).map(|k| (k.to_string(), v.clone().into())))
        .collect();
    if !meta.is_empty() {
        map.insert("__metadata__".into(), meta.into());
    }
    let mut offset = 0u64;
    for t in &h.tensors {
        let numel = t.shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d));
        let len = numel
            .and_then(|n| n.checked_mul(t.dtype.size() as u64))
            .ok_or_else(|| Error::Rebuild(format!("tensor {} is too large", t.name)))?;
        let end = offset.checked_add(len).ok_or_else(|| Error::Rebuild("model is too large".into()))?;
        map.insert(
            t.name.clone(),
            serde_json::json!({ "dtype": dtype_name(t.dtype), "shape": t.shape, "data_offsets": [offset, end] }),
        );
        offset = end;
    }
    let mut json = serde_json::to_vec(&serde_json::Value::Object(map)).expect("header serializes");
    // The data starts 8-aligned (the safetensors convention), padded with spaces.
    json.resize(json.len().div_ceil(8) * 8, b' ');
    let total = 8 + json.len() as u64 + offset;
    let target = crate::format::output::target(path)?;
    let stream = target == crate::format::output::Target::Stream;
    let out_path = if stream { path.to_path_buf() } else { crate::format::write::temp_beside(path, "tmp")? };
    let _guard = (!stream).then(|| crate::format::output::TempGuard::register(&out_path));
    let result = (|| {
        let f = match stream {
            true => std::fs::OpenOptions::new().write(true).open(&out_path),
            false => std::fs::File::create(&out_path),
        }
        .map_err(|e| Error::io(&out_path, "creating", e))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, f);
        let io = |e| Error::io(&out_path, "writing", e);
        w.write_all(&(json.len() as u64).to_le_bytes()).map_err(io)?;
        w.write_all(&json).map_err(|e| Error::io(&out_path, "writing", e))?;
        for t in &h.tensors {
            let data = super::regen::unpredicted_bytes(file, t)?;
            w.write_all(&data).map_err(|e| Error::io(&out_path, "writing", e))?;
        }
        let f = w.into_inner().map_err(|e| Error::io(&out_path, "writing", e.into_error()))?;
        if !stream {
            f.sync_all().map_err(|e| Error::io(&out_path, "flushing", e))?;
            std::fs::rename(&out_path, path).map_err(|e| Error::io(path, "renaming into place", e))?;
        }
        Ok(())
    })();
    if result.is_err() && !stream {
        let _ = std::fs::remove_file(&out_path);
    }
    result.map(|()| Some(total))
}
