//! Decide before spending: whether a predictor can serve a model is judged from the tensors'
//! names, dtypes and shapes alone — before any f32 copy, ordering or calibration run — so that
//! no default run spends minutes and then fails. A model it cannot serve goes straight to the
//! codecs with one line saying why.
//!
//! The judgement is the training memory check ([`check_training_budget`]) on the blocks the
//! selection would predict, at the width the options ask for (the default width under a size
//! budget: [`super::hidden_for_size`] may only widen it). On the 0.5 B-parameter LLM layout the
//! default run used to fail this check after 4 min 49 s (width 180 on 55 M blocks: 29.9 GiB
//! against an 11.8 GiB budget, issue 24).
//!
//! Where the memory serves, a [`probe`] then trains a predictor for a short while on a sample of
//! blocks, before the real training: its error there, whether that error can pay for the
//! predictor's bytes, and the real training's time from two timed steps. Under a budget, a
//! predictor that cannot pay is not trained (the codecs get every tensor, with one line saying
//! why), unless the user asked for a width.

use crate::compress::choose::{self, planned, Chooser};
use crate::compress::distill;
use crate::compress::fit::{check_training_budget, hidden_for_ratio, hidden_for_size, train_data};
use crate::compress::moments;
use crate::compress::plan::{Grid, LayerPlan, Plan};
use crate::compress::select::Decision;
use crate::compress::train::{self, Rng, TrainConfig, TrainData};
use crate::compress::{CompressOptions, DEFAULT_HIDDEN, DEFAULT_MAX_ERROR};
use crate::error::{Error, Result};
use crate::format;
use crate::ingest::SourceModel;
use crate::predictor::{self, OUTPUTS};
use candle_core::Device;
use std::time::Instant;

/// What the shapes say about training a predictor for `model` (whose tensors' `data` may be
/// empty: only names, dtypes, shapes and roles are read).
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// No tensor would be predicted (e.g. `--exclude '*'`): nothing to decide.
    Nothing,
    /// A predictor of this width on this many blocks fits the budget.
    Serves { hidden: usize, blocks: u64 },
    /// It cannot: the one line saying why.
    Cannot(String),
}

/// Judges `model` under `opts` from its shapes (see the module docs). `Err` for options the
/// selection refuses (an `--include` pattern that names nothing) and for a width the user
/// asked for that does not fit ([`crate::Error::Budget`], before any work).
pub fn judge(model: &SourceModel, opts: &CompressOptions) -> Result<Verdict> {
    let decisions = opts.selection.decide_all(model)?;
    let mut blocks = 0u64;
    let mut represented = 0usize;
    for (t, d) in model.tensors.iter().zip(&decisions) {
        let Decision::Predict(layout) = d else { continue };
        let dims: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
        // The selection accepted the shape, so the grid exists.
        let Ok(grid) = Grid::new(*layout, &dims) else { continue };
        blocks = blocks.saturating_add(grid.blocks() as u64);
        represented = represented.saturating_add(grid.numel());
    }
    if blocks == 0 {
        return Ok(Verdict::Nothing);
    }
    let levels = opts.embedding.levels as usize;
    let hidden = match (opts.hidden, opts.target_ratio) {
        (Some(h), _) => h,
        (None, Some(r)) => hidden_for_ratio(represented, r, levels),
        (None, None) => DEFAULT_HIDDEN,
    };
    let source: u64 = model.file_bytes;
    match check_training_budget(hidden, opts, blocks, source) {
        Ok(()) => Ok(Verdict::Serves { hidden, blocks }),
        // A width the user asked for (--hidden, --target-ratio) is refused, not replaced.
        Err(e) if opts.hidden.is_some() || opts.target_ratio.is_some() => Err(e),
        Err(e) => Ok(Verdict::Cannot(format!("no predictor: {e}; every tensor goes to the codecs"))),
    }
}

