//! Token-id calibration of a decoder LLM (issue 24, item 4). A safetensors model with a Hugging
//! Face `config.json` of the Qwen2 or Llama layout beside it runs through nerp's own forward
//! pass ([`crate::compress::decoder`], CPU, f32) on `--calibration-inputs` token arrays (`.npy`
//! of integers, one sequence per row). The original's run on the fit sequences also gives each
//! linear layer's input moments, for GPTQ's rounding of the group codecs. The relative error of the logits at every position against the original model's is
//! the output error a budget keeps, checked as for ONNX models: the allocation is aimed on the
//! fit sequences, and the file's error is the held-back sequences' with its 95% bound
//! ([`upper_bound`]). Where there is no such config, `--calibration-inputs` on a safetensors
//! model is refused, not ignored.

use crate::codec::gptq::Moments;
use crate::compress::calibrate::{held_back, upper_bound, Fidelity};
use crate::compress::choose::Assessed;
use crate::compress::decoder::{Config, Decoder, Taps};
use crate::compress::measure::held_count;
use crate::compress::CompressOptions;
use crate::error::{Error, Result};
use candle_core::Tensor;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The config file read beside the model (a fixed name: no path from the model is followed).
pub const CONFIG: &str = "config.json";

/// Longest context a config may declare.
const MAX_POSITIONS: usize = 1 << 20;

/// The model's config and the token sequences, split into fit and check sequences.
pub struct Tokens {
    config: Config,
    /// Where `config` was read (named in errors).
    path: PathBuf,
    fit: Vec<Vec<u32>>,
    check: Vec<Vec<u32>>,
}

/// The original model's logits on every sequence: what changed models are compared with.
pub struct Reference {
    tokens: Tokens,
    /// Logits of each sequence (fit, then check), `[tokens · vocab]`.
    logits: Vec<Vec<f32>>,
}

impl Tokens {
    /// Reads `config.json` beside `model` and the token arrays of `opts` (`--calibration-inputs`,
    /// `--check`, `--check-inputs`). Usage errors name what is wrong: no config, another
    /// architecture, a float array, a token outside the vocabulary, a sequence longer than the
    /// model's context, too few sequences, a check sequence that is also a calibration one.
    pub fn read(model: &Path, opts: &CompressOptions) -> Result<Tokens> {
        let (config, path) = read_config(model)?;
        let mut all = Vec::new();
        for path in &opts.calibration_inputs {
            all.extend(read_sequences(path, &config, "--calibration-inputs")?);
        }
        let (fit, check) = if opts.check_inputs.is_empty() {
            let held = held_back(all.len(), held_count(all.len(), opts.check)?);
            let (mut fit, mut check) = (Vec::new(), Vec::new());
            for (s, h) in all.into_iter().zip(held) {
                if h {
                    check.push(s)
                } else {
                    fit.push(s)
                }
            }
            (fit, check)
        } else {
            let mut check = Vec::new();
            for path in &opts.check_inputs {
                check.extend(read_sequences(path, &config, "--check-inputs")?);
            }
            if check.len() < crate::compress::MIN_CHECK_INPUTS {
                return Err(Error::usage(
                    "--check-inputs",
                    format!(
                        "{} sequences are too few to check the file: give at least {}",
                        check.len(),
                        crate::compress::MIN_CHECK_INPUTS
                    ),
                ));
            }
            if let Some(i) = check.iter().position(|c| all.contains(c)) {
                return Err(Error::usage(
                    "--check-inputs",
                    format!("check sequence {i} is also a calibration sequence: check on sequences the allocation never sees"),
                ));
            }
            (all, check)
        };
        if fit.is_empty() {
            return Err(Error::usage("--calibration-inputs", "no sequence is left to fit on"));
        }
        Ok(Tokens { config, path, fit, check })
    }

    /// Sequences fitted to and held back.
    pub fn counts(&self) -> (usize, usize) {
        (self.fit.len(), self.check.len())
    }

    /// Bytes of memory a measurement holds beyond the weights: the reference logits, one
    /// sequence's logits, its attention scores (heads × tokens², twice, with the causal mask),
    /// and the layers' input moments ([`Taps::memory`]).
    pub fn memory(&self) -> u64 {
        let vocab = self.config.vocab_size as u64;
        let tokens: u64 = self.fit.iter().chain(&self.check).map(|s| s.len() as u64).sum();
        let longest = self.longest() as u64;
        let logits = tokens.saturating_add(2u64.saturating_mul(longest)).saturating_mul(vocab);
        let heads = self.config.num_attention_heads as u64;
        let scores =
            longest.saturating_mul(longest).saturating_mul(2u64.saturating_mul(heads).saturating_add(1));
        4u64.saturating_mul(logits.saturating_add(scores)).saturating_add(Taps::memory(&self.config))
    }

