//! The per-tensor storage choice under one budget (`--max-error`, `--size-ratio`): the budget
//! holds on held-back inputs when measured independently of the compressor, the file's error
//! is never the fitted one, check inputs are disjoint from the calibration inputs and enough,
//! the choice is never worse than one codec for every tensor at the same size, and a planned
//! tensor stored otherwise leaves its predictor layer unused (format 3).

mod common;

use nerp::compress::{compress, CompressOptions, ErrorBudget, ResidualMode};
use nerp::data::{self, DataSource, Preprocess, Split};
use nerp::format::Storage;
use nerp::runtime::Model;
use std::path::Path;

const RESNET20: &str = "resnet20_fashion_mnist.onnx";

/// Options with the reference preprocessing stored (so calibration images are used), a
/// predictor trained for a few steps only.
fn options() -> CompressOptions {
    let pre = Preprocess::parse(common::PREPROCESS).unwrap();
    CompressOptions { steps: 10, preprocess: Some(pre), ..Default::default() }
}

/// `‖y − y₀‖ / ‖y₀‖` of the regenerated model against the original on `n` training images,
/// computed here with tract directly (not with the compressor's calibration code).
fn output_error(original: &Path, file: &Path, n: usize) -> f64 {
    let images = training_images(n);
    outputs_against(original, file, &images).0
}

/// The first `n` training images, preprocessed, one after another (1×28×28 each).
fn training_images(n: usize) -> Vec<f32> {
    let pre = Preprocess::parse(common::PREPROCESS).unwrap();
    let images = data::load(&DataSource::FashionMnist(None), Split::Train, Some(n), &pre).unwrap();
    images.batch(0, images.len()).0.to_vec()
}

/// The relative error and the top-1 agreement of the regenerated model's logits against the
/// original's on `images` (1×28×28 each, run one at a time), with tract directly.
fn outputs_against(original: &Path, file: &Path, images: &[f32]) -> (f64, f64) {
    let (diff, norm, top1) = per_image(original, file, images);
    ((diff.iter().sum::<f64>() / norm.iter().sum::<f64>()).sqrt(), top1)
}

/// Per image: `‖y − y₀‖²` and `‖y₀‖²` of the logits; and the top-1 agreement (as above).
fn per_image(original: &Path, file: &Path, images: &[f32]) -> (Vec<f64>, Vec<f64>, f64) {
    let (a, b) =
        (Model::from_onnx_file(original).unwrap(), nerp::load_model(file, &nerp::Device::Cpu).unwrap());
    let (mut diff, mut norm, mut same) = (Vec::new(), Vec::new(), 0usize);
    let argmax = |y: &[f32]| (0..y.len()).fold(0, |k, i| if y[i] > y[k] { i } else { k });
    for x in images.chunks(28 * 28) {
        let (ya, _) = a.run_f32(x, &[1, 1, 28, 28]).unwrap();
        let (yb, _) = b.run_f32(x, &[1, 1, 28, 28]).unwrap();
        diff.push(ya.iter().zip(&yb).map(|(p, q)| ((p - q) as f64).powi(2)).sum::<f64>());
        norm.push(ya.iter().map(|p| (*p as f64).powi(2)).sum::<f64>());
        same += (argmax(&ya) == argmax(&yb)) as usize;
    }
    (diff, norm, same as f64 / (images.len() / (28 * 28)) as f64)
}

