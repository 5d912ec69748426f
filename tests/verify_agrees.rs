//! `verify` says "valid" only for files that `decompress` and `run` load: a property test over
//! mutated small files. Each case takes a real ONNX-sourced file (the kinds fixture with an
//! untrained predictor), mutates one section's decoded content or one header field, lays the
//! file out again (so the container stays valid and the mutation reaches the checks behind
//! it), and compares `verify` with what the loaders do.

use candle_core::Device as CandleDevice;
use nerp::codec::Codec;
use nerp::compress::{build_file, make_plan, CompressOptions};
use nerp::format::{FileBuilder, Header, SectionKind, WeightDtype};
use nerp::{runtime, runtime::regen, Device, NerpFile};
use proptest::prelude::*;
use std::path::PathBuf;
use std::sync::OnceLock;

/// The base files' headers and decoded sections: 0 with an f16 predictor and raw tensors,
/// 1 with an int8 predictor and every other float tensor int8-quantized (format 3); both with
/// f16 scales.
fn base(which: usize) -> &'static (Header, Vec<Vec<u8>>) {
    static BASES: [OnceLock<(Header, Vec<Vec<u8>>)>; 2] = [OnceLock::new(), OnceLock::new()];
    BASES[which].get_or_init(|| {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/kinds/kinds.onnx");
        let model = nerp::ingest::load(&path).unwrap();
        let (dtype, raw_codec) = [(WeightDtype::F16, Codec::Raw), (WeightDtype::Int8, Codec::INT8)][which];
        let mut opts = CompressOptions { predictor_dtype: dtype, raw_codec, ..Default::default() };
        opts.input_shapes = vec![vec![1, 3, 16, 16]];
        opts.preprocess = Some(nerp::data::Preprocess { scale: 0.0039, mean: vec![0.5], std: vec![0.25] });
        let nerp::compress::Plan { layers: plans, values, .. } = make_plan(&model, &opts).unwrap();
        assert!(!plans.is_empty());
        let p = nerp::compress::train::init_predictor(8, opts.embedding, 5, &CandleDevice::Cpu)
            .unwrap()
            .rounded(dtype)
            .unwrap();
        let bytes = build_file(&model, &plans, &values, Some(&p), &opts).unwrap().bytes;
        let file = NerpFile::from_bytes(bytes, "kinds.nerp").unwrap();
        let quantized = file
            .header()
            .tensors
            .iter()
            .filter(|t| matches!(t.storage, nerp::format::Storage::Quantized { .. }));
        assert!(which == 0 || quantized.count() > 0, "the int8 base file has quantized tensors to mutate");
        let sections =
            (0..file.header().sections.len()).map(|i| file.decode_section(i).unwrap().into_owned()).collect();
        (file.header().clone(), sections)
    })
}

/// One mutation of the base file.
#[derive(Debug, Clone)]
enum Mutation {
    /// XOR a byte of a section's decoded content.
    Flip {
        section: usize,
        at: usize,
        xor: u8,
    },
    /// Overwrite a 2-byte value of the predictor (f16) with a special bit pattern.
    Predictor {
        at: usize,
        bits: u16,
    },
    /// Overwrite a scale (f16) with a special value.
    Scale {
        at: usize,
        value: f32,
    },
    /// Swap the shapes, or the names, of two tensors.
    SwapShapes(usize, usize),
    SwapNames(usize, usize),
    /// Replace a registered metadata value.
    Metadata {
        key: &'static str,
        value: &'static str,
    },
}

fn mutation() -> impl Strategy<Value = (usize, Mutation)> {
    (0..2usize).prop_flat_map(|which| (Just(which), mutation_of(which)))
}