    /// Tokens of the longest sequence.
    fn longest(&self) -> usize {
        self.fit.iter().chain(&self.check).map(Vec::len).max().unwrap_or(0)
    }

    /// Runs the original `weights` (f32) on every sequence: the reference, and the input
    /// moments of each linear layer on the fit sequences (by weight name; see [`Taps`]).
    pub fn reference(
        self,
        weights: HashMap<String, Tensor>,
    ) -> Result<(Reference, HashMap<String, Arc<Moments>>)> {
        let mut taps = Taps::default();
        let logits = self.logits(weights, true, Some(&mut taps)).map_err(|e| {
            // The config and the weights disagree (a shape, a missing tensor): say so in one line.
            let first = e.to_string().lines().next().unwrap_or_default().to_string();
            Error::Usage {
                option: "--calibration-inputs".into(),
                what: format!("{}: the model does not run with these weights: {first}", self.path.display()),
            }
        })?;
        if let Some(k) = logits.iter().position(|l| l.iter().any(|x| !x.is_finite())) {
            return Err(Error::Usage {
                option: "--calibration-inputs".into(),
                what: format!(
                    "{}: the original model's logits on sequence {k} are not finite: nothing to measure against",
                    self.path.display()
                ),
            });
        }
        Ok((Reference { tokens: self, logits }, taps.moments()))
    }

    /// The logits of every fit sequence, then (with `check`) every held-back one, on `weights`;
    /// the fit sequences' layer inputs added to `taps`.
    fn logits(
        &self,
        weights: HashMap<String, Tensor>,
        check: bool,
        mut taps: Option<&mut Taps>,
    ) -> Result<Vec<Vec<f32>>> {
        let model = Decoder::new(&self.config, &weights, self.longest())?;
        let mut out = Vec::new();
        for seq in &self.fit {
            out.push(model.logits(seq, taps.as_deref_mut())?);
        }
        if check {
            for seq in &self.check {
                out.push(model.logits(seq, None)?);
            }
        }
        Ok(out)
    }
}

impl Reference {
    /// Sequences fitted to and held back.
    pub fn counts(&self) -> (usize, usize) {
        self.tokens.counts()
    }

    /// Tokens of the fit sequences (what the layers' input moments were summed over).
    pub fn fit_tokens(&self) -> usize {
        self.tokens.fit.iter().map(Vec::len).sum()
    }

    /// What `weights` (the model as a file would give it back, f32) do against the original:
    /// the pooled relative logits error on the fit sequences, and on the held-back ones the
    /// error, its 95% bound and the share of positions whose next-token argmax agrees.
    pub(crate) fn assess(&self, weights: HashMap<String, Tensor>) -> Result<Assessed> {
        let logits = self.tokens.logits(weights, true, None)?;
        let vocab = self.tokens.config.vocab_size.max(1);
        let fit = self.tokens.fit.len();
        let (mut diff, mut norm) = (Vec::new(), Vec::new());
        let (mut same, mut positions) = (0usize, 0usize);
        for (k, (a, b)) in self.logits.iter().zip(&logits).enumerate() {
            let (d, n) = change(a, b);
            diff.push(d);
            norm.push(n);
            if k >= fit {
                for (ra, rb) in a.chunks(vocab).zip(b.chunks(vocab)) {
                    same += usize::from(argmax(ra) == argmax(rb));
                    positions += 1;
                }
            }
        }
        let fitted =
            (diff[..fit].iter().sum::<f64>() / norm[..fit].iter().sum::<f64>().max(f64::MIN_POSITIVE)).sqrt();
        let (error, bound) = upper_bound(&diff[fit..], &norm[fit..]);
        let held = Fidelity {
            error,
            bound,
            top1_agreement: Some(same as f64 / positions.max(1) as f64),
            input_agreement: None,
        };
        Ok(Assessed { fitted, held_back: Some(held) })
    }

    /// The pooled relative logits error of `weights` on the fit sequences only.
    pub fn fit_error(&self, weights: HashMap<String, Tensor>) -> Result<f64> {
        let logits = self.tokens.logits(weights, false, None)?;
        let (mut d, mut n) = (0f64, 0f64);
        for (a, b) in self.logits.iter().zip(&logits) {
            let (di, ni) = change(a, b);
            (d, n) = (d + di, n + ni);
        }
        Ok((d / n.max(f64::MIN_POSITIVE)).sqrt())
    }
}

