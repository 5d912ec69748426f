//! Size–accuracy sweep: nerp at several predictor widths × predictor dtypes against fp16/bf16
//! weights, int8 per-channel PTQ and lossless zstd, measured in one run on the same ONNX model
//! and the full Fashion-MNIST test set; writes `points.json`, `sweep.md` and `sweep.svg`.
//!
//! Each width is trained once (the predictor dtype only changes how the trained weights are
//! stored: `compress` rounds after training), so this calls the library instead of the CLI.
//!
//! ```text
//! cargo run --release --example sweep -- run --out docs/results/resnet20 --hidden 64,96,128,180 --steps 3000
//! cargo run --release --example sweep -- add OUT/points.json NERN.json...   # tools/nern_baseline.py outputs
//! cargo run --release --example sweep -- render OUT/points.json
//! ```

use candle_core::Device;
use clap::{Parser, Subcommand};
use nerp::compress::{make_plan, train_data, CompressOptions, Plan};
use nerp::data::{self, DataSource, Preprocess, Split};
use nerp::format::quant::ScaleRule;
use nerp::format::{DType, NerpFile, SectionKind, WeightDtype};
use nerp::runtime::regen::WeightTensor;
use nerp::{compress::train, eval, eval::baselines, ingest, runtime, Error, Result};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Measure the baselines and nerp; write OUT/points.json, sweep.md, sweep.svg.
    Run {
        #[arg(long, default_value = "../shared/models/resnet20_fashion_mnist.onnx")]
        model: PathBuf,
        #[arg(long, default_value = "docs/results/resnet20")]
        out: PathBuf,
        #[arg(long, value_delimiter = ',', default_value = "64,96,128,180")]
        hidden: Vec<usize>,
        #[arg(long, default_value_t = 3000)]
        steps: usize,
        /// Test images (default: all).
        #[arg(long)]
        limit: Option<usize>,
        #[arg(long, default_value_t = 2)]
        threads: usize,
        #[arg(long, default_value = "mean=0.286,std=0.353")]
        preprocess: String,
    },
    /// Evaluate NeRN reconstructions (JSON descriptions from tools/nern_baseline.py) and add them.
    Add {
        points: PathBuf,
        nern: Vec<PathBuf>,
        #[arg(long, default_value_t = 2)]
        threads: usize,
    },
    /// Rewrite sweep.md and sweep.svg from points.json.
    Render { points: PathBuf },
    /// Write the kernels nerp predicts, in its layer order (metadata `order`), as safetensors
    /// for tools/nern_baseline.py.
    Kernels { model: PathBuf, out: PathBuf },
}

/// One measured configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Point {
    /// "original", "baseline", "nerp" or "nern".
    method: String,
    label: String,
    bytes: u64,
    accuracy: f64,
    #[serde(default)]
    params: Option<usize>,
    #[serde(default)]
    train_seconds: Option<f64>,
    #[serde(default)]
    steps: Option<usize>,
    #[serde(default)]
    pareto: bool,
}

/// Everything a sweep measured, with how.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Sweep {
    model: String,
    /// Bytes of the fp32 ONNX file (ratio reference).
    fp32_bytes: u64,
    images: usize,
    command: String,
    machine: String,
    /// Bytes of a nerp file other than the predictor and the per-filter scales (skeleton, raw
    /// tensors, permutations): what a NeRN file would hold besides its predictor.
    rest_bytes: u64,
    preprocess: String,
    points: Vec<Point>,
}

/// A NeRN reconstruction written by tools/nern_baseline.py.
#[derive(Debug, Deserialize)]
struct NernRun {
    label: String,
    /// Safetensors with the reconstructed kernels (relative to the JSON file).
    weights: PathBuf,
    params: usize,
    /// Bytes per stored predictor parameter (4: f32, 2: f16).
    bytes_per_param: usize,
    train_seconds: f64,
    steps: usize,
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("Error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Run { model, out, hidden, steps, limit, threads, preprocess } => {
            let sweep = measure(&model, &hidden, steps, limit, threads, &preprocess)?;
            std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, "creating", e))?;
            save(&out.join("points.json"), sweep)
        }
        Cmd::Add { points, nern, threads } => {
            let mut sweep = load(&points)?;
            let model = ingest::load(Path::new(&sweep.model))?;
            let pre = Preprocess::parse(&sweep.preprocess)?;
            let data = data::load(&DataSource::FashionMnist(None), Split::Test, Some(sweep.images), &pre)?;
            for path in &nern {
                let p = nern_point(&model, &sweep, path, &data, threads)?;
                println!("{} {} bytes {:.2}%", p.label, p.bytes, 100.0 * p.accuracy);
                sweep.points.retain(|q| q.label != p.label);
                sweep.points.push(p);
            }
            save(&points, sweep)
        }
        Cmd::Render { points } => save(&points, load(&points)?),
        Cmd::Kernels { model, out } => export_kernels(&model, &out),
    }
}

