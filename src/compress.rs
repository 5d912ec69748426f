//! The compressor pipeline: ingest → plan → train → write.

use crate::distill::{self, DistillOptions, Schedule};
use crate::error::{Error, Result};
use crate::format::geometry::prediction_ranges;
use crate::format::{
    self, codec::pack_permutation, Embedding, Encoding, FileBuilder, Ordering, PredictorSpec, ScaleDtype,
    SectionKind, Source, SourceKind, Storage, TensorEntry, WeightDtype,
};
use crate::ingest::{self, SourceModel};
use crate::plan::{self, LayerPlan};
use crate::predictor::{self, Predictor};
use crate::regen;
use crate::select::{Decision, Selection};
use crate::train::{self, Progress, TrainConfig, TrainData};
use candle_core::Device;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

/// Everything `nerp compress` can be told.
#[derive(Debug, Clone)]
pub struct CompressOptions {
    pub hidden: Option<usize>,
    /// Represented weights ÷ predictor parameters; used when `hidden` is not given.
    pub target_ratio: Option<f64>,
    /// Source file bytes ÷ `.nerp` file bytes at least this: the widest predictor whose file
    /// fits is chosen ([`hidden_for_size`]); used when `hidden` is not given.
    pub size_ratio: Option<f64>,
    pub steps: usize,
    pub batch: usize,
    pub lr: f64,
    /// The stored block ordering (the permutation sections).
    pub ordering: Ordering,
    /// Reorder the channels of an ONNX source function-preservingly before planning
    /// ([`crate::permute`]); a source without a graph (safetensors) keeps `ordering`, or the
    /// crossfilter chain when `ordering` is `none`.
    pub channels: bool,
    pub embedding: Embedding,
    pub predictor_dtype: WeightDtype,
    /// With a quantized `predictor_dtype`: fraction of the final training steps that compute
    /// with the stored (quantized) predictor, straight-through (`--qat-fraction`; 0: round
    /// after training only).
    pub qat_fraction: f64,
    /// Divide each filter by its RMS before fitting (scales stored in the file).
    pub filter_scales: bool,
    /// Which tensors are predicted (`--include`, `--exclude`, `--min-values`; see
    /// [`crate::select`]).
    pub selection: Selection,
    pub seed: u64,
    /// Stored as metadata (`preprocess`) for `nerp eval`.
    pub metadata: BTreeMap<String, String>,
    /// Check that tract can run the source ONNX model before compressing.
    pub check_runnable: bool,
    /// Training schedule and distillation settings.
    pub distill: DistillOptions,
    /// Element type of the per-row scales (`--scale-dtype`).
    pub scale_dtype: ScaleDtype,
    /// How the float tensors that are not predicted are stored (`--raw-codec`).
    pub raw_codec: Codec,
}

/// How a float tensor that is not predicted is stored (`--raw-codec`; spec section 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Codec {
    /// As is (byte-grouped zstd): lossless.
    #[default]
    Raw,
    /// f32/f64 values cast to f16 (format 3); other dtypes stay raw.
    F16,
    /// f32/f64 values cast to bf16 (format 3); other dtypes stay raw.
    Bf16,
    /// Quantized to int8, one f16 scale per row (format 3).
    Int8,
    /// Quantized to int4, one f16 scale per row or per group of at most 128 values (format 3).
    Int4,
}

impl Codec {
    /// The name used on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Codec::Raw => "raw",
            Codec::F16 => "f16",
            Codec::Bf16 => "bf16",
            Codec::Int8 => "int8",
            Codec::Int4 => "int4",
        }
    }
}

/// Values per scale when quantizing rows of `row` values to `bits` bits: the whole row for
/// int8 or rows of at most 128 values, else the largest divisor of the row at most 128 (at
/// least 16; else the whole row) — int4 needs small groups to keep the error down.
pub fn quant_group(row: u64, bits: u8) -> u64 {
    if bits >= 8 || row <= 128 {
        return row;
    }
    (16..=128).rev().find(|g| row.is_multiple_of(*g)).unwrap_or(row)
}

