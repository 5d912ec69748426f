//! Files that are valid containers but hostile, and dangerous output paths (issue 16): non-finite
//! or huge values, truthful multi-GiB declarations, zstd windows, files truncated after opening,
//! ONNX external data outside the model's folder, outputs that are inputs or devices, and the
//! errors that must name the file, tensor and what to do. Every crafted file is built here.

mod common;

use nerp::format::codec::pack_permutation;
use nerp::format::{
    quant, DType, Embedding, Encoding, FileBuilder, Ordering, PredictorSpec, ScaleDtype, SectionKind, Source,
    SourceKind, Storage, TensorEntry, WeightDtype,
};
use nerp::{Device, Error, FormatError, NerpFile};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const HIDDEN: usize = 8;
const LEVELS: u32 = 2;

fn nerp(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nerp")).args(args).output().expect("nerp runs")
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// Asserts an exit code and that the output mentions every needle, and never a panic.
fn expect(o: &Output, code: i32, needles: &[&str]) {
    let t = text(o);
    if std::env::var_os("NERP_SHOW_MESSAGES").is_some() {
        eprintln!("exit {:?}: {t}", o.status.code());
    }
    assert_eq!(o.status.code(), Some(code), "{t}");
    assert!(!t.contains("panicked"), "{t}");
    for n in needles {
        assert!(t.contains(n), "missing {n:?} in: {t}");
    }
}

/// A safetensors-sourced file: one predicted `conv.weight` [4, 2, 3, 3] (predictor weights
/// `params`, f32; scales `scales`) and one raw `conv.bias` [4].
fn predicted_file(params: &[f32], scales: &[f32]) -> Vec<u8> {
    let mut b = FileBuilder::new();
    let bytes: Vec<u8> = params.iter().flat_map(|v| v.to_le_bytes()).collect();
    let section = b.add(SectionKind::Predictor, Encoding::Plain, &bytes);
    let perm =
        b.add(SectionKind::Permutation, Encoding::Zstd, &pack_permutation(&(0..8).collect::<Vec<_>>()));
    let sc: Vec<u8> = scales.iter().flat_map(|v| v.to_le_bytes()).collect();
    let scales = b.add(SectionKind::Scales, Encoding::Zstd, &sc);
    let bias: Vec<u8> = [0.5f32; 4].iter().flat_map(|v| v.to_le_bytes()).collect();
    let raw = b.add(SectionKind::Tensor, Encoding::Plain, &bias);
    let tensors = vec![
        conv_weight(perm, scales, Default::default()),
        TensorEntry {
            name: "conv.bias".into(),
            dtype: DType::F32,
            shape: vec![4],
            storage: Storage::Raw { section: raw },
        },
    ];
    let spec = PredictorSpec {
        arch: "mlp_relu".into(),
        hidden: HIDDEN as u32,
        embedding: Embedding { base: 1.25, levels: LEVELS },
        dtype: WeightDtype::F32,
        ordering: Ordering::None,
        layers: 1,
        section,
    };
    let source = Source { kind: SourceKind::Safetensors, file_bytes: 1000, skeleton: None };
    b.finish(source, Some(spec), tensors, BTreeMap::new())
}

fn param_count() -> usize {
    nerp::predictor::param_count(HIDDEN, LEVELS as usize)
}

/// Small finite parameters: a file that regenerates cleanly.
fn good_params() -> Vec<f32> {
    common::noise(param_count(), 3).iter().map(|v| v * 0.3).collect()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

// ---------------------------------------------------------------------------------------------
// 1. Non-finite values
// ---------------------------------------------------------------------------------------------

#[test]
fn a_good_crafted_file_loads_and_verifies() {
    let file = NerpFile::from_bytes(predicted_file(&good_params(), &[1.0; 4]), "good.nerp").unwrap();
    nerp::runtime::verify::verify(&file).unwrap();
    let w = nerp::runtime::regen::regenerate(&file, &Device::Cpu).unwrap();
    assert!(w[0].to_f32().unwrap().iter().all(|v| v.is_finite()));
}

#[test]
fn non_finite_or_huge_predictor_weights_are_rejected() {
    for bad in [f32::NAN, f32::INFINITY, 3e38] {
        let mut params = good_params();
        params[5] = bad;
        let file = NerpFile::from_bytes(predicted_file(&params, &[1.0; 4]), "bad.nerp").unwrap();
        for e in [
            nerp::runtime::verify::verify(&file).unwrap_err(),
            nerp::runtime::regen::regenerate(&file, &Device::Cpu).unwrap_err(),
        ] {
            assert!(
                matches!(&e, Error::Format { kind: FormatError::Predictor(w), .. } if w.contains("parameter 5")),
                "{bad}: {e}"
            );
        }
    }
}

#[test]
fn non_finite_or_huge_scales_are_rejected() {
    for bad in [f32::NAN, f32::NEG_INFINITY, 3e38] {
        let file =
            NerpFile::from_bytes(predicted_file(&good_params(), &[1.0, bad, 1.0, 1.0]), "bad.nerp").unwrap();
        let e = nerp::runtime::regen::regenerate(&file, &Device::Cpu).unwrap_err();
        assert!(
            matches!(&e, Error::Format { kind: FormatError::Tensor { tensor, what }, .. }
                if tensor == "conv.weight" && what.contains("scale")),
            "{bad}: {e}"
        );
        assert!(nerp::runtime::verify::verify(&file).is_err());
    }
}

#[test]
fn a_predictor_that_overflows_is_rejected_by_verify_and_regenerate() {
    // Every parameter within the 1e30 bound, but the products of five layers overflow f32.
    let params = vec![1e20f32; param_count()];
    let file = NerpFile::from_bytes(predicted_file(&params, &[1.0; 4]), "overflow.nerp").unwrap();
    for e in [
        nerp::runtime::verify::verify(&file).unwrap_err(),
        nerp::runtime::regen::regenerate(&file, &Device::Cpu).unwrap_err(),
    ] {
        assert!(
            matches!(&e, Error::Format { kind: FormatError::Tensor { tensor, what }, .. }
                if tensor == "conv.weight" && what.contains("regenerates to")),
            "{e}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "overflow.nerp", &predicted_file(&params, &[1.0; 4]));
    expect(&nerp(&["verify", s(&f)]), 1, &["overflow.nerp", "conv.weight", "regenerates to"]);
    let out = dir.path().join("out.safetensors");
    expect(&nerp(&["decompress", s(&f), "-o", s(&out), "--device", "cpu"]), 1, &["conv.weight"]);
    assert!(!out.exists());
}

/// A scale that is finite but makes an f16 tensor overflow: caught after conversion.
#[test]
fn overflow_in_the_tensor_dtype_is_rejected() {
    let mut bytes = predicted_file(&good_params(), &[1e10; 4]);
    // Re-declare conv.weight as f16 (same element count, different size is checked by open
    // only for raw tensors): rebuild through the header.
    let file = NerpFile::from_bytes(bytes.clone(), "f16.nerp").unwrap();
    let mut h = file.header().clone();
    h.tensors[0].dtype = DType::F16;
    let mut b = FileBuilder::new();
    for i in 0..h.sections.len() {
        let s = &h.sections[i];
        b.add(s.kind, s.encoding, &file.decode_section(i).unwrap());
    }
    bytes = b.finish(h.source.clone(), h.predictor.clone(), h.tensors.clone(), h.metadata.clone());
    let file = NerpFile::from_bytes(bytes, "f16.nerp").unwrap();
    let e = nerp::runtime::regen::regenerate(&file, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("conv.weight") && e.contains("inf") && e.contains("F16"), "{e}");
}

#[test]
fn a_non_finite_npy_input_is_an_error_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let x = dir.path().join("nan.npy");
    nerp::data::npy::write_f32(&x, &[f32::NAN; 784], &[1, 1, 28, 28]).unwrap();
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-v1.nerp");
    expect(&nerp(&["run", fixture, "--input", s(&x), "--device", "cpu"]), 2, &["nan.npy", "NaN", "finite"]);
}

#[test]
fn preprocess_that_makes_pixels_infinite_is_rejected() {
    for bad in ["mean=0,std=1e-45", "mean=3e38,std=1e-30", "mean=0,std=1,scale=1e-45"] {
        let e = nerp::data::Preprocess::parse(bad).unwrap_err();
        assert!(e.to_string().contains("--preprocess"), "{bad}: {e}");
    }
    assert!(nerp::data::Preprocess::parse("mean=0.286,std=0.353").is_ok());
}

// ---------------------------------------------------------------------------------------------
// 2. Memory budget: truthful multi-GiB declarations
// ---------------------------------------------------------------------------------------------

/// A zstd frame of `n` zero bytes built by hand from RLE blocks (4 bytes per 128 KiB), with
/// window descriptor byte `window` (0x38: 128 KiB).
fn zero_frame(n: u64, window: u8) -> Vec<u8> {
    let mut f = 0xFD2F_B528u32.to_le_bytes().to_vec();
    f.push(0xC0); // 8-byte content size, not single-segment, no checksum, no dictionary
    f.push(window);
    f.extend_from_slice(&n.to_le_bytes());
    let block = 128 * 1024u64;
    let mut left = n;
    loop {
        let size = left.min(block);
        left -= size;
        let last = (left == 0) as u32;
        let header = last | (1 << 1) | ((size as u32) << 3); // RLE block
        f.extend_from_slice(&header.to_le_bytes()[..3]);
        f.push(0);
        if left == 0 {
            return f;
        }
    }
}

/// A .nerp holding one raw tensor `big` of `n` zero bytes (`dtype` elements), stored as the
/// zstd `frame` (laid out here: `FileBuilder` would compress the bytes themselves).
fn big_file(n: u64, dtype: DType, frame: &[u8]) -> Vec<u8> {
    let header = nerp::format::Header {
        source: Source { kind: SourceKind::Safetensors, file_bytes: n, skeleton: None },
        predictor: None,
        tensors: vec![TensorEntry {
            name: "big".into(),
            dtype,
            shape: vec![n / dtype.size() as u64],
            storage: Storage::Raw { section: 0 },
        }],
        sections: vec![nerp::format::SectionEntry {
            kind: SectionKind::Tensor,
            offset: 0,
            length: frame.len() as u64,
            encoding: Encoding::Zstd,
            decoded_length: n,
            crc32: crc32fast_hash(frame),
        }],
        metadata: BTreeMap::new(),
    };
    let json = serde_json::to_vec(&header).unwrap();
    let mut out = file_preamble(&json);
    out.extend_from_slice(&json);
    out.resize(nerp::format::align_up(out.len() as u64).unwrap() as usize, 0);
    out.extend_from_slice(frame);
    NerpFile::from_bytes(out.clone(), "big").expect("a valid container");
    out
}

fn crc32fast_hash(b: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(b);
    h.finalize()
}

fn file_preamble(json: &[u8]) -> Vec<u8> {
    let mut p = nerp::format::MAGIC.to_vec();
    p.extend_from_slice(&1u16.to_le_bytes());
    p.extend_from_slice(&0u16.to_le_bytes());
    p.extend_from_slice(&0u32.to_le_bytes());
    p.extend_from_slice(&(json.len() as u64).to_le_bytes());
    p.extend_from_slice(&crc32fast_hash(json).to_le_bytes());
    p.extend_from_slice(&0u32.to_le_bytes());
    p
}

#[test]
fn a_truthful_3_gib_declaration_is_a_budget_error_not_an_abort() {
    let n = 3u64 << 30;
    let bytes = big_file(n, DType::U8, &zero_frame(n, 0x38));
    assert!(bytes.len() < 110_000, "{} bytes", bytes.len());
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "big.nerp", &bytes);
    let out = dir.path().join("big.safetensors");
    let o = nerp(&["--max-memory", "1G", "decompress", s(&f), "-o", s(&out), "--device", "cpu"]);
    expect(&o, 1, &["big.nerp", "tensor big", "3.0 GiB", "--max-memory"]);
    assert!(!out.exists());
    // The same budget makes verify say invalid (verify and decompress agree).
    expect(&nerp(&["--max-memory", "1G", "verify", s(&f)]), 1, &["tensor big", "--max-memory"]);
}

/// `verify` streams raw sections: under a 2 GB address-space limit it checks a file whose
/// tensor decodes to 3 GiB (before, it used 3.2 GB).
#[test]
fn verify_streams_a_3_gib_section_within_bounded_memory() {
    let n = 3u64 << 30;
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "big.nerp", &big_file(n, DType::U8, &zero_frame(n, 0x38)));
    let cmd = format!(
        "ulimit -v 2000000 && exec '{}' --max-memory 16G verify '{}'",
        env!("CARGO_BIN_EXE_nerp"),
        s(&f)
    );
    let o = Command::new("sh").args(["-c", &cmd]).output().unwrap();
    expect(&o, 0, &["valid"]);
}

#[test]
fn a_16_gib_declaration_is_a_budget_error() {
    let n = 16u64 << 30;
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "huge.nerp", &big_file(n, DType::U64, &zero_frame(n, 0x38)));
    let out = dir.path().join("huge.safetensors");
    let o = nerp(&["--max-memory", "8G", "decompress", s(&f), "-o", s(&out), "--device", "cpu"]);
    expect(&o, 1, &["huge.nerp", "tensor big", "16.0 GiB", "memory budget"]);
    assert!(!text(&o).contains("corrupt"), "{}", text(&o));
}

