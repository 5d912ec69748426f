//! `nerp verify`: everything `decompress`, `run` and `eval` need from a file, checked without
//! keeping the weights, so that "valid" means "loads".

use crate::error::Result;
use crate::format::{NerpFile, Storage};

/// Checks `file` beyond the container rules of [`NerpFile::open`]: the memory budget of a
/// load, every section's decoding (raw tensors streamed, not kept), permutations and scales,
/// the predictor's weights and the finiteness of every regenerated tensor (one at a time, on
/// the CPU), the skeleton against the tensors' names, dtypes and shapes, and the registered
/// metadata (`input_shapes`, `preprocess`).
pub fn verify(file: &NerpFile) -> Result<()> {
    crate::runtime::regen::check_budget(file)?;
    let h = file.header();
    let raw: Vec<usize> = h
        .tensors
        .iter()
        .filter_map(|t| match t.storage {
            Storage::Raw { section } | Storage::Cast { section, .. } => Some(section),
            Storage::Predicted { .. } | Storage::Quantized { .. } | Storage::Coded { .. } => None,
        })
        .collect();
    for index in 0..h.sections.len() {
        if raw.contains(&index) {
            file.check_section_decodes(index)?;
        } else {
            file.decode_section(index)?;
        }
    }
    for t in
        h.tensors.iter().filter(|t| matches!(t.storage, Storage::Quantized { .. } | Storage::Coded { .. }))
    {
        crate::runtime::regen::stored_bytes(file, t)?;
    }
    crate::runtime::regen::check_predicted(file)?;
    crate::runtime::check_skeleton(file)?;
    crate::runtime::stored_input_shapes(file)?;
    crate::data::Preprocess::stored(file)?;
    Ok(())
}
