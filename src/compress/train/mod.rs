//! Training the predictor to reconstruct kernels (data-free): the gemm executor's forward and
//! hand-written backward ([`crate::predictor::gemm`]) in the CPU trainer ([`cpu`]), stepped by
//! the one [`AdamW`]. No autograd graph is built per step.

mod adamw;
pub(crate) mod cpu;

pub use adamw::AdamW;

use crate::error::{Error, Result};
use crate::format::{Embedding, WeightDtype};
use crate::predictor::{layer_dims, Predictor, OUTPUTS};
use candle_core::Device;

/// Hyper-parameters of reconstruction training.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainConfig {
    pub hidden: usize,
    pub embedding: Embedding,
    pub steps: usize,
    /// Kernels per step.
    pub batch: usize,
    /// Peak learning rate; cosine decay to `lr_min` after `warmup` linear warm-up steps.
    pub lr: f64,
    pub lr_min: f64,
    pub warmup: usize,
    pub betas: (f64, f64),
    pub weight_decay: f64,
    /// Fraction of steps whose batch is sampled ∝ kernel L2 norm (NeRN: 0.2).
    pub magnitude_fraction: f64,
    pub seed: u64,
    /// The quantized dtype the predictor will be stored in (int8/int4), for
    /// quantization-aware training; `None` (or a float dtype): train in f32 only.
    pub quantize: Option<WeightDtype>,
    /// Fraction of the final steps that compute with the stored round trip of the parameters
    /// (straight-through estimator); 0: post-training rounding only.
    pub qat_fraction: f64,
}

impl TrainConfig {
    /// Learning rate at `step` (0-based).
    pub fn lr_at(&self, step: usize) -> f64 {
        if step < self.warmup {
            return self.lr * (step + 1) as f64 / self.warmup as f64;
        }
        let t = (step - self.warmup) as f64 / (self.steps - self.warmup).max(1) as f64;
        self.lr_min + 0.5 * (self.lr - self.lr_min) * (1.0 + (std::f64::consts::PI * t).cos())
    }

    /// Final steps that train quantization-aware: `qat_fraction` of `steps`, rounded, when
    /// `quantize` is a quantized dtype, else 0.
    pub fn qat_steps(&self) -> usize {
        match self.quantize {
            Some(d) if d.bits().is_some() => {
                ((self.qat_fraction * self.steps as f64).round() as usize).min(self.steps)
            }
            _ => 0,
        }
    }

    /// The dtype whose round trip step `step` computes with, if it is one of the
    /// [`Self::qat_steps`].
    pub fn quantized_at(&self, step: usize) -> Option<WeightDtype> {
        if step + self.qat_steps() >= self.steps {
            self.quantize
        } else {
            None
        }
    }
}

/// What the predictor must reproduce: per kernel a coordinate, a 3×3 target and its mask.
pub struct TrainData {
    /// `N×3`.
    pub coords: Vec<f32>,
    /// `N×9`.
    pub targets: Vec<f32>,
    /// `N×9` loss weights `w` (the loss is `Σ w·(out − t)²`): non-zero exactly on the cells
    /// that belong to the kernel.
    pub masks: Vec<f32>,
}

impl TrainData {
    /// Number of kernels.
    pub fn len(&self) -> usize {
        self.coords.len() / 3
    }

    /// Whether there is nothing to train on.
    pub fn is_empty(&self) -> bool {
        self.coords.is_empty()
    }
}

/// A small deterministic generator (SplitMix64): the same seed gives the same run everywhere.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        Rng(seed ^ 0x6a09_e667_f3bc_c909)
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn uniform(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform integer in [0, n).
    pub fn below(&mut self, n: usize) -> usize {
        (self.uniform() * n as f64) as usize
    }
}

/// PyTorch's default `Linear` initialization: weights and biases uniform in ±1/√in.
pub fn init_predictor(hidden: usize, embedding: Embedding, seed: u64, device: &Device) -> Result<Predictor> {
    let mut rng = Rng::new(seed);
    let mut flat = Vec::new();
    for (i, o) in layer_dims(hidden, embedding.levels as usize) {
        let bound = 1.0 / (i as f64).sqrt();
        flat.extend((0..i * o + o).map(|_| ((rng.uniform() * 2.0 - 1.0) * bound) as f32));
    }
    Predictor::from_flat(hidden, embedding, &flat, device)
}

/// Per-step report to a progress display.
pub trait Progress {
    fn step(&mut self, step: usize, loss: f64);

    /// Work other than training steps: `done` of `total` units of the stage `what` (the
    /// streaming compress's passes, the token calibration's runs). Ignored by default.
    fn stage(&mut self, what: &str, done: usize, total: usize) {
        let _ = (what, done, total);
    }
}

