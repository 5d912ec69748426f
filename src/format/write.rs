//! Building `.nerp` bytes and writing them atomically.

use super::codec::bytegroup;
use super::{
    align_up, major_for, section_start, Encoding, Header, PredictorSpec, SectionEntry, SectionKind, Source,
    TensorEntry, ALIGN, MAGIC, MINOR, PREAMBLE_LEN,
};
use crate::error::{Error, Result};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

/// zstd level used for every compressed section (deterministic for a given input).
pub const ZSTD_LEVEL: i32 = 19;

/// Collects encoded sections, then lays out the whole file.
#[derive(Default)]
pub struct FileBuilder {
    sections: Vec<(SectionEntry, Vec<u8>)>,
}

impl FileBuilder {
    /// An empty builder.
    pub fn new() -> Self {
        Self::default()
    }

    /// Encodes `decoded` and appends it as a section; returns the section index.
    pub fn add(&mut self, kind: SectionKind, encoding: Encoding, decoded: &[u8]) -> usize {
        let stored = encode(encoding, decoded);
        let entry = SectionEntry {
            kind,
            offset: 0,
            length: stored.len() as u64,
            encoding,
            decoded_length: decoded.len() as u64,
            crc32: crc32fast::hash(&stored),
        };
        self.sections.push((entry, stored));
        self.sections.len() - 1
    }

    /// Stored (encoded) length of section `index`.
    pub fn stored_len(&self, index: usize) -> u64 {
        self.sections[index].0.length
    }

    /// Lays out preamble, header and sections; the result is a complete file image, in the
    /// lowest major version that expresses it ([`major_for`]; format 3 compresses the header).
    pub fn finish(
        self,
        source: Source,
        predictor: Option<PredictorSpec>,
        tensors: Vec<TensorEntry>,
        metadata: BTreeMap<String, String>,
    ) -> Vec<u8> {
        let mut offset = 0u64;
        let mut sections = Vec::with_capacity(self.sections.len());
        for (mut entry, _) in self.sections.iter().cloned() {
            entry.offset = section_start(entry.kind, offset).expect("in-memory file fits u64");
            offset = entry.offset + entry.length;
            sections.push(entry);
        }
        let header = Header { source, predictor, tensors, sections, metadata };
        let major = major_for(&header);
        let json = super::read::header_bytes(&header, major, ZSTD_LEVEL);
        let data_offset = align_up(PREAMBLE_LEN + json.len() as u64).expect("fits u64");

        let mut out = Vec::with_capacity(data_offset as usize + offset as usize);
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&major.to_le_bytes());
        out.extend_from_slice(&MINOR.to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes()); // flags
        out.extend_from_slice(&(json.len() as u64).to_le_bytes());
        out.extend_from_slice(&crc32fast::hash(&json).to_le_bytes());
        out.extend_from_slice(&0u32.to_le_bytes()); // reserved
        debug_assert_eq!(out.len() as u64, PREAMBLE_LEN);
        out.extend_from_slice(&json);
        out.resize(data_offset as usize, 0);
        for (i, (_, stored)) in self.sections.iter().enumerate() {
            out.resize((data_offset + header.sections[i].offset) as usize, 0);
            out.extend_from_slice(stored);
        }
        debug_assert!(ALIGN.is_power_of_two());
        out
    }
}

/// Encodes a section body.
pub fn encode(encoding: Encoding, decoded: &[u8]) -> Vec<u8> {
    match encoding {
        Encoding::Plain => decoded.to_vec(),
        Encoding::Zstd => zstd_compress(decoded),
        Encoding::ZstdBytegroup { element } => zstd_compress(&bytegroup(decoded, element as usize)),
    }
}

fn zstd_compress(data: &[u8]) -> Vec<u8> {
    let mut c = zstd::bulk::Compressor::new(ZSTD_LEVEL).expect("zstd level is valid");
    c.include_contentsize(true).expect("zstd parameter");
    c.include_checksum(false).expect("zstd parameter");
    c.compress(data).expect("zstd compresses in memory")
}

/// The folder a file at `path` is written into (`.` for a bare file name).
pub fn parent_dir(path: &Path) -> &Path {
    path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."))
}

/// Writes `bytes` to `path` atomically: a temporary file beside the target, flushed, then
/// renamed over it. A reader that has the old file memory-mapped keeps its (unlinked) copy
/// intact; no partially written file ever carries the target name.
///
/// An existing pipe or character device is written directly and other special files are
/// refused ([`crate::format::output::target`]); the temporary file is removed on error and, in the
/// CLI, when the process is interrupted ([`crate::format::output::install_interrupt_cleanup`]).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    if crate::format::output::target(path)? == crate::format::output::Target::Stream {
        return crate::format::output::write_stream(path, bytes);
    }
    let dir = parent_dir(path);
    let name = path
        .file_name()
        .ok_or_else(|| Error::usage("output path", format!("{} has no file name", path.display())))?;
    // Unique per call, not only per process: two threads writing the same path must not share
    // (and truncate) one temporary file.
    static NEXT_TMP: AtomicU64 = AtomicU64::new(0);
    let n = NEXT_TMP.fetch_add(1, AtomicOrdering::Relaxed);
    let tmp = dir.join(format!(".{}.tmp-{}-{n}", name.to_string_lossy(), std::process::id()));
    let _guard = crate::format::output::TempGuard::register(&tmp);
    let result = (|| {
        let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, "creating", e))?;
        f.write_all(bytes).map_err(|e| Error::io(&tmp, "writing", e))?;
        f.sync_all().map_err(|e| Error::io(&tmp, "flushing", e))?;
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, "renaming into place", e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}
