//! The compressor pipeline, in stages: [`options`] (checked before any work) → ingest →
//! [`plan`] (what is predicted, orderings, scales) → [`measure`] (calibration inputs, layer
//! moments) → [`serve`] (whether and how wide a predictor is trained) → [`fit`] (the predictor)
//! → [`choose`] (one storage per tensor under the budget) → [`finetune`] (with `--data`) →
//! [`build`] (the file) → [`report`]. Safetensors no predictor serves take [`stream`].

pub mod build;
pub mod calibrate;
pub mod choose;
pub mod decoder;
pub mod distill;
pub mod estimate;
pub mod finetune;
pub mod fit;
pub mod graph;
pub mod measure;
pub mod moments;
pub mod options;
pub mod permute;
pub mod plan;
pub mod report;
pub mod select;
pub mod serve;
pub mod stream;
pub mod tokens;
pub mod train;
pub use build::{build_file, build_file_with, predicted_values, BuiltFile};
pub use fit::{check_training_budget, hidden_for_ratio, hidden_for_size, train_data};
pub use options::{
    CompressOptions, ErrorBudget, ResidualMode, DEFAULT_CALIBRATION_IMAGES, DEFAULT_CHECK_IMAGES,
    DEFAULT_CHECK_SHARE, DEFAULT_FALLBACK_WEIGHT_ERROR, DEFAULT_FINETUNE_LR, DEFAULT_FINETUNE_SCALE_LR,
    DEFAULT_FINETUNE_STEPS, DEFAULT_HIDDEN, DEFAULT_LR, DEFAULT_MAX_ERROR, DEFAULT_MAX_WEIGHT_ERROR,
    DEFAULT_MEASURED_CANDIDATES, DEFAULT_MIN_VALUES, DEFAULT_PE_BASE, DEFAULT_PE_LEVELS,
    DEFAULT_QAT_FRACTION, DEFAULT_STEPS, DEMO_STEPS, FINETUNE_ERROR_GAIN, MAX_STEPS, MIN_CHECK_INPUTS,
};
pub use plan::{make_plan, Plan};
pub use report::{AllocationTry, CompressReport, StorageReport, TensorReport};

