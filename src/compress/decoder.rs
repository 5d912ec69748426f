//! nerp's own forward pass of a decoder LLM of the Qwen2 or Llama layout (issue 24, item 4):
//! the logits at every position of a token sequence, and on request the second moments of
//! each linear layer's inputs (GPTQ's `H`, [`Taps`]), which candle-transformers' models do not
//! expose. It computes what candle-transformers' `qwen2` computes (RMSNorm, rotary embeddings
//! rotating halves, grouped-query causal attention, a SwiGLU MLP; tests/llm.rs checks the
//! logits against it), on the CPU in f32, one sequence at a time, with rotary tables for the
//! longest sequence only (candle's are built for the whole declared context).

use crate::codec::gptq::{self, Layout, Moments};
use candle_core::{Device, Tensor, D};
use std::collections::HashMap;
use std::sync::Arc;

/// The fields of a Hugging Face `config.json` the forward pass reads (Qwen2 and Llama spell
/// them alike).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct Config {
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    /// Absent in older Llama configs: as many as the attention heads.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    pub max_position_embeddings: usize,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    /// Llama's switch for q/k/v biases (Qwen2 always has them).
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default = "default_act")]
    pub hidden_act: String,
    #[serde(default)]
    pub use_sliding_window: bool,
    /// Scaled rotary embeddings (Llama 3.1's and others'): not computed here, so refused.
    #[serde(default)]
    pub rope_scaling: Option<serde_json::Value>,
}

fn default_rope_theta() -> f64 {
    10_000.0
}

fn default_act() -> String {
    "silu".into()
}

/// Largest dimension a config may declare (far above any published model's; keeps the
/// products of dimensions far from overflow).
const MAX_DIM: usize = 1 << 24;

/// Most layers a config may declare.
const MAX_LAYERS: usize = 1 << 12;

/// The architectures the forward pass runs.
pub const MODEL_TYPES: [&str; 2] = ["qwen2", "llama"];

impl Config {
    /// Key/value heads.
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Values per attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads.max(1)
    }

    /// Whether the q/k/v projections have biases.
    pub fn bias(&self) -> bool {
        self.model_type == "qwen2" || self.attention_bias
    }

    /// What makes the forward pass unable to run this config, if anything.
    pub fn problem(&self, max_positions: usize) -> Option<String> {
        let heads = self.num_attention_heads;
        let kv = self.kv_heads();
        if !MODEL_TYPES.contains(&self.model_type.as_str()) {
            return Some(format!(
                "model_type {:?}: token calibration runs the Qwen2 and Llama layouts (model_type \"qwen2\" or \"llama\")",
                self.model_type
            ));
        }
        let dims = [self.vocab_size, self.hidden_size, self.intermediate_size, heads, kv];
        if dims.iter().any(|&d| d > MAX_DIM) || self.num_hidden_layers > MAX_LAYERS {
            return Some(format!(
                "dimensions {dims:?} and {} layers: at most {MAX_DIM} and {MAX_LAYERS}",
                self.num_hidden_layers
            ));
        }
        let sane = self.vocab_size > 0
            && self.hidden_size > 0
            && self.intermediate_size > 0
            && heads > 0
            && kv > 0
            && self.hidden_size.is_multiple_of(heads)
            && heads.is_multiple_of(kv)
            && self.head_dim().is_multiple_of(2)
            && (1..=max_positions).contains(&self.max_position_embeddings)
            && self.rms_norm_eps.is_finite()
            && self.rms_norm_eps > 0.0
            && self.rope_theta.is_finite()
            && self.rope_theta > 0.0;
        if !sane {
            return Some(format!(
                "an inconsistent config (hidden {} over {heads} heads and {kv} key/value heads, context {}, \
                 rms_norm_eps {}, rope_theta {}; the context at most {max_positions}, the last two positive)",
                self.hidden_size, self.max_position_embeddings, self.rms_norm_eps, self.rope_theta
            ));
        }
        if !matches!(self.hidden_act.as_str(), "silu" | "swish") {
            return Some(format!(
                "hidden_act {:?}: the forward pass computes SwiGLU (silu) MLPs",
                self.hidden_act
            ));
        }
        if self.use_sliding_window {
            return Some("use_sliding_window: sliding-window attention is not computed here".into());
        }
        if self.rope_scaling.as_ref().is_some_and(|v| !v.is_null()) {
            return Some("rope_scaling: scaled rotary embeddings are not computed here".into());
        }
        None
    }

    /// Every tensor the forward pass reads, with its shape (an untied `lm_head.weight` is read
    /// beside them when the file has one): the one table of the Qwen2 and Llama layouts, which
    /// [`crate::synth::LlmLayout::tensors`] writes.
    pub fn shapes(&self) -> Vec<(String, Vec<usize>)> {
        let (h, m, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let kv = self.kv_heads() * self.head_dim();
        let mut out = vec![
            ("model.embed_tokens.weight".to_string(), vec![v, h]),
            ("model.norm.weight".into(), vec![h]),
        ];
        for l in 0..self.num_hidden_layers {
            let p = |s: &str| format!("model.layers.{l}.{s}");
            out.extend([
                (p("input_layernorm.weight"), vec![h]),
                (p("post_attention_layernorm.weight"), vec![h]),
                (p("self_attn.q_proj.weight"), vec![h, h]),
                (p("self_attn.k_proj.weight"), vec![kv, h]),
                (p("self_attn.v_proj.weight"), vec![kv, h]),
                (p("self_attn.o_proj.weight"), vec![h, h]),
                (p("mlp.gate_proj.weight"), vec![m, h]),
                (p("mlp.up_proj.weight"), vec![m, h]),
                (p("mlp.down_proj.weight"), vec![h, m]),
            ]);
            if self.bias() {
                out.extend([
                    (p("self_attn.q_proj.bias"), vec![h]),
                    (p("self_attn.k_proj.bias"), vec![kv]),
                    (p("self_attn.v_proj.bias"), vec![kv]),
                ]);
            }
        }
        out
    }
}

