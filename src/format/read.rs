//! Reading and validating `.nerp` files. Every rule of spec/nerp-v1.md "Validation" is checked
//! here, before any count, size or offset from the file is used.

use super::codec::{packed_len, to_f32, ungroup, unpack_permutation};
use super::geometry::{Grid, LayerPlan};
use super::predictor::{frequencies, stored_len, ARCH};
use super::{
    align_up, entropy, limits, needs_format_2, needs_format_3, needs_format_4, predictor_needs_format_3,
    quant, row_len, DType, Encoding, Header, PredictorSpec, Residual, SectionEntry, SectionKind, Source,
    SourceKind, Storage, TensorEntry, ALIGN, MAGIC, MAJOR, MIN_MAJOR, PREAMBLE_LEN,
};
use crate::error::{Error, FormatError, Result};
use crate::mmap::FileBytes;
use serde::{Deserialize, Serialize};
use std::borrow::Cow;
use std::collections::BTreeMap;
use std::collections::HashSet;
use std::io::Read;
use std::path::{Path, PathBuf};

/// An open, fully validated `.nerp` file; sections are zero-copy views of the mapping.
pub struct NerpFile {
    path: PathBuf,
    bytes: FileBytes,
    header: Header,
    data_offset: u64,
    major: u16,
}

/// The fixed preamble.
struct Preamble {
    major: u16,
    header_len: u64,
    header_crc: u32,
}

impl NerpFile {
    /// Reads `path` into a 64-byte-aligned buffer and validates it completely (layout, header,
    /// checksums, padding). A file that another program truncates meanwhile gives an I/O
    /// error, where a memory map would kill the process with SIGBUS; reading a 300 KB file
    /// costs about as much as mapping it (benches/README.md, "Opening a file").
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, "opening", e))?;
        let len = Self::checked_len(path, &file)?;
        super::budget::current().check(|| format!("reading {}", path.display()), len)?;
        let bytes = FileBytes::read(&mut file, len).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => Error::io(
                path,
                "reading (the file shrank while being read: is another program writing it?)",
                e,
            ),
            _ => Error::io(path, "reading", e),
        })?;
        Self::validate(path.to_path_buf(), bytes)
    }

    /// [`NerpFile::open`] through a memory map (kept for the benchmark that compares both; a
    /// file truncated while mapped kills the process with SIGBUS).
    pub fn open_mapped(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let file = std::fs::File::open(path).map_err(|e| Error::io(path, "opening", e))?;
        Self::checked_len(path, &file)?;
        let bytes = FileBytes::map(&file).map_err(|e| Error::io(path, "memory-mapping", e))?;
        Self::validate(path.to_path_buf(), bytes)
    }

    /// The length of an open file, refusing anything that is not a regular file (a FIFO or
    /// a device has no length and could block or never end) and files shorter than a preamble.
    fn checked_len(path: &Path, file: &std::fs::File) -> Result<u64> {
        let meta = file.metadata().map_err(|e| Error::io(path, "reading metadata of", e))?;
        if !meta.is_file() {
            return Err(Error::usage("input file", format!("{} is not a regular file", path.display())));
        }
        let len = meta.len();
        if len < PREAMBLE_LEN {
            return Err(fmt_err(path, FormatError::TooShort { len, need: PREAMBLE_LEN }));
        }
        Ok(len)
    }

    /// Validates an in-memory file image; `name` is used in error messages.
    pub fn from_bytes(bytes: Vec<u8>, name: impl Into<PathBuf>) -> Result<Self> {
        Self::validate(name.into(), FileBytes::Owned(bytes))
    }

    fn validate(path: PathBuf, bytes: FileBytes) -> Result<Self> {
        match check_all(&bytes) {
            Ok((header, data_offset, major)) => Ok(NerpFile { path, bytes, header, data_offset, major }),
            Err(kind) => Err(Error::Format { path, kind }),
        }
    }

    /// The file's major format version (1, 2 or 3).
    pub fn major(&self) -> u16 {
        self.major
    }

    /// The validated header.
    pub fn header(&self) -> &Header {
        &self.header
    }

    /// The file's path (or the name given to [`NerpFile::from_bytes`]).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Total file length in bytes.
    pub fn file_len(&self) -> u64 {
        self.bytes.len() as u64
    }

    /// Offset of the data section.
    pub fn data_offset(&self) -> u64 {
        self.data_offset
    }

    /// The stored bytes of section `index` (zero-copy). Panics on an index not in the header.
    pub fn section(&self, index: usize) -> &[u8] {
        let s = &self.header.sections[index];
        // Bounds were validated at open.
        let start = (self.data_offset + s.offset) as usize;
        &self.bytes[start..start + s.length as usize]
    }

    /// The decoded content of section `index`: borrowed for plain sections.
    pub fn decode_section(&self, index: usize) -> Result<Cow<'_, [u8]>> {
        let s = &self.header.sections[index];
        if s.encoding != Encoding::Plain {
            super::budget::current().check(
                || format!("{}: decoding {}", self.path.display(), self.section_owner(index)),
                s.decoded_length,
            )?;
        }
        decode(s.encoding, self.section(index), s.decoded_length)
            .map_err(|what| self.fmt_error(FormatError::Section { index, what }))
    }

    /// Checks that section `index` decodes (spec checks 26–27) without keeping its content:
    /// memory stays within the zstd window whatever the section's size.
    pub fn check_section_decodes(&self, index: usize) -> Result<()> {
        let s = &self.header.sections[index];
        check_decodes(s.encoding, self.section(index), s.decoded_length)
            .map_err(|what| self.fmt_error(FormatError::Section { index, what }))
    }

    /// What section `index` holds, for messages: `tensor NAME (raw data)`, `the skeleton`, …
    pub fn section_owner(&self, index: usize) -> String {
        section_owner(&self.header, index)
    }

    /// Wraps a format error with this file's path.
    pub fn fmt_error(&self, kind: FormatError) -> Error {
        fmt_err(&self.path, kind)
    }
}