impl Default for CompressOptions {
    fn default() -> Self {
        CompressOptions {
            hidden: None,
            target_ratio: None,
            size_ratio: None,
            steps: DEFAULT_STEPS,
            batch: 4096,
            lr: DEFAULT_LR,
            // Function-preserving channel orders store no permutation and were at least as
            // accurate: ResNet-20, h = 128, 3,000 steps, seed 0: 72.72% against crossfilter's
            // 71.29%, 0 permutation bytes against 42,568 (docs/results/permutations.md).
            ordering: Ordering::None,
            channels: true,
            embedding: Embedding { base: DEFAULT_PE_BASE, levels: DEFAULT_PE_LEVELS },
            predictor_dtype: WeightDtype::F16,
            qat_fraction: DEFAULT_QAT_FRACTION,
            filter_scales: true,
            selection: Selection::default(),
            seed: 0,
            metadata: BTreeMap::new(),
            check_runnable: true,
            distill: DistillOptions::default(),
            scale_dtype: ScaleDtype::F16,
            raw_codec: Codec::Raw,
        }
    }
}

/// Default hidden width when neither `--hidden` nor `--target-ratio` is given.
pub const DEFAULT_HIDDEN: usize = 180;
/// Default training steps of `nerp compress`: on the ResNet-20 (h = 180) 12,000 steps keep the
/// accuracy within 0.4 points (3,000: 2.7 points, 6,000: 1.6 points).
pub const DEFAULT_STEPS: usize = 12_000;
/// Training steps of `nerp demo`, which must finish in a few minutes.
pub const DEMO_STEPS: usize = 3000;
pub const DEFAULT_LR: f64 = 5e-3;
pub const DEFAULT_PE_BASE: f64 = 1.25;
pub const DEFAULT_PE_LEVELS: u32 = 20;
pub const DEFAULT_MIN_VALUES: usize = 0;
/// Default `--qat-fraction`: on the ResNet-20 (int8, h = 180, 3,000 steps, seed 0) the last
/// 10% gave 90.04% (f16 90.96%, rounding after training 88.72%); 20%, 30%, 50% and 100% gave
/// 89.40, 89.55, 89.01 and 88.61% (docs/results/qat.md).
pub const DEFAULT_QAT_FRACTION: f64 = 0.1;

/// One line of the per-tensor report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TensorReport {
    pub name: String,
    pub shape: Vec<u64>,
    pub predicted: bool,
    /// `conv` or `matrix` for a predicted tensor, else why it is raw.
    pub stored: String,
    pub rmse: f64,
    /// RMSE ÷ RMS of the original values.
    pub rel_error: f64,
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// What a compression did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CompressReport {
    pub tensors: Vec<TensorReport>,
    pub hidden: usize,
    pub predictor_params: usize,
    /// Values of the predicted tensors.
    pub represented: usize,
    pub source_bytes: u64,
    pub file_bytes: u64,
    pub seconds: f64,
    pub steps: usize,
    pub final_loss: f64,
    /// RMSE over all predicted weights (after storing the predictor in its dtype).
    pub weight_rmse: f64,
    /// Training steps that computed with the stored (int8/int4) predictor, straight-through
    /// (0: the float dtypes, or `--qat-fraction 0`).
    pub qat_steps: usize,
    /// Losses of every distillation step (empty for `--schedule recon`).
    pub kd_losses: Vec<distill::KdLosses>,
    /// What the user should know about the file (e.g. that tract cannot run the model).
    pub warnings: Vec<String>,
}

impl CompressReport {
    /// Represented weights ÷ predictor parameters.
    pub fn param_ratio(&self) -> f64 {
        self.represented as f64 / self.predictor_params.max(1) as f64
    }

    /// Source file ÷ `.nerp` file.
    pub fn byte_ratio(&self) -> f64 {
        self.source_bytes as f64 / self.file_bytes.max(1) as f64
    }
}

