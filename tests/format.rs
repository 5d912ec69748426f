//! The `.nerp` container from the outside: round trips, one negative test per validation rule
//! (each asserting its exact `FormatError` variant), truncation, a deterministic mutation loop,
//! header-only reads, atomic writes over a mapped file, and the frozen v1 fixture.

mod common;

use nerp::format::codec::{pack_permutation, packed_len, perm_bits, unpack_permutation};
use nerp::format::{
    align_up, limits, read_header, write_atomic, DType, Embedding, Encoding, FileBuilder, Header, Layout,
    Ordering, PredictorSpec, SectionEntry, SectionKind, Source, SourceKind, Storage, TensorEntry,
    WeightDtype, ALIGN, MAGIC, PREAMBLE_LEN,
};
use nerp::{Error, FormatError, NerpFile};
use proptest::prelude::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

// ---------------------------------------------------------------------------------------------
// The sample file
// ---------------------------------------------------------------------------------------------

const HIDDEN: u32 = 8;
const LEVELS: u32 = 2;
const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-v1.nerp");

/// Records the largest single allocation each thread asks for, to catch a reader that sizes a
/// buffer from a claim in the file before the claim is backed by data.
struct PeakAlloc;

thread_local! {
    static LARGEST_ALLOC: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

fn note_alloc(size: usize) {
    let _ = LARGEST_ALLOC.try_with(|c| c.set(c.get().max(size)));
}

// SAFETY: forwards every call unchanged to the system allocator.
unsafe impl std::alloc::GlobalAlloc for PeakAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        note_alloc(layout.size());
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        note_alloc(layout.size());
        unsafe { std::alloc::System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        note_alloc(new_size);
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: PeakAlloc = PeakAlloc;

/// Deterministic pseudo-random numbers (xorshift64*), so no test depends on a global seed.
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        XorShift(seed | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// Uniform in [-0.5, 0.5).
    fn unit(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    }
}

/// Section indices of the sample file.
mod sec {
    pub const SKELETON: usize = 0;
    pub const PREDICTOR: usize = 1;
    pub const PERM1: usize = 2;
    pub const SCALES1: usize = 3;
    pub const CONV1_BIAS: usize = 4;
    pub const PERM2: usize = 5;
    pub const FC_WEIGHT: usize = 6;
    pub const FC_BIAS: usize = 7;
    pub const STEPS: usize = 8;
    pub const COUNT: usize = 9;
}

/// A raw tensor of the sample file: name, dtype, shape, little-endian bytes, encoding.
type RawTensor = (&'static str, DType, Vec<u64>, Vec<u8>, Encoding);

/// The raw tensors of the sample file.
///
/// The values are closed-form so that the frozen fixture's check does not depend on a random
/// generator: changing this function breaks `frozen_fixture_opens`, as it should.
fn raw_tensors() -> Vec<RawTensor> {
    let f32s = |n: usize, f: fn(usize) -> f32| (0..n).flat_map(|i| f(i).to_le_bytes()).collect::<Vec<u8>>();
    let f16s = |n: usize, f: fn(usize) -> f32| {
        (0..n).flat_map(|i| half::f16::from_f32(f(i)).to_le_bytes()).collect::<Vec<u8>>()
    };
    vec![
        ("conv1.bias", DType::F32, vec![4], f32s(4, |i| i as f32 * 0.5 - 1.0), Encoding::Plain),
        (
            "fc.weight",
            DType::F32,
            vec![10, 5],
            f32s(50, |i| ((i * 37 % 50) as f32 - 25.0) / 32.0),
            Encoding::ZstdBytegroup { element: 4 },
        ),
        ("fc.bias", DType::F16, vec![10], f16s(10, |i| i as f32 * 0.125), Encoding::Zstd),
        (
            "bn.num_batches_tracked",
            DType::I64,
            vec![],
            123_456_789i64.to_le_bytes().to_vec(),
            Encoding::Plain,
        ),
    ]
}

/// Arbitrary bytes standing in for an ONNX skeleton (100 bytes: not a multiple of 64, so the
/// file has padding after it).
fn skeleton_bytes() -> Vec<u8> {
    (0..100u32).map(|i| (i * 7 + 3) as u8).collect()
}

/// Predictor weights for hidden 8 / levels 2, f16.
fn predictor_weights() -> Vec<u8> {
    let n = nerp::predictor::param_count(HIDDEN as usize, LEVELS as usize);
    let mut rng = XorShift::new(0x5eed);
    (0..n).flat_map(|_| half::f16::from_f32(rng.unit()).to_le_bytes()).collect()
}

const PERM1: [u32; 12] = [3, 0, 7, 11, 1, 4, 9, 2, 10, 5, 8, 6];
const SCALES1: [f32; 4] = [0.5, 1.0, 1.5, 2.0];

fn perm2() -> Vec<u32> {
    (0..20).rev().collect()
}

fn predictor_spec(section: usize) -> PredictorSpec {
    PredictorSpec {
        arch: "mlp_relu".into(),
        hidden: HIDDEN,
        embedding: Embedding { base: 2.0, levels: LEVELS },
        dtype: WeightDtype::F16,
        ordering: Ordering::Crossfilter,
        layers: 2,
        section,
    }
}

/// A registered `preprocess` entry (spec section 3) and a free one.
fn sample_metadata() -> BTreeMap<String, String> {
    BTreeMap::from([
        ("preprocess".to_string(), r#"{"scale":0.003921569,"mean":[0.5],"std":[0.25]}"#.to_string()),
        ("origin".into(), "tests/format.rs".into()),
    ])
}

/// A small valid file: an ONNX source with a skeleton, an f16 predictor, two predicted tensors
/// (one with scales) and four raw tensors (plain, zstd_bytegroup, zstd, plain scalar).
fn sample_file() -> Vec<u8> {
    sample_file_with(sample_metadata())
}

fn sample_file_with(metadata: BTreeMap<String, String>) -> Vec<u8> {
    let mut b = FileBuilder::new();
    let skeleton = b.add(SectionKind::Skeleton, Encoding::Plain, &skeleton_bytes());
    let predictor = b.add(SectionKind::Predictor, Encoding::Plain, &predictor_weights());
    let perm1 = b.add(SectionKind::Permutation, Encoding::Plain, &pack_permutation(&PERM1));
    let scales1 = b.add(
        SectionKind::Scales,
        Encoding::Plain,
        &SCALES1.iter().flat_map(|s| s.to_le_bytes()).collect::<Vec<_>>(),
    );
    let raw = raw_tensors();
    let bias = b.add(SectionKind::Tensor, raw[0].4, &raw[0].3);
    let perm2 = b.add(SectionKind::Permutation, Encoding::Plain, &pack_permutation(&perm2()));
    let rest: Vec<usize> = raw[1..].iter().map(|r| b.add(SectionKind::Tensor, r.4, &r.3)).collect();
    assert_eq!(
        [skeleton, predictor, perm1, scales1, bias, perm2, rest[0], rest[1], rest[2]],
        [
            sec::SKELETON,
            sec::PREDICTOR,
            sec::PERM1,
            sec::SCALES1,
            sec::CONV1_BIAS,
            sec::PERM2,
            sec::FC_WEIGHT,
            sec::FC_BIAS,
            sec::STEPS
        ]
    );

    let raw_entry = |r: &RawTensor, section| TensorEntry {
        name: r.0.into(),
        dtype: r.1,
        shape: r.2.clone(),
        storage: Storage::Raw { section },
    };
    let tensors = vec![
        TensorEntry {
            name: "conv1.weight".into(),
            dtype: DType::F32,
            shape: vec![4, 3, 3, 3],
            storage: Storage::Predicted {
                layer: 0,
                permutation: perm1,
                scales: Some(scales1),
                layout: Layout::Conv,
                scale_dtype: Default::default(),
                residual: None,
            },
        },
        raw_entry(&raw[0], bias),
        TensorEntry {
            name: "conv2.weight".into(),
            dtype: DType::F16,
            shape: vec![5, 4, 1, 1],
            storage: Storage::Predicted {
                layer: 1,
                permutation: perm2,
                scales: None,
                layout: Layout::Conv,
                scale_dtype: Default::default(),
                residual: None,
            },
        },
        raw_entry(&raw[1], rest[0]),
        raw_entry(&raw[2], rest[1]),
        raw_entry(&raw[3], rest[2]),
    ];
    let source = Source { kind: SourceKind::Onnx, file_bytes: 12_345, skeleton: Some(skeleton) };
    b.finish(source, Some(predictor_spec(predictor)), tensors, metadata)
}

// ---------------------------------------------------------------------------------------------
// Helpers to take files apart and put them back together
// ---------------------------------------------------------------------------------------------

/// Asserts that opening `bytes` fails with a format error matching the pattern (and guard).
macro_rules! assert_format_err {
    ($bytes:expr, $pat:pat $(if $guard:expr)?) => {{
        match NerpFile::from_bytes($bytes, "test.nerp") {
            Err(Error::Format { kind: $pat, .. }) $(if $guard)? => {}
            Err(e) => panic!("expected {}, got: {e}", stringify!($pat)),
            Ok(_) => panic!("expected {}, got a valid file", stringify!($pat)),
        }
    }};
}

fn header_len(file: &[u8]) -> usize {
    u64::from_le_bytes(file[16..24].try_into().unwrap()) as usize
}

fn data_offset(file: &[u8]) -> usize {
    align_up(PREAMBLE_LEN + header_len(file) as u64).unwrap() as usize
}

fn header_json(file: &[u8]) -> &[u8] {
    &file[PREAMBLE_LEN as usize..PREAMBLE_LEN as usize + header_len(file)]
}

fn header_value(file: &[u8]) -> Value {
    serde_json::from_slice(header_json(file)).unwrap()
}

fn parsed_header(file: &[u8]) -> Header {
    serde_json::from_slice(header_json(file)).unwrap()
}

/// A format-1 file with the given header JSON bytes (length, CRC and padding recomputed) and
/// data section (the sample file uses only format-1 features).
fn assemble(json: &[u8], data: &[u8]) -> Vec<u8> {
    assemble_major(json, data, 1)
}

fn assemble_major(json: &[u8], data: &[u8], major: u16) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&major.to_le_bytes());
    out.extend_from_slice(&nerp::format::MINOR.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(json).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(json);
    out.resize(align_up(out.len() as u64).unwrap() as usize, 0);
    out.extend_from_slice(data);
    out
}

/// Replaces the header JSON of `file`, keeping its data section bytes.
fn with_json(file: &[u8], json: &[u8]) -> Vec<u8> {
    assemble(json, &file[data_offset(file)..])
}

/// Edits the header of `file` as JSON and re-emits a file with a valid CRC around it.
fn with_header(file: &[u8], edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut v = header_value(file);
    edit(&mut v);
    with_json(file, &serde_json::to_vec(&v).unwrap())
}

/// Sets the JSON value at `pointer` (RFC 6901), which must exist.
fn set(v: &mut Value, pointer: &str, new: Value) {
    *v.pointer_mut(pointer).unwrap_or_else(|| panic!("no {pointer} in the header")) = new;
}

/// File range of section `index`.
fn section_range(file: &[u8], index: usize) -> std::ops::Range<usize> {
    let s = &parsed_header(file).sections[index];
    let start = data_offset(file) + s.offset as usize;
    start..start + s.length as usize
}

/// The zero padding between the header and the data section.
fn header_padding(file: &[u8]) -> std::ops::Range<usize> {
    PREAMBLE_LEN as usize + header_len(file)..data_offset(file)
}

/// Sets a section's stored bytes to `f(bytes)` (same length) and fixes its CRC in the header,
/// so that only the decoding of its content can notice.
fn rewrite_section(file: &[u8], index: usize, f: impl FnOnce(&mut [u8])) -> Vec<u8> {
    let mut out = file.to_vec();
    let range = section_range(file, index);
    f(&mut out[range.clone()]);
    let crc = crc32fast::hash(&out[range]);
    with_header(&out, |h| set(h, &format!("/sections/{index}/crc32"), json!(crc)))
}

fn open_bytes(bytes: Vec<u8>) -> NerpFile {
    NerpFile::from_bytes(bytes, "test.nerp").unwrap_or_else(|e| panic!("sample should be valid: {e}"))
}

/// Everything a reader does with an opened file; none of it may panic.
fn exercise(file: &NerpFile) {
    for i in 0..file.header().sections.len() {
        let _ = file.decode_section(i);
    }
    if nerp::runtime::regen::layer_plans(file).is_ok() {
        let _ = nerp::runtime::regen::regenerate(file, &nerp::Device::Cpu);
    }
}

// ---------------------------------------------------------------------------------------------
// Valid files
// ---------------------------------------------------------------------------------------------

#[test]
fn sample_file_is_valid() {
    let bytes = sample_file();
    let file = open_bytes(bytes.clone());
    let h = file.header();
    assert_eq!(h.sections.len(), sec::COUNT);
    assert_eq!(h.tensors.len(), 6);
    assert_eq!(file.file_len(), bytes.len() as u64);
    assert_eq!(file.data_offset() as usize, data_offset(&bytes));
    assert_eq!(file.data_offset() % ALIGN, 0);
    // `non_zero_section_padding` relies on padding after the skeleton.
    assert_ne!(h.sections[sec::SKELETON].length % ALIGN, 0, "no padding after the skeleton");
    assert_eq!(&*file.decode_section(sec::SKELETON).unwrap(), &skeleton_bytes()[..]);
    assert_eq!(&*file.decode_section(sec::PREDICTOR).unwrap(), &predictor_weights()[..]);
    for (i, (_, _, _, data, encoding)) in
        [sec::CONV1_BIAS, sec::FC_WEIGHT, sec::FC_BIAS, sec::STEPS].into_iter().zip(raw_tensors())
    {
        assert_eq!(h.sections[i].encoding, encoding);
        assert_eq!(&*file.decode_section(i).unwrap(), &data[..], "section {i}");
    }
    let plans = nerp::runtime::regen::layer_plans(&file).unwrap();
    assert_eq!(plans.len(), 2);
    assert_eq!(plans[0].perm, PERM1);
    assert_eq!(plans[0].scales.as_deref(), Some(&SCALES1[..]));
    assert_eq!(plans[1].perm, perm2());
    assert_eq!(plans[1].scales, None);
}

#[test]
fn empty_file_is_valid() {
    let source = Source { kind: SourceKind::Safetensors, file_bytes: 0, skeleton: None };
    let bytes = FileBuilder::new().finish(source.clone(), None, vec![], BTreeMap::new());
    assert_eq!(bytes.len() as u64 % ALIGN, 0);
    let file = open_bytes(bytes);
    assert_eq!(file.header().source, source);
    assert!(file.header().sections.is_empty());
    assert!(nerp::runtime::regen::regenerate(&file, &nerp::Device::Cpu).unwrap().is_empty());
}

#[test]
fn building_twice_gives_identical_bytes() {
    assert_eq!(sample_file(), sample_file());
    // Metadata order is the key order, whatever the insertion order.
    let mut reversed = BTreeMap::new();
    for (k, v) in sample_metadata().into_iter().rev() {
        reversed.insert(k, v);
    }
    assert_eq!(sample_file_with(reversed), sample_file());
    // Writing does not change the bytes.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.nerp");
    write_atomic(&path, &sample_file()).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), sample_file());
}

#[test]
fn newer_minor_version_is_accepted() {
    let mut bytes = sample_file();
    bytes[10..12].copy_from_slice(&7u16.to_le_bytes());
    open_bytes(bytes);
}

fn dtype_strategy() -> impl Strategy<Value = DType> {
    prop::sample::select(vec![
        DType::F32,
        DType::F16,
        DType::Bf16,
        DType::F64,
        DType::I8,
        DType::U8,
        DType::I16,
        DType::U16,
        DType::I32,
        DType::U32,
        DType::I64,
        DType::U64,
        DType::Bool,
    ])
}

fn encoding_strategy() -> impl Strategy<Value = Encoding> {
    prop_oneof![
        Just(Encoding::Plain),
        Just(Encoding::Zstd),
        (1u8..=8).prop_map(|element| Encoding::ZstdBytegroup { element }),
    ]
}

/// dtype, shape, bytes, encoding; bytes either random or compressible.
fn raw_tensor_strategy() -> impl Strategy<Value = (DType, Vec<u64>, Vec<u8>, Encoding)> {
    (dtype_strategy(), prop::collection::vec(0u64..6, 0..=4), encoding_strategy(), any::<bool>())
        .prop_flat_map(|(dtype, shape, encoding, compressible)| {
            let n = shape.iter().product::<u64>() as usize * dtype.size();
            let bytes = if compressible {
                (0u8..4).prop_map(move |k| (0..n).map(|i| (i % 3) as u8 * k).collect()).boxed()
            } else {
                prop::collection::vec(any::<u8>(), n).boxed()
            };
            (Just(dtype), Just(shape), bytes, Just(encoding))
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn raw_tensors_round_trip(
        tensors in prop::collection::vec(raw_tensor_strategy(), 0..6),
        names in prop::collection::vec("\\PC{0,12}", 6),
        skeleton in prop::option::of((prop::collection::vec(any::<u8>(), 0..300), encoding_strategy())),
        metadata in prop::collection::btree_map("\\PC{0,16}", "\\PC{0,40}", 0..5),
        file_bytes in any::<u64>(),
    ) {
        let mut b = FileBuilder::new();
        let mut decoded = Vec::new();
        let mut kinds = Vec::new();
        let skeleton = skeleton.map(|(bytes, encoding)| {
            decoded.push(bytes.clone());
            kinds.push((SectionKind::Skeleton, encoding));
            b.add(SectionKind::Skeleton, encoding, &bytes)
        });
        let mut entries = Vec::new();
        for (i, (dtype, shape, bytes, encoding)) in tensors.iter().enumerate() {
            let section = b.add(SectionKind::Tensor, *encoding, bytes);
            decoded.push(bytes.clone());
            kinds.push((SectionKind::Tensor, *encoding));
            entries.push(TensorEntry {
                name: format!("{}#{i}", names[i]),
                dtype: *dtype,
                shape: shape.clone(),
                storage: Storage::Raw { section },
            });
        }
        let stored: Vec<u64> = (0..decoded.len()).map(|i| b.stored_len(i)).collect();
        let kind = if skeleton.is_some() { SourceKind::Onnx } else { SourceKind::Safetensors };
        let source = Source { kind, file_bytes, skeleton };
        let bytes = b.finish(source.clone(), None, entries.clone(), metadata.clone());

        let file = NerpFile::from_bytes(bytes.clone(), "prop.nerp")
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let mut offset = 0;
        let mut sections = Vec::new();
        for (i, ((kind, encoding), data)) in kinds.iter().zip(&decoded).enumerate() {
            sections.push(SectionEntry {
                kind: *kind,
                offset,
                length: stored[i],
                encoding: *encoding,
                decoded_length: data.len() as u64,
                crc32: crc32fast::hash(file.section(i)),
            });
            offset = align_up(offset + stored[i]).unwrap();
        }
        let expected = Header { source, predictor: None, tensors: entries, sections, metadata };
        prop_assert_eq!(file.header(), &expected);
        for (i, data) in decoded.iter().enumerate() {
            prop_assert_eq!(&*file.decode_section(i).unwrap(), &data[..], "section {}", i);
        }
        // The same bytes through the file system.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("prop.nerp");
        write_atomic(&path, &bytes).unwrap();
        prop_assert_eq!(read_header(&path).unwrap(), (expected.clone(), bytes.len() as u64));
        let mapped = NerpFile::open(&path).unwrap();
        prop_assert_eq!(mapped.header(), &expected);
    }

    #[test]
    fn permutations_round_trip(
        perm in (1u32..=5000).prop_flat_map(|n| Just((0..n).collect::<Vec<_>>()).prop_shuffle()),
    ) {
        let packed = pack_permutation(&perm);
        prop_assert_eq!(packed.len() as u64, packed_len(perm.len() as u64));
        prop_assert!(perm.len() as u64 <= 1 << perm_bits(perm.len() as u64));
        // Spec 4.2: unused high bits of the last byte are zero.
        let used = perm.len() as u64 * perm_bits(perm.len() as u64) as u64 % 8;
        if used != 0 {
            prop_assert_eq!(packed[packed.len() - 1] >> used, 0);
        }
        prop_assert_eq!(unpack_permutation(&packed, perm.len()).unwrap(), perm);
    }
}

#[test]
fn permutation_edge_cases() {
    assert_eq!(pack_permutation(&[]), Vec::<u8>::new());
    assert_eq!(unpack_permutation(&[], 0).unwrap(), Vec::<u32>::new());
    assert_eq!(unpack_permutation(&pack_permutation(&[0]), 1).unwrap(), [0]);
    // Wrong length, a repeated entry and an out-of-range entry are not permutations.
    assert!(unpack_permutation(&pack_permutation(&[1, 0, 2]), 4).is_err());
    assert!(unpack_permutation(&pack_permutation(&[1, 1, 2]), 3).is_err());
    assert!(unpack_permutation(&pack_permutation(&[0, 1, 3]), 3).is_err());
}

// ---------------------------------------------------------------------------------------------
// Preamble
// ---------------------------------------------------------------------------------------------

#[test]
fn too_short() {
    let bytes = sample_file();
    for len in 0..PREAMBLE_LEN as usize {
        assert_format_err!(
            bytes[..len].to_vec(),
            FormatError::TooShort { len: l, need: 32 } if l == len as u64
        );
    }
}

#[test]
fn bad_magic() {
    for i in 0..MAGIC.len() {
        let mut bytes = sample_file();
        bytes[i] ^= 0x20;
        assert_format_err!(bytes, FormatError::BadMagic { .. });
    }
}

#[test]
fn unsupported_version() {
    for major in [0u16, 5, u16::MAX] {
        let mut bytes = sample_file();
        bytes[8..10].copy_from_slice(&major.to_le_bytes());
        assert_format_err!(bytes, FormatError::UnsupportedVersion { found, supported: 4 } if found == major);
    }
    // A format-2 file relabelled 3: its JSON header is not a zstd frame.
    let mut bytes = sample_file();
    bytes[8..10].copy_from_slice(&3u16.to_le_bytes());
    assert_format_err!(bytes, FormatError::HeaderCompression(_));
}

#[test]
fn unknown_flags() {
    let mut bytes = sample_file();
    bytes[12..16].copy_from_slice(&1u32.to_le_bytes());
    assert_format_err!(bytes, FormatError::UnknownFlags(1));
}

#[test]
fn unknown_reserved_bits() {
    let mut bytes = sample_file();
    bytes[28..32].copy_from_slice(&0x8000_0000u32.to_le_bytes());
    assert_format_err!(bytes, FormatError::UnknownFlags(0x8000_0000));
}

#[test]
fn header_too_large() {
    for len in [limits::MAX_HEADER_LEN + 1, u64::MAX] {
        let mut bytes = sample_file();
        bytes[16..24].copy_from_slice(&len.to_le_bytes());
        assert_format_err!(bytes, FormatError::HeaderTooLarge { len: l, .. } if l == len);
    }
}

#[test]
fn header_out_of_file() {
    let mut bytes = sample_file();
    let len = bytes.len() as u64 - PREAMBLE_LEN + 1;
    bytes[16..24].copy_from_slice(&len.to_le_bytes());
    assert_format_err!(bytes, FormatError::HeaderOutOfFile { .. });
}

#[test]
fn header_padding_out_of_file() {
    // A file without sections that ends right after its (unaligned) header.
    let source = Source { kind: SourceKind::Safetensors, file_bytes: 0, skeleton: None };
    let bytes = FileBuilder::new().finish(source, None, vec![], BTreeMap::new());
    let end = PREAMBLE_LEN as usize + header_len(&bytes);
    assert!(end < bytes.len(), "the header happens to end aligned");
    assert_format_err!(bytes[..end].to_vec(), FormatError::HeaderOutOfFile { .. });
}

#[test]
fn header_checksum() {
    let mut bytes = sample_file();
    bytes[PREAMBLE_LEN as usize + 10] ^= 1;
    assert_format_err!(bytes, FormatError::HeaderChecksum { .. });
    let mut bytes = sample_file();
    bytes[24] ^= 1;
    assert_format_err!(bytes, FormatError::HeaderChecksum { .. });
}

// ---------------------------------------------------------------------------------------------
// Header JSON
// ---------------------------------------------------------------------------------------------

#[test]
fn header_json_garbage() {
    let bytes = sample_file();
    for garbage in [&b"not json at all"[..], b"", b"{}", b"[]", b"null", b"{\"source\":", b"\xff\xfe{}"] {
        assert_format_err!(with_json(&bytes, garbage), FormatError::HeaderJson(_));
    }
}

#[test]
fn header_json_unknown_field() {
    let bytes = sample_file();
    for pointer in [
        "",
        "/source",
        "/predictor",
        "/predictor/embedding",
        "/tensors/0",
        "/tensors/0/storage",
        "/sections/3",
    ] {
        let mutated = with_header(&bytes, |h| {
            h.pointer_mut(pointer)
                .unwrap()
                .as_object_mut()
                .unwrap()
                .insert("from_the_future".into(), json!(1));
        });
        assert_format_err!(mutated, FormatError::HeaderJson(_));
    }
}

/// `file`'s header JSON with the first `from` replaced by `to`, CRC recomputed.
fn with_json_replaced(file: &[u8], from: &str, to: &str) -> Vec<u8> {
    let json = std::str::from_utf8(header_json(file)).unwrap();
    assert!(json.contains(from), "{from} not in the header");
    with_json(file, json.replacen(from, to, 1).as_bytes())
}

#[test]
fn header_json_duplicate_member() {
    let bytes = sample_file();
    for (from, to) in [
        (r#""file_bytes":12345"#, r#""file_bytes":12345,"file_bytes":12345"#),
        (r#""hidden":8"#, r#""hidden":8,"hidden":8"#),
        (r#""levels":2"#, r#""levels":2,"levels":2"#),
        (r#""name":"conv1.bias""#, r#""name":"conv1.bias","name":"conv1.bias""#),
        (r#""section":4}"#, r#""section":4,"section":4}"#),
        (r#"{"kind":"raw","section":4}"#, r#"{"kind":"raw","kind":"raw","section":4}"#),
        (r#""scales":3"#, r#""scales":3,"scales":3"#),
        (r#""offset":0"#, r#""offset":0,"offset":0"#),
        (r#","metadata":"#, r#","metadata":{},"metadata":"#),
    ] {
        match NerpFile::from_bytes(with_json_replaced(&bytes, from, to), "dup") {
            Err(Error::Format { kind: FormatError::HeaderJson(_), .. }) => {}
            Err(e) => panic!("{to}: expected HeaderJson, got {e}"),
            Ok(_) => panic!("{to}: a duplicate member was accepted"),
        }
    }
}

#[test]
fn metadata_duplicate_key_keeps_the_last_value() {
    // Spec section 3: writers must not repeat a metadata key; the reference reader keeps the last.
    let bad = with_json_replaced(&sample_file(), r#""origin":"#, r#""origin":"first","origin":"#);
    assert_eq!(open_bytes(bad).header().metadata["origin"], "tests/format.rs");
}

#[test]
fn header_json_whitespace_and_member_order_are_free() {
    let bytes = sample_file();
    let pretty = serde_json::to_vec_pretty(&header_value(&bytes)).unwrap();
    let file = open_bytes(with_json(&bytes, &pretty));
    assert_eq!(file.header(), &parsed_header(&bytes));
}

#[test]
fn optional_members_may_be_omitted() {
    // `T | null` members may be left out; `metadata` defaults to {}.
    let bytes = sample_file();
    let no_scales = with_json_replaced(&bytes, r#","scales":null"#, "");
    assert_eq!(open_bytes(no_scales).header(), &parsed_header(&bytes));
    let no_metadata = with_header(&bytes, |h| {
        h.as_object_mut().unwrap().remove("metadata");
    });
    assert!(open_bytes(no_metadata).header().metadata.is_empty());
    let source = Source { kind: SourceKind::Safetensors, file_bytes: 1, skeleton: None };
    let empty = FileBuilder::new().finish(source, None, vec![], BTreeMap::new());
    let bare =
        with_json(&empty, br#"{"source":{"kind":"safetensors","file_bytes":1},"tensors":[],"sections":[]}"#);
    assert_eq!(open_bytes(bare).header(), &parsed_header(&empty));
}

#[test]
fn header_json_bom_is_rejected() {
    let bytes = sample_file();
    let mut json = "\u{feff}".as_bytes().to_vec();
    json.extend_from_slice(header_json(&bytes));
    assert_format_err!(with_json(&bytes, &json), FormatError::HeaderJson(_));
}

#[test]
fn header_json_wrong_type_or_enum() {
    let bytes = sample_file();
    for (pointer, value) in [
        ("/tensors/1/dtype", json!("f8")),
        ("/sections/0/encoding", json!("gzip")),
        ("/sections/0/kind", json!("weights")),
        ("/sections/0/offset", json!(-64)),
        ("/sections/0/offset", json!(1.5)),
        ("/tensors/0/storage/kind", json!("zeros")),
        ("/predictor/hidden", json!(1u64 << 32)),
        ("/source/kind", json!("pytorch")),
    ] {
        assert_format_err!(with_header(&bytes, |h| set(h, pointer, value)), FormatError::HeaderJson(_));
    }
}

#[test]
fn source_and_skeleton_disagree() {
    let bytes = sample_file();
    let no_skeleton = with_header(&bytes, |h| set(h, "/source/skeleton", Value::Null));
    assert_format_err!(no_skeleton, FormatError::HeaderJson(m) if m.contains("skeleton"));
    let safetensors = with_header(&bytes, |h| set(h, "/source/kind", json!("safetensors")));
    assert_format_err!(safetensors, FormatError::HeaderJson(m) if m.contains("skeleton"));
}

// ---------------------------------------------------------------------------------------------
// Layout
// ---------------------------------------------------------------------------------------------

#[test]
fn non_zero_header_padding() {
    // Grow the metadata until the header does not end on a 64-byte boundary.
    let mut bytes = sample_file();
    let mut extra = String::new();
    while header_padding(&bytes).is_empty() {
        extra.push('x');
        let mut m = sample_metadata();
        m.insert("pad".into(), extra.clone());
        bytes = sample_file_with(m);
    }
    for at in [header_padding(&bytes).start, header_padding(&bytes).end - 1] {
        let mut bad = bytes.clone();
        bad[at] = 1;
        assert_format_err!(bad, FormatError::NonZeroPadding { offset } if offset == at as u64);
    }
}

#[test]
fn non_zero_section_padding() {
    let bytes = sample_file();
    let at = section_range(&bytes, sec::SKELETON).end;
    assert_eq!(at % ALIGN as usize, 100 % 64, "skeleton section moved");
    let mut bad = bytes.clone();
    bad[at] = 0xff;
    assert_format_err!(bad, FormatError::NonZeroPadding { offset } if offset == at as u64);
    // Padding before the last section.
    let last_gap = section_range(&bytes, sec::FC_BIAS).end..section_range(&bytes, sec::STEPS).start;
    assert!(!last_gap.is_empty());
    let mut bad = bytes;
    bad[last_gap.end - 1] = 0x80;
    assert_format_err!(bad, FormatError::NonZeroPadding { offset } if offset == last_gap.end as u64 - 1);
}

fn section_offset(bytes: &[u8], index: usize) -> u64 {
    parsed_header(bytes).sections[index].offset
}

#[test]
fn section_offset_overlap() {
    let bytes = sample_file();
    let off = section_offset(&bytes, sec::PERM1) - ALIGN;
    let bad = with_header(&bytes, |h| set(h, &format!("/sections/{}/offset", sec::PERM1), json!(off)));
    assert_format_err!(bad, FormatError::SectionOffset { index, .. } if index == sec::PERM1);
}

#[test]
fn section_offset_misaligned() {
    let bytes = sample_file();
    let off = section_offset(&bytes, sec::PERM1) + 1;
    let bad = with_header(&bytes, |h| set(h, &format!("/sections/{}/offset", sec::PERM1), json!(off)));
    assert_format_err!(
        bad,
        FormatError::SectionOffset { index, found, .. } if index == sec::PERM1 && found == off
    );
}

#[test]
fn section_offset_hole() {
    let bytes = sample_file();
    let off = section_offset(&bytes, sec::STEPS) + ALIGN;
    let bad = with_header(&bytes, |h| set(h, &format!("/sections/{}/offset", sec::STEPS), json!(off)));
    assert_format_err!(bad, FormatError::SectionOffset { index, .. } if index == sec::STEPS);
    // The first section must start at 0.
    let bad = with_header(&bytes, |h| set(h, "/sections/0/offset", json!(64)));
    assert_format_err!(bad, FormatError::SectionOffset { index: 0, expected: 0, .. });
}

#[test]
fn section_out_of_file() {
    let bytes = sample_file();
    assert_format_err!(
        bytes[..bytes.len() - 1].to_vec(),
        FormatError::SectionOutOfFile { index, .. } if index == sec::STEPS
    );
    let bad = with_header(&bytes, |h| {
        set(h, &format!("/sections/{}/length", sec::STEPS), json!(9));
        set(h, &format!("/sections/{}/decoded_length", sec::STEPS), json!(9));
    });
    assert_format_err!(bad, FormatError::SectionOutOfFile { index, .. } if index == sec::STEPS);
    let bad = with_header(&bytes, |h| set(h, "/sections/0/length", json!(u64::MAX - 4096)));
    assert_format_err!(bad, FormatError::SectionOutOfFile { index: 0, .. });
}

#[test]
fn section_end_overflows() {
    let bad = with_header(&sample_file(), |h| set(h, "/sections/0/length", json!(u64::MAX)));
    assert_format_err!(bad, FormatError::Overflow(what) if what.contains("section 0"));
}

#[test]
fn trailing_bytes() {
    let mut bytes = sample_file();
    bytes.push(0);
    assert_format_err!(bytes.clone(), FormatError::TrailingBytes { extra: 1 });
    bytes.extend_from_slice(&[0; 63]);
    assert_format_err!(bytes, FormatError::TrailingBytes { extra: 64 });
}

#[test]
fn section_checksum_in_every_section() {
    let bytes = sample_file();
    for index in 0..sec::COUNT {
        let range = section_range(&bytes, index);
        for at in [range.start, range.start + range.len() / 2, range.end - 1] {
            let mut bad = bytes.clone();
            bad[at] ^= 0x01;
            assert_format_err!(bad, FormatError::SectionChecksum { index: i, .. } if i == index);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Limits
// ---------------------------------------------------------------------------------------------

#[test]
fn limit_too_many_tensors() {
    let bytes = sample_file();
    let bad = with_header(&bytes, |h| {
        let t = h["tensors"][1].clone();
        let list = h["tensors"].as_array_mut().unwrap();
        list.extend(std::iter::repeat_n(t, limits::MAX_TENSORS + 1 - list.len()));
    });
    assert_format_err!(
        bad,
        FormatError::LimitExceeded { what, count, .. }
            if what == "tensors" && count == limits::MAX_TENSORS as u64 + 1
    );
}

#[test]
fn limit_too_many_sections() {
    let bytes = sample_file();
    let bad = with_header(&bytes, |h| {
        let s = h["sections"][0].clone();
        h["sections"] = Value::Array(vec![s; limits::MAX_SECTIONS + 1]);
    });
    assert_format_err!(bad, FormatError::LimitExceeded { what, .. } if what == "sections");
}

#[test]
fn limit_rank() {
    let bytes = sample_file();
    let bad = with_header(&bytes, |h| set(h, "/tensors/1/shape", json!([1, 1, 1, 1, 4, 1, 1, 1, 1])));
    assert_format_err!(bad, FormatError::LimitExceeded { what, count: 9, .. } if what == "tensor rank");
}

#[test]
fn limit_decoded_section_length() {
    let bytes = sample_file();
    let bad = with_header(&bytes, |h| {
        set(h, &format!("/sections/{}/decoded_length", sec::FC_BIAS), json!(limits::MAX_DECODED_SECTION + 1))
    });
    assert_format_err!(bad, FormatError::LimitExceeded { what, .. } if what == "decoded section length");
}

#[test]
fn limit_metadata_key_length() {
    let mut m = sample_metadata();
    m.insert("k".repeat(limits::MAX_NAME_LEN + 1), "v".into());
    assert_format_err!(
        sample_file_with(m),
        FormatError::LimitExceeded { what, .. } if what == "metadata key length"
    );
}

// ---------------------------------------------------------------------------------------------
// Tensors
// ---------------------------------------------------------------------------------------------

fn assert_tensor_err(bytes: Vec<u8>, name: &str, needle: &str) {
    assert_format_err!(
        bytes,
        FormatError::Tensor { tensor, what } if tensor == name && what.contains(needle)
    );
}

#[test]
fn tensor_duplicate_name() {
    let bad = with_header(&sample_file(), |h| set(h, "/tensors/3/name", json!("conv1.bias")));
    assert_tensor_err(bad, "conv1.bias", "more than one");
}

#[test]
fn tensor_empty_or_long_name() {
    let bad = with_header(&sample_file(), |h| set(h, "/tensors/3/name", json!("")));
    assert_tensor_err(bad, "", "name length");
    let long = "n".repeat(limits::MAX_NAME_LEN + 1);
    let bad = with_header(&sample_file(), |h| set(h, "/tensors/3/name", json!(long)));
    assert_tensor_err(bad, &long, "name length");
}

#[test]
fn tensor_wrong_raw_size() {
    // Same element count, wider dtype.
    let bad = with_header(&sample_file(), |h| set(h, "/tensors/1/dtype", json!("f64")));
    assert_tensor_err(bad, "conv1.bias", "raw data is 16 bytes");
    let bad = with_header(&sample_file(), |h| set(h, "/tensors/1/shape", json!([5])));
    assert_tensor_err(bad, "conv1.bias", "raw data");
    let bad = with_header(&sample_file(), |h| set(h, "/tensors/5/shape", json!([0])));
    assert_tensor_err(bad, "bn.num_batches_tracked", "raw data");
}

#[test]
fn tensor_bad_predicted_shape() {
    let file = sample_file();
    for shape in
        [json!([4, 3, 9]), json!([4, 3, 3, 4]), json!([0, 3, 3, 3]), json!([4, 0, 3, 3]), json!([4, 3, 0, 3])]
    {
        let bad = with_header(&file, |h| set(h, "/tensors/0/shape", shape.clone()));
        assert_tensor_err(bad, "conv1.weight", "shape");
    }
}

#[test]
fn tensor_predicted_integer_dtype() {
    let bad = with_header(&sample_file(), |h| set(h, "/tensors/0/dtype", json!("i32")));
    assert_tensor_err(bad, "conv1.weight", "cannot be predicted");
}

#[test]
fn tensor_absurd_element_count() {
    let file = sample_file();
    for shape in
        [json!([1u64 << 40, 1u64 << 40]), json!([1u64 << 33]), json!([u64::MAX, 2]), json!([65536, 65537])]
    {
        let bad = with_header(&file, |h| set(h, "/tensors/1/shape", shape.clone()));
        assert_tensor_err(bad, "conv1.bias", "elements");
    }
    // A predicted tensor with a huge but overflow-free kernel count.
    let bad = with_header(&file, |h| set(h, "/tensors/0/shape", json!([1u64 << 31, 1u64 << 31, 3, 3])));
    assert_tensor_err(bad, "conv1.weight", "elements");
}

#[test]
fn tensor_layer_index_repeated_or_out_of_range() {
    let bad = with_header(&sample_file(), |h| set(h, "/tensors/2/storage/layer", json!(0)));
    assert_tensor_err(bad, "conv2.weight", "layer index");
    let bad = with_header(&sample_file(), |h| set(h, "/tensors/2/storage/layer", json!(2)));
    assert_tensor_err(bad, "conv2.weight", "layer index");
}

#[test]
fn tensor_permutation_or_scales_size() {
    // 5·3 kernels need a different permutation size than 4·3.
    let bad = with_header(&sample_file(), |h| set(h, "/tensors/0/shape", json!([5, 3, 3, 3])));
    assert_tensor_err(bad, "conv1.weight", "permutation is");
    // 4·3 kernels in 1×1: same permutation, same scales; 2·6 kernels: same permutation, scales differ.
    open_bytes(with_header(&sample_file(), |h| set(h, "/tensors/0/shape", json!([4, 3, 1, 1]))));
    let bad = with_header(&sample_file(), |h| set(h, "/tensors/0/shape", json!([2, 6, 3, 3])));
    assert_tensor_err(bad, "conv1.weight", "scales are");
}

// ---------------------------------------------------------------------------------------------
// Sections
// ---------------------------------------------------------------------------------------------

#[test]
fn section_wrong_kind_referenced() {
    let bad = with_header(&sample_file(), |h| set(h, "/tensors/1/storage/section", json!(sec::PERM1)));
    assert_format_err!(
        bad,
        FormatError::Section { index, what } if index == sec::PERM1 && what.contains("needs a tensor section")
    );
    let bad = with_header(&sample_file(), |h| set(h, "/tensors/0/storage/permutation", json!(sec::SCALES1)));
    assert_format_err!(bad, FormatError::Section { index, .. } if index == sec::SCALES1);
    let bad = with_header(&sample_file(), |h| set(h, "/predictor/section", json!(sec::SKELETON)));
    assert_format_err!(bad, FormatError::Section { index: 0, .. });
}

#[test]
fn section_referenced_twice() {
    let bad = with_header(&sample_file(), |h| set(h, "/tensors/4/storage/section", json!(sec::CONV1_BIAS)));
    assert_format_err!(
        bad,
        FormatError::Section { index, what } if index == sec::CONV1_BIAS && what.contains("more than once")
    );
}

#[test]
fn section_unreferenced() {
    let bad = with_header(&sample_file(), |h| set(h, "/tensors/0/storage/scales", Value::Null));
    assert_format_err!(
        bad,
        FormatError::Section { index, what } if index == sec::SCALES1 && what.contains("not referenced")
    );
    // An extra section nobody points at.
    let mut b = FileBuilder::new();
    b.add(SectionKind::Tensor, Encoding::Plain, &[1, 2, 3]);
    let source = Source { kind: SourceKind::Safetensors, file_bytes: 0, skeleton: None };
    assert_format_err!(
        b.finish(source, None, vec![], BTreeMap::new()),
        FormatError::Section { index: 0, .. }
    );
}

#[test]
fn section_index_out_of_range() {
    for (pointer, index) in [
        ("/tensors/1/storage/section", 9usize),
        ("/tensors/0/storage/permutation", 1000),
        ("/tensors/0/storage/scales", usize::MAX),
        ("/predictor/section", 10),
        ("/source/skeleton", 9),
    ] {
        let bad = with_header(&sample_file(), |h| set(h, pointer, json!(index)));
        assert_format_err!(
            bad,
            FormatError::Section { index: i, what } if i == index && what.contains("the file has 9 sections")
        );
    }
}

#[test]
fn section_plain_length_mismatch() {
    let bad = with_header(&sample_file(), |h| set(h, "/sections/0/decoded_length", json!(99)));
    assert_format_err!(bad, FormatError::Section { index: 0, what } if what.contains("plain"));
}

#[test]
fn section_bad_bytegroup_element() {
    for element in [0, 9] {
        let bad = with_header(&sample_file(), |h| {
            set(
                h,
                &format!("/sections/{}/encoding", sec::FC_WEIGHT),
                json!({ "zstd_bytegroup": { "element": element } }),
            )
        });
        assert_format_err!(bad, FormatError::Section { index, .. } if index == sec::FC_WEIGHT);
    }
}

#[test]
fn section_content_errors_surface_on_decode() {
    // A corrupt zstd frame with a matching CRC opens but fails to decode.
    let bad = open_bytes(rewrite_section(&sample_file(), sec::FC_BIAS, |b| b[b.len() - 2] ^= 0x55));
    match bad.decode_section(sec::FC_BIAS) {
        Err(Error::Format { kind: FormatError::Section { index, .. }, .. }) => {
            assert_eq!(index, sec::FC_BIAS)
        }
        Ok(d) => assert_ne!(&*d, &raw_tensors()[2].3[..], "corruption went unnoticed"),
        Err(e) => panic!("unexpected error {e}"),
    }
    // A zstd frame declaring another size.
    let bad = with_header(&sample_file(), |h| {
        set(h, &format!("/sections/{}/decoded_length", sec::FC_BIAS), json!(22));
        set(h, "/tensors/4/shape", json!([11]));
    });
    let bad = open_bytes(bad);
    assert!(matches!(
        bad.decode_section(sec::FC_BIAS),
        Err(Error::Format { kind: FormatError::Section { .. }, .. })
    ));
    // A permutation with a repeated entry.
    let bad = open_bytes(rewrite_section(&sample_file(), sec::PERM1, |b| b.copy_from_slice(&[0; 6])));
    let err = nerp::runtime::regen::layer_plans(&bad).unwrap_err();
    assert!(matches!(err, Error::Format { kind: FormatError::Tensor { ref tensor, .. }, .. }
            if tensor == "conv1.weight"));
    // A non-finite scale.
    let bad = open_bytes(rewrite_section(&sample_file(), sec::SCALES1, |b| {
        b[..4].copy_from_slice(&f32::NAN.to_le_bytes())
    }));
    assert!(matches!(
        nerp::runtime::regen::layer_plans(&bad),
        Err(Error::Format { kind: FormatError::Tensor { .. }, .. })
    ));
}

#[test]
fn zstd_size_claim_is_not_trusted_for_allocation() {
    // A 20-byte zstd frame that declares 16 GiB of content (the largest decoded length the
    // format allows) and holds 4 bytes, stored for an f64 tensor of 2^31 elements: the file is
    // valid up to its content, and decoding must fail without reserving gigabytes first.
    let claim = limits::MAX_DECODED_SECTION;
    let mut frame = vec![0x28, 0xb5, 0x2f, 0xfd, 0xc0, 0x00]; // magic, 8-byte content size, window
    frame.extend_from_slice(&claim.to_le_bytes());
    frame.extend_from_slice(&[0x21, 0x00, 0x00, 1, 2, 3, 4]); // last raw block of 4 bytes
    let header = Header {
        source: Source { kind: SourceKind::Safetensors, file_bytes: 0, skeleton: None },
        predictor: None,
        tensors: vec![TensorEntry {
            name: "huge".into(),
            dtype: DType::F64,
            shape: vec![claim / 8],
            storage: Storage::Raw { section: 0 },
        }],
        sections: vec![SectionEntry {
            kind: SectionKind::Tensor,
            offset: 0,
            length: frame.len() as u64,
            encoding: Encoding::Zstd,
            decoded_length: claim,
            crc32: crc32fast::hash(&frame),
        }],
        metadata: BTreeMap::new(),
    };
    let file = open_bytes(assemble(&serde_json::to_vec(&header).unwrap(), &frame));
    // `decode_section` may refuse the claim up front (the memory budget, machine-dependent);
    // the decoder itself, below any budget, must not trust it either.
    let result = file.decode_section(0);
    assert!(
        matches!(
            result,
            Err(Error::Format { kind: FormatError::Section { index: 0, .. }, .. })
                | Err(Error::Budget { .. })
        ),
        "{result:?}"
    );
    LARGEST_ALLOC.with(|c| c.set(0));
    let result = nerp::format::read::decode(Encoding::Zstd, file.section(0), claim);
    let largest = LARGEST_ALLOC.with(|c| c.get());
    assert!(result.is_err());
    assert!(largest < 64 << 20, "decoding a 20-byte section allocated {largest} bytes at once");
}

/// A valid file of one raw u8 tensor whose `zstd` section holds exactly `stored`.
fn file_with_zstd_section(stored: &[u8], decoded_length: u64) -> Vec<u8> {
    let header = Header {
        source: Source { kind: SourceKind::Safetensors, file_bytes: 0, skeleton: None },
        predictor: None,
        tensors: vec![TensorEntry {
            name: "t".into(),
            dtype: DType::U8,
            shape: vec![decoded_length],
            storage: Storage::Raw { section: 0 },
        }],
        sections: vec![SectionEntry {
            kind: SectionKind::Tensor,
            offset: 0,
            length: stored.len() as u64,
            encoding: Encoding::Zstd,
            decoded_length,
            crc32: crc32fast::hash(stored),
        }],
        metadata: BTreeMap::new(),
    };
    assemble(&serde_json::to_vec(&header).unwrap(), stored)
}

#[test]
fn zstd_section_is_exactly_one_frame() {
    let data: Vec<u8> = (0..1000u32).map(|i| (i % 7) as u8).collect();
    let frame = nerp::format::write::encode(Encoding::Zstd, &data);
    let ok = open_bytes(file_with_zstd_section(&frame, 1000));
    assert_eq!(&*ok.decode_section(0).unwrap(), &data[..]);
    let mut junk = frame.clone();
    junk.extend_from_slice(b"junk");
    let mut two = frame.clone();
    two.extend_from_slice(&nerp::format::write::encode(Encoding::Zstd, &[]));
    for (what, stored) in
        [("trailing junk", junk), ("a second frame", two), ("a cut frame", frame[..frame.len() - 3].to_vec())]
    {
        let file = open_bytes(file_with_zstd_section(&stored, 1000));
        match file.decode_section(0) {
            Err(Error::Format { kind: FormatError::Section { index: 0, .. }, .. }) => {}
            other => panic!("{what}: expected a Section error, got {:?}", other.map(|d| d.len())),
        }
    }
    // A skippable frame declares no content size, even for an empty section.
    let skippable = [0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, b'h', b'i', b'd', b'e'];
    let file = open_bytes(file_with_zstd_section(&skippable, 0));
    assert!(matches!(file.decode_section(0), Err(Error::Format { kind: FormatError::Section { .. }, .. })));
    let empty = nerp::format::write::encode(Encoding::Zstd, &[]);
    assert!(open_bytes(file_with_zstd_section(&empty, 0)).decode_section(0).unwrap().is_empty());
}

// ---------------------------------------------------------------------------------------------
// Predictor
// ---------------------------------------------------------------------------------------------

fn assert_predictor_err(bytes: Vec<u8>, needle: &str) {
    assert_format_err!(bytes, FormatError::Predictor(what) if what.contains(needle));
}

#[test]
fn predictor_unknown_arch() {
    assert_predictor_err(
        with_header(&sample_file(), |h| set(h, "/predictor/arch", json!("transformer"))),
        "architecture",
    );
}

#[test]
fn predictor_hidden_out_of_range() {
    for hidden in [0, limits::MAX_HIDDEN + 1] {
        assert_predictor_err(
            with_header(&sample_file(), |h| set(h, "/predictor/hidden", json!(hidden))),
            "hidden",
        );
    }
}

#[test]
fn predictor_bad_embedding() {
    for levels in [0, limits::MAX_LEVELS + 1] {
        let bad = with_header(&sample_file(), |h| set(h, "/predictor/embedding/levels", json!(levels)));
        assert_predictor_err(bad, "levels");
    }
    for base in [0.0, -2.0] {
        let bad = with_header(&sample_file(), |h| set(h, "/predictor/embedding/base", json!(base)));
        assert_predictor_err(bad, "base");
    }
    // JSON cannot spell infinity; an out-of-range literal is not valid JSON for an f64.
    let bad = with_json_replaced(&sample_file(), r#""base":2.0"#, r#""base":1e999"#);
    assert_format_err!(bad, FormatError::HeaderJson(_) | FormatError::Predictor(_));
}

#[test]
fn predictor_wrong_weights_size() {
    assert_predictor_err(
        with_header(&sample_file(), |h| set(h, "/predictor/hidden", json!(9))),
        "weights section",
    );
    assert_predictor_err(
        with_header(&sample_file(), |h| set(h, "/predictor/dtype", json!("f32"))),
        "weights section",
    );
    assert_predictor_err(
        with_header(&sample_file(), |h| set(h, "/predictor/embedding/levels", json!(3))),
        "weights section",
    );
}

#[test]
fn predictor_layer_count_mismatch() {
    for layers in [0, 1, 3] {
        assert_predictor_err(
            with_header(&sample_file(), |h| set(h, "/predictor/layers", json!(layers))),
            "layers",
        );
    }
}

#[test]
fn predictor_missing() {
    let bad = with_header(&sample_file(), |h| set(h, "/predictor", Value::Null));
    assert_predictor_err(bad, "no predictor");
}

// ---------------------------------------------------------------------------------------------
// Truncation and mutation
// ---------------------------------------------------------------------------------------------

/// Every interesting truncation point: inside the preamble and header, at and around every
/// section boundary, and in the middle of every section.
fn truncation_points(bytes: &[u8]) -> Vec<usize> {
    let hl = header_len(bytes);
    let pre = PREAMBLE_LEN as usize;
    let mut points = vec![0, 1, 8, 16, pre - 1, pre, pre + 1, pre + hl / 2, pre + hl - 1, pre + hl];
    points.extend([data_offset(bytes) - 1, data_offset(bytes)]);
    for i in 0..sec::COUNT {
        let r = section_range(bytes, i);
        points.extend([r.start, r.start + 1, r.start + r.len() / 2, r.end - 1, r.end, r.end + 1]);
    }
    points.retain(|&p| p < bytes.len());
    points.sort();
    points.dedup();
    points
}

#[test]
fn truncation_is_always_a_format_error() {
    let bytes = sample_file();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cut.nerp");
    let points = truncation_points(&bytes);
    assert!(points.len() > 40);
    for &len in &points {
        let cut = bytes[..len].to_vec();
        match NerpFile::from_bytes(cut.clone(), "cut") {
            Err(Error::Format { .. }) => {}
            Err(e) => panic!("truncated at {len}: not a format error: {e}"),
            Ok(_) => panic!("truncated at {len}: accepted"),
        }
        std::fs::write(&path, &cut).unwrap();
        assert!(matches!(NerpFile::open(&path), Err(Error::Format { .. })), "open, truncated at {len}");
        assert!(matches!(read_header(&path), Err(Error::Format { .. })), "read_header, truncated at {len}");
    }
}

/// Values that tend to sit on the edge of a validation rule.
fn interesting(rng: &mut XorShift, doc: &Value) -> Value {
    let choices = [
        json!(0),
        json!(1),
        json!(2),
        json!(3),
        json!(9),
        json!(-1),
        json!(63),
        json!(64),
        json!(65),
        json!(u32::MAX),
        json!(1u64 << 32),
        json!((1u64 << 34) + 1),
        json!(1u64 << 40),
        json!(u64::MAX),
        json!(1.5),
        json!(1e300),
        Value::Null,
        json!(true),
        json!(""),
        json!("x"),
        json!("mlp_relu"),
        json!("plain"),
        json!("zstd"),
        json!({ "zstd_bytegroup": { "element": 2 } }),
        json!("tensor"),
        json!("skeleton"),
        json!("permutation"),
        json!("f16"),
        json!("i64"),
        json!([]),
        json!([4, 3, 3, 3]),
        json!([1u64 << 40, 1u64 << 40]),
        json!({}),
    ];
    if rng.below(4) == 0 {
        // Splice in another node of the same document.
        let nodes = pointers(doc);
        return doc.pointer(&nodes[rng.below(nodes.len())]).unwrap().clone();
    }
    choices[rng.below(choices.len())].clone()
}

/// JSON pointers of every node of `v` except the root.
fn pointers(v: &Value) -> Vec<String> {
    fn walk(v: &Value, at: String, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, c) in m {
                    let p = format!("{at}/{}", k.replace('~', "~0").replace('/', "~1"));
                    out.push(p.clone());
                    walk(c, p, out);
                }
            }
            Value::Array(a) => {
                for (i, c) in a.iter().enumerate() {
                    let p = format!("{at}/{i}");
                    out.push(p.clone());
                    walk(c, p, out);
                }
            }
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(v, String::new(), &mut out);
    out
}

/// One structural edit of the header: replace, remove, duplicate or nudge a node.
fn mutate_header_value(rng: &mut XorShift, h: &mut Value) {
    let nodes = pointers(h);
    if nodes.is_empty() {
        *h = json!({ "metadata": {} });
        return;
    }
    let at = nodes[rng.below(nodes.len())].clone();
    let (parent, key) = at.rsplit_once('/').unwrap();
    let key = key.replace("~1", "/").replace("~0", "~");
    match [0, 0, 0, 0, 1, 2, 3, 3][rng.below(8)] {
        0 => {
            let node = h.pointer(&at).unwrap();
            // Mostly a value of the same JSON type, so the edit gets past deserialization.
            let new = if node.is_u64() && rng.below(4) != 0 {
                let edges = [0, 1, 2, 3, 4, 5, 8, 9, 12, 20, 63, 64, 65, 1 << 32, (1 << 34) + 1, u64::MAX];
                json!(edges[rng.below(edges.len())])
            } else if node.is_string() && rng.below(4) != 0 {
                let strings =
                    ["", "x", "conv1.bias", "mlp_relu", "raw", "predicted", "tensor", "scales", "f16", "i8"];
                json!(strings[rng.below(strings.len())])
            } else {
                interesting(rng, h)
            };
            *h.pointer_mut(&at).unwrap() = new;
        }
        1 => match h.pointer_mut(parent).unwrap() {
            Value::Object(m) => {
                m.remove(&key);
            }
            Value::Array(a) => {
                a.remove(key.parse::<usize>().unwrap());
            }
            _ => unreachable!(),
        },
        2 => match h.pointer_mut(parent).unwrap() {
            Value::Array(a) => {
                let i = key.parse::<usize>().unwrap();
                let copy = a[i].clone();
                a.insert(rng.below(a.len() + 1), copy);
            }
            Value::Object(m) => {
                m.insert(format!("{key}_"), json!(0));
            }
            _ => unreachable!(),
        },
        _ => {
            let node = h.pointer_mut(&at).unwrap();
            if let Some(n) = node.as_u64() {
                let delta = [1u64, 63, 64, 65][rng.below(4)];
                *node =
                    json!(if rng.below(2) == 0 { n.wrapping_add(delta) } else { n.saturating_sub(delta) });
            } else {
                *node = json!(rng.next() >> rng.below(64));
            }
        }
    }
}

/// One random mutation of a whole file.
fn mutate(rng: &mut XorShift, bytes: &mut Vec<u8>) {
    let len = bytes.len();
    match rng.below(14) {
        0 => {
            let i = rng.below(len);
            bytes[i] ^= 1 << rng.below(8);
        }
        1 => {
            for _ in 0..1 + rng.below(8) {
                let i = rng.below(len);
                bytes[i] = rng.next() as u8;
            }
        }
        2 => {
            let i = rng.below(len + 1);
            let n = 1 + rng.below(70);
            let ins: Vec<u8> = (0..n).map(|_| if rng.below(2) == 0 { 0 } else { rng.next() as u8 }).collect();
            bytes.splice(i..i, ins);
        }
        3 => {
            let i = rng.below(len);
            let n = (1 + rng.below(70)).min(len - i);
            bytes.drain(i..i + n);
        }
        4 => bytes.truncate(rng.below(len)),
        5 => {
            // A preamble field, often off by a little.
            let field = [8usize, 10, 12, 16, 24, 28][rng.below(6)];
            let v = u64::from_le_bytes(bytes[16..24].try_into().unwrap());
            let new = [v.wrapping_add(1), v.wrapping_sub(1), v.wrapping_add(64), rng.next()][rng.below(4)];
            let w = if field == 16 {
                8
            } else if field == 8 || field == 10 {
                2
            } else {
                4
            };
            bytes[field..field + w].copy_from_slice(&new.to_le_bytes()[..w]);
        }
        6 if len >= data_offset(bytes) => {
            // Raw bytes of the header JSON, CRC and length recomputed.
            let mut json = header_json(bytes).to_vec();
            if json.is_empty() {
                json.push(b'{');
            }
            for _ in 0..1 + rng.below(3) {
                let i = rng.below(json.len());
                match rng.below(3) {
                    0 => json[i] = b"{}[]\",:0123456789-.eEx \\"[rng.below(24)],
                    1 => {
                        json.remove(i);
                    }
                    _ => json.insert(i, b"0129\" ,"[rng.below(7)]),
                }
            }
            *bytes = with_json(bytes, &json);
        }
        7 if len >= data_offset(bytes) => {
            // A section's content, its CRC fixed in the header: only decoding can notice.
            if let Ok(h) = serde_json::from_slice::<Header>(header_json(bytes)) {
                if !h.sections.is_empty() {
                    let index = rng.below(h.sections.len());
                    let s = &h.sections[index];
                    let start = (data_offset(bytes) as u64).checked_add(s.offset);
                    let end = start.and_then(|v| v.checked_add(s.length));
                    if matches!((start, end), (Some(a), Some(b)) if a < b && b <= len as u64) {
                        let at = rng.below(s.length as usize);
                        let bit = rng.below(8);
                        *bytes = rewrite_section(bytes, index, |b| b[at] ^= 1 << bit);
                    }
                }
            }
        }
        _ if len >= data_offset(bytes) => {
            // Structural header edits with a valid CRC: exercises the semantic checks.
            if let Ok(mut h) = serde_json::from_slice::<Value>(header_json(bytes)) {
                for _ in 0..1 + rng.below(2) {
                    mutate_header_value(rng, &mut h);
                }
                *bytes = with_json(bytes, &serde_json::to_vec(&h).unwrap());
            }
        }
        _ => bytes.truncate(rng.below(len)),
    }
}

fn variant_name(kind: &FormatError) -> String {
    let dbg = format!("{kind:?}");
    dbg.split(|c: char| !c.is_alphanumeric()).next().unwrap().to_string()
}

#[test]
fn mutations_never_panic() {
    let base = sample_file();
    let mut rng = XorShift::new(0x6e65_7270);
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for iteration in 0..3000 {
        let mut bytes = base.clone();
        for _ in 0..[1, 1, 1, 2, 3][rng.below(5)] {
            if bytes.len() < PREAMBLE_LEN as usize + 1 || header_len(&bytes) > bytes.len() {
                break;
            }
            mutate(&mut rng, &mut bytes);
        }
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            match NerpFile::from_bytes(bytes.clone(), "mutant") {
                Ok(file) => {
                    exercise(&file);
                    "Ok".to_string()
                }
                Err(Error::Format { kind, .. }) => variant_name(&kind),
                Err(e) => panic!("not a format error: {e}"),
            }
        }));
        match outcome {
            Ok(name) => *seen.entry(name).or_default() += 1,
            Err(_) => {
                let path = std::env::temp_dir().join(format!("nerp-mutant-{iteration}.nerp"));
                std::fs::write(&path, &bytes).unwrap();
                panic!("iteration {iteration} panicked; input saved to {}", path.display());
            }
        }
    }
    eprintln!("outcomes: {seen:?}");
    assert!(seen.get("Ok").copied().unwrap_or(0) > 0, "no mutant was valid: {seen:?}");
    for rule in [
        "TooShort",
        "HeaderOutOfFile",
        "HeaderChecksum",
        "HeaderJson",
        "SectionOffset",
        "SectionChecksum",
        "Tensor",
        "Section",
        "Predictor",
    ] {
        assert!(seen.contains_key(rule), "the mutation loop never reached {rule}: {seen:?}");
    }
}

// ---------------------------------------------------------------------------------------------
// Files on disk
// ---------------------------------------------------------------------------------------------

#[test]
fn read_header_matches_open_and_skips_sections() {
    let bytes = sample_file();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.nerp");
    std::fs::write(&path, &bytes).unwrap();
    let (header, len) = read_header(&path).unwrap();
    assert_eq!(len, bytes.len() as u64);
    let file = NerpFile::open(&path).unwrap();
    assert_eq!(&header, file.header());
    assert_eq!(file.path(), path);

    // Corrupt a data byte: the header is still readable, the full open is not.
    let mut bad = bytes.clone();
    let at = section_range(&bytes, sec::PREDICTOR).start + 5;
    bad[at] ^= 0xff;
    std::fs::write(&path, &bad).unwrap();
    assert_eq!(read_header(&path).unwrap(), (header, len));
    match NerpFile::open(&path) {
        Err(Error::Format { kind: FormatError::SectionChecksum { index, .. }, path: p }) => {
            assert_eq!(index, sec::PREDICTOR);
            assert_eq!(p, path);
        }
        Err(e) => panic!("expected SectionChecksum, got {e}"),
        Ok(_) => panic!("expected SectionChecksum, got a valid file"),
    }
}

#[test]
fn read_header_and_open_report_missing_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("missing.nerp");
    assert!(matches!(read_header(&path), Err(Error::Io { .. })));
    assert!(matches!(NerpFile::open(&path), Err(Error::Io { .. })));
}

fn dir_entries(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn write_atomic_leaves_mapped_file_intact() {
    let old = sample_file();
    let new = sample_file_with(BTreeMap::from([("version".into(), "2".into())]));
    assert_ne!(old, new);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.nerp");
    write_atomic(&path, &old).unwrap();
    let mapped = NerpFile::open(&path).unwrap();
    let old_header = mapped.header().clone();
    let old_sections: Vec<Vec<u8>> = (0..sec::COUNT).map(|i| mapped.section(i).to_vec()).collect();

    write_atomic(&path, &new).unwrap();

    // The old mapping still sees the old, valid bytes.
    assert_eq!(mapped.header(), &old_header);
    assert_eq!(mapped.header().metadata, sample_metadata());
    for (i, s) in old_sections.iter().enumerate() {
        assert_eq!(mapped.section(i), &s[..], "section {i} changed under the mapping");
        mapped.decode_section(i).unwrap();
    }
    assert_eq!(nerp::runtime::regen::layer_plans(&mapped).unwrap().len(), 2);
    // The path has the new contents, and nothing else is left in the directory.
    assert_eq!(std::fs::read(&path).unwrap(), new);
    assert_eq!(NerpFile::open(&path).unwrap().header().metadata["version"], "2");
    assert_eq!(dir_entries(dir.path()), ["model.nerp"]);
}

#[test]
fn write_atomic_from_concurrent_threads() {
    // Several writers of one path in one process: every write succeeds, the result is exactly
    // one of the files written, and no temporary file is left behind.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.nerp");
    let files: Vec<Vec<u8>> = (0..6)
        .map(|i| sample_file_with(BTreeMap::from([("writer".into(), "w".repeat(1 + 300 * i))])))
        .collect();
    std::thread::scope(|s| {
        for file in &files {
            let path = &path;
            s.spawn(move || {
                for _ in 0..25 {
                    write_atomic(path, file).unwrap();
                }
            });
        }
    });
    let result = std::fs::read(&path).unwrap();
    assert!(files.contains(&result), "the file is a mix of several writes");
    open_bytes(result);
    assert_eq!(dir_entries(dir.path()), ["model.nerp"]);
}

#[test]
fn write_atomic_into_missing_directory_fails_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-dir").join("model.nerp");
    assert!(matches!(write_atomic(&path, &sample_file()), Err(Error::Io { .. })));
    assert_eq!(dir_entries(dir.path()), Vec::<String>::new());
}

// ---------------------------------------------------------------------------------------------
// The frozen v1 fixture
// ---------------------------------------------------------------------------------------------

/// Writes `tests/fixtures/tiny-v1.nerp`. Run once, by hand, when the fixture is created:
/// `cargo test --test format -- --ignored write_fixture`. Never rerun it for an existing
/// fixture: the point of the fixture is that it was written by an old nerp.
#[test]
#[ignore = "writes the frozen fixture; run by hand only"]
fn write_fixture() {
    let path = PathBuf::from(FIXTURE);
    assert!(!path.exists(), "{} exists and is frozen; do not regenerate it", path.display());
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    write_atomic(&path, &sample_file()).unwrap();
}

#[test]
fn frozen_fixture_opens() {
    // Guard against the fixture being regenerated: these are the bytes written on 2026-11-28.
    let bytes = std::fs::read(FIXTURE).unwrap();
    assert_eq!((bytes.len(), crc32fast::hash(&bytes)), (3336, 0x41a7_81fe), "{FIXTURE} was modified");
    let file = nerp::open(FIXTURE).unwrap_or_else(|e| panic!("the frozen v1 fixture must open: {e}"));
    let h = file.header();
    assert_eq!(h.source, Source { kind: SourceKind::Onnx, file_bytes: 12_345, skeleton: Some(0) });
    assert_eq!(h.metadata.len(), 2);
    assert_eq!(h.metadata["origin"], "tests/format.rs");
    let pre: nerp::data::Preprocess = serde_json::from_str(&h.metadata["preprocess"]).unwrap();
    assert_eq!((pre.scale, &pre.mean[..], &pre.std[..]), (0.003921569, &[0.5][..], &[0.25][..]));
    let spec = h.predictor.as_ref().expect("predictor");
    assert_eq!((spec.arch.as_str(), spec.hidden, spec.embedding.levels), ("mlp_relu", HIDDEN, LEVELS));
    assert_eq!((spec.embedding.base, spec.dtype, spec.layers), (2.0, WeightDtype::F16, 2));
    assert_eq!(spec.ordering, Ordering::Crossfilter);
    let summary: Vec<(&str, DType, &[u64], &str)> = h
        .tensors
        .iter()
        .map(|t| {
            let kind = match t.storage {
                Storage::Raw { .. } => "raw",
                Storage::Predicted { scales: Some(_), .. } => "predicted+scales",
                Storage::Predicted { scales: None, .. } => "predicted",
                Storage::Quantized { .. } | Storage::Cast { .. } => "format 3",
                Storage::Coded { .. } => "format 4",
            };
            (t.name.as_str(), t.dtype, &t.shape[..], kind)
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("conv1.weight", DType::F32, &[4u64, 3, 3, 3][..], "predicted+scales"),
            ("conv1.bias", DType::F32, &[4][..], "raw"),
            ("conv2.weight", DType::F16, &[5, 4, 1, 1][..], "predicted"),
            ("fc.weight", DType::F32, &[10, 5][..], "raw"),
            ("fc.bias", DType::F16, &[10][..], "raw"),
            ("bn.num_batches_tracked", DType::I64, &[][..], "raw"),
        ]
    );
    let encodings: Vec<Encoding> = h.sections.iter().map(|s| s.encoding).collect();
    assert!(
        encodings.contains(&Encoding::Zstd) && encodings.contains(&Encoding::ZstdBytegroup { element: 4 })
    );
    assert_eq!(&*file.decode_section(0).unwrap(), &skeleton_bytes()[..]);

    let weights = nerp::runtime::regen::regenerate(&file, &nerp::Device::Cpu).unwrap();
    assert_eq!(weights.len(), h.tensors.len());
    for (w, t) in weights.iter().zip(&h.tensors) {
        assert_eq!((&w.name, w.dtype, &w.shape), (&t.name, t.dtype, &t.shape));
        let numel = t.shape.iter().product::<u64>() as usize;
        assert_eq!(w.data.len(), numel * t.dtype.size(), "{}", t.name);
    }
    for (name, dtype, shape, data, _) in raw_tensors() {
        let w = weights.iter().find(|w| w.name == name).unwrap();
        assert_eq!((w.dtype, &w.shape[..], &w.data[..]), (dtype, &shape[..], &data[..]), "{name}");
    }

    // Predicted values: chain position p of layer l has coordinate (l/L, f/F, c/C) with
    // f = p / C, c = p % C; its 3×3 output, centre-cropped to kh×kw and multiplied by the scale
    // of its filter, is kernel perm[p].
    let flat = nerp::predictor::decode_weights(
        spec.dtype,
        spec.hidden as usize,
        spec.embedding.levels as usize,
        &file.decode_section(spec.section).unwrap(),
    )
    .unwrap();
    let perm2 = perm2();
    type Case<'a> = (&'a str, u32, &'a [u32], Option<&'a [f32]>);
    let cases: [Case; 2] = [("conv1.weight", 0, &PERM1, Some(&SCALES1)), ("conv2.weight", 1, &perm2, None)];
    for (name, layer, perm, scales) in cases {
        let w = weights.iter().find(|w| w.name == name).unwrap();
        let values = w.to_f32().unwrap();
        // The check below is only meaningful if the prediction depends on the coordinate.
        let (lo, hi) = values.iter().fold((f32::MAX, f32::MIN), |(lo, hi), &v| (lo.min(v), hi.max(v)));
        assert!(hi - lo > 0.05, "{name}: predictions barely vary ({lo}..{hi})");
        let d: Vec<usize> = w.shape.iter().map(|&d| d as usize).collect();
        let (f, c, kh, kw) = (d[0], d[1], d[2], d[3]);
        let (r0, c0) = ((3 - kh) / 2, (3 - kw) / 2);
        for (p, &kernel) in perm.iter().enumerate() {
            let coord = [layer as f32 / 2.0, (p / c) as f32 / f as f32, (p % c) as f32 / c as f32];
            let pred = common::reference_predict(spec.hidden as usize, spec.embedding, &flat, coord);
            let scale = scales.map_or(1.0, |s| s[kernel as usize / c]) as f64;
            for i in 0..kh {
                for j in 0..kw {
                    let want = pred[(r0 + i) * 3 + c0 + j] * scale;
                    let got = values[kernel as usize * kh * kw + i * kw + j] as f64;
                    let tol = if w.dtype == DType::F16 {
                        2e-3 * want.abs().max(1.0)
                    } else {
                        1e-4 * want.abs().max(1.0)
                    };
                    assert!((got - want).abs() <= tol, "{name} kernel {kernel} [{i},{j}]: {got} vs {want}");
                }
            }
        }
    }
}

// Format 2: layouts

/// [`with_header`] for a file that declares format 2.
fn with_header_v2(file: &[u8], edit: impl FnOnce(&mut Value)) -> Vec<u8> {
    let mut v = header_value(file);
    edit(&mut v);
    assemble_major(&serde_json::to_vec(&v).unwrap(), &file[data_offset(file)..], 2)
}

#[test]
fn sample_file_is_format_1_and_opens_as_format_2() {
    let file = sample_file();
    assert_eq!(u16::from_le_bytes([file[8], file[9]]), 1, "v1-expressible files are written as 1.0");
    let v2 = with_header_v2(&file, |_| {});
    assert_eq!(NerpFile::from_bytes(v2, "v2.nerp").unwrap().major(), 2);
}

#[test]
fn format_1_refuses_format_2_layouts() {
    let bad = with_header(&sample_file(), |h| h["tensors"][0]["storage"]["layout"] = json!("matrix"));
    assert_tensor_err(bad, "conv1.weight", "needs format 2");
    // Large kernels are format 2 only.
    let bad = with_header(&sample_file(), |h| set(h, "/tensors/0/shape", json!([4, 3, 5, 5])));
    assert_tensor_err(bad, "conv1.weight", "format 1");
}

#[test]
fn unknown_layout_is_a_json_error() {
    let bad = with_header_v2(&sample_file(), |h| h["tensors"][0]["storage"]["layout"] = json!("tiles"));
    assert_format_err!(bad, FormatError::HeaderJson(m) if m.contains("tiles"));
}

#[test]
fn format_2_layout_shape_rules() {
    // conv1.weight [4, 3, 3, 3] has 12 blocks; as a matrix [4, 27] it has 4·3 = 12 blocks too,
    // so the same permutation and scales sections fit.
    let file = sample_file();
    let ok = with_header_v2(&file, |h| {
        set(h, "/tensors/0/shape", json!([4, 27]));
        h["tensors"][0]["storage"]["layout"] = json!("matrix");
    });
    NerpFile::from_bytes(ok, "m.nerp").unwrap();
    for (shape, layout, what) in [
        (json!([4, 27]), "conv", "rank 3"),
        (json!([108]), "matrix", "rank 2"),
        (json!([4, 0, 27]), "matrix", "zero"),
        (json!([4, 3, 9]), "conv", "permutation is"), // 4·3·3 tiles: 36 blocks, not 12
        (json!([4, 54]), "matrix", "permutation is"),
        (json!([8, 27]), "matrix", "permutation is"),
    ] {
        let bad = with_header_v2(&file, |h| {
            set(h, "/tensors/0/shape", shape.clone());
            h["tensors"][0]["storage"]["layout"] = json!(layout);
        });
        assert_tensor_err(bad, "conv1.weight", what);
    }
}