#[test]
fn an_error_budget_holds_on_held_back_images() {
    common::train_set();
    let dir = tempfile::tempdir().unwrap();
    let (src, out) = (common::shared_model(RESNET20), dir.path().join("e.nerp"));
    let opts = CompressOptions { error_budget: ErrorBudget::Target(0.05), ..options() };
    let r = compress(&src, &out, &opts, &mut |_, _| {}).unwrap();
    let s = r.storage.as_ref().expect("a storage report");
    assert!(s.met && s.measure == "output", "{s:?}");
    let (n, m) = (opts.calibration_images, nerp::compress::DEFAULT_CHECK_IMAGES);
    assert_eq!((s.fit_inputs, s.check_inputs), (n, m), "{s:?}");
    let (measured, bound) = (s.measured_error.unwrap(), s.error_bound.unwrap());
    // The budget is checked against the 95% bound from the held-back images' spread.
    assert!(measured < bound && bound <= 0.05 && s.fitted_error.unwrap() <= 0.05, "{s:?}");
    // The same figures, computed independently: the file's error on the 64 training images
    // after the 64 it was fitted to (per image, for the bound), the fitted error on those.
    let images = training_images(n + m);
    let (diff, norm, top1) = per_image(&src, &out, &images[n * 784..]);
    let (held, b) = nerp::compress::calibrate::upper_bound(&diff, &norm);
    assert!((held - measured).abs() <= 1e-4 * measured.max(1e-3), "{held} vs {measured}");
    assert!((b - bound).abs() <= 1e-4 * bound, "{b} vs {bound}");
    assert_eq!(s.top1_agreement, Some(top1), "{s:?}");
    let fitted = outputs_against(&src, &out, &images[..n * 784]).0;
    let f = s.fitted_error.unwrap();
    assert!((fitted - f).abs() <= 1e-4 * f.max(1e-3), "{fitted} vs {f}");
    // Smaller than the source by more than int8 alone would be.
    assert!(r.file_bytes * 4 < r.source_bytes, "{} bytes", r.file_bytes);
    // Every tensor's report says what it got.
    assert!(r.tensors.iter().all(|t| t.error_alone.is_some()));
    // Deterministic: the same input and options give the same bytes.
    let again = dir.path().join("again.nerp");
    compress(&src, &again, &opts, &mut |_, _| {}).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&again).unwrap());
}

#[test]
fn the_choice_is_never_worse_than_one_codec_for_every_tensor_at_its_size() {
    common::train_set();
    let dir = tempfile::tempdir().unwrap();
    let src = common::shared_model(RESNET20);
    for codec in [nerp::codec::Codec::INT8, nerp::codec::Codec::INT4] {
        // Nothing predicted: every float tensor of rank >= 2 stored with the codec.
        let single = dir.path().join(format!("{}.nerp", codec.name()));
        let mut one = CompressOptions { raw_codec: codec, error_budget: ErrorBudget::Off, ..options() };
        one.selection.min_values = usize::MAX;
        let r1 = compress(&src, &single, &one, &mut |_, _| {}).unwrap();
        let chosen = dir.path().join(format!("chosen-{}.nerp", codec.name()));
        let ratio = r1.source_bytes as f64 / r1.file_bytes as f64;
        let r2 = compress(
            &src,
            &chosen,
            &CompressOptions { size_ratio: Some(ratio), ..options() },
            &mut |_, _| {},
        )
        .unwrap();
        assert!(r2.file_bytes <= r1.file_bytes, "{}: {} > {}", codec.name(), r2.file_bytes, r1.file_bytes);
        let (e1, e2) = (output_error(&src, &single, 64), output_error(&src, &chosen, 64));
        assert!(e2 <= e1, "{} at {} bytes: chosen {e2} vs {e1}", codec.name(), r1.file_bytes);
    }
}

#[test]
fn a_planned_tensor_stored_otherwise_leaves_its_layer_unused() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("s.onnx");
    std::fs::write(&src, nerp::synth::conv_stack_onnx(4, 3, 2)).unwrap();
    let model = nerp::ingest::load(&src).unwrap();
    let opts = CompressOptions { hidden: Some(8), ..Default::default() };
    let plan = nerp::compress::make_plan(&model, &opts).unwrap();
    assert!(plan.layers.len() >= 2);
    let p = nerp::compress::train::init_predictor(8, opts.embedding, 1, &candle_core::Device::Cpu).unwrap();
    use nerp::compress::choose::{tensor, Store};
    let coded = |i: usize, codec: nerp::codec::Codec| {
        Store::Coded(std::sync::Arc::new(codec.encode(tensor(&model.tensors[i]), None).unwrap()))
    };
    let mut stores: Vec<Store> =
        (0..model.tensors.len()).map(|i| coded(i, nerp::codec::Codec::Raw)).collect();
    for l in &plan.layers {
        stores[l.tensor] = Store::Predicted(None);
    }
    let first = plan.layers[0].tensor;
    stores[first] = coded(first, nerp::codec::Codec::INT8);
    let built = nerp::compress::build_file_with(&model, &plan.layers, &plan.values, Some(&p), &opts, &stores)
        .unwrap();
    let path = dir.path().join("m.nerp");
    std::fs::write(&path, &built.bytes).unwrap();
    let file = nerp::open(&path).unwrap();
    let h = file.header();
    assert_eq!(u16::from_le_bytes([built.bytes[8], built.bytes[9]]), 3, "format 3");
    assert_eq!(h.predictor.as_ref().unwrap().layers as usize, plan.layers.len());
    assert_eq!(h.predicted_names().len(), plan.layers.len() - 1);
    assert!(matches!(h.tensors[first].storage, Storage::Quantized { bits: 8, .. }));
    // The others regenerate as the predictor gives them, with the layer indices they were
    // trained with.
    let weights = nerp::runtime::regen::regenerate(&file, &nerp::Device::Cpu).unwrap();
    let all = nerp::compress::build_file(&model, &plan.layers, &plan.values, Some(&p), &opts).unwrap();
    let all_path = dir.path().join("all.nerp");
    std::fs::write(&all_path, &all.bytes).unwrap();
    let reference =
        nerp::runtime::regen::regenerate(&nerp::open(&all_path).unwrap(), &nerp::Device::Cpu).unwrap();
    for l in &plan.layers[1..] {
        assert_eq!(weights[l.tensor].data, reference[l.tensor].data, "{}", weights[l.tensor].name);
    }
}