fn fmt_err(path: &Path, kind: FormatError) -> Error {
    Error::Format { path: path.to_path_buf(), kind }
}

/// Reads and validates only the preamble and header of `path` (no data section byte is read,
/// no checksum of a section is verified). Returns the header and the file length.
pub fn read_header(path: impl AsRef<Path>) -> Result<(Header, u64)> {
    read_header_version(path).map(|(h, len, _)| (h, len))
}

/// [`read_header`], also returning the file's major version.
pub fn read_header_version(path: impl AsRef<Path>) -> Result<(Header, u64, u16)> {
    read_header_info(path).map(|i| (i.header, i.file_len, i.major))
}

/// What [`read_header_info`] reads: the header and the numbers of the preamble.
#[derive(Debug, Clone)]
pub struct HeaderInfo {
    pub header: Header,
    pub file_len: u64,
    pub major: u16,
    /// Stored header bytes (compressed in format 3).
    pub header_len: u64,
    /// The header's JSON length (after decompression in format 3).
    pub json_len: u64,
}

/// [`read_header`] with the major version and the header's stored and JSON lengths.
pub fn read_header_info(path: impl AsRef<Path>) -> Result<HeaderInfo> {
    let path = path.as_ref();
    let mut file = std::fs::File::open(path).map_err(|e| Error::io(path, "opening", e))?;
    let file_len = file.metadata().map_err(|e| Error::io(path, "reading metadata of", e))?.len();
    let mut pre = [0u8; PREAMBLE_LEN as usize];
    if file_len < PREAMBLE_LEN {
        return Err(fmt_err(path, FormatError::TooShort { len: file_len, need: PREAMBLE_LEN }));
    }
    file.read_exact(&mut pre).map_err(|e| Error::io(path, "reading", e))?;
    let p = parse_preamble(&pre, file_len).map_err(|k| fmt_err(path, k))?;
    let mut json = vec![0u8; p.header_len as usize];
    file.read_exact(&mut json).map_err(|e| Error::io(path, "reading header of", e))?;
    let (header, json_len) = parse_header(&p, &json, file_len).map_err(|k| fmt_err(path, k))?;
    Ok(HeaderInfo { header, file_len, major: p.major, header_len: p.header_len, json_len })
}

