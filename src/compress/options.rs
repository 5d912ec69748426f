//! The compressor's options: everything `nerp compress` can be told, with its defaults and the
//! checks that run before any work starts.

use crate::codec::Codec;
use crate::compress::distill::DistillOptions;
use crate::compress::finetune::Finetune;
use crate::compress::select::Selection;
use crate::compress::train::TrainConfig;
use crate::data::Preprocess;
use crate::error::{Error, Result};
use crate::format::{self, metadata, Embedding, Ordering, ScaleDtype, WeightDtype};
use crate::predictor::{self};
use std::collections::BTreeMap;

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
    /// ([`crate::compress::permute`]); a source without a graph (safetensors) keeps `ordering`, or the
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
    /// [`crate::compress::select`]).
    pub selection: Selection,
    pub seed: u64,
    /// The model's input preprocessing (`--preprocess`): how training images become inputs
    /// (calibration, distillation); stored in the file (`preprocess`) for `nerp eval`.
    pub preprocess: Option<Preprocess>,
    /// One concrete shape per model input (`--input-shape`), for ONNX models with dynamic
    /// dimensions; stored in the file (`input_shapes`).
    pub input_shapes: Vec<Vec<usize>>,
    /// Further metadata stored in the file (the registered keys are set from the fields above).
    pub metadata: BTreeMap<String, String>,
    /// Check that tract can run the source ONNX model before compressing.
    pub check_runnable: bool,
    /// Training schedule and distillation settings.
    pub distill: DistillOptions,
    /// Element type of the per-row scales (`--scale-dtype`).
    pub scale_dtype: ScaleDtype,
    /// How the float tensors that are not predicted are stored (`--raw-codec`).
    pub raw_codec: Codec,
    /// Residuals of predicted tensors (`--residual`, spec section 5.3b).
    pub residual: ResidualMode,
    /// The output error the file must keep (`--max-error`): chooses a storage per tensor.
    pub error_budget: ErrorBudget,
    /// Training images (of `distill.data`) run to measure output errors, when `--preprocess`
    /// is given.
    pub calibration_images: usize,
    /// Input arrays (`.npy`) run to measure output errors instead of images.
    pub calibration_inputs: Vec<std::path::PathBuf>,
    /// Inputs held back from the allocation to measure the file's error (`--check N`): with
    /// calibration arrays, N of their inputs (default: a quarter, [`DEFAULT_CHECK_SHARE`], at
    /// least [`MIN_CHECK_INPUTS`]); with images, the N training images after the calibration
    /// ones (default [`DEFAULT_CHECK_IMAGES`]).
    pub check: Option<usize>,
    /// Input arrays (`.npy`) that measure the file's error instead (`--check-inputs`); none of
    /// their inputs may be a calibration input.
    pub check_inputs: Vec<std::path::PathBuf>,
    /// Versions of a tensor (codec candidates, residuals) whose output error is measured by
    /// running the model (`--measured-candidates`; 0: all); the others' are estimated
    /// ([`crate::compress::estimate`]).
    pub measured_candidates: usize,
    /// With calibration images, round quantized tensors data-aware ([`crate::codec::gptq`]) instead
    /// of to the nearest step.
    pub data_aware_rounding: bool,
    /// Distillation of the chosen file's codes ([`crate::compress::finetune`]; 0 steps: off).
    pub finetune: Finetune,
}

/// What `compress` does about the error of the file it writes.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ErrorBudget {
    /// Nothing: the predictor's file as trained.
    Off,
    /// Measure the file's error; above the limit, say so and choose a storage per tensor that
    /// keeps it (relative output error on calibration inputs; without them, the predictor's
    /// file is checked against [`DEFAULT_MAX_WEIGHT_ERROR`] of the weights and codecs are
    /// chosen for [`DEFAULT_FALLBACK_WEIGHT_ERROR`]).
    Check(f64),
    /// The smallest file within this relative output error (or weight error without
    /// calibration inputs), a storage chosen per tensor.
    Target(f64),
}

