//! Knowledge distillation through the rebuilt network into the predictor, and the training
//! schedules that combine it with reconstruction (see `docs/distillation.md`).
//!
//! The predictor ([`crate::predictor`]) computes the kernels ([`kernels`]), the network runs on
//! training images with those kernels ([`crate::compress::graph`]), the losses ([`loss`]) compare it with
//! a teacher, and candle's autograd carries the gradients back into the predictor's weights.

pub mod kernels;
pub mod loss;

use crate::compress::graph::Graph;
use crate::compress::train::{self, MagnitudeSampler, Progress, Rng, TrainConfig, TrainData};
use crate::data::{self, DataSource, Dataset, Preprocess, Split};
use crate::error::{Error, Result};
use crate::predictor::{Linear, Predictor, OUTPUTS};
use candle_core::{Device, Tensor, Var};
use kernels::PredictedKernels;
use std::path::PathBuf;

/// How the predictor is trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Schedule {
    /// Reconstruction only (data-free).
    #[default]
    Recon,
    /// NeRN: reconstruction on every step plus distillation on evenly spaced steps.
    Joint,
    /// Reconstruction, then distillation (repeated `rounds` times).
    Decoupled,
}

impl Schedule {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "recon" => Ok(Schedule::Recon),
            "joint" => Ok(Schedule::Joint),
            "decoupled" => Ok(Schedule::Decoupled),
            _ => Err(Error::usage("--schedule", format!("`{s}`: expected recon, joint or decoupled"))),
        }
    }
}

/// Distillation settings (unused by `Schedule::Recon`).
#[derive(Debug, Clone)]
pub struct DistillOptions {
    pub schedule: Schedule,
    /// Decoupled: reconstruction → distillation rounds.
    pub rounds: usize,
    /// Steps that include a distillation term (of the total `--steps`).
    pub kd_steps: usize,
    /// Training images per distillation step.
    pub kd_batch: usize,
    /// Peak learning rate of a decoupled distillation stage.
    pub kd_lr: f64,
    pub temperature: f64,
    /// Weight of the output KL divergence.
    pub kl_weight: f64,
    /// Weight of the feature-map loss (original teacher only).
    pub feature_weight: f64,
    /// Weight of the reconstruction loss in the joint schedule (the decoupled distillation
    /// stage has none).
    pub recon_weight: f64,
    /// Distillation teacher; `None`: the original network.
    pub teacher: Option<PathBuf>,
    /// Training images (the train split is used).
    pub data: DataSource,
    /// Use only the first N training images.
    pub data_limit: Option<usize>,
}

impl Default for DistillOptions {
    fn default() -> Self {
        DistillOptions {
            schedule: Schedule::Recon,
            rounds: 1,
            kd_steps: 200,
            kd_batch: 32,
            kd_lr: 1e-4,
            temperature: 4.0,
            kl_weight: 1.0,
            feature_weight: 1.0,
            recon_weight: 1.0,
            teacher: None,
            data: DataSource::FashionMnist(None),
            data_limit: None,
        }
    }
}

impl DistillOptions {
    /// Checks the options against the total step budget; errors name the flag.
    pub fn validate(&self, steps: usize) -> Result<()> {
        if self.schedule == Schedule::Recon {
            if self.rounds != 1 {
                return Err(Error::usage("--rounds", "needs --schedule decoupled"));
            }
            return Ok(());
        }
        if self.rounds == 0 || (self.rounds > 1 && self.schedule != Schedule::Decoupled) {
            return Err(Error::usage("--rounds", "must be 1, or more with --schedule decoupled"));
        }
        if self.kd_steps == 0 || self.kd_steps > steps {
            return Err(Error::usage("--kd-steps", format!("must be in 1..=--steps ({steps})")));
        }
        if self.schedule == Schedule::Decoupled && steps - self.kd_steps < self.rounds {
            return Err(Error::usage("--kd-steps", "leaves no reconstruction steps; raise --steps"));
        }
        if self.kd_steps < self.rounds {
            return Err(Error::usage("--kd-steps", "must be at least --rounds"));
        }
        if self.kd_batch == 0 || self.kd_batch > 4096 {
            return Err(Error::usage("--kd-batch", "must be in 1..=4096"));
        }
        for (flag, v) in [("--kd-lr", self.kd_lr), ("--temperature", self.temperature)] {
            if !(v.is_finite() && v > 0.0) {
                return Err(Error::usage(flag, "must be a positive number"));
            }
        }
        for (flag, v) in [
            ("--kl-weight", self.kl_weight),
            ("--feature-weight", self.feature_weight),
            ("--recon-weight", self.recon_weight),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(Error::usage(flag, "must be a non-negative number"));
            }
        }
        Ok(())
    }
}