/// `opts` with nothing predicted (what a model the predictor cannot serve is compressed with).
pub fn codecs_only(opts: &CompressOptions) -> CompressOptions {
    let mut opts = opts.clone();
    opts.selection.include.clear();
    opts.selection.exclude = vec!["*".into()];
    opts
}

/// Fewest blocks a probe trains on. A model with no more blocks is not probed: its probe would
/// be the training itself.
pub const PROBE_BLOCKS: usize = 4096;

/// The narrowest probe: the sample grows (up to [`MAX_PROBE_BLOCKS`]) until the probe at the
/// real predictor's parameters per value is at least this wide. Narrower, a probe cannot show
/// the structure blocks share: on PP-OCR rec at width 32 (357,596 blocks) the 4,096-block probe
/// had width 1 and said 100.0% where the trained predictor reached 94.1%.
pub const MIN_PROBE_WIDTH: usize = 8;

/// Most blocks a probe trains on (its steps cost the same on any sample; the sample's copy and
/// its final prediction grow with it).
pub const MAX_PROBE_BLOCKS: usize = 65_536;

/// Most steps of the probe's training (fewer when `--steps` asks for fewer).
pub const PROBE_STEPS: usize = 1000;

/// What a short training on a sample of blocks says, before the real training, about whether a
/// predictor can pay for its bytes ([`probe`]).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Probe {
    /// Blocks the predictor would be trained on.
    pub blocks: usize,
    /// Blocks the probe trained on (a stratified sample along the training order).
    pub sampled: usize,
    /// The probe's width: the same parameters per value as `hidden` on all blocks.
    pub width: usize,
    /// The width the real training would use.
    pub hidden: usize,
    pub steps: usize,
    /// The probe's relative weight error on its sampled blocks.
    pub error: f64,
    /// The error below which the predictor pays: `2^(−8·predictor_bytes / values)`.
    pub must_beat: f64,
    pub predictor_bytes: u64,
    /// Values of the predicted tensors.
    pub values: usize,
    /// The real training's time estimated from two timed steps of width `hidden`, set-up
    /// excluded (reconstruction steps; distillation steps cost more).
    pub training_seconds: f64,
    /// The probe's own time.
    pub seconds: f64,
}

impl Probe {
    /// Whether the predictor can pay for its bytes: its error is below [`Probe::must_beat`].
    pub fn pays(&self) -> bool {
        self.error < self.must_beat
    }

    /// One line for the user.
    pub fn line(&self) -> String {
        format!(
            "predictor probe ({:.1} s): a width-{} predictor (the parameters per value of width {}) on {} of {} \
             blocks leaves {:.1}% weight error after {} steps; to pay for its {} bytes on {} values it must stay \
             under {:.1}%; training width {} would take about {:.0} s",
            self.seconds,
            self.width,
            self.hidden,
            self.sampled,
            self.blocks,
            100.0 * self.error,
            self.steps,
            self.predictor_bytes,
            self.values,
            100.0 * self.must_beat,
            self.hidden,
            self.training_seconds
        )
    }
}