/// Which residuals (spec section 5.3b) predicted tensors may get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResidualMode {
    /// The budget tries 2-, 3- and 4-bit residuals per tensor; without a budget, none.
    Auto,
    /// None.
    Off,
    /// Every predicted tensor gets one of this many bits where no budget chooses; a budget
    /// tries this width besides the automatic ones.
    Every(u8),
}

impl ResidualMode {
    /// The residual widths the budget tries.
    pub fn widths(self) -> Vec<u8> {
        let auto: Vec<u8> = Codec::RESIDUALS.iter().filter_map(|c| c.bits()).collect();
        match self {
            ResidualMode::Auto => auto,
            ResidualMode::Off => Vec::new(),
            ResidualMode::Every(b) if auto.contains(&b) => auto,
            ResidualMode::Every(b) => auto.into_iter().chain([b]).collect(),
        }
    }
}

/// Largest relative output error of a file written with default options: beyond it a model
/// counts as broken (issue 15's threshold).
pub const DEFAULT_MAX_ERROR: f64 = 0.05;

/// The default check without calibration inputs: relative weight error over all eligible
/// tensors.
pub const DEFAULT_MAX_WEIGHT_ERROR: f64 = 0.5;

/// What the default check chooses codecs for when the predictor's file fails it without
/// calibration inputs: the relative weight error of all eligible tensors. On MiniLM (a
/// safetensors source, nothing to run) a 3.68% weight error gave the sentence embeddings a 19%
/// relative error (min cosine 0.981) and 0.76% gave 2.8% (0.9996): a 5% output error needs
/// about 1% of the weights.
pub const DEFAULT_FALLBACK_WEIGHT_ERROR: f64 = 0.01;

/// Fine-tuning steps when `--data` is given with a budget (`nerp compress`). ResNet-20 at 45×:
/// 200 steps moved no code (KL 1.58 → 0.40, 88.77%), 800 moved 312 (KL 0.22, 89.91%).
pub const DEFAULT_FINETUNE_STEPS: usize = 800;
/// Fine-tuning's peak learning rate, in steps of each tensor's grid. ResNet-20 at 30×, 200
/// steps: 0.02 moved too many codes (91.38% → 74.30%), 0.005 kept them near GPTQ's (91.58%).
pub const DEFAULT_FINETUNE_LR: f64 = 0.005;
/// Fine-tuning's peak learning rate of row scales and biases, relative to their size.
pub const DEFAULT_FINETUNE_SCALE_LR: f64 = 0.001;
/// Under an error budget with fine-tuning, the share of the file's error fine-tuning is counted
/// on to remove: the file is allocated at `E / (1 − this)` and fine-tuned, and the file the
/// budget alone chose (not fine-tuned) is kept where that misses `E`. ResNet-20 at the default
/// 5%: fine-tuning took the chosen file's held-back error from 4.49% to 2.86% (36% removed);
/// counting on a quarter leaves room for a model that gains less.
pub const FINETUNE_ERROR_GAIN: f64 = 0.25;
/// Calibration images by default.
pub const DEFAULT_CALIBRATION_IMAGES: usize = 64;

/// Training images after the calibration ones that check the file by default (`--check`).
pub const DEFAULT_CHECK_IMAGES: usize = 64;

/// Share of the calibration arrays' inputs held back to check the file by default: one in
/// this many.
pub const DEFAULT_CHECK_SHARE: usize = 4;

/// Fewest inputs that check a file: the error of fewer is a clear usage error.
pub const MIN_CHECK_INPUTS: usize = 4;

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
            preprocess: None,
            input_shapes: Vec::new(),
            metadata: BTreeMap::new(),
            check_runnable: true,
            distill: DistillOptions::default(),
            scale_dtype: ScaleDtype::F16,
            raw_codec: Codec::Raw,
            residual: ResidualMode::Auto,
            error_budget: ErrorBudget::Check(DEFAULT_MAX_ERROR),
            calibration_images: DEFAULT_CALIBRATION_IMAGES,
            calibration_inputs: Vec::new(),
            check: None,
            check_inputs: Vec::new(),
            measured_candidates: DEFAULT_MEASURED_CANDIDATES,
            data_aware_rounding: true,
            finetune: Finetune { steps: 0, lr: DEFAULT_FINETUNE_LR, scale_lr: DEFAULT_FINETUNE_SCALE_LR },
        }
    }
}