impl<F: FnMut(usize, f64)> Progress for F {
    fn step(&mut self, step: usize, loss: f64) {
        self(step, loss)
    }
}

/// Trains a predictor (from `init`, or freshly initialized) to reconstruct `data` on the CPU;
/// the result lives on `device`. Returns it with the training loss (masked RMSE) of each step.
pub fn train(
    cfg: &TrainConfig,
    data: &TrainData,
    init: Option<Predictor>,
    device: &Device,
    progress: &mut dyn Progress,
) -> Result<(Predictor, Vec<f64>)> {
    if data.is_empty() {
        return Err(Error::Training("no kernels to train on".into()));
    }
    let n = data.len();
    let predictor = match init {
        Some(p) => p,
        None => init_predictor(cfg.hidden, cfg.embedding, cfg.seed, device)?,
    };
    let inputs = crate::predictor::gemm::embed(&data.coords, cfg.embedding);
    let levels = cfg.embedding.levels as usize;
    let mut trainer =
        cpu::CpuTrainer::new(predictor.hidden, levels, predictor.to_flat()?, inputs, cfg.batch.min(n));
    let cells: Vec<f32> =
        data.masks.chunks(OUTPUTS).map(|m| m.iter().filter(|&&w| w != 0.0).count() as f32).collect();
    // Sample ∝ the kernel's norm in the original weights (the targets are divided by the scale,
    // which is the weight).
    let weighted: Vec<f32> = data.targets.iter().zip(&data.masks).map(|(t, m)| t * m).collect();
    let sampler = MagnitudeSampler::new(&weighted);
    let mut rng = Rng::new(cfg.seed.wrapping_add(1));
    let mut losses = Vec::with_capacity(cfg.steps.min(1 << 16));
    let mut first_loss = None;
    for step in 0..cfg.steps {
        let by_magnitude = rng.uniform() < cfg.magnitude_fraction;
        let idx: Vec<u32> = (0..cfg.batch.min(n))
            .map(|_| if by_magnitude { sampler.sample(&mut rng) } else { rng.below(n) } as u32)
            .collect();
        let count: f32 = idx.iter().map(|&i| cells[i as usize]).sum::<f32>().max(1.0);
        trainer.quantize(cfg.quantized_at(step))?;
        let rmse = trainer.step(&idx, data, count, cfg, step)?.sqrt();
        if !rmse.is_finite() {
            return Err(Error::Training(format!(
                "the loss became {rmse} at step {step}; lower --lr or check the model's weights for NaN/inf"
            )));
        }
        let first = *first_loss.get_or_insert(rmse);
        if step > 100 && rmse > 100.0 * first {
            return Err(Error::Training(format!(
                "the loss diverged ({rmse:.3e} at step {step}, {first:.3e} at the start); lower --lr"
            )));
        }
        losses.push(rmse);
        progress.step(step, rmse);
    }
    let trained = Predictor::from_flat(predictor.hidden, predictor.embedding, &trainer.params, device)?;
    Ok((trained, losses))
}

/// Samples kernels with probability ∝ their L2 norm (NeRN's magnitude-oriented batching).
pub(crate) struct MagnitudeSampler {
    cumulative: Vec<f64>,
}

impl MagnitudeSampler {
    pub(crate) fn new(targets: &[f32]) -> Self {
        let mut acc = 0.0;
        let cumulative = targets
            .chunks(OUTPUTS)
            .map(|k| {
                acc += k.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
                acc
            })
            .collect();
        MagnitudeSampler { cumulative }
    }