#[test]
fn cli_budget_flags_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.nerp");
    let src = common::shared_model(RESNET20);
    for (flag, value) in [("--max-error", "abc"), ("--max-error", "-1"), ("--calibration", "0")] {
        let o = std::process::Command::new(env!("CARGO_BIN_EXE_nerp"))
            .args([
                "compress",
                src.to_str().unwrap(),
                "-o",
                out.to_str().unwrap(),
                &format!("{flag}={value}"),
                "-q",
            ])
            .output()
            .unwrap();
        assert_eq!(o.status.code(), Some(2), "{flag} {value}: a usage error");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(err.contains(flag), "{flag} {value}: {err}");
        assert!(!out.exists(), "no output on error");
    }
}

#[test]
fn calibration_arrays_measure_outputs_and_round_data_aware() {
    common::train_set();
    let dir = tempfile::tempdir().unwrap();
    let (src, out) = (common::shared_model(RESNET20), dir.path().join("a.nerp"));
    // Eight training images as one input array, as `--calibration-inputs X.npy` gives them.
    let pre = Preprocess::parse(common::PREPROCESS).unwrap();
    let images = data::load(&DataSource::FashionMnist(None), Split::Train, Some(8), &pre).unwrap();
    let npy = dir.path().join("x.npy");
    nerp::data::npy::write_f32(&npy, images.batch(0, 8).0, &[8, 1, 28, 28]).unwrap();
    let opts = CompressOptions {
        steps: 10,
        error_budget: ErrorBudget::Target(0.05),
        calibration_inputs: vec![npy],
        ..Default::default()
    };
    let r = compress(&src, &out, &opts, &mut |_, _| {}).unwrap();
    let s = r.storage.as_ref().expect("a storage report");
    // Eight inputs: a quarter is fewer than the minimum, so four are held back.
    assert_eq!((s.measure, s.fit_inputs, s.check_inputs), ("output", 4, 4), "{s:?}");
    assert!(s.met && s.measured_error.unwrap() <= 0.05, "{s:?}");
    assert!(!r.warnings.iter().any(|w| w.contains("rounded to nearest")), "{:?}", r.warnings);
    let quantized = |s: &str| s.starts_with("int") || s.starts_with("coded");
    assert!(r.tensors.iter().any(|t| quantized(&t.stored)), "some tensor quantized");
}

/// `images` (1×28×28 each) written as one input array.
fn write_images(path: &Path, images: &[f32]) {
    nerp::data::npy::write_f32(path, images, &[images.len() / 784, 1, 28, 28]).unwrap();
}