fn export_kernels(path: &Path, out: &Path) -> Result<()> {
    let model = ingest::load(path)?;
    let Plan { layers: plans, values, .. } = make_plan(&model, &CompressOptions::default())?;
    let tensors: Vec<(&str, Vec<usize>, Vec<u8>)> = plans
        .iter()
        .zip(&values)
        .map(|(p, v)| {
            let t = &model.tensors[p.tensor];
            (
                t.name.as_str(),
                t.shape.iter().map(|&d| d as usize).collect(),
                v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            )
        })
        .collect();
    let views = tensors
        .iter()
        .map(|(name, shape, data)| {
            let view = safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), data)
                .map_err(|e| Error::Rebuild(format!("{name}: {e}")))?;
            Ok((name.to_string(), view))
        })
        .collect::<Result<Vec<_>>>()?;
    let order = tensors.iter().map(|t| t.0).collect::<Vec<_>>().join("\n");
    let meta = std::collections::HashMap::from([("order".to_string(), order)]);
    let bytes = safetensors::serialize(views, Some(meta)).map_err(|e| Error::Rebuild(e.to_string()))?;
    nerp::format::write_atomic(out, &bytes)?;
    println!("wrote {} ({} kernels tensors)", out.display(), tensors.len());
    Ok(())
}

fn load(path: &Path) -> Result<Sweep> {
    let s = std::fs::read_to_string(path).map_err(|e| Error::io(path, "reading", e))?;
    serde_json::from_str(&s).map_err(|e| Error::usage("points", format!("{}: {e}", path.display())))
}

/// Marks the Pareto front, writes points.json and the table and plot next to it.
fn save(path: &Path, mut sweep: Sweep) -> Result<()> {
    mark_pareto(&mut sweep.points);
    let dir = nerp::format::write::parent_dir(path);
    let json = serde_json::to_string_pretty(&sweep).expect("serializes");
    nerp::format::write_atomic(path, json.as_bytes())?;
    nerp::format::write_atomic(&dir.join("sweep.md"), table(&sweep).as_bytes())?;
    nerp::format::write_atomic(&dir.join("sweep.svg"), plot(&sweep, None).as_bytes())?;
    let orig = sweep.points.iter().find(|p| p.method == "original").map_or(0.0, |p| p.accuracy);
    nerp::format::write_atomic(&dir.join("sweep-top.svg"), plot(&sweep, Some(orig - 0.05)).as_bytes())?;
    println!("wrote {}, sweep.md, sweep.svg, sweep-top.svg", path.display());
    Ok(())
}

fn accuracy(model: &runtime::Model, data: &data::Dataset, threads: usize) -> Result<f64> {
    Ok(eval::evaluate(model, None, data, threads, &|_| {})?.regenerated_accuracy)
}

fn accuracy_of(
    model: &ingest::SourceModel,
    weights: &[WeightTensor],
    data: &data::Dataset,
    threads: usize,
) -> Result<f64> {
    let skeleton = model.skeleton.as_deref().expect("ONNX source");
    accuracy(&runtime::Model::from_proto(&runtime::patch_skeleton(skeleton, weights)?)?, data, threads)
}

