//! Comparing the original and the regenerated model on a labelled dataset.

#[cfg(feature = "compress")]
pub mod baselines;
#[cfg(feature = "compress")]
pub mod demo;
#[cfg(feature = "compress")]
pub mod fidelity;

use crate::data::Dataset;
use crate::error::{Error, Result};
use crate::runtime::{Model, IMAGES_PER_RUN};
use std::time::Instant;

/// What to do about non-finite logits.
const NON_FINITE: &str = "check the preprocessing (--preprocess) and the dataset";

/// Results of one evaluation, as printed by `nerp eval --json`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EvalReport {
    pub images: usize,
    pub original_accuracy: Option<f64>,
    pub regenerated_accuracy: f64,
    /// Share of images on which both models predict the same class.
    pub agreement: Option<f64>,
    pub max_abs_logit_diff: Option<f64>,
    pub mean_abs_logit_diff: Option<f64>,
    /// `‖orig − regen‖ / ‖orig‖` over all logits: the relative output error `nerp compress`
    /// budgets, here on the evaluation images.
    pub rel_logit_error: Option<f64>,
    /// Wall time per image of the regenerated model (all threads together).
    pub ms_per_image: f64,
    pub ms_per_image_original: Option<f64>,
}

impl EvalReport {
    /// Accuracy drop in percentage points (original − regenerated).
    pub fn drop_points(&self) -> Option<f64> {
        self.original_accuracy.map(|o| 100.0 * (o - self.regenerated_accuracy))
    }
}

/// Logits of every image of `data`, computed on `threads` threads in batches of [`IMAGES_PER_RUN`].
/// `tick` is called with the number of images done after each batch.
pub fn logits(
    model: &Model,
    data: &Dataset,
    threads: usize,
    tick: &(dyn Fn(usize) + Sync),
) -> Result<(Vec<f32>, f64)> {
    let n = data.len();
    let [c, h, w] = data.shape;
    let start = Instant::now();
    let chunk = n.div_ceil(threads.max(1)).max(IMAGES_PER_RUN);
    let parts: Vec<Result<Vec<f32>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .step_by(chunk)
            .map(|lo| {
                let hi = (lo + chunk).min(n);
                s.spawn(move || -> Result<Vec<f32>> {
                    let mut out = Vec::new();
                    for b in (lo..hi).step_by(IMAGES_PER_RUN) {
                        let e = (b + IMAGES_PER_RUN).min(hi);
                        let (x, _) = data.batch(b, e);
                        out.extend(model.run_f32(x, &[e - b, c, h, w])?.0);
                        tick(e - b);
                    }
                    Ok(out)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("evaluation thread panicked")).collect()
    });
    let mut all = Vec::new();
    for p in parts {
        all.extend(p?);
    }
    Ok((all, start.elapsed().as_secs_f64() * 1e3 / n.max(1) as f64))
}

fn argmax(v: &[f32]) -> usize {
    v.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i)
}

fn accuracy(logits: &[f32], labels: &[u32], classes: usize) -> f64 {
    let hits = logits.chunks(classes).zip(labels).filter(|(l, &y)| argmax(l) == y as usize).count();
    hits as f64 / labels.len().max(1) as f64
}

/// Evaluates the regenerated model (and the original, when given) on `data`.
pub fn evaluate(
    regenerated: &Model,
    original: Option<&Model>,
    data: &Dataset,
    threads: usize,
    tick: &(dyn Fn(usize) + Sync),
) -> Result<EvalReport> {
    if data.is_empty() {
        return Err(Error::Dataset { path: data.origin.clone(), what: "has no images".into() });
    }
    let (regen, ms) = logits(regenerated, data, threads, tick)?;
    crate::error::check_finite(
        || format!("the regenerated model's logits on {}", data.origin.display()),
        &regen,
        NON_FINITE,
    )?;
    let classes = regen.len() / data.len();
    if classes == 0 || regen.len() % data.len() != 0 {
        return Err(Error::Rebuild(format!(
            "the model gave {} outputs for {} images",
            regen.len(),
            data.len()
        )));
    }
    let mut report = EvalReport {
        images: data.len(),
        original_accuracy: None,
        regenerated_accuracy: accuracy(&regen, &data.labels, classes),
        agreement: None,
        max_abs_logit_diff: None,
        mean_abs_logit_diff: None,
        rel_logit_error: None,
        ms_per_image: ms,
        ms_per_image_original: None,
    };
    if let Some(orig_model) = original {
        let (orig, ms_o) = logits(orig_model, data, threads, tick)?;
        crate::error::check_finite(
            || format!("the original model's logits on {}", data.origin.display()),
            &orig,
            NON_FINITE,
        )?;
        if orig.len() != regen.len() {
            return Err(Error::Rebuild(format!(
                "the original model gives {} outputs per image, the regenerated one {classes}",
                orig.len() / data.len()
            )));
        }
        let agree =
            orig.chunks(classes).zip(regen.chunks(classes)).filter(|(a, b)| argmax(a) == argmax(b)).count();
        let diffs = orig.iter().zip(&regen).map(|(a, b)| (a - b).abs() as f64);
        let (max, sum) = diffs.fold((0f64, 0f64), |(m, s), d| (m.max(d), s + d));
        report.original_accuracy = Some(accuracy(&orig, &data.labels, classes));
        report.agreement = Some(agree as f64 / data.len().max(1) as f64);
        report.max_abs_logit_diff = Some(max);
        report.mean_abs_logit_diff = Some(sum / orig.len().max(1) as f64);
        let (se, ss) = orig
            .iter()
            .zip(&regen)
            .fold((0f64, 0f64), |(e, s), (a, b)| (e + ((a - b) as f64).powi(2), s + (*a as f64).powi(2)));
        report.rel_logit_error = Some((se / ss.max(f64::MIN_POSITIVE)).sqrt());
        report.ms_per_image_original = Some(ms_o);
    }
    Ok(report)
}