fn parse_preamble(b: &[u8], file_len: u64) -> Result<Preamble, FormatError> {
    let need = PREAMBLE_LEN;
    let pre = b.get(..need as usize).ok_or(FormatError::TooShort { len: file_len, need })?;
    let magic: [u8; 8] = pre[0..8].try_into().expect("8 bytes");
    if magic != MAGIC {
        return Err(FormatError::BadMagic { found: magic });
    }
    let u16_at = |o: usize| u16::from_le_bytes([pre[o], pre[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes(pre[o..o + 4].try_into().expect("4 bytes"));
    let major = u16_at(8);
    if !(MIN_MAJOR..=MAJOR).contains(&major) {
        return Err(FormatError::UnsupportedVersion { found: major, supported: MAJOR });
    }
    let flags = u32_at(12);
    let reserved = u32_at(28);
    if flags != 0 || reserved != 0 {
        return Err(FormatError::UnknownFlags(flags | reserved));
    }
    let header_len = u64::from_le_bytes(pre[16..24].try_into().expect("8 bytes"));
    if header_len > limits::MAX_HEADER_LEN {
        return Err(FormatError::HeaderTooLarge { len: header_len, limit: limits::MAX_HEADER_LEN });
    }
    if PREAMBLE_LEN + header_len > file_len {
        return Err(FormatError::HeaderOutOfFile { offset: PREAMBLE_LEN, len: header_len, file_len });
    }
    Ok(Preamble { major, header_len, header_crc: u32_at(24) })
}

/// Parses the header (decompressing it in format 3) and checks everything that needs only the
/// header and file length; also returns the JSON's length.
fn parse_header(p: &Preamble, stored: &[u8], file_len: u64) -> Result<(Header, u64), FormatError> {
    let computed = crc32fast::hash(stored);
    if computed != p.header_crc {
        return Err(FormatError::HeaderChecksum { stored: p.header_crc, computed });
    }
    let (header, json_len) = if p.major >= 3 {
        let json = decompress_header(stored)?;
        (header_from_v3_json(&json)?, json.len() as u64)
    } else {
        let h = serde_json::from_slice(stored).map_err(|e| FormatError::HeaderJson(e.to_string()))?;
        (h, stored.len() as u64)
    };
    let data_offset = data_offset(p.header_len)?;
    check_layout(&header, data_offset, file_len)?;
    check_semantics(&header, p.major)?;
    Ok((header, json_len))
}

/// Decompresses a format-3 header (spec check 8a): one zstd frame declaring its content size,
/// at most [`limits::MAX_HEADER_LEN`] (checked before allocating: a small frame declaring
/// gigabytes is a decompression bomb), a window of at most [`limits::MAX_ZSTD_WINDOW`], and
/// decoding to exactly that size.
pub fn decompress_header(stored: &[u8]) -> Result<Vec<u8>, FormatError> {
    let bad = |what: String| FormatError::HeaderCompression(what);
    if !stored.starts_with(&ZSTD_MAGIC) {
        return Err(bad("the header does not start with a zstd frame (format 3 compresses it)".into()));
    }
    let declared = match zstd::zstd_safe::get_frame_content_size(stored) {
        Ok(Some(n)) => n,
        _ => return Err(bad("the header's zstd frame has no valid content size".into())),
    };
    if declared > limits::MAX_HEADER_LEN {
        return Err(FormatError::HeaderTooLarge { len: declared, limit: limits::MAX_HEADER_LEN });
    }
    check_frame(stored, declared).map_err(bad)?;
    let mut out = Vec::with_capacity(declared.min(stored.len() as u64 * PLAUSIBLE_ZSTD_RATIO) as usize);
    let mut decoder = zstd::stream::read::Decoder::with_buffer(stored)
        .map_err(|e| bad(format!("zstd decoder: {e}")))?
        .single_frame();
    (&mut decoder)
        .take(declared.saturating_add(1))
        .read_to_end(&mut out)
        .map_err(|e| bad(format!("the header's zstd data is corrupt: {e}")))?;
    if out.len() as u64 != declared {
        return Err(bad(format!("the header decoded to {} bytes, its frame declares {declared}", out.len())));
    }
    if !decoder.finish().is_empty() {
        return Err(bad("bytes follow the header's zstd frame".into()));
    }
    Ok(out)
}

/// A section as a format-3 header stores it: no `offset` (derived, spec section 2) and, for a
/// `plain` section, no `decoded_length` (it equals `length`).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SectionV3 {
    kind: SectionKind,
    length: u64,
    encoding: Encoding,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    decoded_length: Option<u64>,
    crc32: u32,
}

/// The format-3 header as stored (members in the order of [`Header`]).
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HeaderV3 {
    source: Source,
    predictor: Option<PredictorSpec>,
    tensors: Vec<TensorEntry>,
    sections: Vec<SectionV3>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

/// Parses a format-3 header JSON and derives what it leaves out.
fn header_from_v3_json(json: &[u8]) -> Result<Header, FormatError> {
    let bad = |e: String| Err(FormatError::HeaderJson(e));
    let h: HeaderV3 = match serde_json::from_slice(json) {
        Ok(h) => h,
        Err(e) => return bad(e.to_string()),
    };
    limit("sections", h.sections.len() as u64, limits::MAX_SECTIONS as u64)?;
    let mut sections = Vec::with_capacity(h.sections.len());
    let mut offset = 0u64;
    for (i, s) in h.sections.into_iter().enumerate() {
        let decoded_length = match (s.encoding, s.decoded_length) {
            (Encoding::Plain, None) => s.length,
            (Encoding::Plain, Some(_)) => {
                return bad(format!("section {i}: a plain section has no `decoded_length` in format 3"))
            }
            (_, Some(n)) => n,
            (_, None) => return bad(format!("section {i}: missing field `decoded_length`")),
        };
        sections.push(SectionEntry {
            kind: s.kind,
            offset,
            length: s.length,
            encoding: s.encoding,
            decoded_length,
            crc32: s.crc32,
        });
        offset = offset
            .checked_add(s.length)
            .and_then(align_up)
            .ok_or_else(|| FormatError::Overflow(format!("end of section {i}")))?;
    }
    Ok(Header {
        source: h.source,
        predictor: h.predictor,
        tensors: h.tensors,
        sections,
        metadata: h.metadata,
    })
}

/// The stored form of a header in major version `major`: JSON for 1 and 2; for 3 the JSON
/// without derived fields (section `offset`, a plain section's `decoded_length`), compressed
/// with zstd at `level`.
pub fn header_bytes(header: &Header, major: u16, level: i32) -> Vec<u8> {
    if major < 3 {
        return serde_json::to_vec(header).expect("header serializes");
    }
    let sections = header
        .sections
        .iter()
        .map(|s| SectionV3 {
            kind: s.kind,
            length: s.length,
            encoding: s.encoding,
            decoded_length: (s.encoding != Encoding::Plain).then_some(s.decoded_length),
            crc32: s.crc32,
        })
        .collect();
    let h = HeaderV3 {
        source: header.source.clone(),
        predictor: header.predictor.clone(),
        tensors: header.tensors.clone(),
        sections,
        metadata: header.metadata.clone(),
    };
    let json = serde_json::to_vec(&h).expect("header serializes");
    let mut c = zstd::bulk::Compressor::new(level).expect("zstd level is valid");
    c.include_contentsize(true).expect("zstd parameter");
    c.include_checksum(false).expect("zstd parameter");
    c.compress(&json).expect("zstd compresses in memory")
}

fn data_offset(header_len: u64) -> Result<u64, FormatError> {
    align_up(PREAMBLE_LEN + header_len).ok_or_else(|| FormatError::Overflow("data offset".into()))
}

/// Full validation of a file image: returns the header and the data offset.
fn check_all(b: &[u8]) -> Result<(Header, u64, u16), FormatError> {
    let file_len = b.len() as u64;
    let p = parse_preamble(b, file_len)?;
    let header_end = (PREAMBLE_LEN + p.header_len) as usize;
    let (header, _) = parse_header(&p, &b[PREAMBLE_LEN as usize..header_end], file_len)?;
    let data_offset = data_offset(p.header_len)?;
    check_zero(b, header_end as u64, data_offset)?;
    let mut prev_end = data_offset;
    for (index, s) in header.sections.iter().enumerate() {
        let start = data_offset + s.offset;
        check_zero(b, prev_end, start)?;
        let stored = &b[start as usize..(start + s.length) as usize];
        let computed = crc32fast::hash(stored);
        if computed != s.crc32 {
            let kind = s.kind.name().to_string();
            return Err(FormatError::SectionChecksum { index, kind, stored: s.crc32, computed });
        }
        prev_end = start + s.length;
    }
    Ok((header, data_offset, p.major))
}

fn check_zero(b: &[u8], from: u64, to: u64) -> Result<(), FormatError> {
    match b[from as usize..to as usize].iter().position(|&x| x != 0) {
        Some(i) => Err(FormatError::NonZeroPadding { offset: from + i as u64 }),
        None => Ok(()),
    }
}

/// Sections follow each other in order, each at the previous end rounded up to [`ALIGN`],
/// inside the file, and the last one ends exactly at the end of the file.
fn check_layout(h: &Header, data_offset: u64, file_len: u64) -> Result<(), FormatError> {
    limit("sections", h.sections.len() as u64, limits::MAX_SECTIONS as u64)?;
    if data_offset > file_len {
        return Err(FormatError::HeaderOutOfFile {
            offset: PREAMBLE_LEN,
            len: data_offset - PREAMBLE_LEN,
            file_len,
        });
    }
    let mut expected = 0u64;
    for (index, s) in h.sections.iter().enumerate() {
        let kind = s.kind.name().to_string();
        if s.offset != expected {
            return Err(FormatError::SectionOffset { index, kind, found: s.offset, expected });
        }
        debug_assert_eq!(expected % ALIGN, 0);
        let end = data_offset
            .checked_add(s.offset)
            .and_then(|v| v.checked_add(s.length))
            .ok_or_else(|| FormatError::Overflow(format!("end of section {index}")))?;
        if end > file_len {
            return Err(FormatError::SectionOutOfFile { index, kind, end, file_len });
        }
        expected = align_up(s.offset + s.length)
            .ok_or_else(|| FormatError::Overflow(format!("end of section {index}")))?;
    }
    let last_end = match h.sections.last() {
        Some(s) => data_offset + s.offset + s.length,
        None => data_offset,
    };
    if last_end < file_len {
        return Err(FormatError::TrailingBytes { extra: file_len - last_end });
    }
    Ok(())
}

fn limit(what: &str, count: u64, max: u64) -> Result<(), FormatError> {
    if count > max {
        return Err(FormatError::LimitExceeded { what: what.into(), count, limit: max });
    }
    Ok(())
}

/// Checks that every reference, count and size in the header is consistent.
fn check_semantics(h: &Header, major: u16) -> Result<(), FormatError> {
    limit("tensors", h.tensors.len() as u64, limits::MAX_TENSORS as u64)?;
    for (k, v) in &h.metadata {
        limit("metadata key length", k.len() as u64, limits::MAX_NAME_LEN as u64)?;
        limit("metadata value length", v.len() as u64, limits::MAX_HEADER_LEN)?;
    }
    for (index, s) in h.sections.iter().enumerate() {
        let bad = |what: String| Err(FormatError::Section { index, what });
        limit("decoded section length", s.decoded_length, limits::MAX_DECODED_SECTION)?;
        match s.encoding {
            Encoding::Plain if s.length != s.decoded_length => {
                return bad(format!(
                    "plain section has length {} but decoded length {}",
                    s.length, s.decoded_length
                ))
            }
            Encoding::ZstdBytegroup { element } if !(1..=8).contains(&element) => {
                return bad(format!("byte-group element size {element} is not in 1..=8"))
            }
            _ => {}
        }
    }
    let mut used = vec![false; h.sections.len()];
    let mut claim = |index: usize, kind: SectionKind, owner: &str| -> Result<(), FormatError> {
        let s = h.sections.get(index).ok_or_else(|| FormatError::Section {
            index,
            what: format!("referenced by {owner} but the file has {} sections", h.sections.len()),
        })?;
        if s.kind != kind {
            return Err(FormatError::Section {
                index,
                what: format!("{owner} needs a {} section, found {}", kind.name(), s.kind.name()),
            });
        }
        if std::mem::replace(&mut used[index], true) {
            return Err(FormatError::Section { index, what: "referenced more than once".into() });
        }
        Ok(())
    };

    match (h.source.kind, h.source.skeleton) {
        (SourceKind::Onnx, Some(i)) => claim(i, SectionKind::Skeleton, "source")?,
        (SourceKind::Onnx, None) => {
            return Err(FormatError::HeaderJson("an ONNX source needs a skeleton section".into()))
        }
        (SourceKind::Safetensors, Some(_)) => {
            return Err(FormatError::HeaderJson("a safetensors source has no skeleton".into()))
        }
        (SourceKind::Safetensors, None) => {}
    }

    let predicted = h.tensors.iter().filter(|t| matches!(t.storage, Storage::Predicted { .. }));
    let n_predicted = predicted.count() as u32;
    if let Some(p) = &h.predictor {
        let bad = |what: String| Err(FormatError::Predictor(what));
        if p.arch != ARCH {
            return bad(format!("unknown architecture {:?} (this reader knows {ARCH})", p.arch));
        }
        if p.hidden == 0 || p.hidden > limits::MAX_HIDDEN {
            return bad(format!("hidden width {} is not in 1..={}", p.hidden, limits::MAX_HIDDEN));
        }
        let e = p.embedding;
        if e.levels == 0 || e.levels > limits::MAX_LEVELS {
            return bad(format!("{} embedding levels, not in 1..={}", e.levels, limits::MAX_LEVELS));
        }
        if !(e.base.is_finite() && e.base > 0.0) {
            return bad(format!("embedding base {} is not a positive number", e.base));
        }
        if frequencies(e).iter().any(|f| !f.is_finite()) {
            return bad(format!(
                "embedding base {} with {} levels overflows f32 frequencies",
                e.base, e.levels
            ));
        }
        // Format 3: a predictor may cover layers that are now stored otherwise (the
        // compressor's per-tensor choice, `crate::compress::choose`); their indices are simply unused.
        let layers_ok = if major >= 3 {
            p.layers >= n_predicted && p.layers as usize <= limits::MAX_TENSORS
        } else {
            p.layers == n_predicted
        };
        if !layers_ok {
            return bad(format!("declares {} layers but {n_predicted} tensors are predicted", p.layers));
        }
        if let Some(what) = predictor_needs_format_3(p).filter(|_| major < 3) {
            return bad(what);
        }
        claim(p.section, SectionKind::Predictor, "predictor")?;
        let s = &h.sections[p.section];
        let need = stored_len(p.dtype, p.hidden as usize, e.levels as usize);
        if s.encoding != Encoding::Plain || s.decoded_length != need {
            return bad(format!(
                "weights section must be plain and {need} bytes, found {:?} of {} bytes",
                s.encoding, s.decoded_length
            ));
        }
    } else if n_predicted > 0 {
        return Err(FormatError::Predictor(format!(
            "{n_predicted} tensors are predicted but no predictor is stored"
        )));
    }

    let mut names = HashSet::with_capacity(h.tensors.len());
    // Checked above: at most MAX_TENSORS.
    let mut layers = vec![false; h.predictor.as_ref().map_or(0, |p| p.layers as usize)];
    for t in &h.tensors {
        let bad = |what: String| Err(FormatError::Tensor { tensor: t.name.clone(), what });
        if t.name.is_empty() || t.name.len() > limits::MAX_NAME_LEN {
            return bad(format!("name length {} is not in 1..={}", t.name.len(), limits::MAX_NAME_LEN));
        }
        if !names.insert(t.name.as_str()) {
            return bad("name is used by more than one tensor".into());
        }
        limit("tensor rank", t.shape.len() as u64, limits::MAX_RANK as u64)?;
        let numel = t
            .shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .filter(|&n| n <= limits::MAX_TENSOR_ELEMENTS)
            .ok_or_else(|| FormatError::Tensor {
                tensor: t.name.clone(),
                what: format!("shape {:?} has more than {} elements", t.shape, limits::MAX_TENSOR_ELEMENTS),
            })?;
        if let Some(what) = needs_format_3(t).filter(|_| major < 3) {
            return bad(what);
        }
        if let Some(what) = needs_format_4(t).filter(|_| major < 4) {
            return bad(what);
        }
        match t.storage {
            Storage::Raw { section } => {
                claim(section, SectionKind::Tensor, &format!("tensor {}", t.name))?;
                let need = numel * t.dtype.size() as u64;
                let got = h.sections[section].decoded_length;
                if got != need {
                    return bad(format!("raw data is {got} bytes, shape and dtype need {need}"));
                }
            }
            Storage::Quantized { bits, group, section } => {
                if !t.dtype.is_float() {
                    return Err(FormatError::Quantization {
                        tensor: t.name.clone(),
                        what: format!("dtype {:?} cannot be quantized (float tensors only)", t.dtype),
                    });
                }
                claim(section, SectionKind::Quantized, &format!("tensor {}", t.name))?;
                check_quantized(t, numel, bits, group, h.sections[section].decoded_length, "quantized data")?;
            }
            Storage::Coded { max_code, row_scales, section } => {
                claim(section, SectionKind::Coded, &format!("tensor {}", t.name))?;
                check_coded(t, max_code, row_scales, h.sections[section].decoded_length, "coded data")?;
            }
            Storage::Cast { to, section } => {
                if !matches!(t.dtype, DType::F32 | DType::F64) || !matches!(to, DType::F16 | DType::Bf16) {
                    return bad(format!(
                        "cast storage stores f32 or f64 values as f16 or bf16, not {:?} as {to:?}",
                        t.dtype
                    ));
                }
                claim(section, SectionKind::Tensor, &format!("tensor {}", t.name))?;
                let need = numel * to.size() as u64;
                let got = h.sections[section].decoded_length;
                if got != need {
                    return bad(format!("cast data is {got} bytes, shape and {to:?} need {need}"));
                }
            }
            Storage::Predicted { layer, permutation, scales, layout, scale_dtype, residual } => {
                if !t.dtype.is_float() {
                    return bad(format!("dtype {:?} cannot be predicted", t.dtype));
                }
                match residual {
                    Some(Residual::Quantized { bits, group, section }) => {
                        claim(section, SectionKind::Quantized, &format!("tensor {} residual", t.name))?;
                        let got = h.sections[section].decoded_length;
                        check_quantized(t, numel, bits, group, got, "residual")?;
                    }
                    Some(Residual::Coded { max_code, row_scales, section }) => {
                        claim(section, SectionKind::Coded, &format!("tensor {} residual", t.name))?;
                        check_coded(t, max_code, row_scales, h.sections[section].decoded_length, "residual")?;
                    }
                    None => {}
                }
                if let Some(what) = needs_format_2(t).filter(|_| major == 1) {
                    return bad(what);
                }
                let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
                let grid = Grid::new(layout, &shape)
                    .map_err(|what| FormatError::Tensor { tensor: t.name.clone(), what })?;
                let (f, blocks) = (grid.rows as u64, grid.blocks() as u64);
                match layers.get_mut(layer as usize) {
                    Some(seen) if !*seen => *seen = true,
                    _ => return bad(format!("layer index {layer} is out of range or repeated")),
                }
                claim(permutation, SectionKind::Permutation, &format!("tensor {}", t.name))?;
                let need = packed_len(blocks);
                let got = h.sections[permutation].decoded_length;
                if got != need && got != 0 {
                    return bad(format!(
                        "permutation is {got} bytes, {blocks} blocks need {need} (or 0: identity)"
                    ));
                }
                if got == 0 && need != 0 && major < 3 {
                    return bad(format!(
                        "an identity permutation (0 bytes) needs format 3, the file says {major}"
                    ));
                }
                if let Some(sc) = scales {
                    claim(sc, SectionKind::Scales, &format!("tensor {}", t.name))?;
                    let got = h.sections[sc].decoded_length;
                    let need = scale_dtype.dtype().size() as u64 * f;
                    if got != need {
                        return bad(format!(
                            "scales are {got} bytes, {f} rows of {scale_dtype:?} need {need}"
                        ));
                    }
                }
            }
        }
    }
    if let Some(index) = used.iter().position(|u| !u) {
        return Err(FormatError::Section { index, what: "not referenced by the header".into() });
    }
    Ok(())
}

/// Spec check 30 for values of `t` quantized to `bits` bits in groups of `group` (its own
/// storage or a predicted tensor's residual): a supported width, a group that divides the row,
/// and `got` decoded bytes as the encoding needs.
fn check_quantized(
    t: &TensorEntry,
    numel: u64,
    bits: u8,
    group: u64,
    got: u64,
    what: &str,
) -> Result<(), FormatError> {
    let bad = |why: String| Err(FormatError::Quantization { tensor: t.name.clone(), what: why });
    if !quant::valid_bits(bits) {
        return bad(format!("{what}: {bits} bits is not in {}..={}", quant::MIN_BITS, quant::MAX_BITS));
    }
    let row = row_len(&t.shape).unwrap_or(0);
    if group == 0 || !row.is_multiple_of(group) {
        return bad(format!("{what}: group of {group} values does not divide the row length {row}"));
    }
    let need = quant::encoded_len(numel, group, bits).expect("numel ≤ 2^32");
    if got != need {
        return bad(format!(
            "{what} is {got} bytes; {numel} values of {bits} bits in groups of {group} need {need}"
        ));
    }
    Ok(())
}

/// Spec check 23c for a tensor `t` stored `coded` (its data or a predicted tensor's
/// residual, `what`): a float dtype, `1 ≤ max_code ≤ MAX_CODE`, and a section long enough for
/// the step and the row scales (the stream itself is checked when decoded, check 33).
fn check_coded(
    t: &TensorEntry,
    max_code: u32,
    row_scales: bool,
    got: u64,
    what: &str,
) -> Result<(), FormatError> {
    let bad = |why: String| Err(FormatError::Quantization { tensor: t.name.clone(), what: why });
    if !t.dtype.is_float() {
        return bad(format!("{what}: dtype {:?} cannot be coded (float tensors only)", t.dtype));
    }
    if !(1..=entropy::MAX_CODE).contains(&max_code) {
        return bad(format!("{what}: max_code {max_code} is not in 1..={}", entropy::MAX_CODE));
    }
    let need = coded_prefix_len(&t.shape, row_scales).expect("checked shapes") + 1;
    if got < need {
        return bad(format!("{what} is {got} bytes; its step, row scales and a stream need at least {need}"));
    }
    Ok(())
}

/// Bytes before the stream of a `coded` section of a tensor of `shape` (spec section 4.5):
/// the f32 step, then an f16 scale per row if `row_scales`.
pub fn coded_prefix_len(shape: &[u64], row_scales: bool) -> Option<u64> {
    let numel = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d))?;
    let rows = numel.checked_div(row_len(shape)?).unwrap_or(0);
    Some(4 + if row_scales { 2 * rows } else { 0 })
}

/// Expansion ratio up to which a zstd section's output is reserved up front.
const PLAUSIBLE_ZSTD_RATIO: u64 = 64;
/// Magic number of a (non-skippable) zstd frame.
const ZSTD_MAGIC: [u8; 4] = 0xFD2F_B528u32.to_le_bytes();

/// What section `index` of `h` holds, for messages.
pub fn section_owner(h: &Header, index: usize) -> String {
    if h.source.skeleton == Some(index) {
        return "the skeleton".into();
    }
    if h.predictor.as_ref().is_some_and(|p| p.section == index) {
        return "the predictor weights".into();
    }
    for t in &h.tensors {
        let part = match t.storage {
            Storage::Raw { section } | Storage::Cast { section, .. } if section == index => "data",
            Storage::Quantized { section, .. } if section == index => "quantized data",
            Storage::Coded { section, .. } if section == index => "coded data",
            Storage::Predicted { permutation, .. } if permutation == index => "permutation",
            Storage::Predicted { scales: Some(s), .. } if s == index => "scales",
            Storage::Predicted { residual: Some(r), .. } if r.section() == index => "residual",
            _ => continue,
        };
        return format!("tensor {} ({part}, section {index})", t.name);
    }
    format!("section {index}")
}

/// Checks a zstd section's frame header before decoding (spec checks 26): one regular frame
/// (not a skippable one, which declares no content), a content size equal to
/// `decoded_length`, and a window of at most [`limits::MAX_ZSTD_WINDOW`].
fn check_frame(data: &[u8], decoded_length: u64) -> Result<(), String> {
    if !data.starts_with(&ZSTD_MAGIC) {
        return Err("section does not start with a zstd frame".into());
    }
    match zstd::zstd_safe::get_frame_content_size(data) {
        Ok(Some(n)) if n == decoded_length => {}
        Ok(Some(n)) => return Err(format!("zstd frame declares {n} bytes, header says {decoded_length}")),
        _ => return Err("zstd frame has no valid content size".into()),
    }
    let window = zstd_window(data, decoded_length).ok_or("zstd frame header is truncated")?;
    if window > limits::MAX_ZSTD_WINDOW {
        return Err(format!(
            "zstd frame needs a {} window, more than the {} a reader allows (spec 4.1); \
             re-encode the section with a smaller window (zstd --long=27 or less)",
            crate::error::human_bytes(window),
            crate::error::human_bytes(limits::MAX_ZSTD_WINDOW)
        ));
    }
    Ok(())
}

/// The window a zstd frame needs (RFC 8878, 3.1.1.1): the content size for a single-segment
/// frame, else `2^(10 + exponent) · (1 + mantissa/8)` from the window descriptor.
fn zstd_window(frame: &[u8], content_size: u64) -> Option<u64> {
    let descriptor = *frame.get(4)?;
    if descriptor & 0x20 != 0 {
        return Some(content_size);
    }
    let wd = *frame.get(5)?;
    let base = 1u64 << (10 + (wd >> 3) as u32);
    Some(base + base / 8 * (wd & 7) as u64)
}

/// Checks that a section decodes to exactly `decoded_length` bytes (spec checks 26–27)
/// without keeping the output.
pub fn check_decodes(encoding: Encoding, stored: &[u8], decoded_length: u64) -> Result<(), String> {
    if encoding == Encoding::Plain {
        return Ok(());
    }
    check_frame(stored, decoded_length)?;
    let mut decoder = zstd::stream::read::Decoder::with_buffer(stored)
        .map_err(|e| format!("zstd decoder: {e}"))?
        .single_frame();
    let n = std::io::copy(&mut (&mut decoder).take(decoded_length.saturating_add(1)), &mut std::io::sink())
        .map_err(|e| format!("zstd data is corrupt: {e}"))?;
    if n != decoded_length {
        return Err(format!("decoded {n} bytes, header says {decoded_length}"));
    }
    let rest = decoder.finish().len();
    if rest != 0 {
        return Err(format!("{rest} bytes follow the zstd frame; a section holds exactly one frame"));
    }
    Ok(())
}

/// Whether a stored scale or parameter is finite and at most [`limits::MAX_ABS_VALUE`] in
/// magnitude (spec checks 29–30).
pub fn bounded(v: f32) -> bool {
    v.is_finite() && v.abs() <= limits::MAX_ABS_VALUE
}

/// Decodes stored predictor parameters to f32 in storage order and checks them (spec check
/// 30): each float parameter, and each scale of a quantized one, finite and at most
/// [`limits::MAX_ABS_VALUE`] in magnitude; quantized codes in range.
pub fn predictor_params(spec: &PredictorSpec, stored: &[u8]) -> Result<Vec<f32>, FormatError> {
    let values = super::predictor::decode_params(
        spec.dtype,
        spec.hidden as usize,
        spec.embedding.levels as usize,
        stored,
    )
    .map_err(FormatError::Predictor)?;
    match values.iter().position(|&v| !bounded(v)) {
        Some(i) => Err(FormatError::Predictor(format!(
            "parameter {i} is {}; parameters must be finite and at most {:e} in magnitude",
            values[i],
            limits::MAX_ABS_VALUE
        ))),
        None => Ok(values),
    }
}

/// Decodes a section body, checking the decoded length before allocating beyond it.
pub fn decode(encoding: Encoding, stored: &[u8], decoded_length: u64) -> Result<Cow<'_, [u8]>, String> {
    let unzstd = |data: &[u8]| -> Result<Vec<u8>, String> {
        check_frame(data, decoded_length)?;
        // The declared size is only a claim until the data backs it: reserve what the stored
        // bytes can plausibly expand to and let real output grow the buffer, so that a small
        // frame declaring gigabytes cannot make the reader allocate them.
        let plausible = (data.len() as u64).saturating_mul(PLAUSIBLE_ZSTD_RATIO).max(1 << 20);
        let mut out = Vec::with_capacity(decoded_length.min(plausible) as usize);
        let mut decoder = zstd::stream::read::Decoder::with_buffer(data)
            .map_err(|e| format!("zstd decoder: {e}"))?
            .single_frame();
        (&mut decoder)
            .take(decoded_length.saturating_add(1))
            .read_to_end(&mut out)
            .map_err(|e| format!("zstd data is corrupt: {e}"))?;
        if out.len() as u64 != decoded_length {
            return Err(format!("decoded {} bytes, header says {decoded_length}", out.len()));
        }
        let rest = decoder.finish().len();
        if rest != 0 {
            return Err(format!("{rest} bytes follow the zstd frame; a section holds exactly one frame"));
        }
        Ok(out)
    };
    match encoding {
        Encoding::Plain => Ok(Cow::Borrowed(stored)),
        Encoding::Zstd => unzstd(stored).map(Cow::Owned),
        Encoding::ZstdBytegroup { element } => {
            unzstd(stored).map(|v| Cow::Owned(ungroup(&v, element as usize)))
        }
    }
}

