//! Laying out the file: the predictor, and every tensor with the storage chosen for it.

use crate::codec::Codec;
use crate::compress::choose::{tensor, Choice};
use crate::compress::moments::Hessians;
use crate::compress::plan::{self, LayerPlan};
use crate::compress::{CompressOptions, TensorReport};
use crate::error::{Error, Result};
use crate::format::geometry::prediction_ranges;
use crate::format::{
    self, codec::pack_permutation, Encoding, FileBuilder, Ordering, PredictorSpec, SectionKind, Source,
    Storage, TensorEntry,
};
use crate::ingest::{self, SourceModel};
use crate::predictor::{self, Predictor};
use crate::runtime::regen;

/// A laid-out file (for a trained or untrained predictor).
#[derive(Debug, Clone)]
pub struct BuiltFile {
    /// The complete file image.
    pub bytes: Vec<u8>,
    /// One line per tensor (the predictor's share of the bytes not yet added).
    pub tensors: Vec<TensorReport>,
    /// RMSE over all predicted weights.
    pub weight_rmse: f64,
}

/// Lays out the file for a (trained or not) predictor.
pub fn build_file(
    model: &SourceModel,
    plans: &[LayerPlan],
    values: &[Vec<f32>],
    predictor: Option<&Predictor>,
    opts: &CompressOptions,
) -> Result<BuiltFile> {
    build_file_with(model, plans, values, predictor, opts, None)
}

/// The predictor's values of each planned tensor (in plan order), as the file regenerates them.
pub fn predicted_values(
    predictor: &Predictor,
    plans: &[LayerPlan],
    values: &[Vec<f32>],
) -> Result<Vec<Vec<f32>>> {
    let predictions = regen::predict_layers(predictor, plans, plans.len() as u32)?;
    Ok(plans
        .iter()
        .zip(prediction_ranges(plans))
        .zip(values)
        .map(|((p, range), v)| {
            let mut rebuilt = vec![0f32; v.len()];
            plan::scatter(&predictions[range], p, &mut rebuilt);
            rebuilt
        })
        .collect())
}

/// [`build_file`] with a storage per tensor (`choices`, in model order; `None`: planned tensors
/// predicted, the others with `--raw-codec`). A planned tensor given a codec is stored with it,
/// and its layer index stays unused (format 3); no predictor is stored if nothing is predicted.
pub fn build_file_with(
    model: &SourceModel,
    plans: &[LayerPlan],
    values: &[Vec<f32>],
    predictor: Option<&Predictor>,
    opts: &CompressOptions,
    chosen: Option<(&[Choice], &Hessians)>,
) -> Result<BuiltFile> {
    build(model, plans, values, predictor, opts, chosen, true)
}

