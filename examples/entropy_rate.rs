//! Measures the entropy coder (`nerp::format::entropy`): bits per code against the order-0
//! entropy of the same codes and against zstd -19 of the packed int8 codes (what nerp stores
//! today), on (a) i.i.d. Laplacian and Gaussian codes and (b) the conv kernels of a
//! safetensors model quantized uniformly with one step size per tensor, chosen (by bisection)
//! so that each tensor's codes have the target order-0 entropy; then encode and decode speed.
//! Usage: `cargo run --release --example entropy_rate -- [MODEL.safetensors]` (default: the
//! shared ResNet-20, or its copy in examples/models). Speeds are per core: thread CPU time (the machine may be shared) and
//! wall time, best of 5. Results: docs/results/entropy_coder.md.

use nerp::format::entropy;
use std::collections::HashMap;
use std::time::Instant;

/// Order-0 entropy of `codes`, in bits (total).
fn entropy_bits(codes: &[i32]) -> f64 {
    let mut counts = HashMap::new();
    for &c in codes {
        *counts.entry(c).or_insert(0usize) += 1;
    }
    let n = codes.len() as f64;
    counts.values().map(|&k| -(k as f64) * (k as f64 / n).log2()).sum()
}

/// zstd -19 of the codes as int8 (nerp's int8 storage without the scales).
fn zstd_int8_bytes(codes: &[i32]) -> usize {
    let packed: Vec<u8> = codes.iter().map(|&c| c.clamp(-127, 127) as i8 as u8).collect();
    zstd::encode_all(&packed[..], 19).expect("in-memory zstd").len()
}

/// splitmix64 uniforms in (0, 1).
struct Rng(u64);