/// The predicted layers of a file, sorted by layer, with their permutations and scales decoded
/// and checked (spec checks 28–29: every permutation entry below `n` and used once, every scale
/// finite).
pub fn layer_plans(file: &NerpFile) -> Result<Vec<LayerPlan>> {
    let mut plans = Vec::new();
    for (tensor, t) in file.header().tensors.iter().enumerate() {
        let Storage::Predicted { layer, permutation, scales, layout, scale_dtype, .. } = t.storage else {
            continue;
        };
        let bad = |what: String| file.fmt_error(FormatError::Tensor { tensor: t.name.clone(), what });
        // The grid was validated at open; this cannot fail for an open file.
        let dims: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
        let grid = Grid::new(layout, &dims).map_err(&bad)?;
        let perm = unpack_permutation(&file.decode_section(permutation)?, grid.blocks())
            .map_err(|e| bad(format!("permutation: {e}")))?;
        let scales = match scales {
            Some(s) => {
                let v = to_f32(scale_dtype.dtype(), &file.decode_section(s)?).expect("float");
                if let Some(x) = v.iter().find(|&&x| !bounded(x)) {
                    return Err(bad(format!(
                        "scale {x} is not a finite number of magnitude at most {:e}",
                        limits::MAX_ABS_VALUE
                    )));
                }
                Some(v)
            }
            None => None,
        };
        plans.push(LayerPlan { tensor, layer, grid, perm, scales });
    }
    plans.sort_by_key(|p| p.layer);
    Ok(plans)
}