fn mutation_of(which: usize) -> impl Strategy<Value = Mutation> {
    let (h, sections) = base(which);
    let n_sections = sections.len();
    let n_tensors = h.tensors.len();
    let predictor_len = sections[h.predictor.as_ref().unwrap().section].len() / 2;
    let specials = prop::sample::select(vec![0x7E00u16, 0x7C00, 0xFC00, 0x7BFF, 0x0000, 0x3C00]);
    let values = prop::sample::select(vec![f32::NAN, f32::INFINITY, 3e38, 1e31, 1e29, 0.0, -1.0]);
    let shapes =
        prop::sample::select(vec!["[[1,3,16,16]]", "[[0,3]]", "garbage", "[[4294967296,2]]", "[]", "[[1]]"]);
    let pre = prop::sample::select(vec![
        r#"{"scale":0.0039,"mean":[0.5],"std":[1e-45]}"#,
        r#"{"scale":1,"mean":[0],"std":[1]}"#,
        "{}",
        "not json",
    ]);
    prop_oneof![
        (0..n_sections, any::<usize>(), 1..=255u8).prop_map(|(section, at, xor)| Mutation::Flip {
            section,
            at,
            xor
        }),
        (0..predictor_len, specials).prop_map(|(at, bits)| Mutation::Predictor { at, bits }),
        (any::<usize>(), values).prop_map(|(at, value)| Mutation::Scale { at, value }),
        (0..n_tensors, 0..n_tensors).prop_map(|(a, b)| Mutation::SwapShapes(a, b)),
        (0..n_tensors, 0..n_tensors).prop_map(|(a, b)| Mutation::SwapNames(a, b)),
        shapes.prop_map(|value| Mutation::Metadata { key: runtime::INPUT_SHAPES_KEY, value }),
        pre.prop_map(|value| Mutation::Metadata { key: "preprocess", value }),
    ]
}

/// Base file `which` with `m` applied, laid out again; `None` if the reader refuses it.
fn mutated(which: usize, m: &Mutation) -> Option<NerpFile> {
    let (h, sections) = base(which);
    let (mut h, mut sections) = (h.clone(), sections.clone());
    match *m {
        Mutation::Flip { section, at, xor } => {
            let s = &mut sections[section];
            if s.is_empty() {
                return None;
            }
            let i = at % s.len();
            s[i] ^= xor;
        }
        Mutation::Predictor { at, bits } => {
            let s = &mut sections[h.predictor.as_ref().unwrap().section];
            s[2 * at..2 * at + 2].copy_from_slice(&bits.to_le_bytes());
        }
        Mutation::Scale { at, value } => {
            let idx: Vec<usize> =
                (0..h.sections.len()).filter(|&i| h.sections[i].kind == SectionKind::Scales).collect();
            let s = &mut sections[*idx.get(at % idx.len().max(1))?];
            let i = (at / 7) % (s.len() / 2);
            s[2 * i..2 * i + 2].copy_from_slice(&half::f16::from_f32(value).to_le_bytes());
        }
        Mutation::SwapShapes(a, b) => {
            let sa = h.tensors[a].shape.clone();
            h.tensors[a].shape = std::mem::replace(&mut h.tensors[b].shape, sa);
        }
        Mutation::SwapNames(a, b) => {
            let na = h.tensors[a].name.clone();
            h.tensors[a].name = std::mem::replace(&mut h.tensors[b].name, na);
        }
        Mutation::Metadata { key, value } => {
            h.metadata.insert(key.into(), value.into());
        }
    }
    let mut b = FileBuilder::new();
    for (entry, content) in h.sections.iter().zip(&sections) {
        b.add(entry.kind, entry.encoding, content);
    }
    let bytes = b.finish(h.source, h.predictor, h.tensors, h.metadata);
    NerpFile::from_bytes(bytes, "mutated.nerp").ok()
}

/// What `decompress` (to ONNX) and `run` need from the file: regenerated weights patched into
/// the skeleton, and the stored input shapes.
fn loads(file: &NerpFile) -> nerp::Result<()> {
    let weights = regen::regenerate(file, &Device::Cpu)?;
    runtime::rebuild_onnx(file, &weights)?;
    runtime::stored_input_shapes(file)?;
    Ok(())
}

#[test]
fn the_base_files_verify_and_load() {
    for which in 0..2 {
        let file = mutated(which, &Mutation::Metadata { key: "unregistered", value: "x" }).unwrap();
        assert_eq!(file.major(), 3);
        nerp::runtime::verify::verify(&file).unwrap();
        loads(&file).unwrap();
    }
    let h = &base(1).0;
    assert!(h.tensors.iter().any(|t| matches!(t.storage, nerp::format::Storage::Quantized { .. })));
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn verify_never_accepts_what_the_loaders_reject((which, m) in mutation()) {
        if let Some(file) = mutated(which, &m) {
            if nerp::runtime::verify::verify(&file).is_ok() {
                let loaded = loads(&file);
                prop_assert!(loaded.is_ok(), "verify said valid, loading failed: {:?}", loaded.err());
            }
        }
    }
}