/// Where in a layer a linear layer's inputs are tapped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum Site {
    /// The normed input of q/k/v.
    Attention,
    /// The attention's output, the input of `o_proj`.
    Output,
    /// The normed input of gate/up.
    Mlp,
    /// The gated activation, the input of `down_proj`.
    Down,
}

impl Site {
    /// The weights whose inputs this site is.
    fn weights(self, layer: usize) -> Vec<String> {
        let names: &[&str] = match self {
            Site::Attention => &["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"],
            Site::Output => &["self_attn.o_proj"],
            Site::Mlp => &["mlp.gate_proj", "mlp.up_proj"],
            Site::Down => &["mlp.down_proj"],
        };
        names.iter().map(|n| format!("model.layers.{layer}.{n}.weight")).collect()
    }
}

/// Sums of `x xᵀ` over the tokens seen, per layer and site, for inputs of at most
/// [`gptq::MAX_DIM`] values (`H` is d × d and factored in O(d³); wider inputs, such as
/// Qwen2-0.5B's 4,864-wide `down_proj` inputs, are not tapped).
#[derive(Debug, Default)]
pub struct Taps {
    sums: HashMap<(usize, Site), (usize, Vec<f64>)>,
    tokens: usize,
}

impl Taps {
    /// Bytes the sums of `config` take.
    pub fn memory(config: &Config) -> u64 {
        let (h, m) = (config.hidden_size as u64, config.intermediate_size as u64);
        let per =
            |d: u64| if d as usize <= gptq::MAX_DIM { d.saturating_mul(d).saturating_mul(8) } else { 0 };
        (3u64.saturating_mul(per(h)).saturating_add(per(m))).saturating_mul(config.num_hidden_layers as u64)
    }

    fn add(&mut self, layer: usize, site: Site, x: &Tensor) -> candle_core::Result<()> {
        let d = x.dim(D::Minus1)?;
        if d > gptq::MAX_DIM {
            return Ok(());
        }
        let xtx = x.t()?.matmul(x)?.flatten_all()?.to_vec1::<f32>()?;
        let (_, sum) = self.sums.entry((layer, site)).or_insert_with(|| (d, vec![0.0; d * d]));
        sum.iter_mut().zip(xtx).for_each(|(s, v)| *s += v as f64);
        Ok(())
    }