#[test]
fn a_zstd_frame_with_a_1_gib_window_is_a_clear_error() {
    let n = 1u64 << 20;
    let dir = tempfile::tempdir().unwrap();
    // Window descriptor exponent 20: 2^30 bytes.
    let f = write(dir.path(), "window.nerp", &big_file(n, DType::U8, &zero_frame(n, 20 << 3)));
    expect(&nerp(&["verify", s(&f)]), 1, &["window.nerp", "1.0 GiB window", "re-encode"]);
    let out = dir.path().join("w.safetensors");
    expect(&nerp(&["decompress", s(&f), "-o", s(&out), "--device", "cpu"]), 1, &["window"]);
}

#[test]
fn compress_with_an_enormous_predictor_is_a_clear_error() {
    let model = common::shared_model("resnet20_fashion_mnist.safetensors");
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.nerp");
    for extra in [&["--hidden", "16384"][..], &["--target-ratio", "1e-30"]] {
        let mut args = vec!["--max-memory", "8G", "compress", s(&model), "-o", s(&out), "--steps", "1", "-q"];
        args.extend_from_slice(extra);
        expect(&nerp(&args), 1, &["hidden width 16384", "memory budget", "--hidden"]);
        assert!(!out.exists());
    }
}

// ---------------------------------------------------------------------------------------------
// 3. verify means "loads"
// ---------------------------------------------------------------------------------------------

