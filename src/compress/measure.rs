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
    let shapes = &opts.input_shapes;
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
                    .or_else(|_| Hessians::collect_tract(p, shapes, &batches))
            })
            .unwrap_or_else(|e| {
                warnings.push(format!("quantized tensors are rounded to nearest: {e}"));
                Hessians::default()
            });
        }
        batches
    } else if let Some(pre) = &opts.preprocess {
        let limit = Some(opts.calibration_images);
        match crate::data::load(&opts.distill.data, crate::data::Split::Train, limit, pre) {
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
    Ok((Some(crate::compress::calibrate::Calibration::new(model, inputs, shapes.clone())?), hessians))
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

/// Whether tract runs the source model (ONNX sources, with `--input-shape`s): what
/// calibration and distillation need. A model it cannot run is still compressed, with a
/// warning (`decompress` serves other engines), unless distillation was asked for.
pub(crate) fn check_runnable(
    input: &std::path::Path,
    model: &SourceModel,
    opts: &CompressOptions,
    warnings: &mut Vec<String>,
) -> Result<bool> {
    if !opts.check_runnable || model.kind != SourceKind::Onnx {
        return Ok(true);
    }
    let shapes = &opts.input_shapes;
    let Err(e) = crate::runtime::Model::from_onnx_file_shaped(input, shapes) else { return Ok(true) };
    let hint = "a model with dynamic input dimensions needs --input-shape, e.g. 1,3,224,224";
    if opts.distill.schedule != crate::compress::distill::Schedule::Recon {
        return Err(Error::Ingest {
            path: input.to_path_buf(),
            what: format!("distillation runs the model, and the inference engine cannot: {e} ({hint})"),
        });
    }
    warnings.push(format!(
        "the inference engine (tract) cannot run this model: {e}; compressed anyway: \
         `nerp decompress` gives an ONNX file for other engines, `run`/`eval` will fail ({hint})"
    ));
    Ok(false)
}
