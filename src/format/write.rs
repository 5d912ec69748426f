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

/// zstd level of the header and of sections whose decoded content is at most
/// [`FAST_ABOVE`] bytes (deterministic for a given input).
pub const ZSTD_LEVEL: i32 = 19;

/// Sections longer than this are compressed at [`FAST_LEVEL`]. On 32 MiB of the byte-grouped
/// f16 embedding of the 0.5 B LLM layout, level 19 took 14.7 s and level 3 0.09 s for 0.001%
/// fewer bytes (docs/results/llm.md); quantized codes hardly compress at any level. Every
/// ResNet-20/56 section is below it, so their files are unchanged.
pub const FAST_ABOVE: usize = 1 << 20;

/// zstd level of sections longer than [`FAST_ABOVE`].
pub const FAST_LEVEL: i32 = 3;

/// The zstd level of a section of `decoded_len` bytes (spec section 8, Writers).
pub fn zstd_level(decoded_len: usize) -> i32 {
    if decoded_len > FAST_ABOVE {
        FAST_LEVEL
    } else {
        ZSTD_LEVEL
    }
}

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
    let mut c = zstd::bulk::Compressor::new(zstd_level(data.len())).expect("zstd level is valid");
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

/// Writes a `.nerp` file section by section, without holding it: each section is encoded and
/// appended to a temporary data file beside the target as it comes; [`Self::finish`] writes the
/// header into a second temporary file, appends the data, checks the result with the reader
/// and renames it over the target (or writes it to a pipe). Memory: one section at a time.
pub struct StreamWriter {
    target: std::path::PathBuf,
    data_path: std::path::PathBuf,
    data: std::io::BufWriter<std::fs::File>,
    offset: u64,
    sections: Vec<SectionEntry>,
    _guard: crate::format::output::TempGuard,
}

/// A temporary path beside `path`, unique per call.
pub fn temp_beside(path: &Path, tag: &str) -> Result<std::path::PathBuf> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .ok_or_else(|| Error::usage("output path", format!("{} has no file name", path.display())))?;
    let n = NEXT.fetch_add(1, AtomicOrdering::Relaxed);
    let file = format!(".{}.{tag}-{}-{n}", name.to_string_lossy(), std::process::id());
    Ok(parent_dir(path).join(file))
}

impl StreamWriter {
    /// Starts a file for `path` (nothing carries its name until [`Self::finish`]).
    pub fn create(path: &Path) -> Result<Self> {
        crate::format::output::target(path)?;
        let data_path = temp_beside(path, "data")?;
        let guard = crate::format::output::TempGuard::register(&data_path);
        let f = std::fs::File::create(&data_path).map_err(|e| Error::io(&data_path, "creating", e))?;
        Ok(StreamWriter {
            target: path.to_path_buf(),
            data_path,
            data: std::io::BufWriter::with_capacity(1 << 20, f),
            offset: 0,
            sections: Vec::new(),
            _guard: guard,
        })
    }

    /// Encodes `decoded` (zstd at [`zstd_level`]) and appends it as the next section; returns
    /// its index.
    pub fn add(&mut self, kind: SectionKind, encoding: Encoding, decoded: &[u8]) -> Result<usize> {
        let stored = encode(encoding, decoded);
        self.add_stored(kind, encoding, decoded.len() as u64, &stored)
    }

    /// Stored (encoded) length of section `index`.
    pub fn stored_len(&self, index: usize) -> u64 {
        self.sections[index].length
    }

    /// Appends a section already encoded (`stored`, `decoded_length` bytes once decoded).
    pub fn add_stored(
        &mut self,
        kind: SectionKind,
        encoding: Encoding,
        decoded_length: u64,
        stored: &[u8],
    ) -> Result<usize> {
        let start =
            section_start(kind, self.offset).ok_or_else(|| Error::Rebuild("file exceeds u64".into()))?;
        let pad = (start - self.offset) as usize;
        let io = |e| Error::io(&self.data_path, "writing", e);
        self.data.write_all(&[0u8; ALIGN as usize][..pad]).map_err(io)?;
        self.data.write_all(stored).map_err(|e| Error::io(&self.data_path, "writing", e))?;
        self.offset = start + stored.len() as u64;
        self.sections.push(SectionEntry {
            kind,
            offset: start,
            length: stored.len() as u64,
            encoding,
            decoded_length,
            crc32: crc32fast::hash(stored),
        });
        Ok(self.sections.len() - 1)
    }

    /// Writes the header, then the data, checks the file with the reader and moves it into
    /// place atomically; returns its length in bytes.
    pub fn finish(
        mut self,
        source: Source,
        predictor: Option<PredictorSpec>,
        tensors: Vec<TensorEntry>,
        metadata: BTreeMap<String, String>,
    ) -> Result<u64> {
        self.data.flush().map_err(|e| Error::io(&self.data_path, "writing", e))?;
        let header =
            Header { source, predictor, tensors, sections: std::mem::take(&mut self.sections), metadata };
        let major = major_for(&header);
        let json = super::read::header_bytes(&header, major, ZSTD_LEVEL);
        let data_offset = align_up(PREAMBLE_LEN + json.len() as u64).expect("fits u64");
        let mut head = Vec::with_capacity(data_offset as usize);
        head.extend_from_slice(&MAGIC);
        head.extend_from_slice(&major.to_le_bytes());
        head.extend_from_slice(&MINOR.to_le_bytes());
        head.extend_from_slice(&0u32.to_le_bytes()); // flags
        head.extend_from_slice(&(json.len() as u64).to_le_bytes());
        head.extend_from_slice(&crc32fast::hash(&json).to_le_bytes());
        head.extend_from_slice(&0u32.to_le_bytes()); // reserved
        head.extend_from_slice(&json);
        head.resize(data_offset as usize, 0);
        let total = data_offset + self.offset;
        let stream = crate::format::output::target(&self.target)? == crate::format::output::Target::Stream;
        let out_path = if stream { self.target.clone() } else { temp_beside(&self.target, "tmp")? };
        let _guard = (!stream).then(|| crate::format::output::TempGuard::register(&out_path));
        let result = (|| {
            let mut out = match stream {
                true => std::fs::OpenOptions::new().write(true).open(&out_path),
                false => std::fs::File::create(&out_path),
            }
            .map_err(|e| Error::io(&out_path, "creating", e))?;
            out.write_all(&head).map_err(|e| Error::io(&out_path, "writing", e))?;
            let mut data =
                std::fs::File::open(&self.data_path).map_err(|e| Error::io(&self.data_path, "reading", e))?;
            std::io::copy(&mut data, &mut out).map_err(|e| Error::io(&out_path, "writing", e))?;
            if stream {
                return Ok(());
            }
            out.sync_all().map_err(|e| Error::io(&out_path, "flushing", e))?;
            drop(out);
            // Never move a file the reader would refuse into place.
            super::NerpFile::open_mapped(&out_path)?;
            std::fs::rename(&out_path, &self.target)
                .map_err(|e| Error::io(&self.target, "renaming into place", e))
        })();
        let _ = std::fs::remove_file(&self.data_path);
        if result.is_err() && !stream {
            let _ = std::fs::remove_file(&out_path);
        }
        result.map(|()| total)
    }
}