/// The network being compressed, as the distillation needs it.
pub struct Student {
    pub graph: Graph,
    pub kernels: PredictedKernels,
}

/// Loss values of one distillation step (before weighting).
#[derive(Debug, Clone, Copy, Default, serde::Serialize)]
pub struct KdLosses {
    /// Optimizer step (over the whole schedule).
    pub step: usize,
    pub kl: f64,
    pub feature: f64,
    /// Wall time of the distillation forward + backward (teacher included).
    pub seconds: f64,
}

/// One distillation term: images, teacher and the loss weights.
pub struct Distiller {
    student: Student,
    teacher: Graph,
    /// The teacher is the original network: feature maps are comparable.
    same_network: bool,
    images: Dataset,
    opts: DistillOptions,
    rng: Rng,
    device: Device,
}

impl Distiller {
    /// Loads the teacher and the training images.
    pub fn new(
        student: Student,
        opts: &DistillOptions,
        preprocess: &Preprocess,
        seed: u64,
        device: &Device,
    ) -> Result<Self> {
        let (teacher, same_network) = match &opts.teacher {
            Some(path) => (Graph::from_onnx_file(path)?, false),
            None => (student.graph.clone(), true),
        };
        let images = data::load(&opts.data, Split::Train, opts.data_limit, preprocess)?;
        if images.is_empty() {
            return Err(Error::usage("--data", "has no training images"));
        }
        Ok(Distiller {
            student,
            teacher,
            same_network,
            images,
            opts: opts.clone(),
            rng: Rng::new(seed ^ 0x4b44),
            device: device.clone(),
        })
    }

    /// A random batch of training images `(B, C, H, W)`.
    pub fn batch(&mut self) -> Result<Tensor> {
        let [c, h, w] = self.images.shape;
        let size = c * h * w;
        let mut x = Vec::with_capacity(self.opts.kd_batch * size);
        for _ in 0..self.opts.kd_batch {
            let i = self.rng.below(self.images.len());
            x.extend_from_slice(self.images.batch(i, i + 1).0);
        }
        Ok(Tensor::from_vec(x, (self.opts.kd_batch, c, h, w), &self.device)?)
    }

    /// Distillation loss on a fresh batch and its gradient with respect to each predictor
    /// weight (scaled by the loss weights).
    pub fn grads(
        &mut self,
        params: &[Linear],
        hidden: usize,
        embedding: crate::format::Embedding,
    ) -> Result<(KdLosses, Vec<Linear>)> {
        let start = std::time::Instant::now();
        let x = self.batch()?;
        let (mut losses, grads) = self.grads_on(&x, params, hidden, embedding)?;
        losses.seconds = start.elapsed().as_secs_f64();
        Ok((losses, grads))
    }

    /// The weighted distillation loss of the network rebuilt by `predictor` on images `x`.
    pub fn loss(&self, x: &Tensor, predictor: &Predictor) -> Result<(Tensor, KdLosses)> {
        let teacher = self.teacher_forward(x)?;
        let weights = self.student.kernels.weights(predictor)?;
        self.loss_with(x, &weights, &teacher)
    }

    /// Whether the feature-map term is used.
    fn features(&self) -> bool {
        self.same_network && self.opts.feature_weight > 0.0
    }

