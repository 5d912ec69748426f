//! A Qwen2-layout model through candle-transformers, shared by the `llm_candle` example and its
//! test: the fixed prompt, the logits at every position, greedy decoding with timings, the
//! comparison of two models' logits, and the reference codecs (int8 per row; int4 in groups of
//! 128 along the input dimension), rounded to nearest, applied to the original weights.
#![allow(dead_code)]

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::qwen2::{Config, Model, ModelForCausalLM};
use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

pub type BoxResult<T> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Length of the fixed prompt.
pub const PROMPT_TOKENS: usize = 64;

/// The fixed prompt: token `i` is `(1000 + 7919·i) mod vocab` (spread over the vocabulary; the
/// weights are random, so no text would mean more).
pub fn prompt(vocab: usize) -> Vec<u32> {
    (0..PROMPT_TOKENS).map(|i| ((1000 + 7919 * i) % vocab) as u32).collect()
}

/// The model's `config.json`.
pub fn config(path: &Path) -> BoxResult<Config> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?)
}

/// The tensors of a safetensors file as f32 on the CPU, read one at a time from the mapping
/// (what candle's own loader gives, widened to the compute dtype).
pub fn load_f32(path: &Path) -> BoxResult<HashMap<String, Tensor>> {
    // SAFETY (candle's requirement): the file is not modified while mapped.
    let st = unsafe { candle_core::safetensors::MmapedSafetensors::new(path)? };
    let mut out = HashMap::new();
    for (name, _) in st.tensors() {
        let t = st.load(&name, &Device::Cpu)?;
        let t = if t.dtype().is_float() { t.to_dtype(DType::F32)? } else { t };
        out.insert(name, t);
    }
    Ok(out)
}

/// The output head: `lm_head.weight` where the model has one, else the tied embedding.
fn head(vb: &VarBuilder, cfg: &Config) -> BoxResult<Tensor> {
    let shape = (cfg.vocab_size, cfg.hidden_size);
    let name =
        if vb.contains_tensor("lm_head.weight") { "lm_head.weight" } else { "model.embed_tokens.weight" };
    Ok(vb.get(shape, name)?)
}

/// The logits at every position of `tokens`, `[tokens, vocab]`: candle-transformers' Qwen2
/// body, then the head as `ModelForCausalLM` applies it (which returns the last position only).
pub fn all_logits(vb: &VarBuilder, cfg: &Config, tokens: &[u32]) -> BoxResult<Tensor> {
    let mut model = Model::new(cfg, vb.clone())?;
    let input = Tensor::new(tokens, vb.device())?.unsqueeze(0)?;
    let hidden = model.forward(&input, 0, None)?.squeeze(0)?;
    Ok(hidden.matmul(&head(vb, cfg)?.t()?)?)
}

/// A greedy continuation of a prompt by `ModelForCausalLM`, with its timings.
#[derive(Debug, Clone)]
pub struct Generation {
    /// The prompt's next token, then one per decode step.
    pub tokens: Vec<u32>,
    /// The logits of the prompt's last position.
    pub last_logits: Vec<f32>,
    /// Seconds of the prompt's forward pass (prefill).
    pub prefill_s: f64,
    /// Seconds of the decode steps (one token each, with the key/value cache).
    pub decode_s: f64,
}

/// Runs `prompt` through `ModelForCausalLM` on `vb`, then `steps` greedy decode steps.
pub fn generate(vb: &VarBuilder, cfg: &Config, prompt: &[u32], steps: usize) -> BoxResult<Generation> {
    let mut model = ModelForCausalLM::new(cfg, vb.clone())?;
    let dev = vb.device().clone();
    let start = Instant::now();
    let input = Tensor::new(prompt, &dev)?.unsqueeze(0)?;
    let last_logits = model.forward(&input, 0)?.flatten_all()?.to_vec1::<f32>()?;
    let prefill_s = start.elapsed().as_secs_f64();
    let mut tokens = vec![argmax(&last_logits)];
    let start = Instant::now();
    for i in 0..steps {
        let input = Tensor::new(&tokens[tokens.len() - 1..], &dev)?.unsqueeze(0)?;
        let logits = model.forward(&input, prompt.len() + i)?.flatten_all()?.to_vec1::<f32>()?;
        tokens.push(argmax(&logits));
    }
    Ok(Generation { tokens, last_logits, prefill_s, decode_s: start.elapsed().as_secs_f64() })
}

/// Index of the largest value (the first on ties).
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best as u32
}

/// The relative weight error `‖W' − W‖ / ‖W‖` over the rank-2 float tensors of `original`
/// (the matrices and the embedding, what the codecs change), `W'` read from `vb`.
pub fn weight_error(original: &HashMap<String, Tensor>, vb: &VarBuilder) -> BoxResult<f64> {
    let (mut diff, mut norm) = (0f64, 0f64);
    for (name, w) in original.iter().filter(|(_, w)| w.rank() == 2 && w.dtype().is_float()) {
        let w = w.to_dtype(DType::F32)?;
        let other = vb.get(w.dims2()?, name)?.to_dtype(DType::F32)?;
        diff += (&other - &w)?.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
        norm += w.sqr()?.sum_all()?.to_scalar::<f32>()? as f64;
    }
    Ok((diff / norm).sqrt())
}