#[test]
fn verify_rejects_what_decompress_rejects() {
    // The frozen fixture is a valid container whose skeleton is not ONNX.
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-v1.nerp");
    expect(&nerp(&["verify", fixture]), 1, &["tiny-v1.nerp", "skeleton"]);
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.onnx");
    expect(&nerp(&["decompress", fixture, "-o", s(&out), "--device", "cpu"]), 1, &["skeleton"]);
}

// ---------------------------------------------------------------------------------------------
// 4. A file truncated after opening cannot kill the process
// ---------------------------------------------------------------------------------------------

#[test]
fn a_file_truncated_after_opening_still_decodes() {
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "t.nerp", &predicted_file(&good_params(), &[1.0; 4]));
    let file = NerpFile::open(&f).unwrap();
    // Shrink the file in place (what another program might do); a memory map would now
    // raise SIGBUS on the next read of the data section.
    std::fs::OpenOptions::new().write(true).open(&f).unwrap().set_len(0).unwrap();
    nerp::runtime::verify::verify(&file).unwrap();
    assert_eq!(nerp::runtime::regen::regenerate(&file, &Device::Cpu).unwrap().len(), 2);
}

// ---------------------------------------------------------------------------------------------
// 5. ONNX external data
// ---------------------------------------------------------------------------------------------

/// An ONNX model with one f32 initializer `w` of 36 elements (144 bytes) stored externally.
fn external_model(location: &str, offset: Option<u64>) -> Vec<u8> {
    use prost::Message;
    use tract_onnx::pb::{GraphProto, ModelProto, StringStringEntryProto, TensorProto};
    let mut entries = vec![StringStringEntryProto { key: "location".into(), value: location.into() }];
    if let Some(o) = offset {
        entries.push(StringStringEntryProto { key: "offset".into(), value: o.to_string() });
        entries.push(StringStringEntryProto { key: "length".into(), value: "144".into() });
    }
    let t = TensorProto {
        name: "w".into(),
        dims: vec![4, 1, 3, 3],
        data_type: 1,
        data_location: Some(1),
        external_data: entries,
        ..Default::default()
    };
    let graph = GraphProto { name: "g".into(), initializer: vec![t], ..Default::default() };
    ModelProto { ir_version: 8, graph: Some(graph), ..Default::default() }.encode_to_vec()
}

fn ingest_error(dir: &Path, model: &[u8]) -> String {
    let p = write(dir, "m.onnx", model);
    nerp::ingest::load(&p).unwrap_err().to_string()
}

#[test]
fn external_data_is_read_only_where_named_and_only_inside_the_folder() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A 6 GiB sparse data file: only the 144 bytes named are read.
    let data = d.join("w.bin");
    let f = std::fs::File::create(&data).unwrap();
    f.set_len(6 << 30).unwrap();
    use std::os::unix::fs::FileExt;
    let values: Vec<u8> = (0..36).flat_map(|i| (i as f32).to_le_bytes()).collect();
    f.write_all_at(&values, 5 << 30).unwrap();
    let p = write(d, "m.onnx", &external_model("w.bin", Some(5 << 30)));
    let model = nerp::ingest::load(&p).unwrap();
    assert_eq!(model.tensors[0].data, values);

    assert!(ingest_error(d, &external_model("../w.bin", None)).contains("inside the model's folder"));
    assert!(ingest_error(d, &external_model("/etc/passwd", None)).contains("relative path"));
    std::os::unix::fs::symlink("/dev/zero", d.join("zero")).unwrap();
    let e = ingest_error(d, &external_model("zero", None));
    assert!(e.contains("outside the model's folder") && e.contains("tensor w"), "{e}");
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("x.bin"), &values).unwrap();
    std::os::unix::fs::symlink(outside.path().join("x.bin"), d.join("link.bin")).unwrap();
    assert!(ingest_error(d, &external_model("link.bin", None)).contains("outside the model's folder"));
    let fifo = std::ffi::CString::new(d.join("fifo").to_str().unwrap()).unwrap();
    // SAFETY: creating a FIFO at a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o600) }, 0);
    let e = ingest_error(d, &external_model("fifo", None));
    assert!(e.contains("not a regular file"), "{e}");
    let e = ingest_error(d, &external_model("w.bin", Some(6 << 30)));
    assert!(e.contains("outside"), "{e}");
}

// ---------------------------------------------------------------------------------------------
// 6. Outputs
// ---------------------------------------------------------------------------------------------

#[test]
fn an_output_that_is_an_input_is_refused_and_the_input_kept() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let model = d.join("m.safetensors");
    std::fs::copy(common::shared_model("resnet20_fashion_mnist.safetensors"), &model).unwrap();
    let before = std::fs::read(&model).unwrap();
    expect(
        &nerp(&["compress", s(&model), "-o", s(&model), "--steps", "1", "-q"]),
        2,
        &["--output", "destroy"],
    );
    // A hard link is the same file under another name.
    let link = d.join("link.safetensors");
    std::fs::hard_link(&model, &link).unwrap();
    expect(&nerp(&["compress", s(&model), "-o", s(&link), "--steps", "1", "-q"]), 2, &["--output"]);
    assert_eq!(std::fs::read(&model).unwrap(), before);

    let f = write(d, "g.nerp", &predicted_file(&good_params(), &[1.0; 4]));
    let before = std::fs::read(&f).unwrap();
    let alias = d.join("g-alias.safetensors");
    std::fs::hard_link(&f, &alias).unwrap();
    expect(&nerp(&["decompress", s(&f), "-o", s(&alias), "--device", "cpu"]), 2, &["--output"]);
    assert_eq!(std::fs::read(&f).unwrap(), before);

    let x = d.join("x.npy");
    nerp::data::npy::write_f32(&x, &[0.0; 784], &[1, 1, 28, 28]).unwrap();
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-v1.nerp");
    expect(&nerp(&["run", fixture, "--input", s(&x), "-o", s(&x)]), 2, &["--output", "x.npy"]);
    expect(&nerp(&["run", fixture, "--input", s(&x), "-o", s(&d.join("y.txt"))]), 2, &[".npy"]);
}

#[test]
fn pipes_and_devices_are_written_directly_and_directories_refused() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let f = write(d, "g.nerp", &predicted_file(&good_params(), &[1.0; 4]));
    let reference = d.join("ref.safetensors");
    expect(&nerp(&["decompress", s(&f), "-o", s(&reference), "--device", "cpu"]), 0, &[]);
    // A FIFO: read by a thread while nerp writes into it; it stays a FIFO.
    let fifo = d.join("out.safetensors");
    let c = std::ffi::CString::new(s(&fifo)).unwrap();
    // SAFETY: creating a FIFO at a NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let reader = {
        let fifo = fifo.clone();
        std::thread::spawn(move || std::fs::read(fifo).unwrap())
    };
    expect(&nerp(&["decompress", s(&f), "-o", s(&fifo), "--device", "cpu"]), 0, &[]);
    assert_eq!(reader.join().unwrap(), std::fs::read(&reference).unwrap());
    use std::os::unix::fs::FileTypeExt;
    assert!(std::fs::metadata(&fifo).unwrap().file_type().is_fifo());
    // A character device (compress checks no extension).
    let model = common::shared_model("resnet20_fashion_mnist.safetensors");
    expect(&nerp(&["compress", s(&model), "-o", "/dev/null", "--steps", "1", "-q"]), 0, &[]);
    assert!(std::fs::metadata("/dev/null").unwrap().file_type().is_char_device());
    // A directory (named like an output).
    let folder = d.join("folder.safetensors");
    std::fs::create_dir(&folder).unwrap();
    expect(&nerp(&["decompress", s(&f), "-o", s(&folder), "--device", "cpu"]), 2, &["directory"]);
    let leftovers: Vec<_> = std::fs::read_dir(d)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