    /// The teacher's logits (and feature maps when they are used) on `x`.
    fn teacher_forward(&self, x: &Tensor) -> Result<crate::compress::graph::Forward> {
        self.teacher.forward(x, &Default::default(), self.features())
    }

    /// The weighted distillation loss of the student with predicted tensors `weights` on `x`.
    fn loss_with(
        &self,
        x: &Tensor,
        weights: &std::collections::HashMap<String, Tensor>,
        teacher: &crate::compress::graph::Forward,
    ) -> Result<(Tensor, KdLosses)> {
        let features = self.features();
        let out = self.student.graph.forward(x, weights, features)?;
        let kl = loss::kl_divergence(&out.output, &teacher.output, self.opts.temperature)?;
        let mut losses = KdLosses { step: 0, kl: kl.to_scalar::<f32>()? as f64, feature: 0.0, seconds: 0.0 };
        let mut total = (kl * self.opts.kl_weight)?;
        if features {
            let f = loss::feature_loss(&out.features, &teacher.features)?;
            losses.feature = f.to_scalar::<f32>()? as f64;
            total = (total + (f * self.opts.feature_weight)?)?;
        }
        Ok((total, losses))
    }

    /// [`Self::loss`] on `x` and its gradient with respect to each predictor weight.
    fn grads_on(
        &self,
        x: &Tensor,
        params: &[Linear],
        hidden: usize,
        embedding: crate::format::Embedding,
    ) -> Result<(KdLosses, Vec<Linear>)> {
        let vars = params
            .iter()
            .map(|l| Ok((Var::from_tensor(&l.w)?, Var::from_tensor(&l.b)?)))
            .collect::<Result<Vec<_>>>()?;
        let layers =
            vars.iter().map(|(w, b)| Linear { w: w.as_tensor().clone(), b: b.as_tensor().clone() }).collect();
        let (total, losses) = self.loss(x, &Predictor { hidden, embedding, layers })?;
        let store = total.backward()?;
        // Detached: a gradient keeps its whole backward graph alive otherwise, and AdamW's
        // moments would chain every step's graph (memory grew by ~20 MB per step).
        let grad = |v: &Var| -> Result<Tensor> {
            match store.get(v.as_tensor()) {
                Some(g) => Ok(g.detach()),
                None => Ok(v.as_tensor().zeros_like()?),
            }
        };
        let grads =
            vars.iter().map(|(w, b)| Ok(Linear { w: grad(w)?, b: grad(b)? })).collect::<Result<Vec<_>>>()?;
        Ok((losses, grads))
    }
}

/// Wall time of the pieces of one [`Distiller::step_cpu`], seconds.
#[derive(Debug, Clone, Copy, Default)]
pub struct StepTimes {
    /// Predictor forward over every block (gemm trainer).
    pub predict: f64,
    /// Block outputs → the network's tensors (gather × row scale).
    pub gather: f64,
    /// Teacher forward, no gradient.
    pub teacher: f64,
    /// Student forward and the losses.
    pub forward: f64,
    /// Backward through the losses and the network (candle autograd, fused conv backward).
    pub backward: f64,
    /// Tensor gradients → block-output gradients (scatter × row scale).
    pub scatter: f64,
    /// Predictor backward over every block.
    pub predictor_backward: f64,
    /// AdamW.
    pub adamw: f64,
}

impl StepTimes {
    pub fn total(&self) -> f64 {
        self.predict
            + self.gather
            + self.teacher
            + self.forward
            + self.backward
            + self.scatter
            + self.predictor_backward
            + self.adamw
    }
}

/// The predictor of a distillation stage on the CPU: the gemm trainer of [`train`] running
/// forward and backward over every block at once, its AdamW, and where each element of the
/// network's predicted tensors comes from. Replaces candle autograd through the predictor
/// (and candle's AdamW) for the decoupled distillation stage.
pub struct KernelTrainer {
    trainer: train::cpu::CpuTrainer,
    pass: train::cpu::BlockPass,
    layers: Vec<kernels::HostLayer>,
    out: Vec<f32>,
    dout: Vec<f32>,
    hidden: usize,
    embedding: crate::format::Embedding,
}