fn measure(
    path: &Path,
    hidden: &[usize],
    steps: usize,
    limit: Option<usize>,
    threads: usize,
    preprocess: &str,
) -> Result<Sweep> {
    let model = ingest::load(path)?;
    let pre = Preprocess::parse(preprocess)?;
    let data = data::load(&DataSource::FashionMnist(None), Split::Test, limit, &pre)?;
    let fp32 = model.file_bytes;
    let mut points = Vec::new();
    let add = |points: &mut Vec<Point>, method: &str, label: String, bytes: u64, accuracy: f64| {
        println!(
            "{method:9} {label:36} {bytes:>9} B  {:5.3}x  {:.2}%",
            bytes as f64 / fp32 as f64,
            100.0 * accuracy
        );
        points.push(Point {
            method: method.into(),
            label,
            bytes,
            accuracy,
            params: None,
            train_seconds: None,
            steps: None,
            pareto: false,
        });
    };
    let original = accuracy(&runtime::Model::from_onnx_file(path)?, &data, threads)?;
    add(&mut points, "original", "fp32 ONNX".into(), fp32, original);
    let lossless = baselines::zstd_lossless(&model)?;
    add(&mut points, "baseline", lossless.name.into(), lossless.bytes, original);
    for b in [
        baselines::half_weights(&model, DType::F16)?,
        baselines::half_weights(&model, DType::Bf16)?,
        baselines::int8_per_channel(&model)?,
        baselines::int_per_channel(&model, 4, ScaleRule::default())?,
        baselines::int_per_channel(&model, 3, ScaleRule::default())?,
    ] {
        let acc = accuracy_of(&model, &b.weights, &data, threads)?;
        add(&mut points, "baseline", b.name.into(), b.bytes, acc);
    }
    let mut rest_bytes = 0;
    for &h in hidden {
        let opts = CompressOptions { hidden: Some(h), steps, ..Default::default() };
        opts.validate()?;
        let Plan { layers: plans, values, .. } = make_plan(&model, &opts)?;
        let start = Instant::now();
        let (trained, _) = train::train(
            &opts.train_config(h),
            &train_data(&plans, &values),
            None,
            &Device::Cpu,
            &mut |_, _| {},
        )?;
        let seconds = start.elapsed().as_secs_f64();
        for dtype in [WeightDtype::F32, WeightDtype::F16, WeightDtype::Bf16] {
            let opts = CompressOptions { predictor_dtype: dtype, ..opts.clone() };
            let p = trained.rounded(dtype)?;
            let bytes = nerp::compress::build_file(&model, &plans, &values, Some(&p), &opts)?.bytes;
            let file = NerpFile::from_bytes(bytes, format!("h{h}.nerp"))?;
            rest_bytes = rest_of(&file);
            let acc = accuracy(&runtime::Model::from_file(&file, &nerp::Device::Cpu)?, &data, threads)?;
            let label = format!("nerp h={h} {}", dtype_name(dtype));
            let params = nerp::predictor::param_count(h, opts.embedding.levels as usize);
            add(&mut points, "nerp", label, file.file_len(), acc);
            let last = points.last_mut().expect("just added");
            (last.params, last.train_seconds, last.steps) = (Some(params), Some(seconds), Some(steps));
        }
    }
    let command = format!(
        "cargo run --release --example sweep -- run --model {} --hidden {} --steps {steps}{}",
        path.display(),
        hidden.iter().map(|h| h.to_string()).collect::<Vec<_>>().join(","),
        limit.map(|l| format!(" --limit {l}")).unwrap_or_default()
    );
    Ok(Sweep {
        model: path.display().to_string(),
        fp32_bytes: fp32,
        images: data.len(),
        command,
        machine: machine(),
        rest_bytes,
        preprocess: preprocess.into(),
        points,
    })
}

/// File bytes other than the predictor and scales sections.
fn rest_of(file: &NerpFile) -> u64 {
    let h = file.header();
    let skip: u64 = h
        .sections
        .iter()
        .filter(|s| matches!(s.kind, SectionKind::Predictor | SectionKind::Scales))
        .map(|s| s.length)
        .sum();
    file.file_len() - skip
}

fn nern_point(
    model: &ingest::SourceModel,
    sweep: &Sweep,
    path: &Path,
    data: &data::Dataset,
    threads: usize,
) -> Result<Point> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, "reading", e))?;
    let run: NernRun =
        serde_json::from_str(&text).map_err(|e| Error::usage("nern", format!("{}: {e}", path.display())))?;
    let st = ingest::load(&nerp::format::write::parent_dir(path).join(&run.weights))?;
    let mut weights = baselines::original_weights(model);
    let mut replaced = 0;
    for w in weights.iter_mut() {
        if let Some(t) = st.tensors.iter().find(|t| t.name == w.name) {
            if t.shape != w.shape || t.dtype != w.dtype {
                return Err(Error::usage(
                    "nern",
                    format!("tensor {} has shape {:?} {:?}", t.name, t.shape, t.dtype),
                ));
            }
            w.data = t.data.clone();
            replaced += 1;
        }
    }
    println!("{}: {replaced} tensors replaced", run.label);
    let acc = accuracy_of(model, &weights, data, threads)?;
    Ok(Point {
        method: "nern".into(),
        label: run.label,
        bytes: sweep.rest_bytes + (run.params * run.bytes_per_param) as u64,
        accuracy: acc,
        params: Some(run.params),
        train_seconds: Some(run.train_seconds),
        steps: Some(run.steps),
        pareto: false,
    })
}

fn dtype_name(d: WeightDtype) -> &'static str {
    d.name()
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{cpu}, {cores} cores")
}

