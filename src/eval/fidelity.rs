//! Fidelity metrics that need no labels: how close the regenerated model's outputs (or
//! weights) are to the original's.

/// Largest `|a − b|`.
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).abs()).fold(0.0, f64::max)
}

fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i)
}

/// Share of rows (vectors along the last axis, `width` long) with the same argmax.
pub fn top1_agreement(a: &[f32], b: &[f32], width: usize) -> f64 {
    let rows = a.len() / width.max(1);
    let same = a.chunks(width).zip(b.chunks(width)).filter(|(x, y)| argmax(x) == argmax(y)).count();
    same as f64 / rows.max(1) as f64
}

/// Intersection over union of the maps `a > threshold` and `b > threshold` (1 when both are
/// empty).
pub fn iou(a: &[f32], b: &[f32], threshold: f32) -> f64 {
    let (mut inter, mut union) = (0usize, 0usize);
    for (x, y) in a.iter().zip(b) {
        let (p, q) = (*x > threshold, *y > threshold);
        inter += (p && q) as usize;
        union += (p || q) as usize;
    }
    if union == 0 {
        1.0
    } else {
        inter as f64 / union as f64
    }
}

/// Greedy CTC decoding of one sequence `[T, classes]`: argmax per step, repeats collapsed,
/// `blank` dropped.
pub fn ctc_decode(probs: &[f32], classes: usize, blank: usize) -> Vec<usize> {
    let mut out = Vec::new();
    let mut prev = usize::MAX;
    for step in probs.chunks(classes) {
        let k = argmax(step);
        if k != prev && k != blank {
            out.push(k);
        }
        prev = k;
    }
    out
}

/// What the outputs of a model are, which decides the metric beyond the relative error.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// Relative error and max difference only.
    Outputs,
    /// Top-1 agreement over the last axis.
    Classifier,
    /// IoU of the probability maps thresholded at `threshold`.
    Detector { threshold: f32 },
    /// Equality of greedy CTC decodings (`[N, T, classes]`, blank 0).
    Ctc,
}

/// Fidelity of one output over all inputs.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct OutputFidelity {
    pub inputs: usize,
    /// `‖orig − regen‖ / ‖orig‖` over all values.
    pub rel_error: f64,
    pub max_abs_diff: f64,
    pub top1_agreement: Option<f64>,
    /// Mean IoU over inputs.
    pub iou: Option<f64>,
    /// Share of sequences whose CTC decodings are equal.
    pub ctc_equal: Option<f64>,
    /// Sequences decoded (CTC).
    pub sequences: Option<usize>,
}

/// Compares the first outputs of the original and the regenerated model, one pair per input
/// (each with its shape).
pub fn compare(task: Task, pairs: &[(Vec<f32>, Vec<f32>, Vec<usize>)]) -> OutputFidelity {
    let (mut se, mut ss, mut max) = (0f64, 0f64, 0f64);
    let (mut agree, mut rows, mut iou_sum, mut equal, mut seqs) = (0f64, 0usize, 0f64, 0usize, 0usize);
    for (a, b, shape) in pairs {
        for (x, y) in a.iter().zip(b) {
            se += (*x as f64 - *y as f64).powi(2);
            ss += (*x as f64).powi(2);
        }
        max = max.max(max_abs_diff(a, b));
        let width = shape.last().copied().unwrap_or(1).max(1);
        match task {
            Task::Outputs => {}
            Task::Classifier => {
                let n = a.len() / width;
                agree += top1_agreement(a, b, width) * n as f64;
                rows += n;
            }
            Task::Detector { threshold } => iou_sum += iou(a, b, threshold),
            Task::Ctc => {
                let per = shape.iter().skip(1).product::<usize>().max(1);
                for (x, y) in a.chunks(per).zip(b.chunks(per)) {
                    equal += (ctc_decode(x, width, 0) == ctc_decode(y, width, 0)) as usize;
                    seqs += 1;
                }
            }
        }
    }
    let n = pairs.len();
    OutputFidelity {
        inputs: n,
        rel_error: if ss > 0.0 {
            (se / ss).sqrt()
        } else if se > 0.0 {
            f64::INFINITY
        } else {
            0.0
        },
        max_abs_diff: max,
        top1_agreement: (task == Task::Classifier).then(|| agree / rows.max(1) as f64),
        iou: matches!(task, Task::Detector { .. }).then(|| iou_sum / n.max(1) as f64),
        ctc_equal: (task == Task::Ctc).then(|| equal as f64 / seqs.max(1) as f64),
        sequences: (task == Task::Ctc).then_some(seqs),
    }
}

