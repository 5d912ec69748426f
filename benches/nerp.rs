//! Criterion benchmarks of reading, regenerating and loading `.nerp` files on the CPU; see
//! benches/README.md. Files carry an untrained predictor (`nerp::synth`): the work of reading
//! and regenerating does not depend on the predictor's values.
//!
//! Models: the shared Fashion-MNIST ResNet-20 (`../shared/models`, or the copy in
//! `examples/models`), and a synthetic stack of 17 convolutions 256→256 3×3 (10.0 M predicted
//! weights).

use criterion::measurement::WallTime;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, SamplingMode, Throughput};
use nerp::codec::Codec;
use nerp::format::{Storage, WeightDtype};
use nerp::Device;
use nerp::{ingest, runtime, runtime::regen, synth};
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::Duration;

const DEVICE: &str = "cpu";
/// Predictor width of the benchmarked files (nerp's default).
const HIDDEN: usize = 180;
const RESNET20: &str = "resnet20_fashion_mnist.onnx";
/// The synthetic model: `LAYERS` kernels of `CHANNELS`×`CHANNELS`×3×3.
const CHANNELS: usize = 256;
const LAYERS: usize = 17;
/// Rungs of `coded` storage (step `RMS · 2^(k/4)`) giving about 3 and 6 bits per weight on
/// these models (the bench prints the measured figure).
const CODED_3BITS: i8 = -4;
const CODED_6BITS: i8 = -16;

fn shared_model(name: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let shared = root.join("../shared/models").join(name);
    if shared.exists() {
        shared
    } else {
        root.join("examples/models").join(name)
    }
}

/// Writes an untrained-predictor `.nerp` of the model at `source` into `dir`.
fn nerp_of(source: &Path, dir: &Path, name: &str) -> PathBuf {
    let model = ingest::load(source).expect("source model");
    let (bytes, _) = synth::untrained_file(&model, HIDDEN, WeightDtype::F16, 0).expect("build .nerp");
    let path = dir.join(name);
    nerp::format::write_atomic(&path, &bytes).expect("write .nerp");
    path
}

/// Writes a `.nerp` of the model at `source` into `dir` with every tensor stored `coded` at rung
/// `rung` (no predictor), and says its bits per coded weight.
fn coded_of(source: &Path, dir: &Path, name: &str, rung: i8) -> PathBuf {
    let model = ingest::load(source).expect("source model");
    let bytes = synth::codec_file(&model, Codec::Coded(rung)).expect("build .nerp");
    let path = dir.join(name);
    nerp::format::write_atomic(&path, &bytes).expect("write .nerp");
    let coded = stored_weights(&nerp::open(&path).expect("open"), |s| matches!(s, Storage::Coded { .. }));
    eprintln!(
        "{name}: rung {rung}, {:.2} bits per coded weight (file bytes)",
        bytes.len() as f64 * 8.0 / coded as f64
    );
    path
}

/// Values of the tensors of a file whose storage satisfies `which`.
fn stored_weights(file: &nerp::NerpFile, which: impl Fn(&Storage) -> bool) -> u64 {
    let h = file.header();
    h.tensors.iter().filter(|t| which(&t.storage)).map(|t| t.shape.iter().product::<u64>()).sum()
}

/// Values of the predicted or coded tensors of a file: what regeneration computes or decodes.
fn regenerated_weights(file: &nerp::NerpFile) -> u64 {
    stored_weights(file, |s| matches!(s, Storage::Predicted { .. } | Storage::Coded { .. }))
}