use crate::compress::choose::{decide, Assessed, Chooser, Decided, Fitted, Store};
use crate::compress::fit::{fit, Training};
use crate::compress::measure::calibration;
use crate::compress::plan::with_channel_order;
use crate::compress::select::Decision;
use crate::compress::train::Progress;
use crate::error::{Error, Result};
use crate::format;
use crate::ingest;
use crate::predictor;
use std::path::Path;
use std::time::Instant;

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
    // A safetensors model no predictor serves is streamed: judged from its header alone. So is
    // one calibrated with token ids ([`tokens`]), and a decoder checkpoint under the default
    // budget ([`stream::parity_default`]): the codecs path, no predictor tried.
    if stream::Source::is_safetensors(input) && opts.distill.teacher.is_none() {
        if !opts.calibration_inputs.is_empty() {
            let why = "token-id calibration: every tensor goes to the codecs (no predictor is tried)";
            return stream::compress(input, output, opts, Some(why.into()), progress);
        }
        if stream::parity_default(input, opts) {
            let why = "a decoder checkpoint under the default budget: every tensor goes to the codecs";
            return stream::compress(input, output, opts, Some(why.into()), progress);
        }
        let shapes = stream::Source::open(input)?.shapes();
        if let serve::Verdict::Cannot(why) = serve::judge(&shapes, opts)? {
            return stream::compress(input, output, opts, Some(why), progress);
        }
    }
    let mut model = ingest::load(input)?;
    let opts = &with_channel_order(&mut model, opts)?;
    let mut warnings = Vec::new();
    // Decided from the shapes, before any f32 copy or calibration run.
    let codecs_only;
    let opts = match serve::judge(&model, opts)? {
        serve::Verdict::Cannot(why) => {
            warnings.push(why);
            codecs_only = serve::codecs_only(opts);
            &codecs_only
        }
        _ => opts,
    };
    let runnable = measure::check_runnable(input, &model, opts, &mut warnings)?;
    let plan = make_plan(&model, opts)?;
    let represented: usize = plan.values.iter().map(Vec::len).sum();
    let levels = opts.embedding.levels as usize;
    let max_bytes = opts.size_ratio.map(|r| (model.file_bytes as f64 / r).floor() as u64);
    // What the per-tensor choice measures with, before training: where codecs alone already
    // do as well as a predictor could, none is trained.
    let chooser = if opts.error_budget == ErrorBudget::Off && max_bytes.is_none() {
        None
    } else {
        let (split, hessians) = calibration(&model, opts, runnable, &mut warnings)?;
        Some(Chooser::new(&model, split, hessians, opts.measured_candidates))
    };
    let serve::Served { hidden, predictor_bytes, data, probe } =
        serve::served(&model, &plan, opts, chooser.as_ref(), max_bytes, &mut warnings)?;
    let training = match &data {
        Some(d) => Some(fit(input, &model, &plan, d, opts, hidden, progress)?),
        None => None,
    };
    drop(data);
    let fitted = training.as_ref().map(|t| &t.fitted);
    let tuning = opts.finetune.steps > 0 && opts.preprocess.is_some() && model.skeleton.is_some();
    let allowed =
        max_bytes
            .map(|max| if tuning { max.saturating_sub(finetune::reserve(&model, opts, max)) } else { max });
    let decided = decide(&model, &plan, fitted, opts, chooser.as_ref(), allowed, &mut warnings)?;
    let stage = Stage { model: &model, plan: &plan, fitted, opts, chooser: chooser.as_ref(), max_bytes };
    let (built, Decided { stores, errors, report: storage }, finetune) =
        stage.finetuned(decided, &mut warnings, progress)?;
    let BuiltFile { bytes, mut tensors, weight_rmse } = built;
    for (t, d) in tensors.iter_mut().zip(&plan.decisions) {
        if let (Decision::Raw(why), "raw") = (d, t.stored.as_str()) {
            t.stored = format!("raw: {why}");
        }
    }
    if let Some(errors) = &errors {
        for (t, e) in tensors.iter_mut().zip(errors) {
            t.error_alone = Some(*e);
        }
    }
    // Never write a file the reader would refuse (e.g. a model beyond the format's limits).
    format::NerpFile::from_bytes(bytes.clone(), output)?;
    format::write_atomic(output, &bytes)?;
    let file_bytes = bytes.len() as u64;
    // Spread the predictor's bytes over the predicted tensors by their share of the values.
    let stored_predictor = fitted.is_some() && stores.iter().any(Store::uses_predictor);
    let predictor_bytes = if stored_predictor { predictor_bytes as f64 } else { 0.0 };
    let shares: Vec<_> =
        plan.layers.iter().zip(&plan.values).filter(|(p, _)| tensors[p.tensor].predicted).collect();
    let on_predicted: usize = shares.iter().map(|(_, v)| v.len()).sum();
    for (p, v) in shares {
        tensors[p.tensor].bytes_after += (predictor_bytes * v.len() as f64 / on_predicted as f64) as u64;
    }
    let (final_loss, kd_losses, qat_steps) = match training {
        Some(Training { final_loss, kd_losses, qat_steps, .. }) => (final_loss, kd_losses, qat_steps),
        None => (f64::NAN, Vec::new(), 0),
    };
    Ok(CompressReport {
        tensors,
        hidden,
        predictor_params: if stored_predictor { predictor::param_count(hidden, levels) } else { 0 },
        represented,
        source_bytes: model.file_bytes,
        file_bytes,
        seconds: start.elapsed().as_secs_f64(),
        steps: opts.steps,
        final_loss,
        weight_rmse,
        qat_steps,
        kd_losses,
        warnings,
        storage,
        finetune,
        probe,
    })
}

/// What the fine-tuning stage works with.
struct Stage<'a> {
    model: &'a ingest::SourceModel,
    plan: &'a Plan,
    fitted: Option<&'a Fitted>,
    opts: &'a CompressOptions,
    chooser: Option<&'a Chooser>,
    max_bytes: Option<u64>,
}