/// [`build_file_with`]; without `predictions` the predictor is not run, and the report's
/// errors of predicted tensors are zero (the bytes are the same: nothing stored depends on
/// what it predicts, unless a residual is chosen).
pub(crate) fn build(
    model: &SourceModel,
    plans: &[LayerPlan],
    values: &[Vec<f32>],
    predictor: Option<&Predictor>,
    opts: &CompressOptions,
    chosen: Option<(&[Choice], &Hessians)>,
    predictions: bool,
) -> Result<BuiltFile> {
    debug_assert!(predictions || chosen.is_none(), "a residual needs the predictions");
    let choices = chosen.map(|(c, _)| c);
    let hessian = |name: &str| chosen.and_then(|(_, h)| h.0.get(name));
    let choice = |i: usize| choices.map(|c| c[i]);
    let any_predicted = choices.is_none_or(|c| c.iter().any(|c| c.uses_predictor()));
    let predictor = predictor.filter(|_| any_predicted);
    let mut b = FileBuilder::new();
    let skeleton = model.skeleton.as_ref().map(|s| b.add(SectionKind::Skeleton, Encoding::Zstd, s));
    let predictor_spec = match predictor {
        Some(p) => {
            let levels = p.embedding.levels as usize;
            let bytes = predictor::encode_weights(opts.predictor_dtype, p.hidden, levels, &p.to_flat()?)?;
            Some(PredictorSpec {
                arch: predictor::ARCH.into(),
                hidden: p.hidden as u32,
                embedding: p.embedding,
                dtype: opts.predictor_dtype,
                ordering: opts.ordering,
                layers: plans.len() as u32,
                section: b.add(SectionKind::Predictor, Encoding::Plain, &bytes),
            })
        }
        None => None,
    };
    let predicted = match predictor {
        Some(p) if predictions => Some(predicted_values(p, plans, values)?),
        _ => None,
    };
    let mut plan_of = vec![None; model.tensors.len()];
    for (k, p) in plans.iter().enumerate() {
        let stored_otherwise = matches!(choice(p.tensor), Some(Choice::Stored(_)));
        if predictor.is_some() && !stored_otherwise {
            plan_of[p.tensor] = Some(k);
        }
    }
    let (mut se_all, mut n_all) = (0f64, 0usize);
    let mut entries = Vec::with_capacity(model.tensors.len());
    let mut reports = Vec::with_capacity(model.tensors.len());
    for (i, t) in model.tensors.iter().enumerate() {
        let before = t.data.len() as u64;
        let (storage, report) = match plan_of[i] {
            Some(k) => {
                let p = &plans[k];
                let mut rebuilt =
                    std::borrow::Cow::Borrowed(predicted.as_ref().map_or(&values[k], |v| &v[k]));
                // Without a stored ordering every permutation is the identity: an empty section
                // (format 3). A chain that happens to be the identity (one block) stays stored, so
                // a chained file keeps the lowest major version its tensors need.
                let identity = opts.ordering == Ordering::None
                    && p.perm.iter().enumerate().all(|(i, &k)| i == k as usize);
                let perm = if identity {
                    b.add(SectionKind::Permutation, Encoding::Plain, &[])
                } else {
                    b.add(SectionKind::Permutation, Encoding::Zstd, &pack_permutation(&p.perm))
                };
                let mut after = b.stored_len(perm);
                let scales = p.scales.as_ref().map(|s| {
                    let bytes = format::codec::from_f32(opts.scale_dtype.dtype(), s).expect("float");
                    let idx = b.add(SectionKind::Scales, Encoding::Zstd, &bytes);
                    after += b.stored_len(idx);
                    idx
                });
                let residual = match choice(i) {
                    Some(Choice::Residual(bits)) => {
                        let (encoded, with_residual) = Codec::Int(bits).encode_residual(
                            tensor(t),
                            &values[k],
                            &rebuilt,
                            hessian(&t.name),
                        )?;
                        let residual = encoded.store_residual(&mut b).expect("an int codec stores residuals");
                        after += b.stored_len(residual.section);
                        rebuilt = std::borrow::Cow::Owned(with_residual);
                        Some(residual)
                    }
                    _ => None,
                };
                let se: f64 = rebuilt.iter().zip(&values[k]).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
                se_all += se;
                n_all += rebuilt.len();
                let rmse = (se / rebuilt.len() as f64).sqrt();
                let rel = crate::linalg::relative_error(&values[k], &rebuilt);
                let storage = Storage::Predicted {
                    layer: p.layer,
                    permutation: perm,
                    scales,
                    layout: p.grid.layout,
                    scale_dtype: opts.scale_dtype,
                    residual,
                };
                (storage, (Some(p.grid.layout), rmse, rel, after))
            }
            None => {
                let codec = match choice(i) {
                    Some(Choice::Stored(c)) => c,
                    _ => opts.raw_codec,
                };
                let (storage, section) = store_unpredicted(&mut b, t, codec, hessian(&t.name))?;
                (storage, (None, 0.0, 0.0, b.stored_len(section)))
            }
        };
        let codec = match (&storage, Codec::of(&storage)) {
            (Storage::Predicted { layout, .. }, Some(r)) => format!("{}+{r}", layout.name()),
            (Storage::Predicted { .. }, None) => "raw".into(),
            (_, c) => c.unwrap_or_default().name(),
        };
        let (predicted, rmse, rel_error, bytes_after) = report;
        entries.push(TensorEntry { name: t.name.clone(), dtype: t.dtype, shape: t.shape.clone(), storage });
        reports.push(TensorReport {
            name: t.name.clone(),
            shape: t.shape.clone(),
            predicted: predicted.is_some(),
            stored: match predicted {
                Some(l) if !codec.contains('+') => l.name().into(),
                _ => codec,
            },
            rmse,
            rel_error,
            bytes_before: before,
            bytes_after,
            error_alone: None,
        });
    }
    let mut metadata = model.metadata.clone();
    metadata.extend(opts.metadata.clone());
    let source = Source { kind: model.kind, file_bytes: model.file_bytes, skeleton };
    let bytes = b.finish(source, predictor_spec, entries, metadata);
    Ok(BuiltFile { bytes, tensors: reports, weight_rmse: (se_all / n_all.max(1) as f64).sqrt() })
}

/// Stores a tensor that is not predicted with `codec` (float tensors only; the others, and
/// f16/bf16 tensors asked to be cast, stay raw); returns its storage and section.
pub(crate) fn store_unpredicted(
    b: &mut FileBuilder,
    t: &ingest::SourceTensor,
    codec: Codec,
    h: Option<&crate::codec::gptq::Moments>,
) -> Result<(Storage, usize)> {
    let encoded = codec.encode(tensor(t), h).map_err(|e| Error::usage("--raw-codec", e.to_string()))?;
    Ok(encoded.store(b, tensor(t)))
}