/// Probes whether a predictor of width `hidden`, stored in `predictor_bytes`, can pay on `data`
/// (`values` predicted values): `None` for a model of at most [`PROBE_BLOCKS`] blocks.
///
/// The rule is rate–distortion's (high-rate, Gaussian): storing values at relative error `e`
/// costs `log2(1/e)` bits per value, so a prediction at error `e` saves at most `log2(1/e)` bits
/// per value of its residual, or gives at `predictor_bytes` what codecs give at
/// `8·predictor_bytes / values` bits per value; either way it pays only below
/// `2^(−8·predictor_bytes / values)`. The probe trains [`PROBE_STEPS`] steps on a sample of
/// blocks at the same parameters per value as the real predictor, so that it can memorize as
/// much of its sample as the real one of the model; the sample is large enough for a probe of
/// width [`MIN_PROBE_WIDTH`] where [`MAX_PROBE_BLOCKS`] allow.
pub(crate) fn probe(
    data: &TrainData,
    opts: &CompressOptions,
    hidden: usize,
    predictor_bytes: u64,
    values: usize,
) -> Result<Option<Probe>> {
    let start = Instant::now();
    let n = data.len();
    if n <= PROBE_BLOCKS {
        return Ok(None);
    }
    let levels = opts.embedding.levels as usize;
    let params = |h: usize| predictor::param_count(h, levels) as f64;
    let wide_enough = (n as f64 * params(MIN_PROBE_WIDTH.min(hidden)) / params(hidden)).ceil() as usize;
    let sampled = wide_enough.clamp(PROBE_BLOCKS, MAX_PROBE_BLOCKS.min(n));
    let mut rng = Rng::new(opts.seed ^ 0x0070_726f_6265);
    let stride = n as f64 / sampled as f64;
    let idx = (0..sampled).map(|i| (((i as f64 + rng.uniform()) * stride) as usize).min(n - 1));
    let mut sample = TrainData { coords: Vec::new(), targets: Vec::new(), masks: Vec::new() };
    for k in idx {
        sample.coords.extend_from_slice(&data.coords[3 * k..3 * k + 3]);
        sample.targets.extend_from_slice(&data.targets[OUTPUTS * k..OUTPUTS * (k + 1)]);
        sample.masks.extend_from_slice(&data.masks[OUTPUTS * k..OUTPUTS * (k + 1)]);
    }
    let share = params(hidden) * sampled as f64 / n as f64;
    let width = (1..=hidden).rev().find(|&h| params(h) <= share * (1.0 + 1e-9)).unwrap_or(1);
    let steps = opts.steps.clamp(1, PROBE_STEPS);
    let config = |width: usize, steps: usize| TrainConfig {
        steps,
        batch: opts.batch.min(sampled),
        warmup: (steps / 50).max(1),
        quantize: None,
        ..opts.train_config(width)
    };
    let cfg = config(width, steps);
    let (p, _) = train::train(&cfg, &sample, None, &Device::Cpu, &mut |_: usize, _: f64| {})?;
    let out =
        crate::predictor::gemm::predict(width, opts.embedding, &p.to_flat()?, &sample.coords, cfg.batch)?;
    let (mut err, mut norm) = (0f64, 0f64);
    for ((o, t), m) in out.iter().zip(&sample.targets).zip(&sample.masks) {
        let s = *m as f64;
        err += (s * (o - t) as f64).powi(2);
        norm += (s * *t as f64).powi(2);
    }
    let error = if norm > 0.0 { (err / norm).sqrt() } else { 0.0 };
    // Two steps of the real width at its batch (a step's cost is linear in the batch): three
    // steps less one, so that the set-up is not counted (with it the estimate ran 1.6× high),
    // on the sample's first [`PROBE_BLOCKS`] blocks, so that the set-up (which grows with the
    // data) stays small beside them: on all 61,655 blocks of PP-OCR rec's sample the estimate
    // was 10.6 s for a training that took about 3 s.
    let head = PROBE_BLOCKS.min(sampled);
    let timing = TrainData {
        coords: sample.coords[..3 * head].to_vec(),
        targets: sample.targets[..OUTPUTS * head].to_vec(),
        masks: sample.masks[..OUTPUTS * head].to_vec(),
    };
    let timed_cfg = |steps: usize| TrainConfig { batch: opts.batch.min(head), ..config(hidden, steps) };
    let timed = |steps: usize| -> Result<f64> {
        let t = Instant::now();
        train::train(&timed_cfg(steps), &timing, None, &Device::Cpu, &mut |_: usize, _: f64| {})?;
        Ok(t.elapsed().as_secs_f64())
    };
    let two = (timed(3)? - timed(1)?).max(0.0);
    let per_step = two / 2.0 * opts.batch.min(n) as f64 / opts.batch.min(head) as f64;
    Ok(Some(Probe {
        blocks: n,
        sampled,
        width,
        hidden,
        steps,
        error,
        must_beat: (-8.0 * predictor_bytes as f64 / values.max(1) as f64).exp2(),
        predictor_bytes,
        values,
        training_seconds: per_step * opts.steps as f64,
        seconds: start.elapsed().as_secs_f64(),
    }))
}