impl Stage<'_> {
    fn build(&self, stores: &[Store]) -> Result<BuiltFile> {
        let with = self.fitted.map(|f| (&f.predictor, Some(f.predictions.as_slice())));
        build::build(self.model, &self.plan.layers, &self.plan.values, with, self.opts, stores)
    }

    fn assess(&self, stores: &[Store]) -> Result<Option<Assessed>> {
        self.chooser.map(|c| c.file_error(self.model, self.plan, self.fitted, self.opts, stores)).transpose()
    }

    /// Fine-tunes the file `decided` describes (with `--data`, `--preprocess` and an ONNX
    /// source) and builds it; a fine-tuned file that breaks a budget the chosen one kept is not
    /// kept. Under an error budget alone the fine-tuning is spent on a smaller file: the file is
    /// allocated again at `E / (1 − FINETUNE_ERROR_GAIN)` and that one is fine-tuned; where it
    /// misses `E` on the held-back inputs, or is not smaller, the file `decided` describes is
    /// kept as chosen. ResNet-20 at 5% with data: fine-tuning the chosen file lowered its error
    /// to 2.86% and added 1,561 bytes, so the budget's slack went unspent (20.70× against the
    /// data-free 21.33×).
    fn finetuned(
        &self,
        decided: Decided,
        warnings: &mut Vec<String>,
        progress: &mut dyn Progress,
    ) -> Result<(BuiltFile, Decided, Option<finetune::FinetuneReport>)> {
        let opts = self.opts;
        let (Some(pre), Some(skeleton), true) =
            (&opts.preprocess, &self.model.skeleton, opts.finetune.steps > 0)
        else {
            if opts.finetune.steps > 0 {
                warnings.push("fine-tuning needs an ONNX source and --preprocess: skipped".into());
            }
            return Ok((self.build(&decided.stores)?, decided, None));
        };
        let limit = match opts.error_budget {
            ErrorBudget::Check(e) | ErrorBudget::Target(e) => e,
            ErrorBudget::Off => f64::INFINITY,
        };
        // Only where the chosen file meets the budget: one that does not is fine-tuned itself,
        // which may bring it within.
        let met = decided.report.as_ref().is_some_and(|r| r.met);
        let (aimed, mut tuned) = match self.chooser {
            Some(c) if met && self.max_bytes.is_none() && limit.is_finite() && c.check.is_some() => {
                let aim = limit / (1.0 - FINETUNE_ERROR_GAIN);
                let error_budget = match opts.error_budget {
                    ErrorBudget::Check(_) => ErrorBudget::Check(aim),
                    _ => ErrorBudget::Target(aim),
                };
                let loose = CompressOptions { error_budget, ..opts.clone() };
                // Its notes (an aim it could not meet) say nothing of the file kept.
                let mut notes = Vec::new();
                (Some(aim), decide(self.model, self.plan, self.fitted, &loose, Some(c), None, &mut notes)?)
            }
            _ => (None, decided.clone()),
        };
        let graph = graph::Graph::from_proto(&crate::runtime::patch_skeleton(
            skeleton,
            &crate::compress::permute::as_weights(self.model),
        )?)?;
        let before = self.assess(&tuned.stores)?;
        let held = self.chooser.and_then(|c| c.held_images.clone());
        let Some(mut r) =
            finetune::finetune(self.model, &graph, &mut tuned.stores, opts, pre, held, progress)?
        else {
            return Ok((self.build(&decided.stores)?, decided, None));
        };
        let after = self.assess(&tuned.stores)?;
        r.error_before = before.as_ref().map(Assessed::file_error);
        r.error_after = after.as_ref().map(Assessed::file_error);
        if let (Some(b), Some(a)) = (&before, &after) {
            // The budget is kept on the held-back inputs by the file as written.
            if a.held_back.is_some() && a.error() > limit && (aimed.is_some() || a.error() > b.error()) {
                let why = format!(
                    "fine-tuning{} left the error on the held-back inputs at up to {:.2}% (95% bound; over {:.2}%): \
                     the file keeps the codes {}",
                    aimed.map_or(String::new(), |e| format!(" the file allocated at {:.2}%", 100.0 * e)),
                    100.0 * a.error(),
                    100.0 * limit,
                    if aimed.is_some() { "the budget chose, not fine-tuned" } else { "as chosen" }
                );
                return self.as_chosen(self.build(&decided.stores)?, decided, r, why, warnings);
            }
            if let Some(s) = tuned.report.as_mut() {
                a.report_into(s);
                if self.max_bytes.is_none() && s.measured_error.is_some() {
                    s.met = a.error() <= limit;
                }
            }
        }
        let built = self.build(&tuned.stores)?;
        let bytes = built.bytes.len() as u64;
        // Fine-tuning may grow the codes' entropy and adds row scales.
        if let Some(max) = self.max_bytes.filter(|&max| bytes > max) {
            let why = format!(
                "the fine-tuned file ({bytes} bytes) exceeds --size-ratio's {max} bytes: the file keeps the codes as chosen"
            );
            return self.as_chosen(self.build(&decided.stores)?, decided, r, why, warnings);
        }
        if let Some(aim) = aimed {
            let chosen = self.build(&decided.stores)?;
            let strict = chosen.bytes.len();
            if bytes >= strict as u64 {
                let why = format!(
                    "the fine-tuned file ({bytes} bytes) is not smaller than the one the budget chose without \
                     fine-tuning ({strict} bytes): that one is kept"
                );
                return self.as_chosen(chosen, decided, r, why, warnings);
            }
            warnings.push(format!(
                "fine-tuning spent on a smaller file: allocated at {:.2}% output error (counting on fine-tuning to \
                 remove {:.0}% of it) and fine-tuned, {bytes} bytes against {strict} without fine-tuning",
                100.0 * aim,
                100.0 * FINETUNE_ERROR_GAIN,
            ));
            // The budget is the user's, whatever the allocation aimed at.
            if let (Some(s), Some(d)) = (tuned.report.as_mut(), decided.report.as_ref()) {
                s.budget = d.budget.clone();
            }
        }
        Ok((built, tuned, Some(r)))
    }

    /// The file `decided` describes (`built`), not fine-tuned, and why.
    fn as_chosen(
        &self,
        built: BuiltFile,
        decided: Decided,
        mut r: finetune::FinetuneReport,
        why: String,
        warnings: &mut Vec<String>,
    ) -> Result<(BuiltFile, Decided, Option<finetune::FinetuneReport>)> {
        warnings.push(why);
        r.kept = false;
        Ok((built, decided, Some(r)))
    }
}