/// `‖b − a‖ / ‖a‖` over all positions, and the fraction of positions whose largest logit is
/// the same token in both (`[positions, vocab]` each).
pub fn compare(a: &Tensor, b: &Tensor) -> BoxResult<(f64, f64)> {
    let (a, b) = (a.to_vec2::<f32>()?, b.to_vec2::<f32>()?);
    let (mut diff, mut norm, mut same) = (0f64, 0f64, 0usize);
    for (ra, rb) in a.iter().zip(&b) {
        for (x, y) in ra.iter().zip(rb) {
            diff += ((y - x) as f64).powi(2);
            norm += (*x as f64).powi(2);
        }
        same += usize::from(argmax(ra) == argmax(rb));
    }
    Ok(((diff / norm).sqrt(), same as f64 / a.len().max(1) as f64))
}

/// A reference codec, rounding to nearest, applied to every rank-2 float tensor (the linear
/// weights and the embedding, which is also the tied head); vectors (norms, biases) stay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reference {
    /// Symmetric int8, one f16 scale per row (`max|x| / 127`).
    Int8Rows,
    /// int4 in groups of `group` values along the input dimension (a row of `[out, in]`), one
    /// f16 scale each; with `zero_point`, asymmetric (min to max over 0..=15, a 4-bit zero
    /// point per group, as AWQ's and GPTQ's round-to-nearest baselines), else symmetric
    /// (`max|x| / 7`, −7..=7).
    Int4Groups { group: usize, zero_point: bool },
}

impl Reference {
    /// The name in the example's table.
    pub fn name(self) -> String {
        match self {
            Reference::Int8Rows => "int8 per row (RTN)".into(),
            Reference::Int4Groups { group, zero_point: true } => format!("int4 g{group} zero point (RTN)"),
            Reference::Int4Groups { group, zero_point: false } => format!("int4 g{group} symmetric (RTN)"),
        }
    }

    /// Bytes this codec would store for a rank-2 tensor of `rows × cols`: codes, f16 scales
    /// and (int4 with zero point) 4-bit zero points.
    pub fn stored_bytes(self, rows: usize, cols: usize) -> u64 {
        let n = (rows * cols) as u64;
        match self {
            Reference::Int8Rows => n + 2 * rows as u64,
            Reference::Int4Groups { group, zero_point: true } => {
                nerp::codec::group::nearest_zero_point_bytes(rows as u64, cols as u64, group as u64, 4)
            }
            Reference::Int4Groups { group, zero_point: false } => {
                n.div_ceil(2) + 2 * (rows * cols.div_ceil(group)) as u64
            }
        }
    }

    /// One row quantized and read back in place.
    pub fn round_row(self, row: &mut [f32]) {
        let f16 = |x: f32| half::f16::from_f32(x).to_f32();
        match self {
            Reference::Int8Rows => symmetric(row, 127.0, f16),
            Reference::Int4Groups { group, zero_point } => {
                for g in row.chunks_mut(group.max(1)) {
                    if zero_point {
                        nerp::codec::group::round_nearest_zero_point(g, 4);
                    } else {
                        symmetric(g, 7.0, f16);
                    }
                }
            }
        }
    }

    /// `weights` with every rank-2 float tensor rounded by this codec (but the token embedding,
    /// also the tied head, with `keep_embedding`), and the bytes the codec would store (other
    /// tensors at `source_size` bytes per value).
    pub fn apply(
        self,
        weights: &HashMap<String, Tensor>,
        source_size: usize,
        keep_embedding: bool,
    ) -> BoxResult<(HashMap<String, Tensor>, u64)> {
        let mut out = HashMap::new();
        let mut bytes = 0u64;
        for (name, t) in weights {
            let kept = keep_embedding && name == "model.embed_tokens.weight";
            if t.rank() != 2 || !t.dtype().is_float() || kept {
                bytes += (t.elem_count() * source_size) as u64;
                out.insert(name.clone(), t.clone());
                continue;
            }
            let (rows, cols) = t.dims2()?;
            let mut v = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            v.chunks_mut(cols).for_each(|r| self.round_row(r));
            bytes += self.stored_bytes(rows, cols);
            out.insert(name.clone(), Tensor::from_vec(v, (rows, cols), t.device())?.to_dtype(t.dtype())?);
        }
        Ok((out, bytes))
    }
}

/// Symmetric rounding of `g` to `−q..=q` steps of `max|x| / q` (the scale rounded by `f16`).
fn symmetric(g: &mut [f32], q: f32, f16: impl Fn(f32) -> f32) {
    let s = f16(g.iter().fold(0f32, |a, x| a.max(x.abs())) / q);
    if s == 0.0 {
        return;
    }
    for x in g.iter_mut() {
        *x = (*x / s).round().clamp(-q, q) * s;
    }
}