    /// Each tapped weight's input moments `E[x xᵀ]` (the weights of one site share them),
    /// shrunk towards their mean variance by the weight `d / tokens` (at most 1). From `n` tokens
    /// the sample moments of `d` inputs spread their eigenvalues (to about `(1 − √(d/n))²` of the
    /// mean at the low end), and GPTQ moves the rounding error into the directions they
    /// underweigh, which other inputs do take. Measured on the 0.5 B layout at `--size-ratio 4`
    /// with 1,920 fit tokens for 896 inputs (docs/results/llm.md), fit and held-back logits
    /// error: unshrunk 41.9% and 58.5%, shrunk 44.2% and 54.8%, rounding to nearest 59.0% and
    /// 55.9%.
    pub fn moments(self) -> HashMap<String, Arc<Moments>> {
        let n = self.tokens.max(1) as f64;
        let mut out = HashMap::new();
        let mut sums: Vec<_> = self.sums.into_iter().collect();
        sums.sort_by_key(|(k, _)| *k);
        for ((layer, site), (d, mut h)) in sums {
            h.iter_mut().for_each(|v| *v /= n);
            let shrink = (d as f64 / n).min(1.0);
            let mean = (0..d).map(|i| h[i * d + i]).sum::<f64>() / d.max(1) as f64;
            h.iter_mut().for_each(|v| *v *= 1.0 - shrink);
            (0..d).for_each(|i| h[i * d + i] += shrink * mean);
            let m = Arc::new(Moments::new(d, h, Layout::OutputRows));
            for name in site.weights(layer) {
                out.insert(name, m.clone());
            }
        }
        out
    }
}

/// The model of `config` on `weights` (f32, by their safetensors names), ready to run
/// sequences of up to `longest` tokens.
pub struct Decoder<'a> {
    config: &'a Config,
    weights: &'a HashMap<String, Tensor>,
    head: &'a Tensor,
    cos: Tensor,
    sin: Tensor,
    mask: Tensor,
}

