//! Opening a `.nerp` file by reading it into an aligned buffer (`NerpFile::open`, the default
//! since issue 16) against memory-mapping it (`NerpFile::open_mapped`), both followed by the
//! full validation of the spec (every checksum, so every byte is touched). Interleaved runs in
//! one process, warm page cache; prints a Markdown table of medians.
//!
//! `cargo run --release --example open_read_vs_mmap [RUNS]`

use nerp::format::WeightDtype;
use nerp::NerpFile;
use std::path::{Path, PathBuf};
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn model(name: &str) -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let shared = root.join("../shared/models").join(name);
    if shared.exists() {
        shared
    } else {
        root.join("examples/models").join(name)
    }
}

fn cpu() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let name = info.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split(':').nth(1));
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("{} ({cores} cores)", name.unwrap_or("unknown CPU").trim())
}

fn main() -> nerp::Result<()> {
    let runs: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(101);
    let dir = tempfile::tempdir().expect("temporary folder");
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    for name in ["resnet20_fashion_mnist.onnx", "resnet56_fashion_mnist.onnx"] {
        let m = nerp::ingest::load(&model(name))?;
        let (bytes, _) = nerp::synth::untrained_file(&m, 180, WeightDtype::F16, 1)?;
        let p = dir.path().join(name.replace(".onnx", ".nerp"));
        std::fs::write(&p, bytes).expect("write");
        files.push((name.split('_').next().unwrap_or(name).into(), p));
    }
    let stack = dir.path().join("stack.safetensors");
    std::fs::write(&stack, nerp::synth::conv_stack_safetensors(256, 17, 1)?).expect("write");
    let (bytes, _) = nerp::synth::untrained_file(&nerp::ingest::load(&stack)?, 180, WeightDtype::F16, 1)?;
    let p = dir.path().join("conv_stack_10m.nerp");
    std::fs::write(&p, bytes).expect("write");
    files.push(("conv_stack_10m".into(), p));

    println!("device: {}; {runs} interleaved runs each, median, warm page cache", cpu());
    println!();
    println!("| file | bytes | read + validate (ms) | mmap + validate (ms) | read ÷ mmap |");
    println!("|---|---|---|---|---|");
    for (name, path) in &files {
        let open = |f: fn(&Path) -> nerp::Result<NerpFile>| -> nerp::Result<f64> {
            let t = Instant::now();
            std::hint::black_box(f(path)?);
            Ok(t.elapsed().as_secs_f64() * 1e3)
        };
        let (mut read, mut mapped) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            read.push(open(|p| NerpFile::open(p))?);
            mapped.push(open(|p| NerpFile::open_mapped(p))?);
        }
        let (r, m) = (median(read), median(mapped));
        let len = std::fs::metadata(path).expect("metadata").len();
        println!("| {name} | {len} | {r:.3} | {m:.3} | {:.2} |", r / m);
    }
    Ok(())
}
