//! End to end: ONNX → .nerp → validate → regenerate → tract, and the CLI's `decompress`;
//! regeneration against an independent f64 reference on a model larger than one batch.

mod common;

use candle_core::{Device, Tensor};
use common::{noise, shared_model};
use nerp::format::{Storage, WeightDtype};
use nerp::{compress::plan, ingest, runtime, runtime::regen};
use std::process::Command;

const RESNET20: &str = "resnet20_fashion_mnist.onnx";

/// The bytes of a .nerp of the shared ResNet-20 with an untrained (random) predictor.
fn random_predictor_parts(dtype: WeightDtype) -> (Vec<u8>, nerp::predictor::Predictor) {
    let model = ingest::load(&shared_model(RESNET20)).unwrap();
    nerp::synth::untrained_file(&model, 24, dtype, 3).unwrap()
}

fn random_predictor_bytes(dtype: WeightDtype) -> Vec<u8> {
    random_predictor_parts(dtype).0
}

fn random_predictor_file(dtype: WeightDtype) -> (nerp::NerpFile, nerp::predictor::Predictor) {
    let (bytes, p) = random_predictor_parts(dtype);
    (nerp::NerpFile::from_bytes(bytes, "random.nerp").unwrap(), p)
}

#[test]
fn random_predictor_file_opens_regenerates_and_runs() {
    let (file, _) = random_predictor_file(WeightDtype::F16);
    let h = file.header();
    let predicted = h.tensors.iter().filter(|t| matches!(t.storage, Storage::Predicted { .. })).count();
    assert_eq!(predicted, 21, "ResNet-20 has 19 3×3 and 2 1×1 (projection) convolutions");
    let weights = regen::regenerate(&file, &nerp::Device::Cpu).unwrap();
    assert_eq!(weights.len(), h.tensors.len());
    let model = runtime::Model::from_proto(&runtime::rebuild_onnx(&file, &weights).unwrap()).unwrap();
    let x = noise(3 * 28 * 28, 9);
    let (y, shape) = model.run_f32(&x, &[3, 1, 28, 28]).unwrap();
    assert_eq!(shape, vec![3, 10]);
    assert!(y.iter().all(|v| v.is_finite()));
}

#[test]
fn regenerated_weights_equal_the_predictor_forward_bit_for_bit() {
    let (file, predictor) = random_predictor_file(WeightDtype::F32);
    let plans = regen::layer_plans(&file).unwrap();
    let layers = plans.len() as u32;
    // One forward over all coordinates at once, independent of regen's batching.
    let coords = regen::layer_coordinates(&plans, layers);
    let c = Tensor::from_slice(&coords, (coords.len() / 3, 3), &Device::Cpu).unwrap();
    let all = predictor.predict(&c).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let weights = regen::regenerate(&file, &nerp::Device::Cpu).unwrap();
    let mut at = 0;
    for p in &plans {
        let n = p.blocks() * 9;
        let mut expected = vec![0f32; p.grid.numel()];
        plan::scatter(&all[at..at + n], p, &mut expected);
        at += n;
        let got = weights[p.tensor].to_f32().unwrap();
        assert!(
            got.iter().zip(&expected).all(|(a, b)| a.to_bits() == b.to_bits()),
            "tensor {} differs",
            weights[p.tensor].name
        );
    }
}

#[test]
fn raw_tensors_come_back_byte_exact() {
    let (file, _) = random_predictor_file(WeightDtype::Bf16);
    let source = ingest::load(&shared_model(RESNET20)).unwrap();
    let weights = regen::regenerate(&file, &nerp::Device::Cpu).unwrap();
    for (w, s) in weights.iter().zip(&source.tensors) {
        assert_eq!(w.name, s.name);
        assert_eq!(w.shape, s.shape);
        if s.role != nerp::ingest::Role::ConvKernel || s.shape.len() != 4 {
            assert_eq!(w.data, s.data, "raw tensor {} changed", s.name);
        }
    }
}

