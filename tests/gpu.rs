//! The GPU path: where a GPU can be used (`cuda` feature + NVIDIA driver), regenerated weights
//! match the CPU's; elsewhere `cuda` is a clear error and `auto` falls back to the CPU. The GPU
//! comparison and the PTX check are `#[ignore]`d (CI has no GPU and no NVRTC): run them with
//! `cargo test --release --features cuda --test gpu -- --ignored`, with `NERP_REQUIRE_GPU=1` /
//! `NERP_REQUIRE_NVRTC=1` where they must not be skipped.

mod common;

use common::shared_model;
use nerp::format::WeightDtype;
use nerp::predictor::gpu::Gpu;
use nerp::{runtime::device, runtime::regen, Device, Error};

/// Largest allowed |GPU − CPU| difference, relative to the tensor's largest |weight|. cuBLAS sums
/// in a different order than the CPU's GEMM and CUDA's sinf/cosf may differ from the CPU's by
/// 2 ulp, so the two agree to about 1e-6 relative; a layout or indexing error gives O(1).
const TOLERANCE: f32 = 1e-4;

fn gpu_or_skip() -> Option<Device> {
    let why = Gpu::unavailable_reason();
    let how = format!("no usable GPU ({})", why.as_deref().unwrap_or(""));
    common::optional_input("GPU", why.is_none(), &how)
        .then(|| device::open("cuda:0").expect("a usable GPU opens"))
}

/// A .nerp of the shared ResNet-20 with an untrained predictor of `hidden` units (f32).
fn random_predictor_file(hidden: usize, seed: u64) -> nerp::NerpFile {
    let model = nerp::ingest::load(&shared_model("resnet20_fashion_mnist.onnx")).unwrap();
    let (bytes, _) = nerp::synth::untrained_file(&model, hidden, WeightDtype::F32, seed).unwrap();
    nerp::NerpFile::from_bytes(bytes, "random.nerp").unwrap()
}

#[test]
#[ignore = "needs an NVIDIA GPU and the cuda feature; run with --ignored"]
fn gpu_regeneration_matches_the_cpu() {
    let Some(gpu) = gpu_or_skip() else { return };
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-v1.nerp");
    let files = [nerp::open(fixture).unwrap(), random_predictor_file(180, 1), random_predictor_file(24, 2)];
    for file in &files {
        let cpu = regen::regenerate(file, &Device::Cpu).unwrap();
        let on_gpu = regen::regenerate(file, &gpu).unwrap();
        assert_eq!(cpu.len(), on_gpu.len());
        for (c, g) in cpu.iter().zip(&on_gpu) {
            assert_eq!((&c.name, c.dtype, &c.shape), (&g.name, g.dtype, &g.shape));
            if c.data == g.data {
                continue; // raw tensors, and predicted ones that agree bit for bit
            }
            let (cv, gv) = (c.to_f32().expect("only predicted tensors differ"), g.to_f32().unwrap());
            let scale = cv.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
            let diff = cv.iter().zip(&gv).fold(0f32, |m, (a, b)| m.max((a - b).abs()));
            eprintln!(
                "{} {}: max |gpu - cpu| = {diff:.3e} ({:.3e} of max |w|)",
                file.path().display(),
                c.name,
                diff / scale
            );
            assert!(
                diff <= TOLERANCE * scale,
                "{}: GPU differs from CPU by {diff} (max |w| {scale})",
                c.name
            );
        }
    }
}

/// Without a usable GPU, `cuda` is a clear error and `auto` is the CPU; with one (checked here
/// too, so that the test asserts something on every machine), `auto` picks it. Under
/// `NERP_REQUIRE_GPU=1` a missing GPU fails this test too.
#[test]
fn cuda_without_a_usable_gpu_is_a_clear_error_and_auto_uses_the_cpu() {
    let why = Gpu::unavailable_reason();
    assert!(!(why.is_some() && common::required("GPU")), "NERP_REQUIRE_GPU=1 but no usable GPU: {why:?}");
    let Some(why) = why else {
        let (d, reason) = device::open_auto();
        assert!(matches!(d, Device::Cuda(_)), "auto picks the usable GPU");
        assert_eq!(reason, None);
        assert!(matches!(device::open("cuda:0"), Ok(Device::Cuda(_))));
        return;
    };
    for name in ["cuda", "cuda:0", "cuda:3"] {
        match device::open(name) {
            Err(Error::Device { device, what }) => {
                assert!(device.starts_with("cuda:"), "{device}");
                assert!(what.contains("--device cpu"), "the message says what to do: {what}");
            }
            other => panic!("{name}: expected a device error, got {other:?}"),
        }
    }
    let (d, reason) = device::open_auto();
    assert!(matches!(d, Device::Cpu));
    assert_eq!(reason.as_deref(), Some(why.as_str()));
    assert!(matches!(device::open("auto"), Ok(Device::Cpu)));
}

#[test]
fn device_names_are_checked() {
    assert!(matches!(device::open("cpu"), Ok(Device::Cpu)));
    for bad in ["gpu", "cuda:", "cuda:x", "cuda0", "CPU", ""] {
        match device::open(bad) {
            Err(Error::Device { what, .. }) => {
                assert!(what.contains("expected auto, cpu, cuda or cuda:N"), "{what}")
            }
            other => panic!("{bad:?}: expected a device error, got {other:?}"),
        }
    }
}

/// The committed PTX is what tools/gen_ptx.sh makes of kernels.cu (needs NVRTC, which CI and
/// most machines lack).
#[cfg(feature = "cuda")]
#[test]
#[ignore = "needs NVRTC 12.4 (tools/gen_ptx.sh fetches it); run with --ignored"]
fn committed_ptx_is_up_to_date() {
    let ptx = nerp::predictor::gpu::compile_kernels();
    if !common::optional_input("NVRTC", ptx.is_some(), "NVRTC 12.4 not found (tools/gen_ptx.sh fetches it)") {
        return;
    }
    let ptx = ptx.expect("checked above");
    let ptx = ptx.expect("kernels.cu compiles");
    // The header names the NVRTC build; compare from the first directive on.
    let body = |s: &str| s[s.find(".version").unwrap_or(0)..].to_string();
    assert_eq!(
        body(&ptx),
        body(nerp::predictor::gpu::KERNELS_PTX),
        "src/predictor/gpu/kernels.ptx is stale: run tools/gen_ptx.sh"
    );
}
