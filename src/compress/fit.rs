//! Fitting the predictor: its width (from `--hidden`, `--target-ratio` or `--size-ratio`), the
//! memory check before training, the training data, and the distillation term.

use crate::compress::build::{build, predicted_values};
use crate::compress::choose::{Fitted, Store};
use crate::compress::distill::Schedule;
use crate::compress::distill::{self};
use crate::compress::plan::{self, LayerPlan};
use crate::compress::train::TrainData;
use crate::compress::train::{self, Progress};
use crate::compress::CompressOptions;
use crate::compress::Plan;
use crate::error::{Error, Result};
use crate::format::{self, SourceKind};
use crate::ingest::SourceModel;
use crate::predictor::{self, Predictor};
use candle_core::Device;
use std::path::Path;

/// The trained predictor (rounded to its stored dtype, with its values of the planned tensors)
/// and what training reported.
pub(crate) struct Training {
    pub fitted: Fitted,
    pub final_loss: f64,
    pub kd_losses: Vec<distill::KdLosses>,
    pub qat_steps: usize,
}

/// Trains a predictor of width `hidden` for `plan` on its training `data` ([`train_data`])
/// (reconstruction, or a distillation schedule through the rebuilt network of `input`) on the
/// CPU.
pub(crate) fn fit(
    input: &Path,
    model: &SourceModel,
    plan: &Plan,
    data: &TrainData,
    opts: &CompressOptions,
    hidden: usize,
    progress: &mut dyn Progress,
) -> Result<Training> {
    let device = Device::Cpu;
    let cfg = opts.train_config(hidden);
    let qat_steps = distill::qat_steps(&cfg, &opts.distill);
    let (p, losses, kd_losses) = match opts.distill.schedule {
        Schedule::Recon => {
            let (p, losses) = train::train(&cfg, data, None, &device, progress)?;
            (p, losses, Vec::new())
        }
        _ => {
            let mut distiller = distiller(input, model, &plan.layers, opts, &device)?;
            distill::fit(&cfg, data, &mut distiller, &opts.distill, &device, progress)?
        }
    };
    let final_loss = losses.iter().rev().find(|l| l.is_finite()).copied().unwrap_or(f64::NAN);
    let predictor = p.rounded(opts.predictor_dtype)?;
    let predictions = predicted_values(&predictor, &plan.layers, &plan.values)?;
    Ok(Training { fitted: Fitted { predictor, predictions }, final_loss, kd_losses, qat_steps })
}

/// The widest predictor (at most the format's limit) whose file takes at most `max_bytes`:
/// the file is laid out with an untrained predictor of the candidate width (its section's size
/// does not depend on the values), so the answer is exact, header and alignment included. The
/// layout does not run the predictor: on MiniLM (2.5 M blocks, width about 1,900) running it
/// took 6 of the 6.5 minutes of `--size-ratio 4`. `None` when even width 1 does not fit beside
/// the other tensors' planned storage (the codecs alone may still meet the budget).
pub fn hidden_for_size(
    model: &SourceModel,
    plans: &[LayerPlan],
    values: &[Vec<f32>],
    stores: &[Store],
    opts: &CompressOptions,
    max_bytes: u64,
) -> Result<Option<usize>> {
    let file_len = |h: usize| -> Result<u64> {
        let zeros = vec![0f32; predictor::param_count(h, opts.embedding.levels as usize)];
        let p = Predictor::from_flat(h, opts.embedding, &zeros, &Device::Cpu)?;
        Ok(build(model, plans, values, Some((&p, None)), opts, stores)?.bytes.len() as u64)
    };
    let smallest = file_len(1)?;
    if smallest > max_bytes {
        return Ok(None);
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
    // Training it must fit in memory (checked again before training; refused here first).
    let blocks: usize = plans.iter().map(LayerPlan::blocks).sum();
    let source: u64 = model.tensors.iter().map(|t| t.data.len() as u64).sum();
    check_training_budget(h, opts, blocks as u64, source)?;
    while h > 1 && file_len(h)? > max_bytes {
        h -= 1;
    }
    Ok(Some(h))
}

/// Largest hidden width whose parameter count stays within `represented / ratio` (at least 1,
/// at most the format's limit).
pub fn hidden_for_ratio(represented: usize, ratio: f64, levels: usize) -> usize {
    let budget = represented as f64 / ratio;
    let max = format::limits::MAX_HIDDEN as usize;
    (1..max).find(|&h| predictor::param_count(h + 1, levels) as f64 > budget).unwrap_or(max)
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

/// The distillation term of a schedule: the source network with predicted kernels, the
/// teacher and the training images.
pub(crate) fn distiller(
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
    let preprocess = match &opts.preprocess {
        Some(p) => p,
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
            let weights = crate::compress::permute::as_weights(model);
            crate::compress::graph::Graph::from_proto(&crate::runtime::patch_skeleton(skeleton, &weights)?)?
        }
        _ => crate::compress::graph::Graph::from_onnx_file(input)?,
    };
    let kernels = distill::kernels::PredictedKernels::new(plans, model, opts.embedding, device)?;
    let student = distill::Student { graph, kernels };
    distill::Distiller::new(student, &opts.distill, preprocess, opts.seed, device)
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