impl Rng {
    fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        (((z ^ (z >> 31)) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }
}

fn laplace(n: usize, scale: f64, seed: u64) -> Vec<i32> {
    let mut r = Rng(seed);
    (0..n)
        .map(|_| {
            let u = r.uniform() - 0.5;
            (-scale * u.signum() * (1.0 - 2.0 * u.abs()).ln()).round() as i32
        })
        .collect()
}

fn gauss(n: usize, sigma: f64, seed: u64) -> Vec<i32> {
    let mut r = Rng(seed);
    (0..n)
        .map(|_| {
            let (u, v) = (r.uniform(), r.uniform());
            (sigma * (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()).round() as i32
        })
        .collect()
}

fn quantize(w: &[f32], step: f32) -> Vec<i32> {
    w.iter().map(|&x| (x / step).round() as i32).collect()
}

/// The codes of `w` under the step size whose order-0 entropy is `target` bits per code.
fn codes_at(w: &[f32], target: f64) -> Vec<i32> {
    let max = w.iter().fold(0f32, |a, v| a.max(v.abs()));
    let (mut lo, mut hi) = (max / 30_000.0, max * 2.0);
    for _ in 0..60 {
        let mid = (lo * hi).sqrt();
        if entropy_bits(&quantize(w, mid)) / w.len() as f64 > target {
            lo = mid
        } else {
            hi = mid
        }
    }
    quantize(w, hi)
}

fn thread_cpu_seconds() -> f64 {
    let mut t = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    t.tv_sec as f64 + t.tv_nsec as f64 * 1e-9
}

/// Best of 5 of `f`: (thread CPU seconds, wall seconds).
fn best_of_5(mut f: impl FnMut()) -> (f64, f64) {
    let (mut cpu, mut wall) = (f64::MAX, f64::MAX);
    for _ in 0..5 {
        let (c, w) = (thread_cpu_seconds(), Instant::now());
        f();
        cpu = cpu.min(thread_cpu_seconds() - c);
        wall = wall.min(w.elapsed().as_secs_f64());
    }
    (cpu, wall)
}

/// One table row: (codes, order-0 bits, coder bytes, zstd bytes) summed over streams.
#[derive(Default)]
struct Sizes {
    codes: usize,
    entropy: f64,
    coder: usize,
    zstd: usize,
}

impl Sizes {
    fn add(&mut self, codes: &[i32], row: usize) {
        let bytes = entropy::encode(codes, row);
        let max_abs = codes.iter().map(|c| c.unsigned_abs()).max().unwrap_or(0);
        assert_eq!(entropy::decode(&bytes, codes.len(), row, max_abs).expect("decode"), codes);
        self.codes += codes.len();
        self.entropy += entropy_bits(codes);
        self.coder += bytes.len();
        self.zstd += zstd_int8_bytes(codes);
    }

    fn print(&self, name: &str) {
        let n = self.codes as f64;
        println!(
            "| {name} | {} | {:.4} | {:.4} | {:+.2}% | {:.4} | {:.3}× |",
            self.codes,
            self.entropy / n,
            self.coder as f64 * 8.0 / n,
            (self.coder as f64 * 8.0 / self.entropy - 1.0) * 100.0,
            self.zstd as f64 * 8.0 / n,
            self.zstd as f64 / self.coder as f64,
        );
    }
}

fn main() {
    let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let name = "resnet20_fashion_mnist.safetensors";
    let shared = root.join("../shared/models").join(name);
    let default = if shared.exists() { shared } else { root.join("examples/models").join(name) };
    let path = std::env::args().nth(1).map(Into::into).unwrap_or(default);
    let file = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let st = safetensors::SafeTensors::deserialize(&file).expect("safetensors");
    let mut kernels: Vec<(String, usize, Vec<f32>)> = st
        .tensors()
        .into_iter()
        .filter(|(_, t)| t.shape().len() == 4 && t.dtype() == safetensors::Dtype::F32)
        .map(|(name, t)| {
            let w: Vec<f32> =
                t.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
            (name, w.len() / t.shape()[0], w)
        })
        .collect();
    kernels.sort_by(|a, b| a.0.cmp(&b.0));

    println!("| codes | n | order-0 entropy (bits/code) | coder (bits/code) | vs entropy | zstd -19 int8 (bits/code) | zstd ÷ coder |");
    println!("|---|---|---|---|---|---|---|");
    let synthetic = [
        ("Laplacian, scale 0.3", laplace(1 << 20, 0.3, 1)),
        ("Laplacian, scale 1.5", laplace(1 << 20, 1.5, 2)),
        ("Laplacian, scale 12", laplace(1 << 20, 12.0, 3)),
        ("Gaussian, σ 2", gauss(1 << 20, 2.0, 4)),
    ];
    for (name, codes) in &synthetic {
        let mut s = Sizes::default();
        s.add(codes, 576);
        s.print(name);
    }
    let model = path.file_stem().map_or("model".into(), |s| s.to_string_lossy().into_owned());
    let mut at_2_bits = Vec::new();
    for target in [0.5, 1.0, 2.0, 3.0, 4.0] {
        let mut s = Sizes::default();
        for (_, row, w) in &kernels {
            let codes = codes_at(w, target);
            s.add(&codes, *row);
            if target == 2.0 {
                at_2_bits.push((codes, *row));
            }
        }
        s.print(&format!("{model}, {} kernels, {target} bits of entropy per tensor", kernels.len()));
    }

    println!("\n| codes | bits/code | decode M codes/s (CPU) | decode (wall) | encoded_len M/s (CPU) | encode M/s (CPU) |");
    println!("|---|---|---|---|---|---|");
    let speed = |name: &str, streams: &[(Vec<i32>, usize)]| {
        let n: usize = streams.iter().map(|(c, _)| c.len()).sum();
        let encoded: Vec<Vec<u8>> = streams.iter().map(|(c, row)| entropy::encode(c, *row)).collect();
        let bits = encoded.iter().map(Vec::len).sum::<usize>() as f64 * 8.0 / n as f64;
        let mut outs: Vec<Vec<i32>> = streams.iter().map(|(c, _)| vec![0; c.len()]).collect();
        let (dc, dw) = best_of_5(|| {
            for ((bytes, (_, row)), out) in encoded.iter().zip(streams).zip(&mut outs) {
                entropy::decode_into(bytes, *row, entropy::MAX_CODE, out).expect("decode");
            }
        });
        assert!(outs.iter().zip(streams).all(|(o, (c, _))| o == c));
        let (lc, _) = best_of_5(|| {
            for (c, row) in streams {
                std::hint::black_box(entropy::encoded_len(c, *row));
            }
        });
        let (ec, _) = best_of_5(|| {
            for (c, row) in streams {
                std::hint::black_box(entropy::encode(c, *row));
            }
        });
        let m = |s: f64| n as f64 / s / 1e6;
        println!("| {name} | {bits:.3} | {:.1} | {:.1} | {:.1} | {:.1} |", m(dc), m(dw), m(lc), m(ec));
    };
    for (name, codes) in &synthetic {
        speed(name, &[(codes.clone(), 576)]);
    }
    speed(&format!("{model} kernels at 2 bits"), &at_2_bits);
}
