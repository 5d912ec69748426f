//! The compressor pipeline, in stages: [`options`] (checked before any work) → ingest →
//! [`plan`] (what is predicted, orderings, scales) → [`measure`] (calibration inputs, layer
//! moments) → [`fit`] (the predictor) → [`choose`] (one storage per tensor under the budget) →
//! [`build`] (the file) → [`report`].

mod build;
pub mod calibrate;
pub mod choose;
pub mod distill;
mod fit;
pub mod graph;
mod measure;
pub mod moments;
mod options;
pub mod permute;
pub mod plan;
mod report;
pub mod select;
pub mod train;
pub use build::{build_file, build_file_with, predicted_values, BuiltFile};
pub use fit::{check_training_budget, hidden_for_ratio, hidden_for_size, train_data};
pub use options::{
    CompressOptions, ErrorBudget, ResidualMode, DEFAULT_CALIBRATION_IMAGES, DEFAULT_FALLBACK_WEIGHT_ERROR,
    DEFAULT_HIDDEN, DEFAULT_LR, DEFAULT_MAX_ERROR, DEFAULT_MAX_WEIGHT_ERROR, DEFAULT_MIN_VALUES,
    DEFAULT_PE_BASE, DEFAULT_PE_LEVELS, DEFAULT_QAT_FRACTION, DEFAULT_STEPS, DEMO_STEPS, MAX_STEPS,
};
pub use plan::{make_plan, Plan};
pub use report::{CompressReport, StorageReport, TensorReport};

use crate::compress::choose::Budget;
use crate::compress::choose::{choose_storage, planned_choices, Chooser};
use crate::compress::distill::Schedule;
use crate::compress::fit::distiller;
use crate::compress::measure::calibration;
use crate::compress::moments::Hessians;
use crate::compress::plan::with_channel_order;
use crate::compress::plan::LayerPlan;
use crate::compress::select::Decision;
use crate::compress::train::Progress;
use crate::error::{Error, Result};
use crate::format::{self, SourceKind};
use crate::ingest::{self};
use crate::predictor::{self};
use candle_core::Device;
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
    let max_bytes = opts.size_ratio.map(|r| (model.file_bytes as f64 / r).floor() as u64);
    let hidden = match (opts.hidden, opts.target_ratio, max_bytes) {
        (Some(h), _, _) => h,
        (None, Some(r), _) => hidden_for_ratio(represented, r, levels),
        (None, None, Some(max_bytes)) if !plans.is_empty() => {
            hidden_for_size(&model, &plans, &values, opts, max_bytes)?
        }
        _ => DEFAULT_HIDDEN,
    };
    if !plans.is_empty() {
        let blocks: usize = plans.iter().map(LayerPlan::blocks).sum();
        let source: u64 = model.tensors.iter().map(|t| t.data.len() as u64).sum();
        check_training_budget(hidden, opts, blocks as u64, source)?;
    }
    // The per-tensor choice is measured before training: where codecs alone already do as
    // well as a predictor could, none is trained.
    let chooser = if opts.error_budget == ErrorBudget::Off && max_bytes.is_none() {
        None
    } else {
        let (cal, hessians) = calibration(&model, opts, warnings.is_empty(), &mut warnings)?;
        Some(Chooser::new(&model, cal, hessians)?)
    };
    let early = match (max_bytes, opts.error_budget, &chooser) {
        (Some(b), _, Some(_)) => Some(Budget::Bytes(b)),
        (None, ErrorBudget::Target(e), Some(_)) => Some(Budget::Error(e)),
        (None, ErrorBudget::Check(e), Some(c)) if c.cal.is_some() => Some(Budget::Error(e)),
        _ => None,
    };
    let predictor_bytes = format::predictor::stored_len(opts.predictor_dtype, hidden, levels);
    let skip = match (early, &chooser) {
        (Some(b), Some(c)) if !plans.is_empty() => c.codecs_suffice(&model, b, predictor_bytes)?,
        _ => false,
    };
    if skip {
        warnings.push(format!(
            "codecs alone meet the budget in fewer bytes or within {:.0}% output error: no predictor was \
             trained (its {predictor_bytes} bytes would not pay for themselves; --max-error off trains one)",
            100.0 * DEFAULT_MAX_ERROR
        ));
    }
    let device = Device::Cpu;
    let mut final_loss = f64::NAN;
    let mut kd_log = Vec::new();
    let mut qat_steps = 0;
    let predictor = if plans.is_empty() || skip {
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
    let chosen = match &chooser {
        Some(c) => {
            choose_storage(&model, &plans, &values, predictor.as_ref(), opts, c, max_bytes, &mut warnings)?
        }
        None => None,
    };
    let no_hessians = Hessians::default();
    let hessians = chooser.as_ref().map_or(&no_hessians, |c| &c.hessians);
    let (choices, storage) = match chosen {
        Some((c, report)) => (Some(c), Some(report)),
        None => (None, None),
    };
    // `--residual` where the budget did not choose.
    let forced = match (&choices, opts.residual, &predictor) {
        (None, ResidualMode::Every(_), Some(_)) => {
            let mut planned = vec![false; model.tensors.len()];
            plans.iter().for_each(|p| planned[p.tensor] = true);
            Some(planned_choices(&planned, opts))
        }
        _ => None,
    };
    let picks = choices.as_ref().map(|c| c.0.clone()).or(forced);
    let BuiltFile { bytes, mut tensors, weight_rmse } = build_file_with(
        &model,
        &plans,
        &values,
        predictor.as_ref(),
        opts,
        picks.as_deref().map(|c| (c, hessians)),
    )?;
    for (t, d) in tensors.iter_mut().zip(&decisions) {
        if let (Decision::Raw(why), "raw") = (d, t.stored.as_str()) {
            t.stored = format!("raw: {why}");
        }
    }
    if let Some((_, errors)) = &choices {
        for (t, e) in tensors.iter_mut().zip(errors) {
            t.error_alone = Some(*e);
        }
    }
    let predicted_any = picks.as_ref().is_none_or(|c| c.iter().any(|c| c.uses_predictor()));
    let predictor = predictor.filter(|_| predicted_any);
    // Never write a file the reader would refuse (e.g. a model beyond the format's limits).
    format::NerpFile::from_bytes(bytes.clone(), output)?;
    format::write_atomic(output, &bytes)?;
    let file_bytes = bytes.len() as u64;
    // Spread the predictor's bytes over the predicted tensors by their share of the values.
    let predictor_bytes = predictor.as_ref().map_or(0.0, |_| predictor_bytes as f64);
    let shares: Vec<_> = plans.iter().zip(&values).filter(|(p, _)| tensors[p.tensor].predicted).collect();
    let on_predicted: usize = shares.iter().map(|(_, v)| v.len()).sum();
    for (p, v) in shares {
        tensors[p.tensor].bytes_after += (predictor_bytes * v.len() as f64 / on_predicted as f64) as u64;
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
        storage,
    })
}
