//! Distillation of the whole file (issue 23; the seed's decoupled schedule applied to what the
//! file stores): after the per-tensor choice, the codes of every `coded` tensor are fine-tuned
//! by distillation from the original network on training images, then entropy-coded again.
//!
//! Each coded tensor `i` with step `sᵢ` is trained as `Uᵢ` in units of its step: the network
//! computes with `round(Uᵢ) · sᵢ`, the gradient passes the rounding unchanged
//! (straight-through), and `Uᵢ` starts at the chosen codes, so step 0 is the file as chosen.
//! One learning rate in steps serves every tensor whatever its scale. Teacher and student
//! are nerp's candle graph of the source ONNX; the loss is the KL divergence of the logits at
//! the distillation temperature.

use crate::codec::coded::decode as coded_values;
use crate::codec::Encoded;
use crate::compress::choose::{tensor, Store};
use crate::compress::distill::loss;
use crate::compress::graph::Graph;
use crate::compress::train::{AdamW, Progress, Rng, TrainConfig};
use crate::compress::CompressOptions;
use crate::data::{self, Preprocess, Split};
use crate::error::{Error, Result};
use crate::format::entropy;
use crate::ingest::SourceModel;
use candle_core::{Device, Tensor, Var};
use std::collections::HashMap;
use std::sync::Arc;

/// How the file is fine-tuned.
#[derive(Debug, Clone, PartialEq)]
pub struct Finetune {
    /// Optimizer steps (0: off).
    pub steps: usize,
    /// Peak learning rate, in steps of each tensor's grid.
    pub lr: f64,
}

/// What fine-tuning did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct FinetuneReport {
    pub steps: usize,
    /// Training images per step.
    pub batch: usize,
    /// Training images drawn from.
    pub images: usize,
    pub tensors: usize,
    /// KL divergence of the first and last steps' batches.
    pub first_loss: f64,
    pub last_loss: f64,
    /// Codes that changed.
    pub changed: usize,
    /// The file's error (on the held-back inputs, as the budget measures it) before and after;
    /// filled in by the pipeline.
    pub error_before: Option<f64>,
    pub error_after: Option<f64>,
    /// Whether the file keeps the fine-tuned codes (not when they break the error budget on the
    /// held-back inputs that the chosen codes kept).
    pub kept: bool,
    pub seconds: f64,
}

/// One fine-tuned tensor: its index in the model, its step, and its codes as stored now.
struct Coded {
    index: usize,
    name: String,
    shape: Vec<usize>,
    step: f32,
    row: usize,
}