#[test]
fn fitted_on_half_the_inputs_and_checked_on_the_other_half_the_file_error_is_the_held_back_one() {
    common::train_set();
    let dir = tempfile::tempdir().unwrap();
    let (src, out) = (common::shared_model(RESNET20), dir.path().join("h.nerp"));
    let images = training_images(16);
    let npy = dir.path().join("x.npy");
    write_images(&npy, &images);
    let opts = CompressOptions {
        steps: 10,
        error_budget: ErrorBudget::Target(0.05),
        calibration_inputs: vec![npy],
        check: Some(8),
        ..Default::default()
    };
    let r = compress(&src, &out, &opts, &mut |_, _| {}).unwrap();
    let s = r.storage.as_ref().expect("a storage report");
    assert_eq!((s.fit_inputs, s.check_inputs), (8, 8), "{s:?}");
    // Half held back: every second input, the second first.
    let pick = |odd: bool| -> Vec<f32> {
        images
            .chunks(784)
            .enumerate()
            .filter(|(i, _)| (i % 2 == 1) == odd)
            .flat_map(|(_, x)| x.to_vec())
            .collect()
    };
    let (held, top1) = outputs_against(&src, &out, &pick(true));
    let fitted = outputs_against(&src, &out, &pick(false)).0;
    let (m, f) = (s.measured_error.unwrap(), s.fitted_error.unwrap());
    assert!((held - m).abs() <= 1e-4 * m.max(1e-3), "held back: {held} vs {s:?}");
    assert!((fitted - f).abs() <= 1e-4 * f.max(1e-3), "fitted: {fitted} vs {s:?}");
    assert!((m - f).abs() > 1e-3 * f, "the file's error is not the fitted one: {s:?}");
    assert_eq!(s.top1_agreement, Some(top1), "{s:?}");
    assert!(s.met && m < s.error_bound.unwrap() && s.error_bound.unwrap() <= 0.05, "{s:?}");
    assert!(f <= 0.05, "and on the fitted ones (a few held-back inputs may be easier): {s:?}");
}

#[test]
fn after_fine_tuning_the_files_error_is_still_measured_on_images_no_stage_saw() {
    common::train_set();
    let dir = tempfile::tempdir().unwrap();
    let (src, out) = (common::shared_model(RESNET20), dir.path().join("f.nerp"));
    let opts = CompressOptions {
        error_budget: ErrorBudget::Target(0.05),
        calibration_images: 16,
        check: Some(8),
        finetune: finetune(4),
        ..options()
    };
    let r = compress(&src, &out, &opts, &mut |_, _| {}).unwrap();
    let (s, f) = (r.storage.as_ref().expect("a storage report"), r.finetune.as_ref().expect("fine-tuned"));
    // Fine-tuning draws from every training image (Fashion-MNIST has 60,000) but the check's eight.
    assert_eq!(f.images, 60_000 - 8, "{f:?}");
    let m = s.measured_error.unwrap();
    if f.kept {
        assert_eq!(Some(m), f.error_after, "{s:?} {f:?}");
    }
    // The report's figure is the written file's, on training images 16..24.
    let images = training_images(24);
    let (held, top1) = outputs_against(&src, &out, &images[16 * 784..]);
    assert!((held - m).abs() <= 1e-4 * m.max(1e-3), "{held} vs {s:?}");
    assert_eq!(s.top1_agreement, Some(top1), "{s:?}");
    // The budget is kept by the held-back bound and on the fit inputs.
    assert_eq!(s.met, s.error_bound.unwrap().max(s.fitted_error.unwrap()) <= 0.05, "{s:?}");
}

fn finetune(steps: usize) -> nerp::compress::finetune::Finetune {
    nerp::compress::finetune::Finetune {
        steps,
        lr: nerp::compress::DEFAULT_FINETUNE_LR,
        scale_lr: nerp::compress::DEFAULT_FINETUNE_SCALE_LR,
    }
}

/// Distillation of the chosen file lowers its output error: the same allocation written without
/// and with 30 steps of fine-tuning, both measured here with tract on the 32 held-back images.
/// The allocation is the same because both runs allocate the same bytes: the size budget less
/// what fine-tuning reserves, given to the run without it as its budget.
#[test]
fn fine_tuning_lowers_the_output_error_on_held_back_images() {
    common::train_set();
    let dir = tempfile::tempdir().unwrap();
    let src = common::shared_model(RESNET20);
    let opts = |steps, size_ratio| CompressOptions {
        size_ratio: Some(size_ratio),
        calibration_images: 16,
        check: Some(32),
        finetune: finetune(steps),
        ..options()
    };
    let model = nerp::ingest::load(&src).unwrap();
    let max = (model.file_bytes as f64 / 30.0).floor() as u64;
    let allowed = max - nerp::compress::finetune::reserve(&model, &opts(30, 30.0), max);
    let (plain, tuned) = (dir.path().join("p.nerp"), dir.path().join("t.nerp"));
    let r0 =
        compress(&src, &plain, &opts(0, model.file_bytes as f64 / (allowed as f64 + 0.5)), &mut |_, _| {})
            .unwrap();
    assert!(r0.finetune.is_none());
    let r = compress(&src, &tuned, &opts(30, 30.0), &mut |_, _| {}).unwrap();
    let f = r.finetune.as_ref().expect("fine-tuned");
    assert!(f.kept && f.tensors > 0, "{f:?} {:?}", r.warnings);
    assert!(r.file_bytes <= max, "{} > {max}", r.file_bytes);
    let images = training_images(48);
    let (before, _) = outputs_against(&src, &plain, &images[16 * 784..]);
    let (after, _) = outputs_against(&src, &tuned, &images[16 * 784..]);
    println!("held-back output error: {before:.4} as chosen, {after:.4} fine-tuned; report {f:?}");
    assert!(
        (before - f.error_before.unwrap()).abs() <= 1e-4 * before,
        "the run without fine-tuning chose another file: {before} vs {f:?}"
    );
    assert!(after < before, "fine-tuning raised the error: {before} -> {after}");
    let reported = r.storage.as_ref().and_then(|s| s.measured_error).expect("a held-back error");
    assert!((after - reported).abs() <= 1e-4 * after, "{after} vs the report's {reported}");
}