/// A point is on the front when no other point is at most as large and at least as accurate,
/// and strictly better in one of the two.
fn mark_pareto(points: &mut [Point]) {
    let all: Vec<(u64, f64)> = points.iter().map(|p| (p.bytes, p.accuracy)).collect();
    for p in points.iter_mut() {
        p.pareto =
            !all.iter().any(|&(b, a)| b <= p.bytes && a >= p.accuracy && (b < p.bytes || a > p.accuracy));
    }
}

fn sorted(sweep: &Sweep) -> Vec<&Point> {
    let mut v: Vec<&Point> = sweep.points.iter().collect();
    v.sort_by_key(|p| p.bytes);
    v
}

fn table(s: &Sweep) -> String {
    let orig = s.points.iter().find(|p| p.method == "original").map_or(f64::NAN, |p| p.accuracy);
    let mut t = format!(
        "# Size vs accuracy: {}\n\nTop-1 on the {} Fashion-MNIST test images; size = bytes on disk ÷ the fp32 ONNX file \
         ({} bytes). ★ = Pareto front (no other point is both smaller and at least as accurate).\n\n\
         Command: `{}`\n\nMachine: {} (shared with other jobs; times are indicative).\n\n\
         | method | configuration | bytes | size ratio | compression | top-1 | Δ vs fp32 (points) | predictor params | steps | train s | front |\n\
         |---|---|---:|---:|---:|---:|---:|---:|---:|---:|:-:|\n",
        s.model, s.images, s.fp32_bytes, s.command, s.machine
    );
    for p in sorted(s) {
        let ratio = p.bytes as f64 / s.fp32_bytes as f64;
        t += &format!(
            "| {} | {} | {} | {:.3} | {:.1}× | {:.2}% | {:+.2} | {} | {} | {} | {} |\n",
            p.method,
            p.label,
            p.bytes,
            ratio,
            1.0 / ratio,
            100.0 * p.accuracy,
            100.0 * (p.accuracy - orig),
            p.params.map(|n| n.to_string()).unwrap_or_default(),
            p.steps.map(|n| n.to_string()).unwrap_or_default(),
            p.train_seconds.map(|x| format!("{x:.0}")).unwrap_or_default(),
            if p.pareto { "★" } else { "" }
        );
    }
    t + "\nnerp: trained once per width, the predictor then stored in each dtype. \
         NeRN: tools/nern_baseline.py (PyTorch, 1 thread; commands in the README, \"Results: size vs accuracy\"), \
         added with `sweep add`; its bytes = this nerp file without the predictor and \
         scales sections (skeleton, raw tensors, permutations) + its parameters at 4 or 2 bytes. \
         int8: per-output-channel symmetric, int8 values + one f32 scale per channel + the rest of the ONNX file \
         as stored; evaluated dequantized. \"train s\": wall time of the training loop, under the machine's \
         load at that moment.\n"
}

