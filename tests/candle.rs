//! The candle hand-off (`nerp::runtime::candle`) gives the tensors `decompress` writes to safetensors,
//! bit for bit, whatever stores them (predictor, raw, f16 cast, int8).

use candle_core::{DType as CDType, Device as CDevice, Tensor};
use nerp::codec::Codec;
use nerp::compress::{compress, CompressOptions, ErrorBudget};
use nerp::format::Storage;
use safetensors::{tensor::TensorView, Dtype, SafeTensors};
use std::path::Path;

/// Deterministic values in [-1, 1) (a small LCG).
fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect()
}

/// A small safetensors model: f32 matrices and a conv kernel (predicted or coded), an f16
/// embedding, a bf16 matrix, an f32 bias, i64 position ids and a u16 table.
fn write_model(path: &Path) {
    let f32s = |shape: &[usize], seed| -> Vec<u8> {
        values(shape.iter().product(), seed).iter().flat_map(|v| v.to_le_bytes()).collect()
    };
    let tensors: Vec<(&str, Dtype, Vec<usize>, Vec<u8>)> = vec![
        ("layer.0.weight", Dtype::F32, vec![96, 64], f32s(&[96, 64], 1)),
        ("layer.1.weight", Dtype::F32, vec![64, 96], f32s(&[64, 96], 2)),
        ("conv.weight", Dtype::F32, vec![16, 8, 3, 3], f32s(&[16, 8, 3, 3], 3)),
        ("small.weight", Dtype::F32, vec![8, 8], f32s(&[8, 8], 4)),
        ("layer.0.bias", Dtype::F32, vec![96], f32s(&[96], 5)),
        (
            "embed.weight",
            Dtype::F16,
            vec![128, 32],
            values(128 * 32, 6).iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes()).collect(),
        ),
        (
            "head.weight",
            Dtype::BF16,
            vec![32, 32],
            values(32 * 32, 7).iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes()).collect(),
        ),
        ("position_ids", Dtype::I64, vec![1, 12], (0..12i64).flat_map(|i| i.to_le_bytes()).collect()),
        (
            "table",
            Dtype::U16,
            vec![5],
            [0u16, 1, 300, 65535, 7].iter().flat_map(|v| v.to_le_bytes()).collect(),
        ),
    ];
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, d, s, b)| (n.to_string(), TensorView::new(*d, s.clone(), b).unwrap()))
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

/// Fast options: a tiny predictor, few steps, the file as trained, non-predicted floats as `codec`.
fn fast(codec: Codec) -> CompressOptions {
    CompressOptions {
        hidden: Some(8),
        steps: 20,
        error_budget: ErrorBudget::Off,
        raw_codec: codec,
        ..Default::default()
    }
}

/// The bytes of a candle tensor (CPU), little-endian.
fn tensor_bytes(t: &Tensor) -> Vec<u8> {
    let t = t.flatten_all().unwrap();
    match t.dtype() {
        CDType::F32 => t.to_vec1::<f32>().unwrap().iter().flat_map(|v| v.to_le_bytes()).collect(),
        CDType::F16 => t.to_vec1::<half::f16>().unwrap().iter().flat_map(|v| v.to_le_bytes()).collect(),
        CDType::BF16 => t.to_vec1::<half::bf16>().unwrap().iter().flat_map(|v| v.to_le_bytes()).collect(),
        CDType::I64 => t.to_vec1::<i64>().unwrap().iter().flat_map(|v| v.to_le_bytes()).collect(),
        CDType::U32 => t.to_vec1::<u32>().unwrap().iter().flat_map(|v| v.to_le_bytes()).collect(),
        d => panic!("unexpected dtype {d:?}"),
    }
}

/// The candle dtype of a safetensors dtype, where the two name the same type.
fn candle_dtype(d: Dtype) -> Option<CDType> {
    Some(match d {
        Dtype::F32 => CDType::F32,
        Dtype::F16 => CDType::F16,
        Dtype::BF16 => CDType::BF16,
        Dtype::I64 => CDType::I64,
        _ => return None,
    })
}