/// The class of a tensor named `name`: its name without the path components that are numbers
/// (`model.layers.3.mlp.up_proj.weight` → `model.layers.mlp.up_proj.weight`), so that the
/// same matrix of every layer is one class.
pub fn class_of(name: &str) -> String {
    name.split('.').filter(|p| p.parse::<u64>().is_err()).collect::<Vec<_>>().join(".")
}

/// `‖b − a‖²` and `‖a‖²`: one sequence's logits `b` against the original's `a`.
fn change(a: &[f32], b: &[f32]) -> (f64, f64) {
    let d = a.iter().zip(b).map(|(x, y)| ((y - x) as f64).powi(2)).sum();
    (d, a.iter().map(|&x| (x as f64).powi(2)).sum())
}

/// Index of the largest value (the first on ties).
fn argmax(v: &[f32]) -> usize {
    let mut best = 0;
    for (i, x) in v.iter().enumerate() {
        if *x > v[best] {
            best = i;
        }
    }
    best
}

/// Whether `model` is a decoder checkpoint nerp runs: a Qwen2 or Llama `config.json` beside
/// it that [`Tokens::read`] would accept.
pub fn is_decoder_checkpoint(model: &Path) -> bool {
    read_config(model).is_ok()
}

/// The config beside `model`, checked so that the forward pass cannot fail on it later.
fn read_config(model: &Path) -> Result<(Config, PathBuf)> {
    let path: PathBuf = model.parent().unwrap_or(Path::new(".")).join(CONFIG);
    let bad = |what: String| Error::Usage {
        option: "--calibration-inputs".into(),
        what: format!("{}: {what}", path.display()),
    };
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) => {
            return Err(bad(format!(
                "cannot be read ({e}): token arrays calibrate a safetensors model that nerp runs, \
                 a Qwen2 or Llama layout with its config.json beside it; without one, leave out \
                 --calibration-inputs (the budget then keeps the weights' error)"
            )))
        }
    };
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("not JSON: {e}")))?;
    let c: Config =
        serde_json::from_value(value).map_err(|e| bad(format!("not a Qwen2 or Llama config: {e}")))?;
    match c.problem(MAX_POSITIONS) {
        Some(why) => Err(bad(why)),
        None => Ok((c, path)),
    }
}

/// The token sequences of `path`: an integer array `[sequences, tokens]` (or one sequence),
/// every token below the vocabulary's size, no sequence longer than the model's context.
fn read_sequences(path: &Path, config: &Config, flag: &str) -> Result<Vec<Vec<u32>>> {
    let bad = |what: String| Error::usage(flag, format!("{}: {what}", path.display()));
    let x = crate::data::npy::read(path)?;
    if !x.datum_type().is_integer() {
        return Err(bad(format!("{:?} values: token ids are integers (int32 or int64)", x.datum_type())));
    }
    let shape = x.shape().to_vec();
    let (rows, len) = match shape[..] {
        [n] => (1, n),
        [r, n] => (r, n),
        _ => return Err(bad(format!("shape {shape:?}: token ids are [sequences, tokens]"))),
    };
    if len == 0 || len > config.max_position_embeddings {
        return Err(bad(format!(
            "sequences of {len} tokens: give 1 to {} (the model's context)",
            config.max_position_embeddings
        )));
    }
    let x = x.cast_to::<i64>().map_err(|e| bad(format!("not an integer array: {e}")))?;
    let ids = x.try_as_plain_ram()?.as_slice::<i64>()?.to_vec();
    if let Some((i, t)) = ids.iter().enumerate().find(|(_, &t)| t < 0 || t as u64 >= config.vocab_size as u64)
    {
        return Err(bad(format!(
            "token {t} at position {} of sequence {} is outside the vocabulary (0..{})",
            i % len,
            i / len,
            config.vocab_size
        )));
    }
    Ok((0..rows).map(|r| ids[r * len..(r + 1) * len].iter().map(|&t| t as u32).collect()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_class_is_the_same_matrix_of_every_layer() {
        assert_eq!(class_of("model.layers.3.mlp.up_proj.weight"), "model.layers.mlp.up_proj.weight");
        assert_eq!(
            class_of("model.layers.23.mlp.up_proj.weight"),
            class_of("model.layers.0.mlp.up_proj.weight")
        );
        assert_ne!(
            class_of("model.layers.3.mlp.up_proj.weight"),
            class_of("model.layers.3.mlp.gate_proj.weight")
        );
        assert_eq!(class_of("model.embed_tokens.weight"), "model.embed_tokens.weight");
    }
}