/// The widest predictor (at most the format's limit) whose file takes at most `max_bytes`:
/// the file is laid out with an untrained predictor of the candidate width (its section's size
/// does not depend on the values), so the answer is exact, header and alignment included.
pub fn hidden_for_size(
    model: &SourceModel,
    plans: &[LayerPlan],
    values: &[Vec<f32>],
    opts: &CompressOptions,
    max_bytes: u64,
) -> Result<usize> {
    let file_len = |h: usize| -> Result<u64> {
        let zeros = vec![0f32; predictor::param_count(h, opts.embedding.levels as usize)];
        let p = Predictor::from_flat(h, opts.embedding, &zeros, &Device::Cpu)?;
        Ok(build_file(model, plans, values, Some(&p), opts)?.bytes.len() as u64)
    };
    let smallest = file_len(1)?;
    if smallest > max_bytes {
        return Err(Error::usage(
            "--size-ratio",
            format!(
                "even a predictor of width 1 gives a file of {smallest} bytes, above the {max_bytes} allowed: \
                 lower the ratio (everything beside the predictor takes about that much)"
            ),
        ));
    }
    // Only the predictor section grows with the width: estimate from its encoded length, then
    // check the estimate with the real layout and step down while it does not fit.
    let levels = opts.embedding.levels as usize;
    let section = |h: usize| format::predictor::stored_len(opts.predictor_dtype, h, levels);
    let fixed = smallest - section(1);
    let max = format::limits::MAX_HIDDEN as usize;
    let (mut lo, mut hi) = (1, max);
    while lo < hi {
        let mid = (lo + hi).div_ceil(2);
        if fixed + format::align_up(section(mid)).unwrap_or(u64::MAX) <= max_bytes {
            lo = mid;
        } else {
            hi = mid - 1;
        }
    }
    let mut h = lo;
    // Laying out a candidate runs the predictor: check the width fits in memory first.
    let blocks: usize = plans.iter().map(LayerPlan::blocks).sum();
    let source: u64 = model.tensors.iter().map(|t| t.data.len() as u64).sum();
    check_training_budget(h, opts, blocks as u64, source)?;
    while h > 1 && file_len(h)? > max_bytes {
        h -= 1;
    }
    Ok(h)
}

/// Largest hidden width whose parameter count stays within `represented / ratio` (at least 1,
/// at most the format's limit).
pub fn hidden_for_ratio(represented: usize, ratio: f64, levels: usize) -> usize {
    let budget = represented as f64 / ratio;
    let max = format::limits::MAX_HIDDEN as usize;
    (1..max).find(|&h| predictor::param_count(h + 1, levels) as f64 > budget).unwrap_or(max)
}

impl CompressOptions {
    /// Checks every option before any work starts; errors name the flag.
    pub fn validate(&self) -> Result<()> {
        if self.steps == 0 || self.steps > MAX_STEPS {
            return Err(Error::usage("--steps", format!("must be in 1..={MAX_STEPS}")));
        }
        if self.batch == 0 || self.batch > 1 << 20 {
            return Err(Error::usage("--batch", "must be in 1..=1048576"));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(Error::usage("--lr", "must be a positive number"));
        }
        if !(0.0..=1.0).contains(&self.qat_fraction) {
            return Err(Error::usage("--qat-fraction", "must be a number in 0..=1"));
        }
        if matches!(self.target_ratio, Some(r) if !(r.is_finite() && r > 0.0)) {
            return Err(Error::usage("--target-ratio", "must be a positive number"));
        }
        if matches!(self.size_ratio, Some(r) if !(r.is_finite() && r >= 1.0)) {
            return Err(Error::usage("--size-ratio", "must be a number of at least 1"));
        }
        if self.size_ratio.is_some() && (self.hidden.is_some() || self.target_ratio.is_some()) {
            return Err(Error::usage(
                "--size-ratio",
                "chooses the width: give it without --hidden or --target-ratio",
            ));
        }
        let max = format::limits::MAX_HIDDEN as usize;
        if matches!(self.hidden, Some(h) if h == 0 || h > max) {
            return Err(Error::usage("--hidden", format!("must be in 1..={max}")));
        }
        let e = self.embedding;
        if !(e.base.is_finite() && e.base > 0.0) {
            return Err(Error::usage("--pe-base", "must be a positive number"));
        }
        if e.levels == 0 || e.levels > format::limits::MAX_LEVELS {
            return Err(Error::usage(
                "--pe-levels",
                format!("must be in 1..={}", format::limits::MAX_LEVELS),
            ));
        }
        self.distill.validate(self.steps)?;
        if predictor::frequencies(e).iter().any(|f| !f.is_finite()) {
            let what = format!(
                "{} with {} levels overflows f32 frequencies; lower --pe-base or --pe-levels",
                e.base, e.levels
            );
            return Err(Error::usage("--pe-base", what));
        }
        self.selection.validate()
    }
}