/// Under an error budget alone, fine-tuning buys a smaller file: the allocation aims looser by
/// what fine-tuning is counted on to remove, and the fine-tuned file is kept only where it keeps
/// the budget on the held-back inputs (measured here with tract) and is smaller than the file
/// the budget chooses without fine-tuning; else that file is written, byte for byte.
#[test]
fn under_an_error_budget_fine_tuning_buys_a_smaller_file_or_none() {
    common::train_set();
    let dir = tempfile::tempdir().unwrap();
    let src = common::shared_model(RESNET20);
    let opts = |steps| CompressOptions {
        error_budget: ErrorBudget::Target(0.05),
        calibration_images: 16,
        check: Some(32),
        finetune: finetune(steps),
        ..options()
    };
    let (plain, tuned) = (dir.path().join("p.nerp"), dir.path().join("t.nerp"));
    let r0 = compress(&src, &plain, &opts(0), &mut |_, _| {}).unwrap();
    let r = compress(&src, &tuned, &opts(60), &mut |_, _| {}).unwrap();
    let f = r.finetune.as_ref().expect("fine-tuned");
    println!("{} B without fine-tuning, {} B with; {f:?}; {:?}", r0.file_bytes, r.file_bytes, r.warnings);
    assert!(r.file_bytes <= r0.file_bytes, "{} > {}", r.file_bytes, r0.file_bytes);
    if f.kept {
        assert!(r.file_bytes < r0.file_bytes);
        assert!(
            r.warnings.iter().any(|w| w.starts_with("fine-tuning spent on a smaller file")),
            "{:?}",
            r.warnings
        );
        let s = r.storage.as_ref().expect("a storage report");
        assert!(s.met && s.error_bound.unwrap() <= 0.05 && s.budget == "error <= 0.05", "{s:?}");
        let images = training_images(48);
        let (held, _) = outputs_against(&src, &tuned, &images[16 * 784..]);
        assert!((held - s.measured_error.unwrap()).abs() <= 1e-4 * held, "{held} vs {s:?}");
    } else {
        assert_eq!(std::fs::read(&plain).unwrap(), std::fs::read(&tuned).unwrap());
    }
}

/// `nerp compress` on the ResNet-20 with `args`; (exit code, stdout, stderr).
fn cli_compress(out: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let src = common::shared_model(RESNET20);
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_nerp"))
        .args(["compress", src.to_str().unwrap(), "-o", out.to_str().unwrap(), "-q"])
        .args(args)
        .output()
        .unwrap();
    (o.status.code(), String::from_utf8_lossy(&o.stdout).into(), String::from_utf8_lossy(&o.stderr).into())
}

#[test]
fn the_held_back_error_compress_prints_is_the_written_files_error_on_the_check_inputs() {
    common::train_set();
    let dir = tempfile::tempdir().unwrap();
    let images = training_images(24);
    let (cal, check) = (dir.path().join("cal.npy"), dir.path().join("check.npy"));
    write_images(&cal, &images[..16 * 784]);
    write_images(&check, &images[16 * 784..]);
    let out = dir.path().join("c.nerp");
    let (cal, check) = (cal.to_str().unwrap(), check.to_str().unwrap());
    let args = ["--max-error", "0.05", "--calibration-inputs", cal, "--check-inputs", check, "--json"];
    let (code, stdout, stderr) = cli_compress(&out, &args);
    assert_eq!(code, Some(0), "{stderr}");
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let storage = &report["storage"];
    assert_eq!((storage["fit_inputs"].as_u64(), storage["check_inputs"].as_u64()), (Some(16), Some(8)));
    let printed = storage["measured_error"].as_f64().unwrap();
    let bound = storage["error_bound"].as_f64().unwrap();
    assert!(printed < bound && bound <= 0.05, "{storage}");
    let (held, top1) = outputs_against(&common::shared_model(RESNET20), &out, &images[16 * 784..]);
    assert!((held - printed).abs() <= 1e-4 * printed.max(1e-3), "{held} vs printed {printed}");
    assert_eq!(storage["top1_agreement"].as_f64(), Some(top1), "{storage}");
}