/// Relative error of one tensor of a round-tripped weights file.
#[derive(Debug, Clone, serde::Serialize)]
pub struct TensorFidelity {
    pub name: String,
    pub shape: Vec<u64>,
    pub rel_error: f64,
    pub max_abs_diff: f64,
}

/// Per-tensor relative errors between two lists of weights (matched by name; float only).
pub fn compare_tensors(
    original: &[crate::ingest::SourceTensor],
    regenerated: &[crate::runtime::regen::WeightTensor],
) -> crate::error::Result<Vec<TensorFidelity>> {
    let mut out = Vec::new();
    for w in regenerated {
        let o = original.iter().find(|t| t.name == w.name).ok_or_else(|| {
            crate::error::Error::Rebuild(format!("tensor {} is not in the original model", w.name))
        })?;
        if o.shape != w.shape || o.dtype != w.dtype {
            return Err(crate::error::Error::Rebuild(format!(
                "tensor {}: original {:?} {:?}, regenerated {:?} {:?}",
                w.name, o.dtype, o.shape, w.dtype, w.shape
            )));
        }
        let (Some(a), Some(b)) = (crate::format::codec::to_f32(o.dtype, &o.data), w.to_f32()) else {
            continue;
        };
        out.push(TensorFidelity {
            name: w.name.clone(),
            shape: w.shape.clone(),
            rel_error: crate::linalg::relative_error(&a, &b),
            max_abs_diff: max_abs_diff(&a, &b),
        });
    }
    Ok(out)
}

/// `nerp eval` of a safetensors source: every float tensor's fidelity against the original.
#[derive(Debug, Clone, serde::Serialize)]
pub struct WeightsReport {
    /// Every float tensor, in file order.
    pub tensors: Vec<TensorFidelity>,
    /// Number of predicted tensors.
    pub predicted: usize,
    /// Mean relative error of the predicted tensors.
    pub mean_rel_error: f64,
    /// Whether every raw tensor came back exactly.
    pub raw_tensors_exact: bool,
    /// Open + regenerate.
    pub load_seconds: f64,
    /// The predicted tensors, worst first.
    #[serde(skip)]
    pub worst: Vec<TensorFidelity>,
}

/// Regenerates `file` on `device` and compares every tensor with the model at `original`.
pub fn weights_report(
    file: &std::path::Path,
    original: &std::path::Path,
    device: &crate::Device,
) -> crate::error::Result<WeightsReport> {
    let t = std::time::Instant::now();
    let file = crate::open(file)?;
    let weights = crate::runtime::regen::regenerate(&file, device)?;
    let load_s = t.elapsed().as_secs_f64();
    let mut original = crate::ingest::load(original)?;
    // A file of a channel-reordered network holds the permuted weights (same function); the
    // order is a deterministic function of the original's weights, so it is recomputed.
    if file.header().metadata.contains_key(crate::compress::permute::CHANNEL_ORDER_KEY) {
        crate::compress::permute::permute_model(&mut original)?;
    }
    let all = compare_tensors(&original.tensors, &weights)?;
    let predicted: std::collections::HashSet<&str> = file.header().predicted_names().into_iter().collect();
    let mut pred: Vec<&TensorFidelity> = all.iter().filter(|t| predicted.contains(t.name.as_str())).collect();
    pred.sort_by(|x, y| y.rel_error.total_cmp(&x.rel_error));
    let mean = pred.iter().map(|t| t.rel_error).sum::<f64>() / pred.len().max(1) as f64;
    let raw_exact =
        all.iter().filter(|t| !predicted.contains(t.name.as_str())).all(|t| t.max_abs_diff == 0.0);
    let worst = pred.into_iter().cloned().collect::<Vec<_>>();
    Ok(WeightsReport {
        predicted: worst.len(),
        tensors: all,
        mean_rel_error: mean,
        raw_tensors_exact: raw_exact,
        load_seconds: load_s,
        worst,
    })
}

/// `nerp eval --inputs`: output fidelity of an ONNX model on input arrays.
#[derive(Debug, Clone, serde::Serialize)]
pub struct OutputsReport {
    #[serde(flatten)]
    pub fidelity: OutputFidelity,
    /// Open + regenerate + rebuild.
    pub load_seconds: f64,
    /// Run time of the regenerated model per input.
    pub ms_per_input: f64,
    /// Run time of the original model per input.
    pub ms_per_input_original: f64,
}

/// What to do about a model output that is not finite (the inputs are checked when read).
pub const NON_FINITE_OUTPUT: &str =
    "the inputs are finite, so the model overflowed: check the input's scale and the preprocessing, \
     and compare with the original model";

