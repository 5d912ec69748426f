//! The compressor pipeline, in stages: [`options`] (checked before any work) → ingest →
//! [`plan`] (what is predicted, orderings, scales) → [`measure`] (calibration inputs, layer
//! moments) → [`fit`] (the predictor) → [`choose`] (one storage per tensor under the budget) →
//! [`build`] (the file) → [`report`].

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
    DEFAULT_QAT_FRACTION, DEFAULT_STEPS, DEMO_STEPS, MAX_STEPS, MIN_CHECK_INPUTS,
};
pub use plan::{make_plan, Plan};
pub use report::{AllocationTry, CompressReport, StorageReport, TensorReport};

use crate::compress::choose::{decide, planned, Assessed, Chooser, Decided, Store};
use crate::compress::fit::{fit, Training};
use crate::compress::measure::calibration;
use crate::compress::plan::{with_channel_order, LayerPlan};
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
    // one calibrated with token ids ([`tokens`]): the codecs path, no predictor tried.
    if stream::Source::is_safetensors(input) && opts.distill.teacher.is_none() {
        if !opts.calibration_inputs.is_empty() {
            let why = "token-id calibration: every tensor goes to the codecs (no predictor is tried)";
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
    let no_hessians = moments::Hessians::default();
    let hessians = chooser.as_ref().map_or(&no_hessians, |c| &c.hessians);
    let mut no_width = false;
    let hidden = match (opts.hidden, opts.target_ratio, max_bytes) {
        (Some(h), _, _) => h,
        (None, Some(r), _) => hidden_for_ratio(represented, r, levels),
        (None, None, Some(max_bytes)) if !plan.layers.is_empty() => {
            let stores = planned(&model, &plan.layers, &plan.values, true, None, opts, hessians)?;
            match hidden_for_size(&model, &plan.layers, &plan.values, &stores, opts, max_bytes)? {
                Some(h) => h,
                None => {
                    let codecs = match &chooser {
                        Some(c) => c.codecs_feasible(&model, choose::Budget::Bytes(max_bytes))?,
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
        || match (&chooser, plan.layers.is_empty()) {
            (Some(c), false) => match c.budget(opts, max_bytes) {
                Some(b) => c.codecs_suffice(&model, b, predictor_bytes)?,
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
        Some(d) => serve::probe(d, opts, hidden, predictor_bytes, represented)?,
        None => None,
    };
    if let Some(p) = probe.as_ref().filter(|p| !p.pays()) {
        let asked = opts.hidden.is_some()
            || opts.target_ratio.is_some()
            || opts.distill.schedule != crate::compress::distill::Schedule::Recon;
        if chooser.is_some() && !asked {
            warnings.push(format!("{}: no predictor was trained (--hidden trains one)", p.line()));
            skip = true;
        }
    }
    let training = match (&data, skip) {
        (Some(d), false) => Some(fit(input, &model, &plan, d, opts, hidden, progress)?),
        _ => None,
    };
    drop(data);
    let fitted = training.as_ref().map(|t| &t.fitted);
    let tuning = opts.finetune.steps > 0 && opts.preprocess.is_some() && model.skeleton.is_some();
    let allowed =
        max_bytes
            .map(|max| if tuning { max.saturating_sub(finetune::reserve(&model, opts, max)) } else { max });
    let Decided { mut stores, errors, report: mut storage } =
        decide(&model, &plan, fitted, opts, chooser.as_ref(), allowed, &mut warnings)?;
    let (chosen, chosen_storage) = (stores.clone(), storage.clone());
    let mut finetune = match (&opts.preprocess, &model.skeleton) {
        (Some(pre), Some(skeleton)) if opts.finetune.steps > 0 => {
            let graph = crate::compress::graph::Graph::from_proto(&crate::runtime::patch_skeleton(
                skeleton,
                &crate::compress::permute::as_weights(&model),
            )?)?;
            let before = match &chooser {
                Some(c) => Some(c.file_error(&model, &plan, fitted, opts, &stores)?),
                None => None,
            };
            let held = chooser.as_ref().and_then(|c| c.held_images.clone());
            let report = finetune::finetune(&model, &graph, &mut stores, opts, pre, held, progress)?;
            match (report, &chooser) {
                (Some(mut r), c) => {
                    let after =
                        c.as_ref().map(|c| c.file_error(&model, &plan, fitted, opts, &stores)).transpose()?;
                    r.error_before = before.as_ref().map(Assessed::file_error);
                    r.error_after = after.as_ref().map(Assessed::file_error);
                    if let (Some(b), Some(a)) = (&before, &after) {
                        // The budget is kept on the held-back inputs by the file as written: a
                        // fine-tuning that breaks it is not kept.
                        let limit = match opts.error_budget {
                            ErrorBudget::Check(e) | ErrorBudget::Target(e) => e,
                            ErrorBudget::Off => f64::INFINITY,
                        };
                        if a.held_back.is_some() && a.error() > limit && a.error() > b.error() {
                            warnings.push(format!(
                                "fine-tuning raised the error on the held-back inputs to up to {:.2}% (95% bound; over {:.2}%): \
                                 the file keeps the codes as chosen",
                                100.0 * a.error(),
                                100.0 * limit
                            ));
                            stores = chosen.clone();
                            r.kept = false;
                        } else if let Some(s) = storage.as_mut() {
                            a.report_into(s);
                            if max_bytes.is_none() && s.measured_error.is_some() {
                                s.met = a.error() <= limit;
                            }
                        }
                    }
                    Some(r)
                }
                (None, _) => None,
            }
        }
        _ if opts.finetune.steps > 0 => {
            warnings.push("fine-tuning needs an ONNX source and --preprocess: skipped".into());
            None
        }
        _ => None,
    };
    let with = fitted.map(|f| (&f.predictor, Some(f.predictions.as_slice())));
    let mut built = build::build(&model, &plan.layers, &plan.values, with, opts, &stores)?;
    // Fine-tuning may grow the codes' entropy and adds row scales: a file beyond the size budget
    // keeps the stores as chosen.
    if let (Some(max), Some(r)) = (max_bytes, finetune.as_mut()) {
        if r.kept && built.bytes.len() as u64 > max {
            warnings.push(format!(
                "the fine-tuned file ({} bytes) exceeds --size-ratio's {max} bytes: the file keeps the codes as chosen",
                built.bytes.len()
            ));
            r.kept = false;
            storage = chosen_storage;
            built = build::build(&model, &plan.layers, &plan.values, with, opts, &chosen)?;
        }
    }
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