impl CompressOptions {
    /// The training schedule `compress` uses for a predictor of width `hidden`.
    pub fn train_config(&self, hidden: usize) -> TrainConfig {
        TrainConfig {
            hidden,
            embedding: self.embedding,
            steps: self.steps,
            batch: self.batch,
            lr: self.lr,
            lr_min: 1e-6,
            warmup: (self.steps / 50).max(1),
            betas: (0.9, 0.999),
            weight_decay: 0.0,
            magnitude_fraction: 0.2,
            seed: self.seed,
            quantize: self.predictor_dtype.bits().map(|_| self.predictor_dtype),
            qat_fraction: self.qat_fraction,
        }
    }
}

/// Most training steps accepted.
pub const MAX_STEPS: usize = 100_000_000;

/// The compressor's plan of a source model.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The predicted layers (grids, orderings, scales), in layer order.
    pub layers: Vec<LayerPlan>,
    /// The f32 values of each predicted layer's tensor, in the same order.
    pub values: Vec<Vec<f32>>,
    /// What happens to every tensor of the model, in model order.
    pub decisions: Vec<Decision>,
}

/// A laid-out file (for a trained or untrained predictor).
#[derive(Debug, Clone)]
pub struct BuiltFile {
    /// The complete file image.
    pub bytes: Vec<u8>,
    /// One line per tensor (the predictor's share of the bytes not yet added).
    pub tensors: Vec<TensorReport>,
    /// RMSE over all predicted weights.
    pub weight_rmse: f64,
}

/// The predicted layers of a source model (grids, orderings, scales), their values, and the
/// decision for every tensor.
pub fn make_plan(model: &SourceModel, opts: &CompressOptions) -> Result<Plan> {
    let decisions = opts.selection.decide_all(model)?;
    let mut plans = Vec::new();
    let mut values = Vec::new();
    for (i, t) in model.tensors.iter().enumerate() {
        let Decision::Predict(layout) = decisions[i] else { continue };
        let v = format::codec::to_f32(t.dtype, &t.data).expect("float");
        if let Some(bad) = v.iter().find(|x| !x.is_finite()) {
            return Err(Error::Training(format!(
                "tensor {} contains {bad}; nerp cannot fit non-finite weights",
                t.name
            )));
        }
        let dims: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
        let grid = plan::Grid::new(layout, &dims)
            .map_err(|what| Error::Training(format!("tensor {}: {what}", t.name)))?;
        // Rounded to the stored precision first, so the predictor is fitted to what is stored.
        let scales = opts.filter_scales.then(|| {
            let s = plan::filter_scales(&v, grid.rows);
            let stored = format::codec::from_f32(opts.scale_dtype.dtype(), &s).expect("float");
            let back = format::codec::to_f32(opts.scale_dtype.dtype(), &stored).expect("float");
            // A scale that rounds to 0 in f16 (RMS below 3e-8) keeps scale 1, as in plan.
            back.into_iter().map(|x| if x.is_normal() { x } else { 1.0 }).collect()
        });
        let blocks = plan::blocks(&v, &grid, scales.as_deref());
        let perm = plan::order(&blocks, grid.rows, grid.cols, opts.ordering);
        let layer = plans.len() as u32;
        plans.push(LayerPlan { tensor: i, layer, grid, perm, scales });
        values.push(v);
    }
    Ok(Plan { layers: plans, values, decisions })
}