impl KernelTrainer {
    /// Starts from `init` with fresh AdamW moments.
    pub fn new(kernels: &PredictedKernels, init: &Predictor) -> Result<Self> {
        let (inputs, layers) = kernels.host()?;
        let levels = init.embedding.levels as usize;
        let trainer = train::cpu::CpuTrainer::new(init.hidden, levels, init.to_flat()?, inputs, 1);
        let pass = trainer.block_pass();
        let n = kernels.len();
        Ok(KernelTrainer {
            trainer,
            pass,
            layers,
            out: vec![0.0; n * OUTPUTS],
            dout: vec![0.0; n * OUTPUTS],
            hidden: init.hidden,
            embedding: init.embedding,
        })
    }

    /// The current predictor.
    pub fn predictor(&self, device: &Device) -> Result<Predictor> {
        Predictor::from_flat(self.hidden, self.embedding, &self.trainer.params, device)
    }
}

impl Distiller {
    /// The CPU trainer of [`Self::step_cpu`] for this student, starting from `init`.
    pub fn kernel_trainer(&self, init: &Predictor) -> Result<KernelTrainer> {
        KernelTrainer::new(&self.student.kernels, init)
    }

    /// One distillation step on a fresh batch: the predictor forward over every block, the
    /// network's tensors as candle `Var`s, the losses and candle's backward through the
    /// network, the tensor gradients scattered back onto the block outputs, the predictor
    /// backward and AdamW at `cfg.lr_at(step)`.
    pub fn step_cpu(&mut self, kt: &mut KernelTrainer, cfg: &TrainConfig, step: usize) -> Result<KdLosses> {
        let start = std::time::Instant::now();
        let x = self.batch()?;
        let (mut losses, _) = self.step_cpu_on(&x, kt, cfg, step)?;
        losses.seconds = start.elapsed().as_secs_f64();
        Ok(losses)
    }

    /// [`Self::step_cpu`] on images `x`, with the time of each piece.
    pub fn step_cpu_on(
        &self,
        x: &Tensor,
        kt: &mut KernelTrainer,
        cfg: &TrainConfig,
        step: usize,
    ) -> Result<(KdLosses, StepTimes)> {
        let mut times = StepTimes::default();
        let mut clock = std::time::Instant::now();
        let mut lap = |slot: &mut f64| {
            let now = std::time::Instant::now();
            *slot = (now - clock).as_secs_f64();
            clock = now;
        };
        kt.trainer.predict_all(&mut kt.pass, &mut kt.out);
        lap(&mut times.predict);
        let mut vars = Vec::with_capacity(kt.layers.len());
        let mut weights = std::collections::HashMap::with_capacity(kt.layers.len());
        for l in &kt.layers {
            let v: Vec<f32> = match &l.scales {
                Some(s) => l.source.iter().zip(s).map(|(&i, &s)| kt.out[i as usize] * s).collect(),
                None => l.source.iter().map(|&i| kt.out[i as usize]).collect(),
            };
            let var = Var::from_vec(v, l.shape.clone(), &self.device)?;
            weights.insert(l.name.clone(), var.as_tensor().clone());
            vars.push(var);
        }
        lap(&mut times.gather);
        let teacher = self.teacher_forward(x)?;
        lap(&mut times.teacher);
        let (total, losses) = self.loss_with(x, &weights, &teacher)?;
        lap(&mut times.forward);
        let store = total.backward()?;
        lap(&mut times.backward);
        kt.dout.fill(0.0);
        for (l, v) in kt.layers.iter().zip(&vars) {
            let Some(g) = store.get(v.as_tensor()) else { continue };
            let g = g.flatten_all()?.to_vec1::<f32>()?;
            match &l.scales {
                Some(s) => {
                    for ((&i, &s), g) in l.source.iter().zip(s).zip(&g) {
                        kt.dout[i as usize] += g * s;
                    }
                }
                None => {
                    for (&i, g) in l.source.iter().zip(&g) {
                        kt.dout[i as usize] += g;
                    }
                }
            }
        }
        lap(&mut times.scatter);
        kt.trainer.backward_all(&mut kt.pass, &kt.dout);
        lap(&mut times.predictor_backward);
        kt.trainer.apply_adamw(cfg, step)?;
        lap(&mut times.adamw);
        Ok((losses, times))
    }
}