// ---------------------------------------------------------------------------------------------
// 7. Errors that name the tensor
// ---------------------------------------------------------------------------------------------

/// A safetensors file from a header JSON and a data length.
fn safetensors(header: serde_json::Value, data_len: usize) -> Vec<u8> {
    let json = serde_json::to_vec(&header).unwrap();
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    out.resize(out.len() + data_len, 0);
    out
}

#[test]
fn safetensors_errors_name_the_tensor_at_fault() {
    use serde_json::json;
    let dir = tempfile::tempdir().unwrap();
    let load = |bytes: Vec<u8>| {
        let p = write(dir.path(), "m.safetensors", &bytes);
        nerp::ingest::load(&p).unwrap_err().to_string()
    };
    let e = load(safetensors(
        json!({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
               "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}),
        16,
    ));
    assert!(e.contains("m.safetensors") && e.contains("tensor \"b\"") && e.contains("past the end"), "{e}");
    let e = load(safetensors(json!({"f8": {"dtype": "F8_E4M3", "shape": [4], "data_offsets": [0, 4]}}), 4));
    assert!(e.contains("tensor \"f8\"") && e.contains("F8_E4M3") && e.contains("not supported"), "{e}");
    let mut bytes = safetensors(json!({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}), 8);
    bytes[..8].copy_from_slice(&1_000_000u64.to_le_bytes());
    let e = load(bytes);
    assert!(e.contains("header length 1000000") && e.contains("past the end of the file"), "{e}");
}

#[test]
fn run_and_eval_report_non_finite_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let onnx = write(d, "stack.onnx", &nerp::synth::conv_stack_onnx(8, 3, 1));
    let model = nerp::ingest::load(&onnx).unwrap();
    // An untrained predictor whose last layer is scaled by 1e6: finite weights of ~1e4, a
    // network whose gain is ~1e16, stored in f32.
    let opts = nerp::compress::CompressOptions {
        hidden: Some(16),
        predictor_dtype: WeightDtype::F32,
        ..Default::default()
    };
    let nerp::compress::Plan { layers: plans, values, .. } =
        nerp::compress::make_plan(&model, &opts).unwrap();
    let cpu = candle_core::Device::Cpu;
    let mut flat =
        nerp::compress::train::init_predictor(16, opts.embedding, 2, &cpu).unwrap().to_flat().unwrap();
    let n = flat.len();
    flat[n - (16 * 9 + 9)..].iter_mut().for_each(|v| *v *= 1e6);
    let p = nerp::predictor::Predictor::from_flat(16, opts.embedding, &flat, &cpu).unwrap();
    let bytes = nerp::compress::build_file(&model, &plans, &values, Some(&p), &opts).unwrap().bytes;
    let f = write(d, "stack.nerp", &bytes);
    let fine = d.join("fine.npy");
    nerp::data::npy::write_f32(&fine, &[0.5; 8 * 64], &[1, 8, 8, 8]).unwrap();
    expect(&nerp(&["run", s(&f), "--input", s(&fine), "--device", "cpu"]), 0, &["output 0"]);
    // A finite input the network's gain takes past f32's range.
    let big = d.join("big.npy");
    nerp::data::npy::write_f32(&big, &[1e30; 8 * 64], &[1, 8, 8, 8]).unwrap();
    expect(
        &nerp(&["run", s(&f), "--input", s(&big), "--device", "cpu"]),
        1,
        &["output 0 of", "big.npy", "overflowed"],
    );
    let args = ["eval", s(&f), "--inputs", s(&big), "--original", s(&onnx), "--device", "cpu"];
    expect(&nerp(&args), 1, &["output 0 of the regenerated model", "big.npy"]);
}

// ---------------------------------------------------------------------------------------------
// Format 3: compressed header, int predictor, f16 scales, quantized and cast tensors
// ---------------------------------------------------------------------------------------------

/// The parts of a format-3 file: an int8 predictor, f16 scales, `conv.bias` [4] quantized
/// (`bits`, `group`, section content `quantized`) and `fc.weight` [3, 4] f32 cast to f16.
struct V3 {
    predictor: Vec<u8>,
    bits: u8,
    group: u64,
    quantized: Vec<u8>,
    cast_to: DType,
    cast: Vec<u8>,
}

fn bias() -> Vec<f32> {
    vec![0.5, -0.25, 0.125, 1.0]
}

fn fc() -> Vec<f32> {
    (0..12).map(|i| i as f32 / 8.0 - 0.7).collect()
}

impl V3 {
    fn good() -> Self {
        let predictor = nerp::format::predictor::encode_params(
            WeightDtype::Int8,
            HIDDEN,
            LEVELS as usize,
            &good_params(),
        )
        .unwrap();
        let q = quant::quantize(&bias(), 4, 8, quant::ScaleRule::MaxAbs).unwrap();
        let cast = nerp::format::codec::from_f32(DType::F16, &fc()).unwrap();
        V3 { predictor, bits: 8, group: 4, quantized: q.encode(), cast_to: DType::F16, cast }
    }

    fn header_and_sections(&self) -> (nerp::format::Header, Vec<Vec<u8>>) {
        let mut b = FileBuilder::new();
        let section = b.add(SectionKind::Predictor, Encoding::Plain, &self.predictor);
        let perm =
            b.add(SectionKind::Permutation, Encoding::Zstd, &pack_permutation(&(0..8).collect::<Vec<_>>()));
        let sc = nerp::format::codec::from_f32(DType::F16, &[1.0; 4]).unwrap();
        let scales = b.add(SectionKind::Scales, Encoding::Zstd, &sc);
        let q = b.add(SectionKind::Quantized, Encoding::Zstd, &self.quantized);
        let cast = b.add(SectionKind::Tensor, Encoding::ZstdBytegroup { element: 2 }, &self.cast);
        let tensors = vec![
            conv_weight(perm, scales, ScaleDtype::F16),
            TensorEntry {
                name: "conv.bias".into(),
                dtype: DType::F32,
                shape: vec![4],
                storage: Storage::Quantized { bits: self.bits, group: self.group, section: q },
            },
            TensorEntry {
                name: "fc.weight".into(),
                dtype: DType::F32,
                shape: vec![3, 4],
                storage: Storage::Cast { to: self.cast_to, section: cast },
            },
        ];
        let spec = PredictorSpec {
            arch: "mlp_relu".into(),
            hidden: HIDDEN as u32,
            embedding: Embedding { base: 1.25, levels: LEVELS },
            dtype: WeightDtype::Int8,
            ordering: Ordering::None,
            layers: 1,
            section,
        };
        let source = Source { kind: SourceKind::Safetensors, file_bytes: 1000, skeleton: None };
        let file = b.finish(source, Some(spec), tensors, BTreeMap::new());
        let file = NerpFile::from_bytes(file, "v3.nerp").unwrap();
        let sections =
            (0..file.header().sections.len()).map(|i| file.decode_section(i).unwrap().into_owned()).collect();
        (file.header().clone(), sections)
    }

    fn bytes(&self) -> Vec<u8> {
        let (h, sections) = self.header_and_sections();
        relayout(&h, &sections)
    }
}

/// Lays `h` out again with `sections` (decoded content), in the lowest major version.
fn relayout(h: &nerp::format::Header, sections: &[Vec<u8>]) -> Vec<u8> {
    let mut b = FileBuilder::new();
    for (s, content) in h.sections.iter().zip(sections) {
        b.add(s.kind, s.encoding, content);
    }
    b.finish(h.source.clone(), h.predictor.clone(), h.tensors.clone(), h.metadata.clone())
}

/// A file image with preamble `major` and stored header `header` (no sections).
fn with_header(major: u16, header: &[u8]) -> Vec<u8> {
    let mut out = nerp::format::MAGIC.to_vec();
    out.extend_from_slice(&major.to_le_bytes());
    out.extend_from_slice(&0u16.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&(header.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(header).to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(header);
    out.resize(nerp::format::align_up(out.len() as u64).unwrap() as usize, 0);
    out
}

fn format_err(bytes: Vec<u8>) -> FormatError {
    match NerpFile::from_bytes(bytes, "x.nerp") {
        Err(Error::Format { kind, .. }) => kind,
        Err(e) => panic!("not a format error: {e}"),
        Ok(_) => panic!("accepted"),
    }
}

#[test]
fn a_format_3_file_loads_verifies_and_regenerates() {
    let bytes = V3::good().bytes();
    let file = NerpFile::from_bytes(bytes.clone(), "v3.nerp").unwrap();
    assert_eq!(file.major(), 3);
    // The stored header is a zstd frame, not JSON.
    assert_eq!(&bytes[32..36], &0xFD2F_B528u32.to_le_bytes());
    nerp::runtime::verify::verify(&file).unwrap();
    let w = nerp::runtime::regen::regenerate(&file, &Device::Cpu).unwrap();
    let step = 1.0 / 127.0;
    for (a, b) in w[1].to_f32().unwrap().iter().zip(bias()) {
        assert!((a - b).abs() <= step * 0.5 * 1.001, "{a} vs {b}");
    }
    let f16: Vec<f32> = fc().iter().map(|&v| half::f16::from_f32(v).to_f32()).collect();
    assert_eq!(w[2].to_f32().unwrap(), f16);
    assert!(w[0].to_f32().unwrap().iter().all(|v| v.is_finite()));
}

#[test]
fn a_header_decompression_bomb_is_refused_before_allocating() {
    // 1 TiB of zeros declared by a 40-byte frame... in RLE blocks that would take 32 MiB to
    // write, so declare it in the frame header only and give one block.
    let mut frame = zero_frame(128 * 1024, 0x38);
    frame[6..14].copy_from_slice(&(1u64 << 40).to_le_bytes());
    assert!(matches!(
        format_err(with_header(3, &frame)),
        FormatError::HeaderTooLarge { len, .. } if len == 1 << 40
    ));
    // Just above the limit, truthfully.
    let frame = zero_frame(nerp::format::limits::MAX_HEADER_LEN + 1, 0x38);
    assert!(matches!(format_err(with_header(3, &frame)), FormatError::HeaderTooLarge { .. }));
    // Window descriptor 0x88 (exponent 17): 2^27, the limit, so the frame decodes (to zeros,
    // which are not JSON); 0x90 (exponent 18): 2^28, refused.
    let frame = zero_frame(1000, 0x88);
    assert!(matches!(format_err(with_header(3, &frame)), FormatError::HeaderJson(_)));
    let frame = zero_frame(1000, 0x90);
    assert!(
        matches!(format_err(with_header(3, &frame)), FormatError::HeaderCompression(w) if w.contains("window"))
    );
}

#[test]
fn a_malformed_compressed_header_is_a_typed_error() {
    // Plain JSON in a format-3 file.
    let json = br#"{"source":{"kind":"safetensors","file_bytes":0},"tensors":[],"sections":[]}"#;
    assert!(
        matches!(format_err(with_header(3, json)), FormatError::HeaderCompression(w) if w.contains("zstd"))
    );
    // The same JSON compressed is a valid (empty) format-3 file.
    let z = zstd::bulk::compress(json, 19).unwrap();
    NerpFile::from_bytes(with_header(3, &z), "x.nerp").unwrap();
    // Truncated frame; trailing bytes after the frame; corrupted content.
    let e = format_err(with_header(3, &z[..z.len() - 3]));
    assert!(matches!(e, FormatError::HeaderCompression(_)), "{e}");
    let mut extra = z.clone();
    extra.extend_from_slice(&[0, 0, 0, 0]);
    let e = format_err(with_header(3, &extra));
    assert!(matches!(e, FormatError::HeaderCompression(_)), "{e}");
    // A section with an `offset` (derived in format 3) or a plain section with a
    // `decoded_length`, or a zstd section without one.
    for (json, needle) in [
        (
            r#"{"source":{"kind":"safetensors","file_bytes":0},"tensors":[],"sections":[{"kind":"tensor","offset":0,"length":1,"encoding":"plain","crc32":0}]}"#,
            "offset",
        ),
        (
            r#"{"source":{"kind":"safetensors","file_bytes":0},"tensors":[],"sections":[{"kind":"tensor","length":1,"encoding":"plain","decoded_length":1,"crc32":0}]}"#,
            "decoded_length",
        ),
        (
            r#"{"source":{"kind":"safetensors","file_bytes":0},"tensors":[],"sections":[{"kind":"tensor","length":1,"encoding":"zstd","crc32":0}]}"#,
            "decoded_length",
        ),
    ] {
        let z = zstd::bulk::compress(json.as_bytes(), 19).unwrap();
        let e = format_err(with_header(3, &z));
        assert!(matches!(&e, FormatError::HeaderJson(w) if w.contains(needle)), "{e}");
    }
    // Major 4 is not read.
    assert!(matches!(
        format_err(with_header(4, &z)),
        FormatError::UnsupportedVersion { found: 4, supported: 3 }
    ));
}

#[test]
fn format_3_features_in_a_format_2_file_are_rejected() {
    let (h, sections) = V3::good().header_and_sections();
    let mut out = Vec::new();
    // Lay out by hand with major 2 and a plain JSON header.
    let mut offset = 0u64;
    let mut h2 = h.clone();
    for (s, content) in h2.sections.iter_mut().zip(&sections) {
        let stored = nerp::format::write::encode(s.encoding, content);
        s.offset = offset;
        s.length = stored.len() as u64;
        s.crc32 = crc32fast::hash(&stored);
        offset = nerp::format::align_up(offset + s.length).unwrap();
        out.push(stored);
    }
    let json = nerp::format::read::header_bytes(&h2, 2, 19);
    let mut bytes = with_header(2, &json);
    let data = bytes.len();
    for (s, stored) in h2.sections.iter().zip(&out) {
        bytes.resize(data + s.offset as usize, 0);
        bytes.extend_from_slice(stored);
    }
    let e = format_err(bytes);
    assert!(matches!(&e, FormatError::Predictor(w) if w.contains("int8") && w.contains("format 3")), "{e}");
}

#[test]
fn quantized_storage_with_bad_bits_group_or_length_is_rejected() {
    for (bits, group, needle) in
        [(0, 4, "bits"), (9, 4, "bits"), (1, 4, "bits"), (8, 3, "divide"), (8, 0, "divide"), (8, 8, "divide")]
    {
        let v = V3 { bits, group, ..V3::good() };
        let (mut h, sections) = V3::good().header_and_sections();
        h.tensors[1].storage = Storage::Quantized { bits: v.bits, group: v.group, section: 3 };
        let e = format_err(relayout(&h, &sections));
        assert!(
            matches!(&e, FormatError::Quantization { tensor, what } if tensor == "conv.bias" && what.contains(needle)),
            "{bits} {group}: {e}"
        );
    }
    // Content of the wrong length (int4 data declared int8).
    let q = quant::quantize(&bias(), 4, 4, quant::ScaleRule::MaxAbs).unwrap();
    let e = format_err(V3 { quantized: q.encode(), ..V3::good() }.bytes_unchecked());
    assert!(matches!(&e, FormatError::Quantization { what, .. } if what.contains("need")), "{e}");
    // A quantized int tensor.
    let (mut h, sections) = V3::good().header_and_sections();
    h.tensors[1].dtype = DType::I32;
    let e = format_err(relayout(&h, &sections));
    assert!(matches!(&e, FormatError::Quantization { what, .. } if what.contains("float")), "{e}");
}

impl V3 {
    /// [`V3::bytes`] for parts the reader refuses: the header is built from the good file's
    /// and the sections' contents replaced.
    fn bytes_unchecked(&self) -> Vec<u8> {
        let (h, mut sections) = V3::good().header_and_sections();
        sections[0] = self.predictor.clone();
        sections[3] = self.quantized.clone();
        sections[4] = self.cast.clone();
        relayout(&h, &sections)
    }
}

#[test]
fn hostile_quantized_content_is_rejected_by_verify_and_regenerate() {
    let good = V3::good().quantized;
    let inf = half::f16::INFINITY.to_le_bytes();
    let big = half::f16::MAX.to_le_bytes(); // finite, within MAX_ABS_VALUE
    let cases: Vec<(Vec<u8>, &str)> = vec![
        ([&inf[..], &good[2..]].concat(), "finite"),
        ([&good[..2], &[0x80], &good[3..]].concat(), "outside"), // code −128
    ];
    for (content, needle) in cases {
        let file = NerpFile::from_bytes(V3 { quantized: content, ..V3::good() }.bytes_unchecked(), "q.nerp")
            .unwrap();
        for e in [
            nerp::runtime::verify::verify(&file).unwrap_err(),
            nerp::runtime::regen::regenerate(&file, &Device::Cpu).unwrap_err(),
        ] {
            assert!(
                matches!(&e, Error::Format { kind: FormatError::Quantization { tensor, what }, .. }
                    if tensor == "conv.bias" && what.contains(needle) && what.contains("check 32")),
                "{needle}: {e}"
            );
        }
    }
    // A finite scale that overflows an f16 tensor: caught after conversion (check 31).
    let (mut h, mut sections) = V3::good().header_and_sections();
    h.tensors[1].dtype = DType::F16;
    sections[3] = [&big[..], &[127, 127, 127, 127]].concat();
    let file = NerpFile::from_bytes(relayout(&h, &sections), "q.nerp").unwrap();
    let e = nerp::runtime::regen::regenerate(&file, &Device::Cpu).unwrap_err().to_string();
    assert!(e.contains("conv.bias") && e.contains("inf"), "{e}");
}

/// The good format-3 file with a residual on `conv.weight` ([4, 2, 3, 3], rows of 18):
/// `bits`, `group` and the section's decoded `content` (a new `quantized` section, index 5).
fn with_residual(bits: u8, group: u64, content: &[u8]) -> (nerp::format::Header, Vec<Vec<u8>>) {
    let (mut h, mut sections) = V3::good().header_and_sections();
    sections.push(content.to_vec());
    h.sections.push(nerp::format::SectionEntry { kind: SectionKind::Quantized, ..h.sections[3].clone() });
    let Storage::Predicted { residual, .. } = &mut h.tensors[0].storage else { unreachable!() };
    *residual = Some(nerp::format::Residual::Quantized { bits, group, section: 5 });
    (h, sections)
}

fn good_residual() -> (Vec<f32>, Vec<u8>) {
    let r: Vec<f32> = (0..72).map(|i| ((i * 37) % 17) as f32 / 64.0 - 0.12).collect();
    let q = quant::quantize(&r, 18, 4, quant::ScaleRule::MaxAbs).unwrap();
    (q.dequantize(), q.encode())
}

#[test]
fn a_residual_is_added_to_the_prediction() {
    let plain = NerpFile::from_bytes(V3::good().bytes(), "v3.nerp").unwrap();
    let before = nerp::runtime::regen::regenerate(&plain, &Device::Cpu).unwrap()[0].to_f32().unwrap();
    let (r, content) = good_residual();
    let (h, sections) = with_residual(4, 18, &content);
    let file = NerpFile::from_bytes(relayout(&h, &sections), "r.nerp").unwrap();
    assert_eq!(file.major(), 3);
    nerp::runtime::verify::verify(&file).unwrap();
    let after = nerp::runtime::regen::regenerate(&file, &Device::Cpu).unwrap()[0].to_f32().unwrap();
    let expected: Vec<f32> = before.iter().zip(&r).map(|(p, r)| p + r).collect();
    assert_eq!(after, expected);
    assert!(r.iter().any(|&x| x != 0.0));
    // A residual needs format 3.
    let mut t = h.tensors[0].clone();
    let Storage::Predicted { scale_dtype, .. } = &mut t.storage else { unreachable!() };
    *scale_dtype = ScaleDtype::F32;
    assert!(nerp::format::needs_format_3(&t).is_some_and(|w| w.contains("residual")));
}

#[test]
fn a_residual_with_bad_bits_group_length_or_section_is_rejected() {
    let (_, content) = good_residual();
    for (bits, group, needle) in [
        (0, 18, "bits"),
        (1, 18, "bits"),
        (9, 18, "bits"),
        (4, 0, "divide"),
        (4, 5, "divide"),
        (4, 36, "divide"),
    ] {
        let (h, sections) = with_residual(bits, group, &content);
        let e = format_err(relayout(&h, &sections));
        assert!(
            matches!(&e, FormatError::Quantization { tensor, what }
                if tensor == "conv.weight" && what.contains("residual") && what.contains(needle)),
            "{bits} {group}: {e}"
        );
    }
    // Content of the wrong length (int4 data declared int3).
    let (h, sections) = with_residual(3, 18, &content);
    let e = format_err(relayout(&h, &sections));
    assert!(matches!(&e, FormatError::Quantization { what, .. } if what.contains("need")), "{e}");
    // The residual in a section of another kind, or in the quantized tensor's section.
    let (mut h, sections) = with_residual(4, 18, &content);
    h.sections[5].kind = SectionKind::Tensor;
    let e = format_err(relayout(&h, &sections));
    assert!(e.to_string().contains("quantized"), "{e}");
    let (mut h, sections) = with_residual(4, 18, &content);
    let Storage::Predicted { residual: Some(nerp::format::Residual::Quantized { section, .. }), .. } =
        &mut h.tensors[0].storage
    else {
        unreachable!()
    };
    *section = 3; // conv.bias's: claimed first by the residual, whose length it fails
    let e = format_err(relayout(&h, &sections));
    assert!(
        matches!(&e, FormatError::Quantization { tensor, what } if tensor == "conv.weight" && what.contains("need")),
        "{e}"
    );
}

#[test]
fn hostile_residual_content_is_rejected_by_verify_and_regenerate() {
    let (_, good) = good_residual();
    let inf = half::f16::INFINITY.to_le_bytes();
    let scales = 2 * 4; // four rows of one group
    for (content, needle) in [
        ([&inf[..], &good[2..]].concat(), "finite"),
        ([&good[..scales], &[0x08], &good[scales + 1..]].concat(), "outside"), // code −8
    ] {
        let (h, sections) = with_residual(4, 18, &content);
        let file = NerpFile::from_bytes(relayout(&h, &sections), "r.nerp").unwrap();
        for e in [
            nerp::runtime::verify::verify(&file).unwrap_err(),
            nerp::runtime::regen::regenerate(&file, &Device::Cpu).unwrap_err(),
        ] {
            assert!(
                matches!(&e, Error::Format { kind: FormatError::Quantization { tensor, what }, .. }
                    if tensor == "conv.weight" && what.contains("residual") && what.contains(needle)
                        && what.contains("check 32")),
                "{needle}: {e}"
            );
        }
    }
    // Finite scales whose sum with the prediction overflows an f16 tensor (check 31).
    let big = half::f16::MAX.to_le_bytes();
    let content: Vec<u8> = [big.repeat(4), vec![0x77; 36]].concat();
    let (mut h, sections) = with_residual(4, 18, &content);
    h.tensors[0].dtype = DType::F16;
    let file = NerpFile::from_bytes(relayout(&h, &sections), "r.nerp").unwrap();
    for e in [
        nerp::runtime::verify::verify(&file).unwrap_err(),
        nerp::runtime::regen::regenerate(&file, &Device::Cpu).unwrap_err(),
    ] {
        let e = e.to_string();
        assert!(e.contains("conv.weight") && e.contains("inf") && e.contains("check 31"), "{e}");
    }
}

#[test]
fn hostile_int_predictor_weights_are_rejected() {
    let good = V3::good().predictor;
    // The first layer's first scale infinite; a code −128; one byte short (open refuses).
    let inf = half::f16::INFINITY.to_le_bytes();
    let mut bad_scale = good.clone();
    bad_scale[..2].copy_from_slice(&inf);
    let mut bad_code = good.clone();
    bad_code[2 * HIDDEN] = 0x80;
    for (p, needle) in [(bad_scale, "finite"), (bad_code, "outside")] {
        let file =
            NerpFile::from_bytes(V3 { predictor: p, ..V3::good() }.bytes_unchecked(), "p.nerp").unwrap();
        for e in [
            nerp::runtime::verify::verify(&file).unwrap_err(),
            nerp::runtime::regen::regenerate(&file, &Device::Cpu).unwrap_err(),
        ] {
            assert!(
                matches!(&e, Error::Format { kind: FormatError::Predictor(w), .. } if w.contains(needle)),
                "{e}"
            );
        }
    }
    let e = format_err(V3 { predictor: good[1..].to_vec(), ..V3::good() }.bytes_unchecked());
    assert!(matches!(&e, FormatError::Predictor(w) if w.contains("bytes")), "{e}");
}

#[test]
fn cast_storage_with_a_bad_type_or_length_is_rejected() {
    let (mut h, sections) = V3::good().header_and_sections();
    h.tensors[2].storage = Storage::Cast { to: DType::F32, section: 4 };
    let e = format_err(relayout(&h, &sections));
    assert!(
        matches!(&e, FormatError::Tensor { tensor, what } if tensor == "fc.weight" && what.contains("cast")),
        "{e}"
    );
    let e = format_err(V3 { cast: vec![0; 22], ..V3::good() }.bytes_unchecked());
    assert!(matches!(&e, FormatError::Tensor { what, .. } if what.contains("cast data is 22 bytes")), "{e}");
}

#[test]
fn f16_scales_of_the_wrong_length_are_rejected() {
    let (h, mut sections) = V3::good().header_and_sections();
    sections[2] = vec![0; 16]; // f32-sized scales declared f16
    let e = format_err(relayout(&h, &sections));
    assert!(matches!(&e, FormatError::Tensor { what, .. } if what.contains("scales are 16 bytes")), "{e}");
}

#[test]
fn huge_quantized_declarations_are_refused_by_the_budget() {
    // A truthful 2^32-element int8 tensor: 4 GiB of codes from a small zstd frame.
    let n = 1u64 << 32;
    let group = 1u64 << 16;
    let decoded = 2 * (n / group) + n;
    let frame = zero_frame(decoded, 0x38);
    let h = nerp::format::Header {
        source: Source { kind: SourceKind::Safetensors, file_bytes: 0, skeleton: None },
        predictor: None,
        tensors: vec![TensorEntry {
            name: "big".into(),
            dtype: DType::F32,
            shape: vec![group, group],
            storage: Storage::Quantized { bits: 8, group, section: 0 },
        }],
        sections: vec![nerp::format::SectionEntry {
            kind: SectionKind::Quantized,
            offset: 0,
            length: frame.len() as u64,
            encoding: Encoding::Zstd,
            decoded_length: decoded,
            crc32: crc32fast::hash(&frame),
        }],
        metadata: BTreeMap::new(),
    };
    let json = nerp::format::read::header_bytes(&h, 3, 19);
    let mut bytes = with_header(3, &json);
    bytes.extend_from_slice(&frame);
    let dir = tempfile::tempdir().unwrap();
    let f = write(dir.path(), "big.nerp", &bytes);
    let o = nerp(&["--max-memory", "1G", "verify", s(&f)]);
    let t = text(&o);
    assert!(!t.contains("panicked") && o.status.code() != Some(0), "{t}");
    assert!(t.contains("memory budget"), "{t}");
}

/// The predicted `[4, 2, 3, 3]` kernel of the hand-built files, layer 0, with its permutation
/// and scales sections.
fn conv_weight(permutation: usize, scales: usize, scale_dtype: ScaleDtype) -> TensorEntry {
    TensorEntry {
        name: "conv.weight".into(),
        dtype: DType::F32,
        shape: vec![4, 2, 3, 3],
        storage: Storage::Predicted {
            layer: 0,
            permutation,
            scales: Some(scales),
            layout: Default::default(),
            scale_dtype,
            residual: None,
        },
    }
}

// ---- Format 4: coded storage (spec 4.4, 4.5; checks 23c and 33) ----

/// A format-4 file: `w` [6, 10] coded (step 0.25, the codes below, optional row scales),
/// `b` [6] raw.
struct Coded {
    codes: Vec<i32>,
    step: f32,
    scales: Option<Vec<f32>>,
    max_code: u32,
    /// Replaces the section's content when set.
    content: Option<Vec<u8>>,
}

impl Coded {
    fn good() -> Self {
        let codes = (0..60).map(|i| ((i * 7) % 11) - 5).collect();
        Coded { codes, step: 0.25, scales: None, max_code: 5, content: None }
    }

    fn content(&self) -> Vec<u8> {
        if let Some(c) = &self.content {
            return c.clone();
        }
        let mut c = self.step.to_le_bytes().to_vec();
        if let Some(s) = &self.scales {
            c.extend(nerp::format::codec::from_f32(DType::F16, s).unwrap());
        }
        c.extend(nerp::format::entropy::encode(&self.codes, 10));
        c
    }

    fn bytes(&self) -> Vec<u8> {
        let mut b = FileBuilder::new();
        let w = b.add(SectionKind::Coded, Encoding::Plain, &self.content());
        let raw = nerp::format::codec::from_f32(DType::F32, &[0.5; 6]).unwrap();
        let bias = b.add(SectionKind::Tensor, Encoding::ZstdBytegroup { element: 4 }, &raw);
        let storage =
            Storage::Coded { max_code: self.max_code, row_scales: self.scales.is_some(), section: w };
        let tensors = vec![
            TensorEntry { name: "w".into(), dtype: DType::F32, shape: vec![6, 10], storage },
            TensorEntry {
                name: "b".into(),
                dtype: DType::F32,
                shape: vec![6],
                storage: Storage::Raw { section: bias },
            },
        ];
        let source = Source { kind: SourceKind::Safetensors, file_bytes: 264, skeleton: None };
        b.finish(source, None, tensors, BTreeMap::new())
    }

    /// The error regenerating this file gives (opening it must succeed or fail with it).
    fn error(&self) -> FormatError {
        let file = match NerpFile::from_bytes(self.bytes(), "c.nerp") {
            Ok(f) => f,
            Err(Error::Format { kind, .. }) => return kind,
            Err(e) => panic!("not a format error: {e}"),
        };
        match nerp::runtime::regen::regenerate(&file, &Device::Cpu) {
            Err(Error::Format { kind, .. }) => kind,
            Err(e) => panic!("not a format error: {e}"),
            Ok(_) => panic!("accepted"),
        }
    }
}

#[test]
fn a_coded_file_regenerates_code_times_step_and_row_scale() {
    let good = Coded::good();
    let file = NerpFile::from_bytes(good.bytes(), "c.nerp").unwrap();
    assert_eq!(file.major(), 4);
    nerp::runtime::verify::verify(&file).unwrap();
    let w = nerp::runtime::regen::regenerate(&file, &Device::Cpu).unwrap().remove(0);
    let values = w.to_f32().unwrap();
    assert_eq!(values, good.codes.iter().map(|&q| q as f32 * 0.25).collect::<Vec<_>>());
    let scales = vec![1.0, 2.0, 0.5, -1.0, 4.0, 0.0];
    let scaled = Coded { scales: Some(scales.clone()), ..Coded::good() };
    let file = NerpFile::from_bytes(scaled.bytes(), "c.nerp").unwrap();
    let w = nerp::runtime::regen::regenerate(&file, &Device::Cpu).unwrap().remove(0);
    let want: Vec<f32> =
        good.codes.iter().enumerate().map(|(i, &q)| q as f32 * (0.25 * scales[i / 10])).collect();
    assert_eq!(w.to_f32().unwrap(), want);
}

#[test]
fn hostile_coded_sections_are_typed_errors() {
    let coded = |e: &FormatError, needle: &str| {
        assert!(
            matches!(e, FormatError::Coded { tensor, what } if tensor == "w" && what.contains(needle)),
            "{e}"
        );
    };
    for step in [f32::NAN, 0.0, -0.25, f32::INFINITY, 2e30] {
        coded(&Coded { step, ..Coded::good() }.error(), "step");
    }
    let good = Coded::good().content();
    // Truncated at every length that still holds a step and a byte of stream, and extended.
    for len in 5..good.len() {
        coded(&Coded { content: Some(good[..len].to_vec()), ..Coded::good() }.error(), "entropy stream");
    }
    let mut longer = good.clone();
    longer.push(0);
    coded(&Coded { content: Some(longer), ..Coded::good() }.error(), "entropy stream");
    // A code beyond the declared bound.
    coded(&Coded { max_code: 4, ..Coded::good() }.error(), "entropy stream");
    // A non-finite row scale.
    let mut nan = vec![1.0; 6];
    nan[3] = f32::NAN;
    coded(&Coded { scales: Some(nan), ..Coded::good() }.error(), "scale");
    // Header checks (23c): the bound, and a section too short for its step and a stream.
    for max_code in [0, nerp::format::entropy::MAX_CODE + 1] {
        let e = format_err(Coded { max_code, ..Coded::good() }.bytes());
        assert!(matches!(&e, FormatError::Quantization { what, .. } if what.contains("max_code")), "{e}");
    }
    let e = format_err(Coded { content: Some(good[..4].to_vec()), ..Coded::good() }.bytes());
    assert!(matches!(&e, FormatError::Quantization { what, .. } if what.contains("need at least 5")), "{e}");
    // A stream far too short for its codes is refused before the codes are allocated.
    let mut huge = Coded::good();
    huge.content = Some([0.25f32.to_le_bytes().to_vec(), vec![0x00]].concat());
    coded(&huge.error(), "entropy stream");
}

#[test]
fn coded_storage_needs_format_4() {
    let bytes = Coded::good().bytes();
    let mut v3 = bytes.clone();
    v3[8..10].copy_from_slice(&3u16.to_le_bytes());
    let e = format_err(v3);
    assert!(matches!(&e, FormatError::Tensor { what, .. } if what.contains("format 4")), "{e}");
    let mut v5 = bytes;
    v5[8..10].copy_from_slice(&5u16.to_le_bytes());
    assert!(matches!(format_err(v5), FormatError::UnsupportedVersion { found: 5, .. }));
}

proptest::proptest! {
    /// What `fuzz/fuzz_targets/coded.rs` checks, on stable Rust: arbitrary coded sections (step,
    /// row scales, stream) never panic the reader, and what regenerates is finite.
    #[test]
    fn arbitrary_coded_sections_never_panic(
        content in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
        max_code in 0u32..40,
        scales in proptest::bool::ANY,
        mutate in proptest::option::of((0usize..64, proptest::num::u8::ANY)),
    ) {
        // Half the cases start from a valid section, then one byte changes.
        let mut c = Coded { max_code, ..Coded::good() };
        if scales {
            c.scales = Some(vec![1.0; 6]);
        }
        let mut bytes = if content.len() % 2 == 0 { c.content() } else { content.clone() };
        if let Some((at, v)) = mutate {
            if let Some(b) = bytes.get_mut(at) {
                *b = v;
            }
        }
        c.content = Some(bytes);
        if let Ok(file) = NerpFile::from_bytes(c.bytes(), "c.nerp") {
            let _ = nerp::runtime::verify::verify(&file);
            if let Ok(w) = nerp::runtime::regen::regenerate(&file, &Device::Cpu) {
                proptest::prop_assert!(w[0].to_f32().unwrap().iter().all(|v| v.is_finite()));
            }
        }
    }
}
