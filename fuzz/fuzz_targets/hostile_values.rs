#![no_main]

use libfuzzer_sys::fuzz_target;
use nerp::format::codec::pack_permutation;
use nerp::format::{
    DType, Embedding, Encoding, FileBuilder, Ordering, PredictorSpec, SectionKind, Source, SourceKind, Storage,
    TensorEntry, WeightDtype,
};
use std::collections::BTreeMap;

/// Predictor width and levels of the crafted files: 133 parameters.
const HIDDEN: usize = 4;
const LEVELS: u32 = 1;

// Valid headers with hostile values: the input supplies the predictor's f32 parameters, the
// four scales, the predicted tensor's dtype and the `input_shapes` metadata of a file that
// passes every container check. Verifying and regenerating must not panic, and whatever
// `verify` accepts must regenerate to finite values.
fuzz_target!(|data: &[u8]| {
    let params = nerp::predictor::param_count(HIDDEN, LEVELS as usize);
    let mut bytes = data.to_vec();
    bytes.resize(4 * params + 16 + 1, 0);
    let (weights, rest) = bytes.split_at(4 * params);
    let (scales, rest) = rest.split_at(16);
    let dtype = [DType::F32, DType::F16, DType::Bf16, DType::F64][rest[0] as usize % 4];
    let shapes = String::from_utf8_lossy(data.get(4 * params + 17..).unwrap_or(&[])).into_owned();

    let mut b = FileBuilder::new();
    let section = b.add(SectionKind::Predictor, Encoding::Plain, weights);
    let perm = b.add(SectionKind::Permutation, Encoding::Zstd, &pack_permutation(&(0..8).collect::<Vec<_>>()));
    let scales = b.add(SectionKind::Scales, Encoding::Zstd, scales);
    let tensors = vec![TensorEntry {
        name: "w".into(),
        dtype,
        shape: vec![4, 2, 3, 3],
        storage: Storage::Predicted {
            layer: 0,
            permutation: perm,
            scales: Some(scales),
            layout: Default::default(),
            scale_dtype: Default::default(),
            residual: None,
        },
    }];
    let spec = PredictorSpec {
        arch: "mlp_relu".into(),
        hidden: HIDDEN as u32,
        embedding: Embedding { base: 1.25, levels: LEVELS },
        dtype: WeightDtype::F32,
        ordering: Ordering::None,
        layers: 1,
        section,
    };
    let mut metadata = BTreeMap::new();
    if !shapes.is_empty() {
        metadata.insert(nerp::runtime::INPUT_SHAPES_KEY.to_string(), shapes);
    }
    let source = Source { kind: SourceKind::Safetensors, file_bytes: 0, skeleton: None };
    let file = nerp::NerpFile::from_bytes(b.finish(source, Some(spec), tensors, metadata), "fuzz")
        .expect("the crafted container is valid");
    let verified = nerp::runtime::verify::verify(&file);
    let regenerated = nerp::runtime::regen::regenerate(&file, &nerp::Device::Cpu);
    if verified.is_ok() {
        let w = regenerated.expect("verify accepted a file that does not regenerate");
        assert!(w[0].to_f32().expect("float").iter().all(|v| v.is_finite()));
    }
});