struct Fixtures {
    _dir: tempfile::TempDir,
    onnx: PathBuf,
    resnet20: PathBuf,
    big: PathBuf,
    /// ResNet-20 with every tensor `coded`: ~3 and ~6 bits per weight.
    resnet20_coded: [(&'static str, PathBuf); 2],
    /// The synthetic stack as ONNX, and `coded` at ~6 bits per weight.
    stack_onnx: PathBuf,
    big_coded: PathBuf,
}

fn fixtures() -> Fixtures {
    let dir = tempfile::tempdir().expect("temp dir");
    let onnx = shared_model(RESNET20);
    let resnet20 = nerp_of(&onnx, dir.path(), "resnet20.nerp");
    let stack = dir.path().join("conv_stack.safetensors");
    std::fs::write(&stack, synth::conv_stack_safetensors(CHANNELS, LAYERS, 0).expect("synthetic model"))
        .expect("write synthetic model");
    let big = nerp_of(&stack, dir.path(), "conv_stack_10m.nerp");
    let resnet20_coded = [
        ("nerp_coded_3bits", coded_of(&onnx, dir.path(), "resnet20_coded3.nerp", CODED_3BITS)),
        ("nerp_coded_6bits", coded_of(&onnx, dir.path(), "resnet20_coded6.nerp", CODED_6BITS)),
    ];
    let stack_onnx = dir.path().join("conv_stack.onnx");
    std::fs::write(&stack_onnx, synth::conv_stack_onnx(CHANNELS, LAYERS, 0)).expect("write synthetic model");
    let big_coded = coded_of(&stack_onnx, dir.path(), "conv_stack_10m_coded6.nerp", CODED_6BITS);
    Fixtures { _dir: dir, onnx, resnet20, big, resnet20_coded, stack_onnx, big_coded }
}

fn short<'a>(c: &'a mut Criterion, name: &str, secs: u64) -> criterion::BenchmarkGroup<'a, WallTime> {
    let mut g = c.benchmark_group(format!("{name}/{DEVICE}"));
    g.sample_size(10).warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(secs));
    // One run per sample when a run is long: `cargo bench` stays within a few minutes.
    g.sampling_mode(SamplingMode::Flat);
    g
}

fn benches(c: &mut Criterion) {
    let fx = fixtures();
    let models = [("resnet20", &fx.resnet20), ("conv_stack_10m", &fx.big)];

    let mut g = short(c, "open", 3);
    for (name, path) in models {
        g.bench_with_input(BenchmarkId::new("header_only", name), path, |b, p| {
            b.iter(|| black_box(nerp::format::read_header(p).expect("header")))
        });
        g.bench_with_input(BenchmarkId::new("full_validation", name), path, |b, p| {
            b.iter(|| black_box(nerp::open(p).expect("open")))
        });
        g.bench_with_input(BenchmarkId::new("full_validation_mmap", name), path, |b, p| {
            b.iter(|| black_box(nerp::NerpFile::open_mapped(p).expect("open")))
        });
    }
    g.finish();

    let cpu = Device::Cpu;
    let mut g = short(c, "regenerate", 5);
    let coded = [("resnet20", &fx.resnet20_coded[1].1), ("conv_stack_10m", &fx.big_coded)];
    let coded = coded.map(|(name, path)| ("coded_6bits".to_string(), name, path));
    let predicted = models.map(|(name, path)| (format!("h{HIDDEN}_f16"), name, path));
    for (storage, name, path) in predicted.into_iter().chain(coded) {
        let file = nerp::open(path).expect("open");
        g.throughput(Throughput::Elements(regenerated_weights(&file)));
        g.bench_function(BenchmarkId::new(storage, name), |b| {
            b.iter(|| black_box(regen::regenerate(&file, &cpu).expect("regenerate")))
        });
    }
    g.finish();

    // The same graph reaches tract either way; only the weight values differ.
    let original = runtime::Model::from_onnx_file(&fx.onnx).expect("original model");
    let regenerated = nerp::load_model(&fx.resnet20, &cpu).expect("regenerated model");
    let mut g = short(c, "inference_resnet20", 3);
    for batch in [1usize, 4] {
        let x = vec![0.1f32; batch * 28 * 28];
        let shape = [batch, 1, 28, 28];
        g.throughput(Throughput::Elements(batch as u64));
        for (which, model) in [("original_onnx", &original), ("regenerated_nerp", &regenerated)] {
            g.bench_function(BenchmarkId::new(which, format!("batch{batch}")), |b| {
                b.iter(|| black_box(model.run_f32(&x, &shape).expect("run")))
            });
        }
    }
    g.finish();

    let mut g = short(c, "load_to_ready_resnet20", 5);
    g.bench_function("original_onnx", |b| {
        b.iter(|| black_box(runtime::Model::from_onnx_file(&fx.onnx).expect("load")))
    });
    g.bench_function(format!("nerp_h{HIDDEN}_f16"), |b| {
        b.iter(|| black_box(nerp::load_model(&fx.resnet20, &cpu).expect("load")))
    });
    for (name, path) in &fx.resnet20_coded {
        g.bench_function(*name, |b| b.iter(|| black_box(nerp::load_model(path, &cpu).expect("load"))));
    }
    g.finish();

    // Large dense kernels: the most decoding per unit of tract's own loading work.
    let mut g = short(c, "load_to_ready_conv_stack_10m", 5);
    g.bench_function("original_onnx", |b| {
        b.iter(|| black_box(runtime::Model::from_onnx_file(&fx.stack_onnx).expect("load")))
    });
    g.bench_function("nerp_coded_6bits", |b| {
        b.iter(|| black_box(nerp::load_model(&fx.big_coded, &cpu).expect("load")))
    });
    g.finish();
}