/// Applies `opts.channels` to `model` (ONNX: permute the channel groups; otherwise fall back
/// to a stored chain) and returns the options the rest of the pipeline uses.
fn with_channel_order(model: &mut SourceModel, opts: &CompressOptions) -> Result<CompressOptions> {
    let mut opts = opts.clone();
    if !opts.channels {
        return Ok(opts);
    }
    if model.kind != SourceKind::Onnx {
        opts.channels = false;
        if opts.ordering == Ordering::None {
            opts.ordering = Ordering::Crossfilter;
        }
        return Ok(opts);
    }
    let report = crate::permute::permute_model(model)?;
    opts.metadata.insert(
        crate::permute::CHANNEL_ORDER_KEY.into(),
        format!("chain over {} groups", report.groups.len()),
    );
    Ok(opts)
}

/// Training data for the plans: coordinates, 3×3 targets and masks in chain order.
pub fn train_data(plans: &[LayerPlan], values: &[Vec<f32>]) -> TrainData {
    let layers = plans.len() as u32;
    let mut data = TrainData { coords: Vec::new(), targets: Vec::new(), masks: Vec::new() };
    for (p, v) in plans.iter().zip(values) {
        data.coords.extend(plan::coordinates(p.layer, layers, p.grid.rows, p.grid.cols));
        let (t, m) = plan::targets(v, p);
        data.targets.extend(t);
        data.masks.extend(m);
    }
    data
}

/// Compresses `input` into `output`. `progress` receives each training step's loss.
pub fn compress(
    input: &Path,
    output: &Path,
    opts: &CompressOptions,
    progress: &mut dyn Progress,
) -> Result<CompressReport> {
    let start = Instant::now();
    opts.validate()?;
    let dir = format::write::parent_dir(output);
    if !dir.is_dir() {
        return Err(Error::usage("--output", format!("folder {} does not exist", dir.display())));
    }
    let mut inputs = vec![input];
    inputs.extend(opts.distill.teacher.as_deref());
    crate::format::output::check_not_an_input(output, &inputs, "--output")?;
    let mut model = ingest::load(input)?;
    let opts = &with_channel_order(&mut model, opts)?;
    let mut warnings = Vec::new();
    if opts.check_runnable && model.kind == SourceKind::Onnx {
        let shapes = match opts.metadata.get(crate::format::metadata::INPUT_SHAPES_KEY) {
            Some(json) => {
                serde_json::from_str(json).map_err(|e| Error::usage("--input-shape", format!("{e}")))?
            }
            None => Vec::new(),
        };
        if let Err(e) = crate::runtime::Model::from_onnx_file_shaped(input, &shapes) {
            let hint = "a model with dynamic input dimensions needs --input-shape, e.g. 1,3,224,224";
            if opts.distill.schedule != distill::Schedule::Recon {
                return Err(Error::Ingest {
                    path: input.to_path_buf(),
                    what: format!(
                        "distillation runs the model, and the inference engine cannot: {e} ({hint})"
                    ),
                });
            }
            // `decompress` to ONNX serves every other engine, so the file is still useful.
            warnings.push(format!(
                "the inference engine (tract) cannot run this model: {e}; compressed anyway: \
                 `nerp decompress` gives an ONNX file for other engines, `run`/`eval` will fail ({hint})"
            ));
        }
    }
    let Plan { layers: plans, values, decisions } = make_plan(&model, opts)?;
    let represented: usize = values.iter().map(Vec::len).sum();
    let levels = opts.embedding.levels as usize;
    let hidden = match (opts.hidden, opts.target_ratio, opts.size_ratio) {
        (Some(h), _, _) => h,
        (None, Some(r), _) => hidden_for_ratio(represented, r, levels),
        (None, None, Some(r)) if !plans.is_empty() => {
            let max_bytes = (model.file_bytes as f64 / r).floor() as u64;
            hidden_for_size(&model, &plans, &values, opts, max_bytes)?
        }
        _ => DEFAULT_HIDDEN,
    };
    if !plans.is_empty() {
        let blocks: usize = plans.iter().map(LayerPlan::blocks).sum();
        let source: u64 = model.tensors.iter().map(|t| t.data.len() as u64).sum();
        check_training_budget(hidden, opts, blocks as u64, source)?;
    }
    let device = Device::Cpu;
    let mut final_loss = f64::NAN;
    let mut kd_log = Vec::new();
    let mut qat_steps = 0;
    let predictor = if plans.is_empty() {
        None
    } else {
        let cfg = opts.train_config(hidden);
        qat_steps = distill::qat_steps(&cfg, &opts.distill);
        let data = train_data(&plans, &values);
        let (p, losses) = match opts.distill.schedule {
            Schedule::Recon => train::train(&cfg, &data, None, &device, progress)?,
            _ => {
                let mut distiller = distiller(input, &model, &plans, opts, &device)?;
                let (p, losses, log) =
                    distill::fit(&cfg, &data, &mut distiller, &opts.distill, &device, progress)?;
                kd_log = log;
                (p, losses)
            }
        };
        final_loss = losses.iter().rev().find(|l| l.is_finite()).copied().unwrap_or(f64::NAN);
        Some(p.rounded(opts.predictor_dtype)?)
    };
    let BuiltFile { bytes, mut tensors, weight_rmse } =
        build_file(&model, &plans, &values, predictor.as_ref(), opts)?;
    for (t, d) in tensors.iter_mut().zip(&decisions) {
        if let Decision::Raw(why) = d {
            t.stored = format!("raw: {why}");
        }
    }
    // Never write a file the reader would refuse (e.g. a model beyond the format's limits).
    format::NerpFile::from_bytes(bytes.clone(), output)?;
    format::write_atomic(output, &bytes)?;
    let file_bytes = bytes.len() as u64;
    // Spread the predictor's bytes over the predicted tensors by their share of the values.
    let predictor_bytes =
        predictor.as_ref().map_or(0, |_| format::predictor::stored_len(opts.predictor_dtype, hidden, levels))
            as f64;
    for (p, v) in plans.iter().zip(&values) {
        tensors[p.tensor].bytes_after += (predictor_bytes * v.len() as f64 / represented as f64) as u64;
    }
    Ok(CompressReport {
        tensors,
        hidden,
        predictor_params: predictor.as_ref().map_or(0, |_| predictor::param_count(hidden, levels)),
        represented,
        source_bytes: model.file_bytes,
        file_bytes,
        seconds: start.elapsed().as_secs_f64(),
        steps: opts.steps,
        final_loss,
        weight_rmse,
        qat_steps,
        kd_losses: kd_log,
        warnings,
    })
}