/// Fine-tunes the `coded` tensors of `stores` on the training images of `--data` but those in
/// `held_back` (the file's check inputs: issue 26) through `graph`, the source network with the
/// compressed model's tensor order, replacing their stores with the re-encoded codes. Returns
/// `None` when no tensor is coded.
pub fn finetune(
    model: &SourceModel,
    graph: &Graph,
    stores: &mut [Store],
    opts: &CompressOptions,
    preprocess: &Preprocess,
    held_back: Option<std::ops::Range<usize>>,
    progress: &mut dyn Progress,
) -> Result<Option<FinetuneReport>> {
    let (ft, distill, seed) = (&opts.finetune, &opts.distill, opts.seed);
    let start = std::time::Instant::now();
    let device = Device::Cpu;
    let mut coded = Vec::new();
    let mut flat = Vec::new();
    for (i, s) in stores.iter().enumerate() {
        let Store::Coded(e) = s else { continue };
        let Encoded::Coded { max_code, row_scales: false, row, bytes, .. } = &**e else { continue };
        let t = &model.tensors[i];
        if !graph.constants.contains_key(&t.name) {
            continue;
        }
        let numel = tensor(t).numel();
        let step = f32::from_le_bytes(bytes[..4].try_into().expect("a coded section starts with its step"));
        let codes = entropy::decode(&bytes[4..], numel, *row as usize, *max_code)
            .map_err(|e| Error::Training(format!("tensor {}: own coding: {e}", t.name)))?;
        flat.extend(codes.iter().map(|&q| q as f32));
        let shape = t.shape.iter().map(|&d| d as usize).collect();
        coded.push(Coded { index: i, name: t.name.clone(), shape, step, row: *row as usize });
    }
    if coded.is_empty() || ft.steps == 0 {
        return Ok(None);
    }
    let images = data::load(&distill.data, Split::Train, distill.data_limit, preprocess)?;
    let held = held_back.map_or(0..0, |r| r.start.min(images.len())..r.end.min(images.len()));
    let pool = images.len() - held.len();
    if pool == 0 {
        return Err(Error::usage("--data", "has no training images to fine-tune on (but the check's)"));
    }
    let initial = flat.clone();
    let cfg = TrainConfig {
        steps: ft.steps,
        lr: ft.lr,
        lr_min: ft.lr / 100.0,
        warmup: (ft.steps / 20).max(1),
        betas: (0.9, 0.999),
        weight_decay: 0.0,
        ..CompressOptions::default().train_config(1)
    };
    let mut opt = AdamW::new(flat.len());
    let mut rng = Rng::new(seed ^ 0x4654);
    let [c, h, w] = images.shape;
    let batch = distill.kd_batch;
    let (mut first_loss, mut last_loss) = (f64::NAN, f64::NAN);
    for step in 0..ft.steps {
        let mut x = Vec::with_capacity(batch * c * h * w);
        for _ in 0..batch {
            let k = rng.below(pool);
            let k = if k >= held.start { k + held.len() } else { k };
            x.extend_from_slice(images.batch(k, k + 1).0);
        }
        let x = Tensor::from_vec(x, (batch, c, h, w), &device)?;
        let teacher = graph.forward(&x, &HashMap::new(), false)?.output;
        let mut vars = Vec::with_capacity(coded.len());
        let mut weights = HashMap::with_capacity(coded.len());
        let mut at = 0;
        for t in &coded {
            let n: usize = t.shape.iter().product();
            let u = Var::from_slice(&flat[at..at + n], t.shape.as_slice(), &device)?;
            at += n;
            // round(U)·s forward, the identity backward.
            let rounded = (u.as_tensor() + (u.as_tensor().round()? - u.as_tensor())?.detach())?;
            weights.insert(t.name.clone(), (rounded * t.step as f64)?);
            vars.push(u);
        }
        let student = graph.forward(&x, &weights, false)?.output;
        let kl = loss::kl_divergence(&student, &teacher, distill.temperature)?;
        let value = kl.to_scalar::<f32>()? as f64;
        if !value.is_finite() {
            return Err(Error::Training(format!("fine-tuning: the loss became {value} at step {step}")));
        }
        first_loss = if step == 0 { value } else { first_loss };
        last_loss = value;
        let grads = kl.backward()?;
        let mut g = Vec::with_capacity(flat.len());
        for u in &vars {
            match grads.get(u.as_tensor()) {
                Some(d) => g.extend(d.flatten_all()?.to_vec1::<f32>()?),
                None => g.extend(std::iter::repeat_n(0.0, u.as_tensor().elem_count())),
            }
        }
        opt.step(&mut flat, &g, &cfg, step);
        progress.step(step, value);
    }
    let mut changed = 0;
    let mut at = 0;
    for t in &coded {
        let n: usize = t.shape.iter().product();
        let m = entropy::MAX_CODE as f32;
        let codes: Vec<i32> = flat[at..at + n].iter().map(|u| u.round().clamp(-m, m) as i32).collect();
        changed += codes.iter().zip(&initial[at..at + n]).filter(|(q, p)| **q as f32 != **p).count();
        at += n;
        let max_code = codes.iter().map(|q| q.unsigned_abs()).max().unwrap_or(0).max(1);
        let mut bytes = t.step.to_le_bytes().to_vec();
        bytes.extend(entropy::encode(&codes, t.row));
        debug_assert!(coded_values(&bytes, n, t.row, max_code, false).is_ok());
        let Store::Coded(old) = &stores[t.index] else { unreachable!("collected from coded stores") };
        let Encoded::Coded { rung, .. } = **old else { unreachable!("collected from coded stores") };
        let encoded = Encoded::Coded { rung, max_code, row_scales: false, row: t.row as u64, bytes };
        stores[t.index] = Store::Coded(Arc::new(encoded));
    }
    Ok(Some(FinetuneReport {
        steps: ft.steps,
        batch,
        images: pool,
        tensors: coded.len(),
        first_loss,
        last_loss,
        changed,
        error_before: None,
        error_after: None,
        kept: true,
        seconds: start.elapsed().as_secs_f64(),
    }))
}