/// Recon batches as [`train::train`] draws them (uniform, or ∝ kernel norm on a fraction).
struct ReconBatches {
    sampler: MagnitudeSampler,
    cells: Vec<f32>,
    rng: Rng,
}

impl ReconBatches {
    fn new(data: &TrainData, seed: u64) -> Self {
        let weighted: Vec<f32> = data.targets.iter().zip(&data.masks).map(|(t, m)| t * m).collect();
        let cells =
            data.masks.chunks(OUTPUTS).map(|m| m.iter().filter(|&&w| w != 0.0).count() as f32).collect();
        ReconBatches { sampler: MagnitudeSampler::new(&weighted), cells, rng: Rng::new(seed) }
    }

    fn next(&mut self, batch: usize, fraction: f64) -> (Vec<u32>, f32) {
        let n = self.cells.len();
        let by_magnitude = self.rng.uniform() < fraction;
        let idx: Vec<u32> = (0..batch.min(n))
            .map(|_| if by_magnitude { self.sampler.sample(&mut self.rng) } else { self.rng.below(n) } as u32)
            .collect();
        let count = idx.iter().map(|&i| self.cells[i as usize]).sum::<f32>().max(1.0);
        (idx, count)
    }
}

/// Trains with a schedule: `cfg.steps` is the total number of optimizer steps of every
/// schedule (see `docs/distillation.md` for how they are split). Returns the predictor, the
/// reconstruction RMSE per step (NaN on steps without one) and the distillation losses.
pub fn fit(
    cfg: &TrainConfig,
    data: &TrainData,
    distiller: &mut Distiller,
    opts: &DistillOptions,
    device: &Device,
    progress: &mut dyn Progress,
) -> Result<(Predictor, Vec<f64>, Vec<KdLosses>)> {
    crate::linalg::keep_freed_memory();
    let mut kd_log = Vec::new();
    let log = &mut kd_log;
    let (p, losses) = match opts.schedule {
        Schedule::Recon => train::train(cfg, data, None, device, progress)?,
        Schedule::Joint => {
            let p = train::init_predictor(cfg.hidden, cfg.embedding, cfg.seed, device)?;
            let every = cfg.steps / opts.kd_steps;
            let kd_at = |s: usize| (s + 1).is_multiple_of(every) && (s + 1) / every <= opts.kd_steps;
            stage(cfg, data, distiller, p, opts.recon_weight, kd_at, 0, progress, log)?
        }
        Schedule::Decoupled => {
            let mut predictor = None;
            let mut losses = Vec::new();
            let mut done = 0;
            for r in 0..opts.rounds {
                let (rc, kc) = decoupled_round(cfg, opts, r);
                let at = done;
                let mut shifted = |s: usize, l: f64| progress.step(at + s, l);
                let (p, l) = train::train(&rc, data, predictor.take(), device, &mut shifted)?;
                done += rc.steps;
                losses.extend(l);
                let (p, l) = stage(&kc, data, distiller, p, 0.0, |_| true, done, progress, log)?;
                done += kc.steps;
                losses.extend(l);
                predictor = Some(p);
            }
            (predictor.expect("at least one round"), losses)
        }
    };
    Ok((p, losses, kd_log))
}