/// Laplacian codes of scale `scale`: splitmix64 uniforms through the inverse CDF, rounded.
fn laplace_codes(n: usize, scale: f64, seed: u64) -> Vec<i32> {
    let mut state = seed;
    (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            let u = (((z ^ (z >> 31)) >> 11) as f64 + 0.5) / (1u64 << 53) as f64 - 0.5;
            (-scale * u.signum() * (1.0 - 2.0 * u.abs()).ln()).round() as i32
        })
        .collect()
}

/// The entropy coder of quantized codes (`nerp::format::entropy`) on 2^20 i.i.d. Laplacian
/// codes at ~0.9, ~3 and ~6 bits per code (scales 0.3, 1.5, 12), rows of 576 (a 64-channel
/// 3×3 kernel's row); throughput in codes.
fn entropy_coder(c: &mut Criterion) {
    use nerp::format::entropy;
    const ROW: usize = 576;
    let sets = [("laplace_0.9bits", 0.3), ("laplace_3bits", 1.5), ("laplace_6bits", 12.0)];
    let sets: Vec<(&str, Vec<i32>)> =
        sets.iter().map(|&(name, scale)| (name, laplace_codes(1 << 20, scale, 1))).collect();
    let mut g = short(c, "entropy", 3);
    for (name, codes) in &sets {
        let bytes = entropy::encode(codes, ROW);
        let mut out = vec![0i32; codes.len()];
        g.throughput(Throughput::Elements(codes.len() as u64));
        g.bench_function(BenchmarkId::new("decode", name), |b| {
            b.iter(|| {
                entropy::decode_into(black_box(&bytes), ROW, entropy::MAX_CODE, &mut out).expect("decode")
            })
        });
        g.bench_function(BenchmarkId::new("encoded_len", name), |b| {
            b.iter(|| black_box(entropy::encoded_len(black_box(codes), ROW)))
        });
    }
    g.finish();
}

/// GPTQ's rounding (`nerp::codec::gptq`) of a 1,216 × 896 matrix (a quarter of Qwen2-0.5B's
/// `gate_proj`) onto int4 in groups of 128, with input moments from 1,024 correlated inputs
/// (16 factors plus noise); the factor of `H⁻¹` is computed once, in the warm-up. Throughput in
/// weights.
fn gptq_rounding(c: &mut Criterion) {
    use nerp::codec::gptq::{Layout, Moments};
    let (rows, d, n) = (1216, 896, 1024);
    let uniform = |len: usize, seed: u64| -> Vec<f32> {
        laplace_codes(len, 1000.0, seed).iter().map(|&c| (c as f32 / 1000.0).clamp(-4.0, 4.0)).collect()
    };
    let w: Vec<f32> = uniform(rows * d, 2).iter().map(|v| 0.02 * v).collect();
    let (factors, mix, noise) = (uniform(n * 16, 3), uniform(16 * d, 4), uniform(n * d, 5));
    let x: Vec<f64> = (0..n * d)
        .map(|k| {
            let (t, j) = (k / d, k % d);
            (0..16).map(|f| (factors[t * 16 + f] * mix[f * d + j]) as f64).sum::<f64>()
                + 0.1 * noise[k] as f64
        })
        .collect();
    let mut h = vec![0f64; d * d];
    for t in 0..n {
        let row = &x[t * d..(t + 1) * d];
        for a in 0..d {
            for b in 0..d {
                h[a * d + b] += row[a] * row[b] / n as f64;
            }
        }
    }
    let m = Moments::new(d, h, Layout::OutputRows);
    let mut g = short(c, "gptq", 5);
    g.throughput(Throughput::Elements(w.len() as u64));
    g.bench_function("int4_g128_1216x896", |b| {
        b.iter(|| black_box(m.quantize(black_box(&w), d, 128, 4).expect("fits").expect("rounds")))
    });
    g.bench_function("group_int4_zp_g128_1216x896", |b| {
        b.iter(|| {
            black_box(nerp::codec::group::encode_part_gptq(black_box(&w), d, 128, 4, true, &m).expect("fits"))
        })
    });
    g.finish();
}

criterion_group!(nerp_benches, entropy_coder, gptq_rounding, benches);
criterion_main!(nerp_benches);