#[test]
fn candle_tensors_equal_the_decompressed_safetensors() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("m.safetensors");
    write_model(&src);
    let mut storages = std::collections::BTreeSet::new();
    for codec in [Codec::Raw, Codec::F16, Codec::INT8] {
        let (nerp_path, out) = (dir.path().join("m.nerp"), dir.path().join("back.safetensors"));
        compress(&src, &nerp_path, &fast(codec), &mut |_: usize, _: f64| {}).unwrap();
        let file = nerp::open(&nerp_path).unwrap();
        for t in &file.header().tensors {
            storages.insert(match t.storage {
                Storage::Raw { .. } => "raw",
                Storage::Predicted { .. } => "predicted",
                Storage::Cast { .. } => "cast",
                Storage::Quantized { .. } => "quantized",
                Storage::Coded { .. } => "coded",
            });
        }
        let bin = env!("CARGO_BIN_EXE_nerp");
        let status = std::process::Command::new(bin)
            .args(["decompress", "--device", "cpu", "-o"])
            .arg(&out)
            .arg(&nerp_path)
            .output()
            .unwrap();
        assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
        let bytes = std::fs::read(&out).unwrap();
        let written = SafeTensors::deserialize(&bytes).unwrap();
        let got = nerp::runtime::candle::tensors(&file, &nerp::Device::Cpu, &CDevice::Cpu, None).unwrap();
        assert_eq!(got.len(), written.len(), "{codec:?}");
        for (name, view) in written.tensors() {
            let t = &got[&name];
            assert_eq!(t.dims(), view.shape(), "{codec:?} {name}");
            if view.dtype() == Dtype::U16 {
                // candle has no u16: widened to u32, as its own safetensors loader does.
                assert_eq!(t.dtype(), CDType::U32);
                let wide: Vec<u32> =
                    view.data().chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]]) as u32).collect();
                assert_eq!(t.to_vec1::<u32>().unwrap(), wide, "{codec:?} {name}");
                assert_eq!(wide, [0, 1, 300, 65535, 7]);
                continue;
            }
            assert_eq!(Some(t.dtype()), candle_dtype(view.dtype()), "{codec:?} {name}");
            assert!(tensor_bytes(t) == view.data(), "{codec:?} {name}: bytes differ");
        }
        // candle's own loader, on the decompressed file, agrees too.
        for (name, t) in candle_core::safetensors::load(&out, &CDevice::Cpu).unwrap() {
            assert_eq!((t.dtype(), t.dims()), (got[&name].dtype(), got[&name].dims()), "{name}");
            assert!(
                tensor_bytes(&t) == tensor_bytes(&got[&name]),
                "{codec:?} {name}: candle's loader differs"
            );
        }
        // The VarBuilder gives the same tensors, converted to its dtype.
        let vb = nerp::runtime::candle::var_builder(&file, &nerp::Device::Cpu, &CDevice::Cpu, CDType::F32)
            .unwrap();
        let w = vb.get((128, 32), "embed.weight").unwrap();
        assert_eq!(w.dtype(), CDType::F32);
        let want = got["embed.weight"].to_dtype(CDType::F32).unwrap();
        assert_eq!(tensor_bytes(&w), tensor_bytes(&want));
        assert!(vb.get((96, 64), "layer.0.weight").is_ok());
        assert!(vb.get((64, 96), "layer.0.weight").is_err(), "a wrong shape is refused");
        assert!(vb.get(5, "missing").is_err());
    }
    // Every storage kind was handed over at least once.
    assert_eq!(storages.into_iter().collect::<Vec<_>>(), ["cast", "predicted", "quantized", "raw"]);
}

#[test]
fn a_chosen_dtype_converts_float_tensors_only() {
    let dir = tempfile::tempdir().unwrap();
    let (src, nerp_path) = (dir.path().join("m.safetensors"), dir.path().join("m.nerp"));
    write_model(&src);
    compress(&src, &nerp_path, &fast(Codec::Raw), &mut |_: usize, _: f64| {}).unwrap();
    let file = nerp::open(&nerp_path).unwrap();
    let native = nerp::runtime::candle::tensors(&file, &nerp::Device::Cpu, &CDevice::Cpu, None).unwrap();
    let half =
        nerp::runtime::candle::tensors(&file, &nerp::Device::Cpu, &CDevice::Cpu, Some(CDType::F16)).unwrap();
    assert_eq!(native["layer.0.weight"].dtype(), CDType::F32);
    assert_eq!(native["head.weight"].dtype(), CDType::BF16);
    for name in ["layer.0.weight", "head.weight", "embed.weight", "layer.0.bias"] {
        assert_eq!(half[name].dtype(), CDType::F16, "{name}");
        let want = native[name].to_dtype(CDType::F16).unwrap();
        assert_eq!(tensor_bytes(&half[name]), tensor_bytes(&want), "{name}");
    }
    assert_eq!(half["position_ids"].dtype(), CDType::I64);
    assert_eq!(
        half["position_ids"].flatten_all().unwrap().to_vec1::<i64>().unwrap(),
        (0..12).collect::<Vec<_>>()
    );
}