/// Whether, and at what width, a predictor is trained: decided before any training.
pub(crate) struct Served {
    pub hidden: usize,
    /// The predictor's stored bytes at `hidden`.
    pub predictor_bytes: u64,
    /// The training data, where a predictor is to be trained.
    pub data: Option<TrainData>,
    pub probe: Option<Probe>,
}

/// Decides the predictor of `plan` under `opts`: its width (asked for, from `--target-ratio`,
/// from the size budget, or the default), whether its training fits in memory, whether codecs
/// alone already meet the budget, and whether its [`probe`] shows it can pay. A size budget
/// neither a width-1 predictor nor the codecs alone can reach is a usage error.
pub(crate) fn served(
    model: &SourceModel,
    plan: &Plan,
    opts: &CompressOptions,
    chooser: Option<&Chooser>,
    max_bytes: Option<u64>,
    warnings: &mut Vec<String>,
) -> Result<Served> {
    let represented: usize = plan.values.iter().map(Vec::len).sum();
    let levels = opts.embedding.levels as usize;
    let no_hessians = moments::Hessians::default();
    let hessians = chooser.map_or(&no_hessians, |c| &c.hessians);
    let mut no_width = false;
    let hidden = match (opts.hidden, opts.target_ratio, max_bytes) {
        (Some(h), _, _) => h,
        (None, Some(r), _) => hidden_for_ratio(represented, r, levels),
        (None, None, Some(max_bytes)) if !plan.layers.is_empty() => {
            let stores = planned(model, &plan.layers, &plan.values, true, None, opts, hessians)?;
            match hidden_for_size(model, &plan.layers, &plan.values, &stores, opts, max_bytes)? {
                Some(h) => h,
                None => {
                    let codecs = match chooser {
                        Some(c) => c.codecs_feasible(model, choose::Budget::Bytes(max_bytes))?,
                        None => false,
                    };
                    if !codecs {
                        return Err(Error::usage(
                            "--size-ratio",
                            format!(
                                "no file of {max_bytes} bytes is possible: a predictor of width 1 beside the \
                                 other tensors, and the codecs alone at their smallest, take more; lower the ratio"
                            ),
                        ));
                    }
                    warnings.push(format!(
                        "no predictor fits in --size-ratio's {max_bytes} bytes beside the other tensors' \
                         planned storage: every tensor goes to the codecs"
                    ));
                    no_width = true;
                    1
                }
            }
        }
        _ => DEFAULT_HIDDEN,
    };
    if !plan.layers.is_empty() {
        let blocks: usize = plan.layers.iter().map(LayerPlan::blocks).sum();
        let source: u64 = model.tensors.iter().map(|t| t.data.len() as u64).sum();
        check_training_budget(hidden, opts, blocks as u64, source)?;
    }
    let predictor_bytes = format::predictor::stored_len(opts.predictor_dtype, hidden, levels);
    let mut skip = no_width
        || match (chooser, plan.layers.is_empty()) {
            (Some(c), false) => match c.budget(opts, max_bytes) {
                Some(b) => c.codecs_suffice(model, b, predictor_bytes)?,
                None => false,
            },
            _ => false,
        };
    if skip && !no_width {
        warnings.push(format!(
            "codecs alone meet the budget in fewer bytes or within {:.0}% output error: no predictor was \
             trained (its {predictor_bytes} bytes would not pay for themselves; --max-error off trains one)",
            100.0 * DEFAULT_MAX_ERROR
        ));
    }
    // Before training: whether the predictor can pay for its bytes, from a short training on a
    // sample. Under a budget a predictor that cannot is not trained, unless a width or a
    // distillation schedule (which the probe does not run) was asked for.
    let data = match plan.layers.is_empty() || skip {
        true => None,
        false => Some(train_data(&plan.layers, &plan.values)),
    };
    let probe = match &data {
        Some(d) => probe(d, opts, hidden, predictor_bytes, represented)?,
        None => None,
    };
    if let Some(p) = probe.as_ref().filter(|p| !p.pays()) {
        let asked = opts.hidden.is_some()
            || opts.target_ratio.is_some()
            || opts.distill.schedule != distill::Schedule::Recon;
        if chooser.is_some() && !asked {
            warnings.push(format!("{}: no predictor was trained (--hidden trains one)", p.line()));
            skip = true;
        }
    }
    Ok(Served { hidden, predictor_bytes, data: data.filter(|_| !skip), probe })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `n` blocks at random coordinates; `smooth`: targets a smooth function of the coordinate
    /// (what a predictor can learn), else noise (what it cannot).
    fn data(n: usize, smooth: bool) -> TrainData {
        let mut rng = Rng::new(5);
        let coords: Vec<f32> = (0..n * 3).map(|_| rng.uniform() as f32).collect();
        let targets = coords
            .chunks(3)
            .flat_map(|c| (0..OUTPUTS).map(move |j| (3.0 * c[1] + j as f32).sin() * 0.5 + c[2] * 0.3))
            .map(|v| if smooth { v } else { rng.uniform() as f32 - 0.5 })
            .collect();
        TrainData { coords, targets, masks: vec![1.0; n * OUTPUTS] }
    }

    /// The probe tells a learnable model from noise at the same width and bytes, and leaves a
    /// model of at most [`PROBE_BLOCKS`] blocks to the training itself.
    #[test]
    fn the_probe_pays_on_structure_and_not_on_noise() {
        let opts = CompressOptions { steps: 300, ..Default::default() };
        let (hidden, n) = (32, 2 * PROBE_BLOCKS);
        let bytes = crate::format::predictor::stored_len(
            opts.predictor_dtype,
            hidden,
            opts.embedding.levels as usize,
        );
        let probe = |d: &TrainData| probe(d, &opts, hidden, bytes, n * OUTPUTS).unwrap().unwrap();
        let (smooth, noise) = (probe(&data(n, true)), probe(&data(n, false)));
        assert_eq!((smooth.sampled, smooth.blocks, smooth.steps), (PROBE_BLOCKS, n, 300));
        assert!(smooth.width < hidden && smooth.training_seconds >= 0.0, "{smooth:?}");
        assert!(smooth.pays() && smooth.error < 0.5 * noise.error, "{smooth:?}\n{noise:?}");
        assert!(!noise.pays() && noise.error > 0.8, "{noise:?}");
        println!("{}\n{}", smooth.line(), noise.line());
        assert!(probe_none(&opts, hidden, bytes));
    }

    /// Where 4,096 blocks would give a probe narrower than [`MIN_PROBE_WIDTH`], the sample grows
    /// until it is that wide, at the real predictor's parameters per value.
    #[test]
    fn the_probe_sample_grows_until_the_probe_is_eight_wide() {
        let opts = CompressOptions { steps: 3, ..Default::default() };
        let (hidden, n) = (32, 40_000);
        let probe = probe(&data(n, true), &opts, hidden, 1000, n * OUTPUTS).unwrap().unwrap();
        let params = |h| predictor::param_count(h, opts.embedding.levels as usize) as f64;
        // 4,096 blocks would give width 5 here.
        assert!(params(6) > params(hidden) * PROBE_BLOCKS as f64 / n as f64);
        assert_eq!(probe.width, MIN_PROBE_WIDTH, "{probe:?}");
        assert!(PROBE_BLOCKS < probe.sampled && probe.sampled < n, "{probe:?}");
        let per_block = |h, blocks| params(h) / blocks as f64;
        assert!(per_block(probe.width, probe.sampled) <= per_block(hidden, n) * (1.0 + 1e-9), "{probe:?}");
    }

    fn probe_none(opts: &CompressOptions, hidden: usize, bytes: u64) -> bool {
        probe(&data(PROBE_BLOCKS, true), opts, hidden, bytes, PROBE_BLOCKS * OUTPUTS).unwrap().is_none()
    }
}