/// The reconstruction and distillation stages of round `r` of the decoupled schedule. With a
/// quantized predictor dtype the whole distillation stage is quantization-aware (the
/// reconstruction stage keeps `cfg.qat_fraction`): it is the last to touch the predictor, and
/// its network loss should see the stored weights.
fn decoupled_round(cfg: &TrainConfig, opts: &DistillOptions, r: usize) -> (TrainConfig, TrainConfig) {
    let recon_total = cfg.steps - opts.kd_steps;
    let split = |total: usize| total / opts.rounds + usize::from(r < total % opts.rounds);
    let rc = TrainConfig {
        steps: split(recon_total),
        warmup: (split(recon_total) / 50).max(1),
        seed: cfg.seed.wrapping_add(r as u64 * 1000),
        ..cfg.clone()
    };
    let kc = TrainConfig {
        steps: split(opts.kd_steps),
        lr: opts.kd_lr,
        warmup: (split(opts.kd_steps) / 20).max(1),
        seed: cfg.seed.wrapping_add(r as u64 * 1000 + 500),
        qat_fraction: 1.0,
        ..cfg.clone()
    };
    (rc, kc)
}

/// Optimizer steps of [`fit`] that compute with the stored round trip of the predictor.
pub fn qat_steps(cfg: &TrainConfig, opts: &DistillOptions) -> usize {
    match opts.schedule {
        Schedule::Recon | Schedule::Joint => cfg.qat_steps(),
        Schedule::Decoupled => (0..opts.rounds)
            .map(|r| {
                let (rc, kc) = decoupled_round(cfg, opts, r);
                rc.qat_steps() + kc.qat_steps()
            })
            .sum(),
    }
}

/// `cfg.steps` AdamW steps from `init`: reconstruction weighted by `recon_weight` (skipped
/// when 0; the CPU trainer of [`train`]) plus distillation on the steps where `kd_at` holds
/// (candle autograd through the candle predictor). Reports step `offset + s`. Returns the
/// reconstruction RMSE per step (NaN when not computed).
#[allow(clippy::too_many_arguments)]
fn stage(
    cfg: &TrainConfig,
    data: &TrainData,
    distiller: &mut Distiller,
    init: Predictor,
    recon_weight: f64,
    kd_at: impl Fn(usize) -> bool,
    offset: usize,
    progress: &mut dyn Progress,
    log: &mut Vec<KdLosses>,
) -> Result<(Predictor, Vec<f64>)> {
    let device = init.device().clone();
    if recon_weight == 0.0 && device.is_cpu() {
        return distill_stage(cfg, distiller, init, kd_at, offset, progress, log);
    }
    let (hidden, embedding) = (init.hidden, init.embedding);
    let inputs = crate::predictor::gemm::embed(&data.coords, embedding);
    let batch = cfg.batch.min(data.len()).max(1);
    let mut trainer =
        train::cpu::CpuTrainer::new(hidden, embedding.levels as usize, init.to_flat()?, inputs, batch);
    let mut batches = ReconBatches::new(data, cfg.seed.wrapping_add(1));
    let mut losses = Vec::with_capacity(cfg.steps);
    for step in 0..cfg.steps {
        trainer.quantize(cfg.quantized_at(step))?;
        let mut rmse = f64::NAN;
        let recon = recon_weight > 0.0;
        if recon {
            let (idx, count) = batches.next(cfg.batch, cfg.magnitude_fraction);
            rmse = trainer.gradients(&idx, data, count).sqrt();
            if recon_weight != 1.0 {
                let w = recon_weight as f32;
                trainer.grads_mut().iter_mut().for_each(|x| *x *= w);
            }
        }
        let kd = kd_at(step);
        if kd {
            let layers = Predictor::from_flat(hidden, embedding, trainer.effective(), &device)?.layers;
            let (kd, g) = distiller.grads(&layers, hidden, embedding)?;
            if !(kd.kl.is_finite() && kd.feature.is_finite()) {
                return Err(Error::Training(format!(
                    "the distillation loss became non-finite at step {}; lower --kd-lr",
                    offset + step
                )));
            }
            log.push(KdLosses { step: offset + step, ..kd });
            let g = Predictor { hidden, embedding, layers: g }.to_flat()?;
            let grads = trainer.grads_mut();
            if recon {
                grads.iter_mut().zip(&g).for_each(|(a, b)| *a += b);
            } else {
                grads.copy_from_slice(&g);
            }
        }
        if recon || kd {
            trainer.apply_adamw(cfg, step)?;
        }
        progress.step(offset + step, rmse);
        losses.push(rmse);
    }
    Ok((Predictor::from_flat(hidden, embedding, &trainer.params, &device)?, losses))
}