/// Regenerates `file` on `device`, runs it and the model at `original` on each `.npy` input
/// (one model pair per input shape) and compares their first outputs for `task` (with `logits`,
/// both cut before a final `Softmax`, as the compressor compares them:
/// [`runtime::before_softmax`](crate::runtime::before_softmax)); a non-finite output is an
/// error ([`Error::NonFinite`](crate::Error::NonFinite)), not a NaN error figure.
pub fn outputs_report(
    file: &std::path::Path,
    original: &std::path::Path,
    inputs: &[std::path::PathBuf],
    task: Task,
    logits: bool,
    device: &crate::Device,
) -> crate::error::Result<OutputsReport> {
    use crate::error::Error;
    use crate::{data::npy, runtime, runtime::regen};
    use std::time::Instant;
    let orig_path = original;
    let t = Instant::now();
    let file = crate::open(file)?;
    let weights = regen::regenerate(&file, device)?;
    let mut proto = runtime::rebuild_onnx(&file, &weights)?;
    if logits {
        runtime::before_softmax(&mut proto);
    }
    let load_s = t.elapsed().as_secs_f64();
    let mut models: Vec<(Vec<usize>, runtime::Model, runtime::Model)> = Vec::new();
    let mut pairs = Vec::new();
    let (mut ms_r, mut ms_o) = (0f64, 0f64);
    for path in inputs {
        let x = npy::read(path)?;
        let shape = x.shape().to_vec();
        if !models.iter().any(|(s, _, _)| *s == shape) {
            let shapes = [shape.clone()];
            let r = runtime::Model::from_proto_shaped(&proto, &shapes)?;
            let o = match logits {
                true => runtime::Model::from_onnx_file_logits(orig_path, &shapes)?,
                false => runtime::Model::from_onnx_file_shaped(orig_path, &shapes)?,
            };
            models.push((shape.clone(), r, o));
        }
        let (_, r, o) = models.iter().find(|(s, _, _)| *s == shape).expect("built above");
        let first = |m: &runtime::Model, ms: &mut f64| -> crate::error::Result<(Vec<f32>, Vec<usize>)> {
            let t = Instant::now();
            let out = m.run(std::iter::once(x.clone().into()).collect())?;
            *ms += t.elapsed().as_secs_f64() * 1e3;
            let y = out
                .first()
                .ok_or_else(|| Error::Rebuild("the model has no outputs".into()))?
                .cast_to::<f32>()?;
            Ok((y.try_as_plain_ram()?.as_slice::<f32>()?.to_vec(), y.shape().to_vec()))
        };
        let (yo, so) = first(o, &mut ms_o)?;
        let (yr, sr) = first(r, &mut ms_r)?;
        let on = |model: &str| format!("output 0 of the {model} model on {}", path.display());
        crate::error::check_finite(|| on("original"), &yo, NON_FINITE_OUTPUT)?;
        crate::error::check_finite(|| on("regenerated"), &yr, NON_FINITE_OUTPUT)?;
        if so != sr {
            return Err(Error::Rebuild(format!("output shapes differ: original {so:?}, regenerated {sr:?}")));
        }
        pairs.push((yo, yr, so));
    }
    let n = inputs.len() as f64;
    Ok(OutputsReport {
        fidelity: compare(task, &pairs),
        load_seconds: load_s,
        ms_per_input: ms_r / n,
        ms_per_input_original: ms_o / n,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics() {
        assert_eq!(top1_agreement(&[1.0, 2.0, 5.0, 0.0], &[0.0, 3.0, 0.0, 1.0], 2), 0.5);
        assert!((iou(&[0.9, 0.9, 0.1, 0.0], &[0.9, 0.1, 0.9, 0.0], 0.5) - 1.0 / 3.0).abs() < 1e-12);
        assert_eq!(iou(&[0.0], &[0.0], 0.5), 1.0);
        // steps: 1 1 0 2 2 0 0 1  →  [1, 2, 1]
        let p: Vec<f32> = [1, 1, 0, 2, 2, 0, 0, 1]
            .iter()
            .flat_map(|&k| (0..3).map(move |c| if c == k { 1.0 } else { 0.0 }))
            .collect();
        assert_eq!(ctc_decode(&p, 3, 0), vec![1, 2, 1]);
        let f = compare(Task::Ctc, &[(p.clone(), p.clone(), vec![1, 8, 3])]);
        assert_eq!((f.ctc_equal, f.sequences, f.rel_error), (Some(1.0), Some(1), 0.0));
    }
}
