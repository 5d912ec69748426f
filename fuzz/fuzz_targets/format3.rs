#![no_main]

use libfuzzer_sys::fuzz_target;
use nerp::format::codec::pack_permutation;
use nerp::format::{
    predictor::stored_len, quant, DType, Embedding, Encoding, FileBuilder, Ordering, PredictorSpec, Residual,
    ScaleDtype, SectionKind, Source, SourceKind, Storage, TensorEntry, WeightDtype,
};
use std::collections::BTreeMap;

/// Predictor width and levels of the crafted files.
const HIDDEN: usize = 4;
const LEVELS: u32 = 1;

// Valid format-3 containers with hostile values: the input supplies the int8 or int4
// predictor section, the f16 scales, a quantized tensor's bits, group and content, and the
// predicted tensor's optional residual (first byte: predictor dtype and bits; second byte:
// the residual's presence, bits and group; its bit 3 also gives the quantized tensor format 4's
// zero points: f16 minimums, unsigned codes). Opening may refuse the lengths; whatever opens must not
// panic in `verify` or `regenerate`, and what `verify` accepts must regenerate to finite values.
fuzz_target!(|data: &[u8]| {
    let Some((&mode, data)) = data.split_first() else { return };
    let Some((&rmode, data)) = data.split_first() else { return };
    let rbits = (rmode >> 1) % 10;
    let rgroup = [1u64, 2, 3, 6, 9, 18, 4][(rmode >> 5) as usize % 7];
    let rlen = quant::encoded_len(72, rgroup, rbits.clamp(1, 8)).unwrap_or(0) as usize;
    let dtype = if mode & 1 == 0 { WeightDtype::Int8 } else { WeightDtype::Int4 };
    let bits = (mode >> 1) % 10; // 0..=9: out-of-range widths included
    let group = [1u64, 2, 3, 4, 8][(mode >> 5) as usize % 5];
    let plen = stored_len(dtype, HIDDEN, LEVELS as usize) as usize;
    let zero_point = mode & 0x08 != 0;
    let qlen = match zero_point {
        false => quant::encoded_len(8, group.max(1), bits.clamp(1, 8)),
        true => quant::encoded_len_zero_point(8, group.max(1), bits.clamp(1, 8)),
    }
    .unwrap_or(0) as usize;
    let mut bytes = data.to_vec();
    bytes.resize(plen + 8 + qlen + rlen, 0);
    let (weights, rest) = bytes.split_at(plen);
    let (scales, rest) = rest.split_at(8);
    let (quantized, residual) = rest.split_at(qlen);

    let mut b = FileBuilder::new();
    let section = b.add(SectionKind::Predictor, Encoding::Plain, weights);
    let perm = b.add(SectionKind::Permutation, Encoding::Zstd, &pack_permutation(&(0..8).collect::<Vec<_>>()));
    let scales = b.add(SectionKind::Scales, Encoding::Zstd, scales);
    let q = b.add(SectionKind::Quantized, Encoding::Zstd, quantized);
    let residual = (rmode & 1 == 1).then(|| Residual::Quantized {
        bits: rbits,
        group: rgroup,
        section: b.add(SectionKind::Quantized, Encoding::Zstd, residual),
    });
    let tensors = vec![
        TensorEntry {
            name: "w".into(),
            dtype: DType::F32,
            shape: vec![4, 2, 3, 3],
            storage: Storage::Predicted {
                layer: 0,
                permutation: perm,
                scales: Some(scales),
                layout: Default::default(),
                scale_dtype: ScaleDtype::F16,
                residual,
            },
        },
        TensorEntry {
            name: "q".into(),
            dtype: if mode & 0x10 == 0 { DType::F32 } else { DType::F16 },
            shape: vec![2, 4],
            storage: Storage::Quantized { bits, group, zero_point, section: q },
        },
    ];
    let spec = PredictorSpec {
        arch: "mlp_relu".into(),
        hidden: HIDDEN as u32,
        embedding: Embedding { base: 1.25, levels: LEVELS },
        dtype,
        ordering: Ordering::None,
        layers: 1,
        section,
    };
    let source = Source { kind: SourceKind::Safetensors, file_bytes: 0, skeleton: None };
    let Ok(file) = nerp::NerpFile::from_bytes(b.finish(source, Some(spec), tensors, BTreeMap::new()), "fuzz")
    else {
        return;
    };
    assert_eq!(file.major(), if zero_point { 4 } else { 3 });
    let verified = nerp::runtime::verify::verify(&file);
    let regenerated = nerp::runtime::regen::regenerate(&file, &nerp::Device::Cpu);
    if verified.is_ok() {
        let w = regenerated.expect("verify accepted a file that does not regenerate");
        assert!(w.iter().all(|t| t.to_f32().expect("float").iter().all(|v| v.is_finite())));
    }
});