#[test]
fn check_inputs_that_are_calibration_inputs_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let images = training_images(12);
    let (cal, check) = (dir.path().join("cal.npy"), dir.path().join("check.npy"));
    write_images(&cal, &images[..8 * 784]);
    // Training image 3 (a calibration input) among four others.
    let mixed: Vec<f32> =
        [8, 9, 3, 10, 11].iter().flat_map(|&i| images[i * 784..(i + 1) * 784].to_vec()).collect();
    write_images(&check, &mixed);
    let out = dir.path().join("o.nerp");
    let (cal, check) = (cal.to_str().unwrap(), check.to_str().unwrap());
    let (code, _, err) = cli_compress(&out, &["--calibration-inputs", cal, "--check-inputs", check]);
    assert_eq!(code, Some(2), "a usage error: {err}");
    assert!(
        err.contains("--check-inputs") && err.contains("input 2 of") && err.contains("input 3 of"),
        "{err}"
    );
    assert!(err.contains("never sees"), "{err}");
    assert!(!out.exists(), "no output on error");
    // The same file as both.
    let (code, _, err) = cli_compress(&out, &["--calibration-inputs", cal, "--check-inputs", cal]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("input 0 of") && err.contains("never sees"), "{err}");
}

#[test]
fn too_few_check_inputs_are_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    let images = training_images(12);
    let (cal, two, five) =
        (dir.path().join("cal.npy"), dir.path().join("two.npy"), dir.path().join("five.npy"));
    write_images(&cal, &images[..8 * 784]);
    write_images(&two, &images[8 * 784..10 * 784]);
    write_images(&five, &images[..5 * 784]);
    let out = dir.path().join("o.nerp");
    let path = |p: &Path| p.to_str().unwrap().to_string();
    let cases: [(&[String], &str, &str); 3] = [
        (
            &["--calibration-inputs".into(), path(&cal), "--check-inputs".into(), path(&two)],
            "--check-inputs",
            "2 inputs are too few",
        ),
        (&["--calibration-inputs".into(), path(&cal), "--check".into(), "2".into()], "--check", "at least 4"),
        // Five inputs cannot give four to the check and four to the fit.
        (&["--calibration-inputs".into(), path(&five)], "--calibration-inputs", "5 inputs are too few"),
    ];
    for (args, flag, says) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, _, err) = cli_compress(&out, &args);
        assert_eq!(code, Some(2), "{args:?}: a usage error: {err}");
        assert!(err.contains(flag) && err.contains(says), "{args:?}: {err}");
        assert!(!out.exists(), "no output on error");
    }
}

/// Every float tensor of `file` regenerated, by name.
fn regenerated(file: &Path) -> std::collections::BTreeMap<String, Vec<f32>> {
    let f = nerp::NerpFile::open(file).unwrap();
    let w = nerp::runtime::regen::regenerate(&f, &nerp::Device::Cpu).unwrap();
    w.into_iter().filter_map(|t| Some((t.name.clone(), t.to_f32()?))).collect()
}

