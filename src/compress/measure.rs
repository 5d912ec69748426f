//! What the per-tensor choice measures with: the calibration inputs (output errors), split into
//! the inputs the allocation is fitted to and those the file is checked on, and the layers'
//! input moments (data-aware rounding, from the fit inputs).

use crate::compress::calibrate::{count_inputs, held_back, split_batches, Batches, Calibration, Split};
use crate::compress::moments::Hessians;
use crate::compress::{CompressOptions, DEFAULT_CHECK_IMAGES, DEFAULT_CHECK_SHARE, MIN_CHECK_INPUTS};
use crate::error::{Error, Result};
use crate::format::SourceKind;
use crate::ingest::SourceModel;

/// The inputs that measure output errors, split in two ([`Split`]): the allocation measures its
/// candidates (and the layers' moments) on the fit inputs, the file's error is measured on the
/// check inputs. The fit inputs are the `--calibration-inputs` arrays, else the first
/// `--calibration` training images of `--data` when `--preprocess` is given; the check inputs
/// are `--check-inputs` arrays, else `--check` of the arrays' inputs held back ([`held_back`];
/// by default a quarter, at least [`MIN_CHECK_INPUTS`]) or the `--check` training images after
/// the calibration ones. `None` for a model without a graph tract runs (then weight errors are
/// used). A dataset that cannot be read is a warning (weight errors again); arrays that cannot
/// be read, check inputs that are calibration inputs, and too few check inputs are errors.
pub(crate) fn calibration(
    model: &SourceModel,
    opts: &CompressOptions,
    runnable: bool,
    warnings: &mut Vec<String>,
) -> Result<(Option<Split>, Hessians)> {
    let none = || Ok((None, Hessians::default()));
    if model.kind != SourceKind::Onnx || !runnable {
        return none();
    }
    let mut hessians = Hessians::default();
    let shapes = &opts.input_shapes;
    let given = read_arrays(&opts.check_inputs, "--check-inputs")?;
    let mut held_images = None;
    let (fit, check) = if !opts.calibration_inputs.is_empty() {
        let batches = read_arrays(&opts.calibration_inputs, "--calibration-inputs")?;
        let (fit, check) = if opts.check_inputs.is_empty() {
            let n = count_inputs(&batches);
            split_batches(batches, &held_back(n, held_count(n, opts.check)?))
        } else {
            refuse_overlap(
                &batches,
                &given,
                |b, i| format!("input {i} of {}", opts.calibration_inputs[b].display()),
                &opts.check_inputs,
            )?;
            (batches, given)
        };
        if opts.data_aware_rounding {
            // With one `--input-shape`, tract runs the fit inputs at their own batch size.
            let fit_shapes = match (shapes.len(), fit.first()) {
                (1, Some((_, s))) if fit.iter().all(|(_, t)| t == s) => vec![s.clone()],
                _ => shapes.clone(),
            };
            // nerp's own graph where it runs the model (ResNets), else tract's.
            hessians = input_moments(model, |p| {
                crate::compress::graph::Graph::from_proto(p)
                    .and_then(|g| Hessians::collect(&g, &fit))
                    .or_else(|_| Hessians::collect_tract(p, &fit_shapes, &fit))
            })
            .unwrap_or_else(|e| {
                warnings.push(format!("quantized tensors are rounded to nearest: {e}"));
                Hessians::default()
            });
        }
        (fit, check)
    } else if let Some(pre) = &opts.preprocess {
        let n = opts.calibration_images;
        let extra = if given.is_empty() { opts.check.unwrap_or(DEFAULT_CHECK_IMAGES) } else { 0 };
        let limit = Some(n.saturating_add(extra));
        let mut images = match crate::data::load(&opts.distill.data, crate::data::Split::Train, limit, pre) {
            Ok(images) => images,
            Err(e) => {
                warnings.push(format!("no calibration images ({e}); errors are measured on the weights"));
                return none();
            }
        };
        let held = split_images(&mut images, n);
        if opts.data_aware_rounding {
            hessians = input_moments(model, |p| {
                Hessians::collect_images(&crate::compress::graph::Graph::from_proto(p)?, &images)
            })
            .unwrap_or_else(|e| {
                warnings.push(format!("quantized tensors are rounded to nearest: {e}"));
                Hessians::default()
            });
        }
        let fit = Calibration::image_batches(&images);
        let check = if given.is_empty() {
            if held.len() < MIN_CHECK_INPUTS {
                let what = format!(
                    "{} has {} training images after the {n} calibration ones: the check needs at \
                     least {MIN_CHECK_INPUTS} (lower --calibration, or give --check-inputs X.npy)",
                    images.origin.display(),
                    held.len()
                );
                return Err(Error::usage("--check", what));
            }
            held_images = Some(images.len()..images.len() + held.len());
            Calibration::image_batches(&held)
        } else {
            refuse_overlap(
                &fit,
                &given,
                |b, i| format!("training image {}", b * BATCH + i),
                &opts.check_inputs,
            )?;
            given
        };
        (fit, check)
    } else {
        return none();
    };
    if fit.is_empty() {
        return none();
    }
    let fit = Calibration::new(model, fit, shapes.clone())?;
    let check = Calibration::new(model, check, shapes.clone())?;
    Ok((Some(Split { fit, check, held_images }), hessians))
}