    pub(crate) fn sample(&self, rng: &mut Rng) -> usize {
        let total = *self.cumulative.last().unwrap_or(&0.0);
        if total <= 0.0 {
            return rng.below(self.cumulative.len());
        }
        let x = rng.uniform() * total;
        self.cumulative.partition_point(|&c| c <= x).min(self.cumulative.len() - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u64) -> TrainData {
        let mut rng = Rng::new(seed);
        TrainData {
            coords: (0..n * 3).map(|_| rng.uniform() as f32).collect(),
            targets: (0..n * OUTPUTS).map(|_| rng.uniform() as f32 - 0.5).collect(),
            // Mixed weights and a masked-out cell, as 1×1 kernels and filter scales give.
            masks: (0..n * OUTPUTS).map(|i| if i % 9 == 4 { 0.0 } else { 0.5 + (i % 3) as f32 }).collect(),
        }
    }

    fn config(steps: usize, lr: f64) -> TrainConfig {
        TrainConfig {
            hidden: 16,
            embedding: Embedding { base: 1.25, levels: 4 },
            steps,
            batch: 32,
            lr,
            lr_min: 1e-6,
            warmup: 1,
            betas: (0.9, 0.999),
            weight_decay: 0.01,
            magnitude_fraction: 0.2,
            seed: 3,
            quantize: None,
            qat_fraction: 0.0,
        }
    }

    /// One step's gradient (the gemm executor's forward and hand-written backward of the
    /// weighted squared error, in `CHUNKS` parts) equals candle's autograd through the candle
    /// executor, on the f32 parameters and on their int8 round trip (quantization-aware), with
    /// masked cells and kernels drawn twice.
    #[test]
    fn cpu_step_gradient_matches_candle_autograd() {
        use crate::predictor::Linear;
        use candle_core::{Tensor, Var};
        let (d, cfg) = (data(100, 1), config(5, 1e-2));
        let levels = cfg.embedding.levels as usize;
        let p = init_predictor(cfg.hidden, cfg.embedding, 4, &Device::Cpu).unwrap();
        let idx: Vec<u32> = (0..48).map(|i| (i * 37 % 100) as u32).chain([3, 3, 50]).collect();
        let count = idx
            .iter()
            .map(|&i| d.masks[9 * i as usize..][..9].iter().filter(|&&m| m != 0.0).count())
            .sum::<usize>() as f32;
        let rows = |v: &[f32], w: usize| {
            idx.iter().flat_map(|&i| v[w * i as usize..][..w].to_vec()).collect::<Vec<_>>()
        };
        let tensor = |v: Vec<f32>, w: usize| Tensor::from_vec(v, (idx.len(), w), &Device::Cpu).unwrap();
        for quantize in [None, Some(WeightDtype::Int8)] {
            let inputs = crate::predictor::gemm::embed(&d.coords, cfg.embedding);
            let mut t = cpu::CpuTrainer::new(cfg.hidden, levels, p.to_flat().unwrap(), inputs, idx.len());
            t.quantize(quantize).unwrap();
            let mse = t.gradients(&idx, &d, count);
            let q = Predictor::from_flat(cfg.hidden, cfg.embedding, t.effective(), &Device::Cpu).unwrap();
            let vars: Vec<(Var, Var)> = q
                .layers
                .iter()
                .map(|l| (Var::from_tensor(&l.w).unwrap(), Var::from_tensor(&l.b).unwrap()))
                .collect();
            let layers =
                vars.iter().map(|(w, b)| Linear { w: w.as_tensor().clone(), b: b.as_tensor().clone() });
            let q = Predictor { layers: layers.collect(), ..q };
            let out = q.predict(&tensor(rows(&d.coords, 3), 3)).unwrap();
            let diff = (out - tensor(rows(&d.targets, 9), 9)).unwrap();
            let loss = ((&diff * &diff).unwrap() * tensor(rows(&d.masks, 9), 9)).unwrap().sum_all().unwrap();
            let loss = (loss / count as f64).unwrap();
            let store = loss.backward().unwrap();
            let grad = |v: &Var| store.get(v.as_tensor()).unwrap().clone();
            let layers = vars.iter().map(|(w, b)| Linear { w: grad(w), b: grad(b) }).collect();
            let expect = Predictor { layers, ..q }.to_flat().unwrap();
            let want = loss.to_scalar::<f32>().unwrap() as f64;
            assert!((mse - want).abs() <= 1e-5 * want, "{quantize:?}: loss {mse} vs {want}");
            let scale = expect.iter().fold(0f32, |m, v| m.max(v.abs()));
            let max = t.grads().iter().zip(&expect).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            println!("{quantize:?}: max |gemm − autograd| = {max:.3e}, largest gradient {scale:.3e}");
            assert!(scale > 0.0 && max <= 1e-5 * scale, "{quantize:?}: {max} vs {scale}");
        }
    }

    #[test]
    fn training_fits_a_smooth_target() {
        let mut d = data(200, 2);
        // A learnable target: a smooth function of the coordinate.
        for (k, c) in d.coords.chunks(3).enumerate() {
            for j in 0..OUTPUTS {
                d.targets[k * OUTPUTS + j] = (3.0 * c[1] + j as f32).sin() * 0.5 + c[2] * 0.3;
            }
        }
        let (_, losses) = train(&config(300, 5e-3), &d, None, &Device::Cpu, &mut |_, _| {}).unwrap();
        let (first, last) =
            (losses[..10].iter().sum::<f64>(), losses[losses.len() - 10..].iter().sum::<f64>());
        assert!(last < 0.3 * first, "first {first} last {last}");
    }

    #[test]
    fn a_runaway_learning_rate_stops_with_an_error() {
        let r = train(&config(400, 1e4), &data(100, 3), None, &Device::Cpu, &mut |_, _| {});
        assert!(matches!(r, Err(Error::Training(_))), "{:?}", r.map(|(_, l)| l.last().copied()));
    }
}
