//! A decoder LLM (Qwen2 layout) from `.nerp` files through candle-transformers' Qwen2: the
//! logits of a fixed 64-token prompt at every position against the original model's
//! (relative error, top-1 agreement), the same for reference codecs applied to the original
//! weights (int8 per row, int4 in groups of 128 along the input dimension, rounded to nearest),
//! a greedy continuation, and the tokens/s of the original and the regenerated models.
//!
//! ```sh
//! cargo run --release --example make_llm -- --layout qwen2-0.5b --out /tmp/qwen2-0.5b
//! cargo run --release -- compress /tmp/qwen2-0.5b/model.safetensors -o /tmp/qwen2-0.5b/m.nerp --exclude '*'
//! cargo run --release --example llm_candle -- /tmp/qwen2-0.5b [/tmp/qwen2-0.5b/m.nerp]… [--decode 16] [--no-references]
//! ```
//! `DIR` holds `model.safetensors` and `config.json` (what `make_llm` writes, or a Hugging Face
//! Qwen2 checkpoint of one file). Everything runs on the CPU in f32.

mod qwen;

use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use qwen::{BoxResult, Reference};
use std::path::PathBuf;
use std::time::Instant;

/// One row of the table.
struct Row {
    name: String,
    bytes: u64,
    weight_error: f64,
    rel_error: f64,
    top1: f64,
    same_tokens: usize,
    speed: Option<(f64, f64)>,
}

fn main() -> BoxResult<()> {
    let (mut dir, mut nerps, mut decode, mut references) = (None, Vec::new(), 16usize, true);
    let mut args = std::env::args_os().skip(1);
    while let Some(a) = args.next() {
        match a.to_str() {
            Some("--decode") => {
                let v = args.next().ok_or("--decode needs a number of steps")?;
                decode = v.to_string_lossy().parse().map_err(|e| format!("--decode: {e}"))?;
            }
            Some("--no-references") => references = false,
            _ if dir.is_none() => dir = Some(PathBuf::from(a)),
            _ => nerps.push(PathBuf::from(a)),
        }
    }
    let dir = dir.ok_or("usage: llm_candle DIR [FILE.nerp]… [--decode N] [--no-references]")?;
    let (source, config) = (dir.join("model.safetensors"), dir.join("config.json"));
    let cfg = qwen::config(&config)?;
    let prompt = qwen::prompt(cfg.vocab_size);
    let cpu = Device::Cpu;

    let start = Instant::now();
    let original = qwen::load_f32(&source)?;
    let load_s = start.elapsed().as_secs_f64();
    let source_bytes = std::fs::metadata(&source)?.len();
    let params: usize = original.values().map(|t| t.elem_count()).sum();
    // Bytes per value of the source (all floats of one dtype in these checkpoints).
    let source_size = ((source_bytes as f64 / params as f64).round() as usize).max(1);
    let vb = VarBuilder::from_tensors(original.clone(), DType::F32, &cpu);
    let want = qwen::all_logits(&vb, &cfg, &prompt)?;
    let reference = qwen::generate(&vb, &cfg, &prompt, decode)?;
    drop(vb);
    let last = want.get(prompt.len() - 1)?.to_vec1::<f32>()?;
    let gap = last.iter().zip(&reference.last_logits).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    println!(
        "{}: {params} parameters, {source_bytes} bytes; {}-token prompt (token i = (1000 + 7919 i) mod {}), \
         {decode} greedy decode steps; candle CPU f32; loaded in {load_s:.1} s",
        source.display(),
        prompt.len(),
        cfg.vocab_size
    );
    println!(
        "check: last-position logits of the body + head vs ModelForCausalLM differ by at most {gap:.2e}"
    );
    println!("original greedy continuation: {:?}", reference.tokens);
    let speed =
        |g: &qwen::Generation| (prompt.len() as f64 / g.prefill_s, decode as f64 / g.decode_s.max(1e-9));
    let mut rows = vec![Row {
        name: "original".into(),
        bytes: source_bytes,
        weight_error: 0.0,
        rel_error: 0.0,
        top1: 1.0,
        same_tokens: reference.tokens.len(),
        speed: Some(speed(&reference)),
    }];
    let same =
        |g: &qwen::Generation| g.tokens.iter().zip(&reference.tokens).take_while(|(a, b)| a == b).count();

    for path in &nerps {
        let start = Instant::now();
        let file = nerp::open(path)?;
        let vb = nerp::runtime::candle::var_builder(&file, &nerp::Device::Cpu, &cpu, DType::F32)?;
        let regen_s = start.elapsed().as_secs_f64();
        let (rel_error, top1) = qwen::compare(&want, &qwen::all_logits(&vb, &cfg, &prompt)?)?;
        let weight_error = qwen::weight_error(&original, &vb)?;
        let g = qwen::generate(&vb, &cfg, &prompt, decode)?;
        println!("{}: opened and regenerated in {regen_s:.1} s", path.display());
        let name = path.file_name().map_or("nerp".into(), |n| n.to_string_lossy().into_owned());
        let speed = Some(speed(&g));
        let bytes = file.file_len();
        rows.push(Row { name, bytes, weight_error, rel_error, top1, same_tokens: same(&g), speed });
    }
    if references {
        let int4 = Reference::Int4Groups { group: 128, zero_point: true };
        let int4_sym = Reference::Int4Groups { group: 128, zero_point: false };
        for (r, keep_embedding) in
            [(Reference::Int8Rows, false), (int4, false), (int4_sym, false), (int4, true)]
        {
            let (weights, bytes) = r.apply(&original, source_size, keep_embedding)?;
            let vb = VarBuilder::from_tensors(weights, DType::F32, &cpu);
            let (rel_error, top1) = qwen::compare(&want, &qwen::all_logits(&vb, &cfg, &prompt)?)?;
            let weight_error = qwen::weight_error(&original, &vb)?;
            let g = qwen::generate(&vb, &cfg, &prompt, decode)?;
            let name = if keep_embedding { format!("{}, embedding kept", r.name()) } else { r.name() };
            rows.push(Row { name, bytes, weight_error, rel_error, top1, same_tokens: same(&g), speed: None });
        }
    }

    println!(
        "\n| model | bytes | vs source | weight rel. error | logits rel. error | top-1 agreement | greedy tokens as original | prefill tok/s | decode tok/s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        let (p, d) =
            r.speed.map_or(("–".into(), "–".into()), |(p, d)| (format!("{p:.1}"), format!("{d:.2}")));
        println!(
            "| {} | {} | {:.2}× | {:.4} | {:.4} | {:.3} | {}/{} | {p} | {d} |",
            r.name,
            r.bytes,
            source_bytes as f64 / r.bytes as f64,
            r.weight_error,
            r.rel_error,
            r.top1,
            r.same_tokens,
            reference.tokens.len()
        );
    }
    println!(
        "\nreference codecs: bytes are what they would store (codes, f16 scales, 4-bit zero points; \
         vectors at the source's {source_size} bytes per value); tok/s are measured for the original \
         and the .nerp models only (the references compute exactly as the original)"
    );
    Ok(())
}