impl<'a> Decoder<'a> {
    /// Checks that every tensor is there with its shape, and builds the rotary tables.
    pub fn new(
        config: &'a Config,
        weights: &'a HashMap<String, Tensor>,
        longest: usize,
    ) -> crate::Result<Self> {
        for (name, shape) in config.shapes() {
            match weights.get(&name) {
                None => return Err(crate::Error::Training(format!("the model has no tensor {name}"))),
                Some(t) if t.dims() != shape.as_slice() => {
                    return Err(crate::Error::Training(format!(
                        "tensor {name} is {:?}, the config makes it {shape:?}",
                        t.dims()
                    )))
                }
                Some(_) => {}
            }
        }
        let head = match weights.get("lm_head.weight") {
            Some(h) if h.dims() == [config.vocab_size, config.hidden_size] => h,
            Some(h) => {
                return Err(crate::Error::Training(format!(
                    "tensor lm_head.weight is {:?}, the config makes it {:?}",
                    h.dims(),
                    [config.vocab_size, config.hidden_size]
                )))
            }
            None => &weights["model.embed_tokens.weight"],
        };
        let half = config.head_dim() / 2;
        let inv: Vec<f32> = (0..half)
            .map(|i| 1.0 / config.rope_theta.powf(2.0 * i as f64 / (2 * half) as f64) as f32)
            .collect();
        let angles: Vec<f32> = (0..longest).flat_map(|t| inv.iter().map(move |f| t as f32 * f)).collect();
        let angles = Tensor::from_vec(angles, (longest, half), &Device::Cpu)?;
        let mask: Vec<f32> = (0..longest)
            .flat_map(|i| (0..longest).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 }))
            .collect();
        Ok(Decoder {
            config,
            weights,
            head,
            cos: angles.cos()?,
            sin: angles.sin()?,
            mask: Tensor::from_vec(mask, (longest, longest), &Device::Cpu)?,
        })
    }

    fn w(&self, layer: usize, name: &str) -> &Tensor {
        &self.weights[&format!("model.layers.{layer}.{name}")]
    }

    /// `x · Wᵀ (+ b)` for the weight `name` of `layer`.
    fn linear(&self, x: &Tensor, layer: usize, name: &str, bias: bool) -> candle_core::Result<Tensor> {
        let y = x.matmul(&self.w(layer, &format!("{name}.weight")).t()?)?;
        match bias {
            true => y.broadcast_add(self.w(layer, &format!("{name}.bias"))),
            false => Ok(y),
        }
    }

    /// The logits of `seq` (`[tokens · vocab]`), its layers' input moments added to `taps`.
    pub fn logits(&self, seq: &[u32], mut taps: Option<&mut Taps>) -> crate::Result<Vec<f32>> {
        let c = self.config;
        let (t, heads, kv, hd) = (seq.len(), c.num_attention_heads, c.kv_heads(), c.head_dim());
        let eps = c.rms_norm_eps as f32;
        let ids = Tensor::new(seq, &Device::Cpu)?;
        let mut x = self.weights["model.embed_tokens.weight"].index_select(&ids, 0)?;
        let (cos, sin) = (self.cos.narrow(0, 0, t)?, self.sin.narrow(0, 0, t)?);
        let mask = self.mask.narrow(0, 0, t)?.narrow(1, 0, t)?;
        let mut tap = |layer: usize, site: Site, x: &Tensor| -> candle_core::Result<()> {
            match taps.as_deref_mut() {
                Some(taps) => taps.add(layer, site, x),
                None => Ok(()),
            }
        };
        for l in 0..c.num_hidden_layers {
            let h = candle_nn::ops::rms_norm(&x, self.w(l, "input_layernorm.weight"), eps)?;
            tap(l, Site::Attention, &h)?;
            let split =
                |y: Tensor, n: usize| y.reshape((t, n, hd))?.transpose(0, 1)?.contiguous()?.unsqueeze(0);
            let q = split(self.linear(&h, l, "self_attn.q_proj", c.bias())?, heads)?;
            let k = split(self.linear(&h, l, "self_attn.k_proj", c.bias())?, kv)?;
            let v = split(self.linear(&h, l, "self_attn.v_proj", c.bias())?, kv)?;
            let q = candle_nn::rotary_emb::rope(&q, &cos, &sin)?.squeeze(0)?;
            let k = candle_nn::rotary_emb::rope(&k, &cos, &sin)?.squeeze(0)?;
            // Each key/value head serves heads / kv query heads.
            let repeat = |y: Tensor| -> candle_core::Result<Tensor> {
                y.unsqueeze(1)?.expand((kv, heads / kv, t, hd))?.reshape((heads, t, hd))
            };
            let (k, v) = (repeat(k)?, repeat(v.squeeze(0)?)?);
            let scores = (q.matmul(&k.t()?)? * (1.0 / (hd as f64).sqrt()))?.broadcast_add(&mask)?;
            let att = candle_nn::ops::softmax_last_dim(&scores)?.matmul(&v)?;
            let att = att.transpose(0, 1)?.reshape((t, heads * hd))?;
            tap(l, Site::Output, &att)?;
            x = (x + self.linear(&att, l, "self_attn.o_proj", false)?)?;
            let h = candle_nn::ops::rms_norm(&x, self.w(l, "post_attention_layernorm.weight"), eps)?;
            tap(l, Site::Mlp, &h)?;
            let gated = (candle_nn::ops::silu(&self.linear(&h, l, "mlp.gate_proj", false)?)?
                * self.linear(&h, l, "mlp.up_proj", false)?)?;
            tap(l, Site::Down, &gated)?;
            x = (x + self.linear(&gated, l, "mlp.down_proj", false)?)?;
        }
        if let Some(taps) = taps {
            taps.tokens += t;
        }
        let x = candle_nn::ops::rms_norm(&x, &self.weights["model.norm.weight"], eps)?;
        Ok(x.matmul(&self.head.t()?)?.flatten_all()?.to_vec1::<f32>()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moments_shrink_towards_the_mean_variance_by_inputs_per_token() {
        let rows = [[1f32, 2.0, 0.0, 0.0], [0.0, 0.0, 3.0, 1.0]];
        let moments = |copies: usize| {
            let mut taps = Taps::default();
            for _ in 0..copies {
                taps.add(0, Site::Output, &Tensor::new(&rows, &Device::Cpu).unwrap()).unwrap();
                taps.tokens += 2;
            }
            taps.moments()["model.layers.0.self_attn.o_proj.weight"].h.clone()
        };
        // E[x xᵀ]: diagonal (1, 4, 9, 1) / 2, mean 15/8; off-diagonal 1 at (0,1), 1.5 at (2,3).
        let h = moments(1); // 2 tokens for 4 inputs: all the way to the mean
        for i in 0..4 {
            for j in 0..4 {
                assert_eq!(h[i * 4 + j], if i == j { 15.0 / 8.0 } else { 0.0 }, "{i} {j}");
            }
        }
        let h = moments(4); // 8 tokens: half way
        assert_eq!((h[0], h[1], h[2 * 4 + 3]), (0.5 * 0.5 + 0.5 * 15.0 / 8.0, 0.5, 0.75));
    }
}