/// How many of `n` calibration inputs are held back for the check: `--check`, else a quarter
/// ([`DEFAULT_CHECK_SHARE`]), at least [`MIN_CHECK_INPUTS`]; a usage error where too few would
/// be left to fit on.
pub(crate) fn held_count(n: usize, check: Option<usize>) -> Result<usize> {
    let (m, fit_min) = match check {
        Some(m) => (m, 1),
        None => ((n / DEFAULT_CHECK_SHARE).max(MIN_CHECK_INPUTS), MIN_CHECK_INPUTS),
    };
    if n < m + fit_min {
        let what = format!(
            "{n} inputs are too few to hold {m} back for the check and fit on at least {fit_min} \
             (the file's error is measured on inputs the allocation never sees): give at least \
             {} inputs, a smaller --check, or --check-inputs X.npy with at least {MIN_CHECK_INPUTS} others",
            m + fit_min
        );
        return Err(Error::usage("--calibration-inputs", what));
    }
    Ok(m)
}

/// Images per calibration batch ([`Calibration::image_batches`]).
const BATCH: usize = crate::runtime::IMAGES_PER_RUN;

/// Keeps the first `n` images of `images` and returns the others.
fn split_images(images: &mut crate::data::Dataset, n: usize) -> crate::data::Dataset {
    let n = n.min(images.len());
    let per: usize = images.shape.iter().product();
    crate::data::Dataset {
        images: images.images.split_off(n * per),
        labels: images.labels.split_off(n),
        shape: images.shape,
        classes: images.classes,
        origin: images.origin.clone(),
    }
}

/// The arrays at `paths` (`flag` names them in errors), each one batch of f32 inputs along its
/// first axis.
fn read_arrays(paths: &[std::path::PathBuf], flag: &str) -> Result<Batches> {
    let mut batches = Vec::new();
    for path in paths {
        let x = crate::data::npy::read(path)?;
        let shape = x.shape().to_vec();
        let x = x
            .cast_to::<f32>()
            .map_err(|e| Error::usage(flag, format!("{}: not a float array: {e}", path.display())))?;
        let values = x.try_as_plain_ram()?.as_slice::<f32>()?.to_vec();
        batches.push((values, shape));
    }
    Ok(batches)
}

/// Refuses check inputs (`check`, read from `paths`) that equal a calibration input (the same
/// shape and bits): a check on inputs the allocation saw is the optimistic figure the split
/// exists to avoid. `name(batch, input)` names a calibration input.
fn refuse_overlap(
    calibration: &Batches,
    check: &Batches,
    name: impl Fn(usize, usize) -> String,
    paths: &[std::path::PathBuf],
) -> Result<()> {
    use std::hash::{Hash, Hasher};
    /// One input: its batch, its place in the batch, its shape and values.
    type Input<'a> = (usize, usize, &'a [usize], &'a [f32]);
    fn inputs(b: &Batches) -> impl Iterator<Item = Input<'_>> {
        b.iter().enumerate().flat_map(|(k, (values, shape))| {
            let n = shape.first().copied().unwrap_or(1).max(1);
            let per = values.len() / n;
            (0..n).map(move |i| (k, i, &shape[1.min(shape.len())..], &values[i * per..(i + 1) * per]))
        })
    }
    let key = |shape: &[usize], x: &[f32]| {
        let mut h = std::collections::hash_map::DefaultHasher::new();
        shape.hash(&mut h);
        x.iter().for_each(|v| v.to_bits().hash(&mut h));
        h.finish()
    };
    let mut seen: std::collections::HashMap<u64, Vec<Input>> = std::collections::HashMap::new();
    for (k, i, shape, x) in inputs(calibration) {
        seen.entry(key(shape, x)).or_default().push((k, i, shape, x));
    }
    for (k, i, shape, x) in inputs(check) {
        let same =
            |(_, _, s, y): &&Input| *s == shape && y.iter().zip(x).all(|(a, b)| a.to_bits() == b.to_bits());
        if let Some((ck, ci, _, _)) = seen.get(&key(shape, x)).and_then(|c| c.iter().find(same)) {
            let what = format!(
                "input {i} of {} is {}: the check must use inputs the allocation never sees",
                paths[k].display(),
                name(*ck, *ci)
            );
            return Err(Error::usage("--check-inputs", what));
        }
    }
    let n = count_inputs(check);
    if n < MIN_CHECK_INPUTS {
        let what = format!("{n} inputs are too few to check the file: give at least {MIN_CHECK_INPUTS}");
        return Err(Error::usage("--check-inputs", what));
    }
    Ok(())
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