/// [`stage`] without reconstruction on the CPU: every step through [`Distiller::step_cpu`].
fn distill_stage(
    cfg: &TrainConfig,
    distiller: &mut Distiller,
    init: Predictor,
    kd_at: impl Fn(usize) -> bool,
    offset: usize,
    progress: &mut dyn Progress,
    log: &mut Vec<KdLosses>,
) -> Result<(Predictor, Vec<f64>)> {
    let device = init.device().clone();
    // Quantization-aware from the start: begin at the stored predictor itself. A QAT phase
    // leaves the f32 parameters hovering on rounding boundaries, and the first steps of a fresh
    // AdamW (each parameter moves by ≈ lr) then flip thousands of codes together (ResNet-20,
    // int8, h = 180: KL 0.72 → 10.7 within 4 steps, 10.66% top-1 after 100 steps).
    let init = match cfg.quantized_at(0) {
        Some(d) => init.rounded(d)?,
        None => init,
    };
    let mut kt = distiller.kernel_trainer(&init)?;
    for step in 0..cfg.steps {
        if kd_at(step) {
            kt.trainer.quantize(cfg.quantized_at(step))?;
            let kd = distiller.step_cpu(&mut kt, cfg, step)?;
            if !(kd.kl.is_finite() && kd.feature.is_finite()) {
                return Err(Error::Training(format!(
                    "the distillation loss became non-finite at step {}; lower --kd-lr",
                    offset + step
                )));
            }
            log.push(KdLosses { step: offset + step, ..kd });
        }
        progress.step(offset + step, f64::NAN);
    }
    Ok((kt.predictor(&device)?, vec![f64::NAN; cfg.steps]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::{make_plan, CompressOptions, Plan};

    /// A distiller for the bundled ResNet-20 (teacher: itself) without a dataset, a predictor
    /// after a short reconstruction, and a fixed batch of noise images.
    fn setup(hidden: usize) -> (Distiller, Predictor, TrainConfig, Tensor) {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples/models/resnet20_fashion_mnist.onnx");
        let model = crate::ingest::load(&path).unwrap();
        let opts = CompressOptions::default();
        let Plan { layers: plans, values, .. } = make_plan(&model, &opts).unwrap();
        let graph = Graph::from_onnx_file(&path).unwrap();
        let kernels = PredictedKernels::new(&plans, &model, opts.embedding, &Device::Cpu).unwrap();
        let distiller = Distiller {
            teacher: graph.clone(),
            student: Student { graph, kernels },
            same_network: true,
            images: Dataset {
                images: vec![],
                labels: vec![],
                shape: [1, 28, 28],
                classes: 10,
                origin: "none".into(),
            },
            opts: DistillOptions::default(),
            rng: Rng::new(0),
            device: Device::Cpu,
        };
        let cfg = TrainConfig {
            hidden,
            embedding: opts.embedding,
            steps: 200,
            batch: 2048,
            lr: 5e-3,
            lr_min: 1e-6,
            warmup: 4,
            betas: (0.9, 0.999),
            weight_decay: 0.0,
            magnitude_fraction: 0.2,
            seed: 1,
            quantize: None,
            qat_fraction: 0.0,
        };
        let data = crate::compress::train_data(&plans, &values);
        let (p, _) = train::train(&cfg, &data, None, &Device::Cpu, &mut |_, _| {}).unwrap();
        let mut rng = Rng::new(5);
        let x: Vec<f32> = (0..4 * 784).map(|_| rng.uniform() as f32 * 2.0 - 1.0).collect();
        (distiller, p, cfg, Tensor::from_vec(x, (4, 1, 28, 28), &Device::Cpu).unwrap())
    }

    fn total(d: &Distiller, x: &Tensor, p: &Predictor) -> f64 {
        d.loss(x, p).unwrap().0.to_scalar::<f32>().unwrap() as f64
    }

    /// The autograd gradient through network → kernels → predictor matches central finite
    /// differences on the predictor's output layer (its largest entries).
    #[test]
    fn distillation_gradient_matches_finite_differences() {
        let (d, p, _, x) = setup(16);
        let (_, grads) = d.grads_on(&x, &p.layers, p.hidden, p.embedding).unwrap();
        let g = grads[4].w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let mut order: Vec<usize> = (0..g.len()).collect();
        order.sort_by(|&a, &b| g[b].abs().total_cmp(&g[a].abs()));
        let w = p.layers[4].w.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        let shape = p.layers[4].w.dims().to_vec();
        for &i in &order[..3] {
            let eps = 1e-2f32;
            let with = |delta: f32| {
                let mut v = w.clone();
                v[i] += delta;
                let mut q = p.clone();
                q.layers[4].w = Tensor::from_vec(v, shape.clone(), &Device::Cpu).unwrap();
                total(&d, &x, &q)
            };
            let fd = (with(eps) - with(-eps)) / (2.0 * eps as f64);
            println!("entry {i}: autograd {:.5}, finite difference {fd:.5}", g[i]);
            assert!((fd - g[i] as f64).abs() < 0.05 * fd.abs().max(1e-3), "entry {i}: {} vs {fd}", g[i]);
        }
    }

    /// On a fixed batch, distillation steps lower the distillation loss.
    #[test]
    fn distillation_steps_lower_the_loss_on_a_fixed_batch() {
        let (d, p, cfg, x) = setup(16);
        let before = total(&d, &x, &p);
        let kc = TrainConfig { steps: 20, lr: 1e-3, warmup: 1, ..cfg };
        let mut params = p.to_flat().unwrap();
        let mut opt = train::AdamW::new(params.len());
        for step in 0..kc.steps {
            let layers = Predictor::from_flat(p.hidden, p.embedding, &params, &Device::Cpu).unwrap().layers;
            let (_, g) = d.grads_on(&x, &layers, p.hidden, p.embedding).unwrap();
            opt.step(&mut params, &Predictor { layers: g, ..p.clone() }.to_flat().unwrap(), &kc, step);
        }
        let after =
            total(&d, &x, &Predictor::from_flat(p.hidden, p.embedding, &params, &Device::Cpu).unwrap());
        println!("distillation loss on a fixed batch: {before:.3} -> {after:.3} in 20 steps");
        assert!(after < before, "{before} -> {after}");
    }

    /// The CPU step's predictor gradient (gemm trainer over all blocks, tensors as `Var`s,
    /// scatter back, fused conv and feature loss) equals candle autograd through the whole
    /// chain (checked against finite differences above), and its AdamW step moves the
    /// predictor.
    #[test]
    fn cpu_step_gradient_matches_autograd() {
        let (d, p, cfg, x) = setup(16);
        let (_, grads) = d.grads_on(&x, &p.layers, p.hidden, p.embedding).unwrap();
        let expect: Vec<f32> = Predictor { layers: grads, ..p.clone() }.to_flat().unwrap();
        let mut kt = d.kernel_trainer(&p).unwrap();
        let (losses, _) = d.step_cpu_on(&x, &mut kt, &cfg, 0).unwrap();
        let (_, old) = d.loss(&x, &p).unwrap();
        assert!((losses.kl - old.kl).abs() < 1e-4 * old.kl.abs().max(1.0), "{} vs {}", losses.kl, old.kl);
        assert!((losses.feature - old.feature).abs() < 1e-4 * old.feature.max(1.0));
        let got = kt.trainer.grads();
        let scale = expect.iter().fold(0f32, |m, v| m.max(v.abs()));
        let max = got.iter().zip(&expect).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        println!("max |cpu − autograd| = {max:.3e}, largest gradient {scale:.3e}");
        assert!(scale > 0.0 && max <= 1e-3 * scale, "{max} vs {scale}");
        let moved = kt.predictor(&Device::Cpu).unwrap().to_flat().unwrap();
        assert_ne!(moved, p.to_flat().unwrap(), "AdamW did not move the predictor");
    }
}
