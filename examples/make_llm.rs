//! Writes a safetensors file with the tensor names, shapes and dtype of a decoder LLM (Qwen2
//! and Llama layouts; random weights from a fixed seed, a few outlier input channels per matrix) and its
//! `config.json`, streaming, and `tokens.npy` (random token ids, the calibration inputs of
//! `nerp compress --calibration-inputs`), and prints its size and the time taken.
//!
//! ```sh
//! cargo run --release --example make_llm -- --layout qwen2-0.5b --out /tmp/qwen2-0.5b
//! cargo run --release --example make_llm -- --layout qwen2-0.5b --out /tmp/q4 --layers 4 --seed 1
//! cargo run --release --example make_llm -- --out /tmp/tiny --layers 2 --hidden 128 --intermediate 256 --heads 4 --kv-heads 2 --vocab 1000
//! ```
//! Options: `--layout qwen2-0.5b|qwen2-1.5b|tinyllama-1.1b` (default qwen2-0.5b), then any of `--layers`,
//! `--hidden`, `--intermediate`, `--heads`, `--kv-heads`, `--vocab` to change it; `--seed S`
//! (0); `--dtype f16|bf16|f32` (f16); `--outliers N` outlier input channels per matrix (4; 0:
//! none) and `--outlier-factor LO,HI` their factors (10,50); `--tokens N,LEN` sequences of
//! token ids and their length (16,64).

use nerp::format::DType;
use nerp::synth::{write_llm, write_tokens, LlmLayout, LlmValues};
use std::path::PathBuf;
use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mut layout = LlmLayout::QWEN2_0_5B;
    let (mut out, mut values, mut dtype) = (None, LlmValues::default(), DType::F16);
    let mut tokens = (16usize, 64usize);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = || value.parse::<usize>().map_err(|e| format!("{flag} {value}: {e}"));
        match flag.as_str() {
            "--layout" => {
                layout = LlmLayout::named(&value).ok_or_else(|| {
                    let names: Vec<_> = LlmLayout::NAMED.iter().map(|(n, _)| *n).collect();
                    format!("--layout {value}: not one of {}", names.join(", "))
                })?
            }
            "--out" => out = Some(PathBuf::from(value)),
            "--tokens" => {
                let bad = || format!("--tokens {value}: expected N,LEN");
                let (n, len) = value.split_once(',').ok_or_else(bad)?;
                tokens = (n.parse().map_err(|_| bad())?, len.parse().map_err(|_| bad())?);
            }
            "--layers" => layout.layers = number()?,
            "--hidden" => layout.hidden = number()?,
            "--intermediate" => layout.intermediate = number()?,
            "--heads" => layout.heads = number()?,
            "--kv-heads" => layout.kv_heads = number()?,
            "--vocab" => layout.vocab = number()?,
            "--seed" => values.seed = value.parse().map_err(|e| format!("--seed {value}: {e}"))?,
            "--outliers" => values.outlier_columns = number()?,
            "--outlier-factor" => {
                let bad = || format!("--outlier-factor {value}: expected LO,HI");
                let (lo, hi) = value.split_once(',').ok_or_else(bad)?;
                values.outlier_factor = (lo.parse().map_err(|_| bad())?, hi.parse().map_err(|_| bad())?);
            }
            "--dtype" => {
                dtype = match value.as_str() {
                    "f16" => DType::F16,
                    "bf16" => DType::Bf16,
                    "f32" => DType::F32,
                    _ => return Err(format!("--dtype {value}: not f16, bf16 or f32").into()),
                }
            }
            _ => return Err(format!("unknown option {flag} (see the example's documentation)").into()),
        }
    }
    let out = out.ok_or("--out DIR is required")?;
    let start = Instant::now();
    let files = write_llm(&layout, dtype, &values, &out)?;
    let ids = out.join("tokens.npy");
    write_tokens(&ids, tokens.0, tokens.1, layout.vocab, values.seed)?;
    println!(
        "{}: {} parameters, {} bytes ({:.1} MB) as {dtype:?}, {values:?}, in {:.1} s; config {}; {} x {} token ids {}",
        files.model.display(),
        files.parameters,
        files.bytes,
        files.bytes as f64 / 1e6,
        start.elapsed().as_secs_f64(),
        files.config.display(),
        tokens.0,
        tokens.1,
        ids.display()
    );
    Ok(())
}