/// The distillation term of a schedule: the source network with predicted kernels, the
/// teacher and the training images.
fn distiller(
    input: &Path,
    model: &SourceModel,
    plans: &[LayerPlan],
    opts: &CompressOptions,
    device: &Device,
) -> Result<distill::Distiller> {
    if model.kind != SourceKind::Onnx {
        return Err(Error::usage(
            "--schedule",
            "distillation needs an ONNX source model (it runs the network)",
        ));
    }
    let preprocess = match opts.metadata.get(crate::format::metadata::PREPROCESS_KEY) {
        Some(json) => serde_json::from_str::<crate::data::Preprocess>(json)
            .map_err(|e| Error::usage("--preprocess", format!("stored preprocessing is not valid: {e}")))?,
        None => {
            return Err(Error::usage(
                "--preprocess",
                "distillation feeds training images to the network: give their preprocessing, e.g. mean=0.286,std=0.353",
            ))
        }
    };
    // The student (and the default teacher) run the source's graph with the compressed model's
    // tensors, which the channel ordering may have permuted.
    let graph = match &model.skeleton {
        Some(skeleton) if opts.channels => {
            let weights = crate::permute::as_weights(model);
            crate::graph::Graph::from_proto(&crate::runtime::patch_skeleton(skeleton, &weights)?)?
        }
        _ => crate::graph::Graph::from_onnx_file(input)?,
    };
    let kernels = distill::kernels::PredictedKernels::new(plans, model, opts.embedding, device)?;
    let student = distill::Student { graph, kernels };
    distill::Distiller::new(student, &opts.distill, &preprocess, opts.seed, device)
}