/// Versions of a tensor measured by running the model by default, shared by its families of
/// roundings (at least one each), before the allocation measures what it picks
/// ([`crate::compress::choose`]'s `settle`). On ResNet-20's default compress, 4 and 8 gave the
/// same bytes as measuring all ~40, in 89 s and 102 s against 190 s (2 cores, under load); 3
/// (one per family) the same bytes again, in the same CPU time as 4 (73.5 s and 73.7 s user):
/// the anchors are no longer the cost.
pub const DEFAULT_MEASURED_CANDIDATES: usize = 4;

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
        if self.size_ratio.is_some() && self.target_ratio.is_some() {
            return Err(Error::usage("--size-ratio", "give it without --target-ratio (or with --hidden)"));
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
        if matches!(self.residual, ResidualMode::Every(b) if !format::quant::valid_bits(b)) {
            let (lo, hi) = (format::quant::MIN_BITS, format::quant::MAX_BITS);
            return Err(Error::usage("--residual", format!("must be a number of bits in {lo}..={hi}")));
        }
        if !(self.finetune.lr.is_finite() && self.finetune.lr > 0.0) {
            return Err(Error::usage("--finetune-lr", "must be a positive number"));
        }
        if !(self.finetune.scale_lr.is_finite() && self.finetune.scale_lr >= 0.0) {
            return Err(Error::usage("--finetune-scale-lr", "must be a number at least 0"));
        }
        if self.finetune.steps > MAX_STEPS {
            return Err(Error::usage("--finetune-steps", format!("must be at most {MAX_STEPS}")));
        }
        if self.calibration_images == 0 {
            return Err(Error::usage("--calibration", "must be at least 1 image"));
        }
        if matches!(self.check, Some(n) if n < MIN_CHECK_INPUTS) {
            let what = format!(
                "must be at least {MIN_CHECK_INPUTS} inputs: the file's error is measured on inputs \
                 the allocation never sees, and fewer give no estimate worth printing"
            );
            return Err(Error::usage("--check", what));
        }
        if self.check.is_some() && !self.check_inputs.is_empty() {
            return Err(Error::usage("--check", "give it or --check-inputs, not both"));
        }
        if let ErrorBudget::Target(e) | ErrorBudget::Check(e) = self.error_budget {
            if !(e.is_finite() && e >= 0.0) {
                return Err(Error::usage("--max-error", "must be a relative error of at least 0, or off"));
            }
        }
        if predictor::frequencies(e).iter().any(|f| !f.is_finite()) {
            let what = format!(
                "{} with {} levels overflows f32 frequencies; lower --pe-base or --pe-levels",
                e.base, e.levels
            );
            return Err(Error::usage("--pe-base", what));
        }
        for key in [metadata::PREPROCESS_KEY, metadata::INPUT_SHAPES_KEY] {
            if self.metadata.contains_key(key) {
                return Err(Error::usage(
                    key,
                    format!(
                        "metadata {key} is set from the options (preprocess, input_shapes), not directly"
                    ),
                ));
            }
        }
        if let Some(p) = &self.preprocess {
            p.validate()?;
        }
        if self.input_shapes.iter().any(|s| s.is_empty() || s.contains(&0)) {
            return Err(Error::usage("--input-shape", "every dimension must be at least 1"));
        }
        self.selection.validate()
    }

    /// The metadata stored in the file: [`Self::metadata`] with the preprocessing and input
    /// shapes under their registered keys (spec section 3).
    pub fn file_metadata(&self) -> BTreeMap<String, String> {
        let mut m = self.metadata.clone();
        if let Some(p) = &self.preprocess {
            m.insert(metadata::PREPROCESS_KEY.into(), serde_json::to_string(p).expect("serializes"));
        }
        if !self.input_shapes.is_empty() {
            let shapes = serde_json::to_string(&self.input_shapes).expect("serializes");
            m.insert(metadata::INPUT_SHAPES_KEY.into(), shapes);
        }
        m
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
