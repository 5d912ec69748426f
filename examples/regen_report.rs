//! Regeneration on the CPU and on the GPU, side by side in one process: weights per second and
//! load-to-ready time (open + regenerate + build the tract model) against loading the original
//! ONNX into tract. The GPU columns say "-" when no GPU can be used (build with `--features cuda`).
//!
//! ```sh
//! cargo run --release --features cuda --example regen_report -- \
//!     [--repeat 7] [--hidden 180] [--wide 256x17] [--out report.md] MODEL.onnx ...
//! ```
//! Each model is compressed with an untrained predictor of `--hidden` units (f16, default options):
//! the predictor's values do not change the cost of regenerating. `--wide CxL` adds a synthetic
//! convnet (`nerp::synth::conv_stack_onnx`) of L 3×3 convolutions with C channels (256x17 = 10.0 M weights).

use nerp::format::WeightDtype;
use nerp::{runtime, runtime::device, runtime::regen, synth, Device};
use std::path::{Path, PathBuf};
use std::time::Instant;

struct Args {
    repeat: usize,
    hidden: usize,
    wide: Option<(usize, usize)>,
    out: Option<PathBuf>,
    models: Vec<PathBuf>,
}

fn parse_args() -> Result<Args, String> {
    let mut a = Args { repeat: 7, hidden: 180, wide: None, out: None, models: Vec::new() };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |flag: &str| it.next().ok_or(format!("{flag} needs a value"));
        match arg.as_str() {
            "--repeat" => a.repeat = value("--repeat")?.parse().map_err(|e| format!("--repeat: {e}"))?,
            "--hidden" => a.hidden = value("--hidden")?.parse().map_err(|e| format!("--hidden: {e}"))?,
            "--out" => a.out = Some(value("--out")?.into()),
            "--wide" => {
                let v = value("--wide")?;
                let (c, l) = v.split_once('x').ok_or("--wide expects CHANNELSxLAYERS, e.g. 256x18")?;
                a.wide = Some((
                    c.parse().map_err(|e| format!("--wide: {e}"))?,
                    l.parse().map_err(|e| format!("--wide: {e}"))?,
                ));
            }
            _ if arg.starts_with("--") => return Err(format!("unknown option {arg}")),
            _ => a.models.push(arg.into()),
        }
    }
    if a.repeat == 0 {
        return Err("--repeat must be at least 1".into());
    }
    Ok(a)
}