/// Lays out the file for a (trained or not) predictor.
pub fn build_file(
    model: &SourceModel,
    plans: &[LayerPlan],
    values: &[Vec<f32>],
    predictor: Option<&Predictor>,
    opts: &CompressOptions,
) -> Result<BuiltFile> {
    let mut b = FileBuilder::new();
    let skeleton = model.skeleton.as_ref().map(|s| b.add(SectionKind::Skeleton, Encoding::Zstd, s));
    let predictor_spec = match predictor {
        Some(p) => {
            let levels = p.embedding.levels as usize;
            let bytes = predictor::encode_weights(opts.predictor_dtype, p.hidden, levels, &p.to_flat()?)?;
            Some(PredictorSpec {
                arch: predictor::ARCH.into(),
                hidden: p.hidden as u32,
                embedding: p.embedding,
                dtype: opts.predictor_dtype,
                ordering: opts.ordering,
                layers: plans.len() as u32,
                section: b.add(SectionKind::Predictor, Encoding::Plain, &bytes),
            })
        }
        None => None,
    };
    let predictions = match predictor {
        Some(p) => regen::predict_layers(p, plans, plans.len() as u32)?,
        None => Vec::new(),
    };
    let mut plan_of = vec![None; model.tensors.len()];
    for (k, (p, range)) in plans.iter().zip(prediction_ranges(plans)).enumerate() {
        plan_of[p.tensor] = Some((k, range));
    }
    let (mut se_all, mut n_all) = (0f64, 0usize);
    let mut entries = Vec::with_capacity(model.tensors.len());
    let mut reports = Vec::with_capacity(model.tensors.len());
    for (i, t) in model.tensors.iter().enumerate() {
        let before = t.data.len() as u64;
        let (storage, report) = match plan_of[i].clone() {
            Some((k, range)) => {
                let p = &plans[k];
                let mut rebuilt = vec![0f32; values[k].len()];
                plan::scatter(&predictions[range], p, &mut rebuilt);
                let se: f64 = rebuilt.iter().zip(&values[k]).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
                se_all += se;
                n_all += rebuilt.len();
                // Without a stored ordering every permutation is the identity: an empty section
                // (format 3). A chain that happens to be the identity (one block) stays stored, so
                // a chained file keeps the lowest major version its tensors need.
                let identity = opts.ordering == Ordering::None
                    && p.perm.iter().enumerate().all(|(i, &k)| i == k as usize);
                let perm = if identity {
                    b.add(SectionKind::Permutation, Encoding::Plain, &[])
                } else {
                    b.add(SectionKind::Permutation, Encoding::Zstd, &pack_permutation(&p.perm))
                };
                let mut after = b.stored_len(perm);
                let scales = p.scales.as_ref().map(|s| {
                    let bytes = format::codec::from_f32(opts.scale_dtype.dtype(), s).expect("float");
                    let idx = b.add(SectionKind::Scales, Encoding::Zstd, &bytes);
                    after += b.stored_len(idx);
                    idx
                });
                let rmse = (se / rebuilt.len() as f64).sqrt();
                let rel = crate::fidelity::relative_error(&values[k], &rebuilt);
                let storage = Storage::Predicted {
                    layer: p.layer,
                    permutation: perm,
                    scales,
                    layout: p.grid.layout,
                    scale_dtype: opts.scale_dtype,
                };
                (storage, (Some(p.grid.layout), rmse, rel, after))
            }
            None => {
                let (storage, section) = store_unpredicted(&mut b, t, opts.raw_codec)?;
                (storage, (None, 0.0, 0.0, b.stored_len(section)))
            }
        };
        let codec = match storage {
            Storage::Quantized { bits, .. } => format!("int{bits}"),
            Storage::Cast { to, .. } => format!("{to:?}").to_lowercase(),
            _ => "raw".into(),
        };
        let (predicted, rmse, rel_error, bytes_after) = report;
        entries.push(TensorEntry { name: t.name.clone(), dtype: t.dtype, shape: t.shape.clone(), storage });
        reports.push(TensorReport {
            name: t.name.clone(),
            shape: t.shape.clone(),
            predicted: predicted.is_some(),
            stored: predicted.map_or(codec, |l| l.name().into()),
            rmse,
            rel_error,
            bytes_before: before,
            bytes_after,
        });
    }
    let mut metadata = model.metadata.clone();
    metadata.extend(opts.metadata.clone());
    let source = Source { kind: model.kind, file_bytes: model.file_bytes, skeleton };
    let bytes = b.finish(source, predictor_spec, entries, metadata);
    Ok(BuiltFile { bytes, tensors: reports, weight_rmse: (se_all / n_all.max(1) as f64).sqrt() })
}