#[test]
fn a_residual_keeps_each_value_within_half_its_groups_largest_residual() {
    let dir = tempfile::tempdir().unwrap();
    let src = common::shared_model(RESNET20);
    // No channel ordering, so the file's tensors are the source's; a weak predictor (few steps)
    // leaves a large residual.
    let base = CompressOptions {
        steps: 10,
        hidden: Some(16),
        channels: false,
        error_budget: ErrorBudget::Off,
        ..Default::default()
    };
    let (plain, with) = (dir.path().join("p.nerp"), dir.path().join("r.nerp"));
    compress(&src, &plain, &base, &mut |_, _| {}).unwrap();
    let report = compress(
        &src,
        &with,
        &CompressOptions { residual: ResidualMode::Every(3), ..base.clone() },
        &mut |_, _| {},
    )
    .unwrap();
    let source: std::collections::BTreeMap<_, _> = nerp::ingest::load(&src)
        .unwrap()
        .tensors
        .iter()
        .filter_map(|t| Some((t.name.clone(), nerp::format::codec::to_f32(t.dtype, &t.data)?)))
        .collect();
    let (predicted, rebuilt) = (regenerated(&plain), regenerated(&with));
    let file = nerp::NerpFile::open(&with).unwrap();
    assert_eq!(file.major(), 3);
    let mut seen = 0;
    for t in &file.header().tensors {
        let Storage::Predicted { residual, .. } = t.storage else { continue };
        let Some(nerp::format::Residual::Quantized { bits, group, .. }) = residual else {
            panic!("every predicted tensor has an int residual")
        };
        assert_eq!(bits, 3);
        seen += 1;
        let (w, p, got) = (&source[&t.name], &predicted[&t.name], &rebuilt[&t.name]);
        let (mut before, mut after) = (0f64, 0f64);
        for g in 0..w.len() / group as usize {
            let range = g * group as usize..(g + 1) * group as usize;
            let largest = range.clone().map(|i| (w[i] - p[i]).abs()).fold(0f32, f32::max);
            for i in range {
                let e = (w[i] - got[i]).abs();
                assert!(e <= 0.5 * largest * 1.002 + 1e-7, "{} [{i}]: {e} vs {largest}", t.name);
                before += ((w[i] - p[i]) as f64).powi(2);
                after += (e as f64).powi(2);
            }
        }
        // Three bits take most of the predictor's error away.
        assert!(after < 0.25 * before, "{}: {after} vs {before}", t.name);
    }
    assert!(seen >= 19, "{seen} predicted tensors");
    assert!(report.tensors.iter().filter(|t| t.stored.ends_with("+int3")).count() == seen);
    // The residuals cost about 3 bits per value.
    let (a, b) = (std::fs::metadata(&plain).unwrap().len(), report.file_bytes);
    let values: u64 = 270_000;
    assert!(b > a + values * 3 / 8 / 2 && b < a + values * 3 / 8 * 2, "{a} -> {b}");
}

#[test]
fn a_residual_width_out_of_range_is_a_usage_error() {
    for bits in [0u8, 1, 9] {
        let opts = CompressOptions { residual: ResidualMode::Every(bits), ..Default::default() };
        let e = opts.validate().unwrap_err().to_string();
        assert!(e.contains("--residual") && e.contains("2..=8"), "{e}");
    }
}

#[test]
fn layer_moments_collected_through_tract_equal_nerps_own_graph() {
    // Two images: 1,568 columns per 3×3 layer, below the tract path's subsampling.
    let pre = Preprocess::parse(common::PREPROCESS).unwrap();
    let images = data::load(&DataSource::FashionMnist(None), Split::Test, Some(2), &pre).unwrap();
    let batches = vec![(images.batch(0, 2).0.to_vec(), vec![2, 1, 28, 28])];
    let model = nerp::ingest::load(&common::shared_model(RESNET20)).unwrap();
    let proto = nerp::runtime::patch_skeleton(
        model.skeleton.as_ref().unwrap(),
        &nerp::compress::permute::as_weights(&model),
    )
    .unwrap();
    let graph = nerp::compress::graph::Graph::from_proto(&proto).unwrap();
    let ours = nerp::compress::moments::Hessians::collect(&graph, &batches).unwrap();
    let tract = nerp::compress::moments::Hessians::collect_tract(&proto, &[], &batches).unwrap();
    // Every one-group conv and the classifier (Gemm, transB).
    assert_eq!(ours.0.len(), 22);
    let mut names: Vec<_> = ours.0.keys().collect();
    names.sort();
    let mut other: Vec<_> = tract.0.keys().collect();
    other.sort();
    assert_eq!(names, other);
    for (name, m) in &ours.0 {
        let (h, t) = (&m.h, &tract.0[name]);
        let h2 = &t.h;
        assert_eq!((m.d, m.layout), (t.d, t.layout), "{name}");
        let scale = h.iter().fold(0f64, |a, v| a.max(v.abs()));
        let worst = h.iter().zip(h2).fold(0f64, |a, (x, y)| a.max((x - y).abs()));
        assert!(worst <= 1e-4 * scale, "{name}: {worst} of {scale}");
    }
}