/// A hand-written SVG: size ratio (log scale) against top-1, the front as a step line; with
/// `floor`, only the points at or above that accuracy (a zoom on the top).
fn plot(s: &Sweep, floor: Option<f64>) -> String {
    let (w, h, ml, mr, mt, mb) = (760.0, 480.0, 70.0, 190.0, 30.0, 50.0);
    let pts: Vec<&Point> = sorted(s).into_iter().filter(|p| floor.is_none_or(|f| p.accuracy >= f)).collect();
    let ratio = |p: &Point| p.bytes as f64 / s.fp32_bytes as f64;
    let (xmin, xmax) = (pts.iter().map(|p| ratio(p)).fold(1.0, f64::min) * 0.8, 1.2f64);
    let acc_min = pts.iter().map(|p| p.accuracy).fold(1.0, f64::min);
    let acc_max = pts.iter().map(|p| p.accuracy).fold(0.0, f64::max);
    let span = (acc_max - acc_min) * 100.0;
    let tick = [0.5, 1.0, 2.0, 5.0, 10.0, 20.0].into_iter().find(|t| span / t <= 8.0).unwrap_or(20.0);
    let ymin = (acc_min * 100.0 / tick).floor() * tick / 100.0;
    let ymax = ((acc_max * 100.0 / tick).floor() + 1.0) * tick / 100.0;
    let x = |r: f64| ml + (r.ln() - xmin.ln()) / (xmax.ln() - xmin.ln()) * (w - ml - mr);
    let y = |a: f64| mt + (ymax - a) / (ymax - ymin) * (h - mt - mb);
    let color = |m: &str| match m {
        "nerp" => "#1f77b4",
        "nern" => "#d62728",
        "baseline" => "#2ca02c",
        _ => "#444444",
    };
    let mut o = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"11\">\n\
         <rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
    );
    let (x0, x1, y0, y1) = (ml, w - mr, mt, h - mb);
    let name = Path::new(&s.model).file_stem().map_or(s.model.clone(), |n| n.to_string_lossy().into_owned());
    let zoom = if floor.is_some() { ", within 5 points of fp32" } else { "" };
    o += &format!("<text x=\"{x0}\" y=\"18\" font-size=\"13\">{name}: size vs top-1{zoom}</text>\n");
    o += &format!(
        "<rect x=\"{x0}\" y=\"{y0}\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#888\"/>\n",
        x1 - x0,
        y1 - y0
    );
    for r in [0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0] {
        if r >= xmin && r <= xmax {
            let xr = x(r);
            o += &format!("<line x1=\"{xr:.1}\" y1=\"{y0}\" x2=\"{xr:.1}\" y2=\"{y1}\" stroke=\"#eee\"/>\n");
            o += &format!("<text x=\"{xr:.1}\" y=\"{}\" text-anchor=\"middle\">{r}</text>\n", y1 + 15.0);
        }
    }
    for k in 0..=((ymax - ymin) * 100.0 / tick).round() as usize {
        let a = ymin + k as f64 * tick / 100.0;
        let ya = y(a);
        o += &format!("<line x1=\"{x0}\" y1=\"{ya:.1}\" x2=\"{x1}\" y2=\"{ya:.1}\" stroke=\"#eee\"/>\n");
        o += &format!(
            "<text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{:.*}%</text>\n",
            x0 - 5.0,
            ya + 4.0,
            usize::from(tick < 1.0),
            a * 100.0
        );
    }
    o += &format!(
        "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">bytes on disk ÷ fp32 ONNX file (log scale)</text>\n",
        (x0 + x1) / 2.0,
        h - 12.0
    );
    o += &format!(
        "<text x=\"16\" y=\"{}\" text-anchor=\"middle\" transform=\"rotate(-90 16 {})\">top-1 accuracy ({} images)</text>\n",
        (y0 + y1) / 2.0,
        (y0 + y1) / 2.0,
        s.images
    );
    let front: Vec<&&Point> = pts.iter().filter(|p| p.pareto).collect();
    let mut path = String::new();
    for (i, p) in front.iter().enumerate() {
        let (px, py) = (x(ratio(p)), y(p.accuracy));
        path += &if i == 0 { format!("M{px:.1},{py:.1}") } else { format!(" H{px:.1} V{py:.1}") };
    }
    o += &format!("<path d=\"{path}\" fill=\"none\" stroke=\"#ff7f0e\" stroke-width=\"1.5\" stroke-dasharray=\"4 3\"/>\n");
    for p in &pts {
        let (px, py) = (x(ratio(p)), y(p.accuracy));
        let stroke = if p.pareto { " stroke=\"#ff7f0e\" stroke-width=\"2\"" } else { "" };
        o += &format!(
            "<circle cx=\"{px:.1}\" cy=\"{py:.1}\" r=\"4\" fill=\"{}\"{stroke}><title>{} — {} bytes, {:.2}%</title></circle>\n",
            color(&p.method),
            p.label,
            p.bytes,
            100.0 * p.accuracy
        );
    }
    let mut ly = mt + 10.0;
    for (m, name) in [
        ("original", "fp32 original"),
        ("baseline", "baselines"),
        ("nerp", "nerp"),
        ("nern", "NeRN (PyTorch)"),
    ] {
        o += &format!("<circle cx=\"{}\" cy=\"{ly}\" r=\"4\" fill=\"{}\"/>\n", x1 + 15.0, color(m));
        o += &format!("<text x=\"{}\" y=\"{}\">{name}</text>\n", x1 + 25.0, ly + 4.0);
        ly += 16.0;
    }
    o += &format!(
        "<line x1=\"{}\" y1=\"{ly}\" x2=\"{}\" y2=\"{ly}\" stroke=\"#ff7f0e\" stroke-dasharray=\"4 3\"/><text x=\"{}\" y=\"{}\">Pareto front</text>\n",
        x1 + 8.0,
        x1 + 22.0,
        x1 + 25.0,
        ly + 4.0
    );
    ly += 24.0;
    for (i, p) in pts.iter().filter(|p| p.pareto).enumerate() {
        o += &format!(
            "<text x=\"{}\" y=\"{}\" fill=\"#555\">★ {}</text>\n",
            x1 + 8.0,
            ly + 14.0 * i as f64,
            p.label
        );
    }
    o + "</svg>\n"
}