/// Stores a tensor that is not predicted with `codec` (float tensors only; the others, and
/// f16/bf16 tensors asked to be cast, stay raw); returns its storage and section.
fn store_unpredicted(
    b: &mut FileBuilder,
    t: &ingest::SourceTensor,
    codec: Codec,
) -> Result<(Storage, usize)> {
    let wide = matches!(t.dtype, format::DType::F32 | format::DType::F64);
    let cast = |to: format::DType| {
        format::codec::from_f32(to, &format::codec::to_f32(t.dtype, &t.data).expect("float"))
    };
    match codec {
        Codec::F16 | Codec::Bf16 if wide => {
            let to = if codec == Codec::F16 { format::DType::F16 } else { format::DType::Bf16 };
            let bytes = cast(to).expect("half dtype");
            let section = b.add(SectionKind::Tensor, Encoding::ZstdBytegroup { element: 2 }, &bytes);
            Ok((Storage::Cast { to, section }, section))
        }
        Codec::Int8 | Codec::Int4 if t.dtype.is_float() && !t.data.is_empty() => {
            let bits = if codec == Codec::Int8 { 8 } else { 4 };
            let group = quant_group(format::row_len(&t.shape).expect("ingested shapes fit"), bits);
            let values = format::codec::to_f32(t.dtype, &t.data).expect("float");
            let q =
                format::quant::quantize(&values, group as usize, bits, Default::default()).map_err(|e| {
                    Error::usage(
                        "--raw-codec",
                        format!("tensor {} cannot be stored as int{bits}: {e}", t.name),
                    )
                })?;
            let section = b.add(SectionKind::Quantized, Encoding::Zstd, &q.encode());
            Ok((Storage::Quantized { bits, group, section }, section))
        }
        _ => {
            let encoding = match t.dtype.size() {
                1 => Encoding::Zstd,
                n => Encoding::ZstdBytegroup { element: n as u8 },
            };
            let section = b.add(SectionKind::Tensor, encoding, &t.data);
            Ok((Storage::Raw { section }, section))
        }
    }
}

/// Checks, before training allocates anything, that a predictor of width `hidden` can be
/// trained within the memory budget: about 40 bytes per parameter (the parameters, AdamW's
/// two moments, one gradient per chunk and their sum, the candle copies), the activations and
/// gradients of one batch (8 bytes per row and layer width), 84 + 24·levels bytes per block
/// (coordinates, targets, masks and the embedded inputs) and the source model's tensors.
/// Without it `--hidden 16384` (805 M parameters) aborts in the allocator.
pub fn check_training_budget(
    hidden: usize,
    opts: &CompressOptions,
    blocks: u64,
    source_bytes: u64,
) -> Result<()> {
    let levels = opts.embedding.levels as u64;
    let params = predictor::param_count(hidden, levels as usize) as u64;
    let widths = 6 * levels + 4 * hidden as u64 + crate::format::predictor::OUTPUTS as u64;
    let need = 40u64
        .saturating_mul(params)
        .saturating_add(8 * opts.batch as u64 * widths)
        .saturating_add(blocks.saturating_mul(84 + 24 * levels))
        .saturating_add(source_bytes);
    format::budget::current().check(
        || {
            format!(
                "training a predictor of hidden width {hidden} ({params} parameters) on {blocks} blocks \
                 (lower --hidden, or raise --target-ratio)"
            )
        },
        need,
    )
}