#[test]
fn cli_decompress_gives_exactly_the_in_process_outputs() {
    let bytes = random_predictor_bytes(WeightDtype::F16);
    let dir = tempfile::tempdir().unwrap();
    let nerp_path = dir.path().join("r.nerp");
    nerp::format::write_atomic(&nerp_path, &bytes).unwrap();
    let onnx_path = dir.path().join("r.onnx");
    let out = Command::new(env!("CARGO_BIN_EXE_nerp"))
        .args([
            "decompress",
            nerp_path.to_str().unwrap(),
            "-o",
            onnx_path.to_str().unwrap(),
            "--device",
            "cpu",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let in_process = nerp::load_model(&nerp_path, &nerp::Device::Cpu).unwrap();
    let from_file = runtime::Model::from_onnx_file(&onnx_path).unwrap();
    let x = noise(5 * 28 * 28, 4);
    let a = in_process.run_f32(&x, &[5, 1, 28, 28]).unwrap();
    let b = from_file.run_f32(&x, &[5, 1, 28, 28]).unwrap();
    assert_eq!(a, b);
}

#[test]
fn safetensors_source_round_trips() {
    let path = shared_model("resnet20_fashion_mnist.safetensors");
    let model = ingest::load(&path).unwrap();
    let nerp::compress::Plan { layers: plans, decisions, .. } =
        nerp::compress::make_plan(&model, &Default::default()).unwrap();
    assert!(!plans.is_empty());
    let (bytes, _) = nerp::synth::untrained_file(&model, 16, WeightDtype::F16, 1).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (nerp_path, out) = (dir.path().join("s.nerp"), dir.path().join("s.safetensors"));
    nerp::format::write_atomic(&nerp_path, &bytes).unwrap();
    let file = nerp::open(&nerp_path).unwrap();
    let weights = regen::regenerate(&file, &nerp::Device::Cpu).unwrap();
    runtime::write_safetensors(&file, &weights, &out).unwrap();
    let back = ingest::load(&out).unwrap();
    assert_eq!(back.tensors.len(), model.tensors.len());
    for ((a, b), d) in back.tensors.iter().zip(&model.tensors).zip(&decisions) {
        assert_eq!((&a.name, a.dtype, &a.shape), (&b.name, b.dtype, &b.shape));
        if matches!(d, nerp::compress::select::Decision::Raw(_)) {
            assert_eq!(a.data, b.data, "raw tensor {} changed", a.name);
        }
    }
    assert!(rebuild_is_refused_for_safetensors(&file));
}

fn rebuild_is_refused_for_safetensors(file: &nerp::NerpFile) -> bool {
    matches!(runtime::rebuild_onnx(file, &[]), Err(nerp::Error::Rebuild(_)))
}

/// Regeneration of a model with more coordinates than one regeneration batch
/// ([`regen::BATCH`]) equals the independent f64 reference predictor of `tests/common`
/// (spec section 5: coordinate `(l/L, f/F, c/C)` of chain position `p = f·C + c` predicts
/// kernel `perm[p]`, times its filter's scale), within f32 rounding.
#[test]
fn regeneration_beyond_one_batch_matches_the_reference_predictor() {
    // 8 layers of 96×96 3×3 kernels: 73,728 coordinates.
    let (channels, layers) = (96usize, 8usize);
    assert!(channels * channels * layers > regen::BATCH);
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("stack.safetensors");
    std::fs::write(&src, nerp::synth::conv_stack_safetensors(channels, layers, 5).unwrap()).unwrap();
    let model = ingest::load(&src).unwrap();
    let (bytes, _) = nerp::synth::untrained_file(&model, 24, WeightDtype::F32, 7).unwrap();
    let file = nerp::NerpFile::from_bytes(bytes, "stack.nerp").unwrap();
    let h = file.header();
    let spec = h.predictor.as_ref().unwrap();
    let flat =
        nerp::format::codec::to_f32(nerp::format::DType::F32, &file.decode_section(spec.section).unwrap())
            .unwrap();
    let weights = regen::regenerate(&file, &nerp::Device::Cpu).unwrap();
    let mut checked = 0;
    for (t, w) in h.tensors.iter().zip(&weights) {
        let Storage::Predicted { layer, permutation, scales, scale_dtype, .. } = t.storage else { continue };
        let (f, c) = (t.shape[0] as usize, t.shape[1] as usize);
        assert_eq!(&t.shape[2..], &[3, 3]);
        let perm = nerp::format::codec::unpack_permutation(&file.decode_section(permutation).unwrap(), f * c)
            .unwrap();
        let scales = scales.map(|s| {
            nerp::format::codec::to_f32(scale_dtype.dtype(), &file.decode_section(s).unwrap()).unwrap()
        });
        let got = w.to_f32().unwrap();
        for (p, &kernel) in perm.iter().enumerate() {
            let coord =
                [layer as f32 / spec.layers as f32, (p / c) as f32 / f as f32, (p % c) as f32 / c as f32];
            let pred = common::reference_predict(spec.hidden as usize, spec.embedding, &flat, coord);
            let scale = scales.as_ref().map_or(1.0, |s| s[kernel as usize / c]) as f64;
            for (i, want) in pred.iter().enumerate() {
                let want = want * scale;
                let got = got[kernel as usize * 9 + i] as f64;
                assert!(
                    (got - want).abs() <= 1e-4 * want.abs().max(scale),
                    "{} kernel {kernel} cell {i}: {got} vs {want}",
                    t.name
                );
            }
            checked += 1;
        }
    }
    assert_eq!(checked, channels * channels * layers);
}

/// `nerp demo` as a library call: what it reports is what it wrote.
#[test]
fn demo_reports_what_it_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let o = nerp::eval::demo::DemoOptions {
        out_dir: dir.path().join("demo"),
        steps: 5,
        hidden: 16,
        limit: Some(8),
        threads: 1,
    };
    let prepared = nerp::eval::demo::prepare(&o, &mut |_, _| {}).unwrap();
    assert_eq!(prepared.work(), 16);
    let r = prepared.evaluate(&|_| {}).unwrap();
    assert_eq!(r.eval.images, 8);
    assert!(r.eval.original_accuracy.is_some());
    assert_eq!(std::fs::metadata(&r.paths.nerp).unwrap().len(), r.compress.file_bytes);
    assert_eq!(std::fs::read(&r.paths.onnx).unwrap(), nerp::eval::demo::DEMO_MODEL);
    assert_eq!(r.compress.hidden, 16);
}

/// `--size-ratio R`: the file fits in 1/R of the source, and one unit wider would not.
#[test]
fn size_ratio_picks_the_widest_predictor_that_fits() {
    let dir = tempfile::tempdir().unwrap();
    let src = shared_model(RESNET20);
    let source_bytes = std::fs::metadata(&src).unwrap().len();
    let budget = source_bytes / 8;
    let compress = |opts: nerp::compress::CompressOptions, name: &str| {
        nerp::compress::compress(&src, &dir.path().join(name), &opts, &mut |_, _| {}).unwrap()
    };
    let base = nerp::compress::CompressOptions {
        steps: 2,
        error_budget: nerp::compress::ErrorBudget::Off,
        ..Default::default()
    };
    let fit = compress(nerp::compress::CompressOptions { size_ratio: Some(8.0), ..base.clone() }, "fit.nerp");
    assert!(fit.file_bytes <= budget, "{} > {budget}", fit.file_bytes);
    assert!(fit.hidden > 8, "width {}", fit.hidden);
    // The budget is met storing tensors per their chosen codec; the widest predictor alone
    // (its file as trained) fits too, and one unit wider does not.
    assert!(fit.storage.as_ref().is_some_and(|s| s.met), "{:?}", fit.storage);
    let alone =
        compress(nerp::compress::CompressOptions { hidden: Some(fit.hidden), ..base.clone() }, "alone.nerp");
    assert!(alone.file_bytes <= budget, "width {}: {} > {budget}", fit.hidden, alone.file_bytes);
    let wider =
        compress(nerp::compress::CompressOptions { hidden: Some(fit.hidden + 1), ..base }, "wider.nerp");
    assert!(wider.file_bytes > budget, "width {} also fits: {}", fit.hidden + 1, wider.file_bytes);
}
