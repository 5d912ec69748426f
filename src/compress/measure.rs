//! What the per-tensor choice measures with: the calibration inputs (output errors) and the
//! layers' input moments (data-aware rounding).

use crate::compress::moments::Hessians;
use crate::compress::CompressOptions;
use crate::error::{Error, Result};
use crate::format::SourceKind;
use crate::ingest::SourceModel;

/// The inputs that measure output errors: `--calibration-inputs` arrays, else the first
/// `--calibration` training images of `--data` when `--preprocess` is given; `None` for a model
/// without a graph tract runs (then weight errors are used). A dataset that cannot be read is a
/// warning (weight errors again), arrays that cannot be read an error.
pub(crate) fn calibration(
    model: &SourceModel,
    opts: &CompressOptions,
    runnable: bool,
    warnings: &mut Vec<String>,
) -> Result<(Option<crate::compress::calibrate::Calibration>, Hessians)> {
    let none = || Ok((None, Hessians::default()));
    if model.kind != SourceKind::Onnx || !runnable {
        return none();
    }
    let mut hessians = Hessians::default();
    let shapes: Vec<Vec<usize>> = match opts.metadata.get(crate::format::metadata::INPUT_SHAPES_KEY) {
        Some(json) => {
            serde_json::from_str(json).map_err(|e| Error::usage("--input-shape", format!("{e}")))?
        }
        None => Vec::new(),
    };
    let inputs = if !opts.calibration_inputs.is_empty() {
        let mut batches = Vec::new();
        for path in &opts.calibration_inputs {
            let x = crate::data::npy::read(path)?;
            let shape = x.shape().to_vec();
            let x = x.cast_to::<f32>().map_err(|e| {
                Error::usage("--calibration-inputs", format!("{}: not a float array: {e}", path.display()))
            })?;
            let values = x.try_as_plain_ram()?.as_slice::<f32>()?.to_vec();
            batches.push((values, shape));
        }
        if opts.data_aware_rounding {
            // nerp's own graph where it runs the model (ResNets), else tract's.
            hessians = input_moments(model, |p| {
                crate::compress::graph::Graph::from_proto(p)
                    .and_then(|g| Hessians::collect(&g, &batches))
                    .or_else(|_| Hessians::collect_tract(p, &shapes, &batches))
            })
            .unwrap_or_else(|e| {
                warnings.push(format!("quantized tensors are rounded to nearest: {e}"));
                Hessians::default()
            });
        }
        batches
    } else if let Some(json) = opts.metadata.get(crate::format::metadata::PREPROCESS_KEY) {
        let pre: crate::data::Preprocess = serde_json::from_str(json)
            .map_err(|e| Error::usage("--preprocess", format!("stored preprocessing is not valid: {e}")))?;
        let limit = Some(opts.calibration_images);
        match crate::data::load(&opts.distill.data, crate::data::Split::Train, limit, &pre) {
            Ok(images) => {
                if opts.data_aware_rounding {
                    hessians = input_moments(model, |p| {
                        Hessians::collect_images(&crate::compress::graph::Graph::from_proto(p)?, &images)
                    })
                    .unwrap_or_else(|e| {
                        warnings.push(format!("quantized tensors are rounded to nearest: {e}"));
                        Hessians::default()
                    });
                }
                crate::compress::calibrate::Calibration::image_batches(&images)
            }
            Err(e) => {
                warnings.push(format!("no calibration images ({e}); errors are measured on the weights"));
                return none();
            }
        }
    } else {
        return none();
    };
    if inputs.is_empty() {
        return none();
    }
    Ok((Some(crate::compress::calibrate::Calibration::new(model, inputs, shapes)?), hessians))
}

/// The input second moments of `model`'s layers ([`crate::codec::gptq`]) by `collect`, given the
/// model's ONNX with its current (possibly channel-permuted) tensors.
pub(crate) fn input_moments(
    model: &SourceModel,
    collect: impl Fn(&tract_onnx::pb::ModelProto) -> Result<Hessians>,
) -> Result<Hessians> {
    let skeleton = model.skeleton.as_ref().ok_or_else(|| Error::Rebuild("no graph".into()))?;
    collect(&crate::runtime::patch_skeleton(skeleton, &crate::compress::permute::as_weights(model))?)
}
