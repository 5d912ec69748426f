//! Layout and load cost of a `.nerp` file next to loading the original ONNX into tract, in one
//! process: header and section sizes, then the median of 7 runs of open (mmap + full
//! validation), regenerate (CPU), and building the runnable tract model.
//!
//! `cargo run --release --example load_report -- MODEL.nerp ORIGINAL.onnx`

use std::path::PathBuf;
use std::time::Instant;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn time<T>(f: impl Fn() -> nerp::Result<T>) -> nerp::Result<f64> {
    let mut v = Vec::new();
    for _ in 0..7 {
        let t = Instant::now();
        f()?;
        v.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(median(v))
}

fn main() -> nerp::Result<()> {
    let args: Vec<PathBuf> = std::env::args().skip(1).map(PathBuf::from).collect();
    let (nerp_path, onnx) = (&args[0], &args[1]);
    let file = nerp::open(nerp_path)?;
    let h = file.header();
    println!(
        "{}: {} bytes; preamble 32, header {} bytes, data section at {}",
        nerp_path.display(),
        file.file_len(),
        file.data_offset() - 32,
        file.data_offset()
    );
    let mut by_kind = std::collections::BTreeMap::<&str, (usize, u64)>::new();
    for s in &h.sections {
        let e = by_kind.entry(s.kind.name()).or_default();
        e.0 += 1;
        e.1 += s.length;
    }
    println!("| section kind | count | stored bytes |\n|---|---|---|");
    for (k, (n, b)) in by_kind {
        println!("| {k} | {n} | {b} |");
    }
    let cpu = nerp::Device::Cpu;
    let open = time(|| nerp::open(nerp_path))?;
    let regen = time(|| nerp::runtime::regen::regenerate(&file, &cpu))?;
    let weights = nerp::runtime::regen::regenerate(&file, &cpu)?;
    let build = time(|| nerp::runtime::Model::from_proto(&nerp::runtime::rebuild_onnx(&file, &weights)?))?;
    let total = time(|| nerp::load_model(nerp_path, &cpu))?;
    let original = time(|| nerp::runtime::Model::from_onnx_file(onnx))?;
    println!("| step (median of 7, CPU, 1 process) | ms |\n|---|---|");
    println!("| open: mmap + full validation | {open:.2} |");
    println!("| regenerate all weights | {regen:.2} |");
    println!("| rebuild ONNX + tract optimize | {build:.2} |");
    println!("| load_model (all of the above) | {total:.2} |");
    println!("| original ONNX → tract (same steps) | {original:.2} |");
    println!("| ratio nerp ÷ original | {:.2} |", total / original);
    Ok(())
}