#[test]
fn without_calibration_inputs_a_failed_default_check_keeps_the_weights_within_one_percent() {
    // A safetensors source (nothing to run) and a predictor trained for one step: its file
    // fails the default check, and the codecs chosen instead keep the weights within 1%. The
    // width is given, so the predictor is trained although its probe shows it cannot pay.
    let dir = tempfile::tempdir().unwrap();
    let src = common::shared_model("resnet20_fashion_mnist.safetensors");
    let out = dir.path().join("d.nerp");
    let hidden = Some(nerp::compress::DEFAULT_HIDDEN);
    let opts = CompressOptions { steps: 1, hidden, ..Default::default() };
    let r = compress(&src, &out, &opts, &mut |_, _| {}).unwrap();
    let s = r.storage.as_ref().expect("the default check chose codecs");
    assert_eq!((s.measure, s.budget.as_str()), ("weights", "error <= 0.01"), "{s:?}");
    assert!(s.met && s.predictor_only_error.unwrap() > nerp::compress::DEFAULT_MAX_WEIGHT_ERROR, "{s:?}");
    // The weights' relative error, computed here.
    let source = nerp::ingest::load(&src).unwrap();
    let got = regenerated(&out);
    let (mut diff, mut norm) = (0f64, 0f64);
    // The error of every float tensor over the norm of the weight matrices (the measure's
    // definition: `Chooser::new`).
    for t in source.tensors.iter().filter(|t| got.contains_key(&t.name) && t.dtype.is_float()) {
        let a = nerp::format::codec::to_f32(t.dtype, &t.data).unwrap();
        diff += a.iter().zip(&got[&t.name]).map(|(x, y)| ((x - y) as f64).powi(2)).sum::<f64>();
        if t.shape.len() >= 2 {
            norm += a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>();
        }
    }
    let error = (diff / norm).sqrt();
    assert!(error <= 0.01, "weight error {error}");
    assert!((error - s.estimated_error).abs() <= 1e-3 * s.estimated_error.max(1e-6), "{error} vs {s:?}");
}

/// `layout`'s generated model compressed at `--size-ratio 8` (300 training steps at most), checked
/// to be the codecs' alone: no training step ran, no predictor is stored, and the file is within
/// the 8×. Returns the report.
fn codecs_only_at_8x(layout: &nerp::synth::LlmLayout) -> nerp::compress::CompressReport {
    let (dir, src) = common::small_llm(layout, 2);
    let out = dir.path().join("m.nerp");
    let opts = CompressOptions { steps: 300, size_ratio: Some(8.0), ..Default::default() };
    let mut steps = 0usize;
    let report = compress(&src, &out, &opts, &mut |_: usize, _: f64| steps += 1).unwrap();
    assert_eq!((steps, report.predictor_params), (0, 0), "training started: {:?}", report.warnings);
    assert!(nerp::format::NerpFile::open(&out).unwrap().header().predictor.is_none());
    assert!(report.file_bytes <= report.source_bytes / 8, "{} bytes", report.file_bytes);
    report
}

/// Decide before spending (issue 24): under a size budget the codecs alone cannot meet within
/// 5%, a predictor would be trained; on noise the probe (a short training on a sample of blocks)
/// shows it cannot pay, and no step of the predictor's training runs.
#[test]
fn a_predictor_the_probe_shows_cannot_pay_is_never_trained() {
    let report = codecs_only_at_8x(&nerp::synth::LlmLayout::small(2, 256, 256));
    let probe = report.probe.as_ref().unwrap_or_else(|| panic!("not probed: {:?}", report.warnings));
    assert!(!probe.pays() && probe.error > probe.must_beat, "{probe:?}");
    assert!(probe.blocks > probe.sampled && probe.steps == 300, "{probe:?}");
    assert!(report.warnings.iter().any(|w| w.starts_with("predictor probe")), "{:?}", report.warnings);
}

/// A size budget no predictor fits beside the other tensors (here the large embedding stored
/// by a codec) is met by the codecs alone, with one line saying why (it was a usage error).
#[test]
fn a_size_budget_no_predictor_fits_goes_to_the_codecs() {
    let report = codecs_only_at_8x(&nerp::synth::LlmLayout::small(2, 128, 1000));
    assert!(report.warnings.iter().any(|w| w.starts_with("no predictor fits")), "{:?}", report.warnings);
}