/// Median wall time of `repeat` runs of `f`, in milliseconds.
fn median_ms<T>(repeat: usize, mut f: impl FnMut() -> nerp::Result<T>) -> nerp::Result<f64> {
    let mut times = Vec::with_capacity(repeat);
    for _ in 0..repeat {
        let t = Instant::now();
        f()?;
        times.push(t.elapsed().as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times[repeat / 2])
}

/// Writes `onnx`'s .nerp with an untrained predictor into `dir` and returns its path.
fn random_predictor_nerp(onnx: &Path, hidden: usize, dir: &Path) -> nerp::Result<PathBuf> {
    let (bytes, _) = synth::untrained_file(&nerp::ingest::load(onnx)?, hidden, WeightDtype::F16, 1)?;
    let stem = onnx.file_stem().and_then(|s| s.to_str()).unwrap_or("model");
    let path = dir.join(format!("{stem}-h{hidden}.nerp"));
    nerp::format::write_atomic(&path, &bytes)?;
    Ok(path)
}

/// Largest |GPU − CPU| over all predicted weights, relative to the largest |CPU weight|.
fn max_relative_difference(cpu: &[regen::WeightTensor], gpu: &[regen::WeightTensor]) -> f32 {
    let (mut diff, mut scale) = (0f32, 0f32);
    for (c, g) in cpu.iter().zip(gpu) {
        if let (Some(c), Some(g)) = (c.to_f32(), g.to_f32()) {
            for (a, b) in c.iter().zip(&g) {
                diff = diff.max((a - b).abs());
                scale = scale.max(a.abs());
            }
        }
    }
    diff / scale.max(1e-12)
}

fn run() -> Result<String, String> {
    let a = parse_args()?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut models = a.models.clone();
    if let Some((c, l)) = a.wide {
        let path = dir.path().join(format!("conv_stack_{c}x{l}.onnx"));
        nerp::format::write_atomic(&path, &synth::conv_stack_onnx(c, l, 7)).map_err(|e| e.to_string())?;
        models.push(path);
    }
    if models.is_empty() {
        return Err("give at least one MODEL.onnx or --wide CxL".into());
    }
    let t = Instant::now();
    let gpu = match nerp::predictor::gpu::Gpu::unavailable_reason() {
        None => Some(device::open("cuda:0").map_err(|e| e.to_string())?),
        Some(why) => {
            eprintln!("no GPU: {why}; GPU columns are empty");
            None
        }
    };
    let gpu_open_ms = t.elapsed().as_secs_f64() * 1e3;
    let gpu_name = gpu.as_ref().map(Device::describe).unwrap_or_else(|| "-".into());
    let threads = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    let mut report = format!(
        "CPU: {threads} threads; GPU: {gpu_name}; GPU open (driver, context, PTX JIT, cuBLAS): {}; \
         median of {} runs; predictor h = {} (untrained, f16)\n\n\
         | model | predicted weights | regenerate CPU ms | GPU ms (first) | GPU ms | CPU weights/s | GPU weights/s | GPU ÷ CPU speed | load-to-ready CPU ms | GPU ms | original ONNX → tract ms | max \\|GPU − CPU\\| / max \\|w\\| |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n",
        if gpu.is_some() { format!("{gpu_open_ms:.0} ms") } else { "-".into() },
        a.repeat,
        a.hidden
    );
    for onnx in &models {
        let e = |e: nerp::Error| format!("{}: {e}", onnx.display());
        let path = random_predictor_nerp(onnx, a.hidden, dir.path()).map_err(e)?;
        let file = nerp::open(&path).map_err(e)?;
        let weights: usize = regen::layer_plans(&file).map_err(e)?.iter().map(|p| p.grid.numel()).sum();
        let cpu_ms = median_ms(a.repeat, || regen::regenerate(&file, &nerp::Device::Cpu)).map_err(e)?;
        let cpu_ready = median_ms(a.repeat, || nerp::load_model(&path, &Device::Cpu)).map_err(e)?;
        let original = median_ms(a.repeat, || runtime::Model::from_onnx_file(onnx)).map_err(e)?;
        let per_s = |ms: f64| format!("{:.3e}", weights as f64 / (ms / 1e3));
        let gpu_cols = match &gpu {
            Some(g) => {
                let t = Instant::now();
                let first = regen::regenerate(&file, g).map_err(e)?;
                let first_ms = t.elapsed().as_secs_f64() * 1e3;
                let ms = median_ms(a.repeat, || regen::regenerate(&file, g)).map_err(e)?;
                let ready = median_ms(a.repeat, || nerp::load_model(&path, g)).map_err(e)?;
                let diff = max_relative_difference(
                    &regen::regenerate(&file, &nerp::Device::Cpu).map_err(e)?,
                    &first,
                );
                [
                    format!("{first_ms:.2}"),
                    format!("{ms:.2}"),
                    per_s(ms),
                    format!("{:.1}×", cpu_ms / ms),
                    format!("{ready:.2}"),
                    format!("{diff:.2e}"),
                ]
            }
            None => std::array::from_fn(|_| "-".to_string()),
        };
        let name = onnx.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let [first, ms, gps, speed, ready, diff] = gpu_cols;
        report += &format!(
            "| {name} | {weights} | {cpu_ms:.2} | {first} | {ms} | {} | {gps} | {speed} | {cpu_ready:.2} | {ready} | {original:.2} | {diff} |\n",
            per_s(cpu_ms)
        );
    }
    if let Some(out) = &a.out {
        nerp::format::write_atomic(out, report.as_bytes()).map_err(|e| e.to_string())?;
    }
    Ok(report)
}

fn main() {
    match run() {
        Ok(report) => print!("{report}"),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