#[test]
fn dtypes_candle_lacks_and_bad_files_are_typed_errors() {
    let dir = tempfile::tempdir().unwrap();
    // An i8 tensor: candle has no i8 type.
    let src = dir.path().join("i8.safetensors");
    let data: Vec<u8> = (0..16u8).collect();
    let views = vec![("codes".to_string(), TensorView::new(Dtype::I8, vec![4, 4], &data).unwrap())];
    std::fs::write(&src, safetensors::serialize(views, None).unwrap()).unwrap();
    let nerp_path = dir.path().join("i8.nerp");
    compress(&src, &nerp_path, &fast(Codec::Raw), &mut |_: usize, _: f64| {}).unwrap();
    let file = nerp::open(&nerp_path).unwrap();
    let e = nerp::runtime::candle::tensors(&file, &nerp::Device::Cpu, &CDevice::Cpu, None).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, nerp::Error::Rebuild(_)), "{e:?}");
    assert!(msg.contains("i8.nerp") && msg.contains("codes") && msg.contains("I8"), "{msg}");
    assert!(
        nerp::runtime::candle::var_builder(&file, &nerp::Device::Cpu, &CDevice::Cpu, CDType::F32).is_err()
    );

    // A missing file and a file that is not a .nerp file fail when opened, naming the file.
    let missing = dir.path().join("missing.nerp");
    assert!(matches!(nerp::open(&missing), Err(nerp::Error::Io { path, .. }) if path == missing));
    assert!(matches!(nerp::open(&src), Err(nerp::Error::Format { path, .. }) if path == src));
}

#[test]
fn weight_tensors_with_wrong_lengths_are_refused() {
    let w = nerp::runtime::regen::WeightTensor {
        name: "w".into(),
        dtype: nerp::format::DType::F32,
        shape: vec![2, 3],
        data: vec![0; 20],
    };
    let e = nerp::runtime::candle::to_candle(&w, &CDevice::Cpu).unwrap_err();
    assert!(matches!(&e, nerp::Error::Rebuild(m) if m.contains("tensor w")), "{e:?}");
    let ok = nerp::runtime::regen::WeightTensor { data: vec![0; 24], ..w };
    assert_eq!(nerp::runtime::candle::to_candle(&ok, &CDevice::Cpu).unwrap().dims(), [2, 3]);
}

#[test]
fn a_file_without_predicted_tensors_is_handed_over_tensor_by_tensor_with_the_same_values() {
    let dir = tempfile::tempdir().unwrap();
    let (src, nerp_path) = (dir.path().join("m.safetensors"), dir.path().join("m.nerp"));
    write_model(&src);
    let mut opts = fast(Codec::INT8);
    opts.selection.exclude = vec!["*".into()];
    compress(&src, &nerp_path, &opts, &mut |_: usize, _: f64| panic!("nothing is predicted")).unwrap();
    let file = nerp::open(&nerp_path).unwrap();
    let h = file.header();
    assert!(h.tensors.iter().all(|t| !matches!(t.storage, Storage::Predicted { .. })));
    assert!(h.tensors.iter().any(|t| matches!(t.storage, Storage::Quantized { .. })));
    let all = nerp::runtime::candle::tensors(&file, &nerp::Device::Cpu, &CDevice::Cpu, None).unwrap();
    let vb =
        nerp::runtime::candle::var_builder(&file, &nerp::Device::Cpu, &CDevice::Cpu, CDType::F32).unwrap();
    for t in &h.tensors {
        let dims: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
        let got = vb.get_with_hints_dtype(dims.as_slice(), &t.name, Default::default(), CDType::F32);
        let want = all[&t.name].to_dtype(CDType::F32).unwrap();
        assert_eq!(tensor_bytes(&got.unwrap()), tensor_bytes(&want), "{}", t.name);
    }
    assert!(vb.get((64, 96), "layer.0.weight").is_err(), "a wrong shape is refused");
    assert!(vb.get(5, "missing").is_err());
    assert!(vb.contains_tensor("layer.0.weight") && !vb.contains_tensor("missing"));
}
