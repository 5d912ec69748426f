//! Laying out the file: the predictor, and every tensor with the storage decided for it
//! ([`Store`]: nothing is decided or encoded here).

use crate::codec::Codec;
use crate::compress::choose::{planned, tensor, Store};
use crate::compress::moments::Hessians;
use crate::compress::plan::{self, LayerPlan};
use crate::compress::{CompressOptions, TensorReport};
use crate::error::Result;
use crate::format::geometry::prediction_ranges;
use crate::format::{
    self, codec::pack_permutation, Encoding, FileBuilder, Ordering, PredictorSpec, SectionKind, Source,
    Storage, TensorEntry,
};
use crate::ingest::SourceModel;
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

/// Lays out the file for a (trained or not) predictor with the storage `compress` plans
/// without a budget: planned tensors predicted, the others with `--raw-codec` (rounded to
/// nearest).
pub fn build_file(
    model: &SourceModel,
    plans: &[LayerPlan],
    values: &[Vec<f32>],
    predictor: Option<&Predictor>,
    opts: &CompressOptions,
) -> Result<BuiltFile> {
    let stores = planned(model, plans, values, predictor.is_some(), None, opts, &Hessians::default())?;
    build_file_with(model, plans, values, predictor, opts, &stores)
}

/// [`build_file`] with a storage per tensor (`stores`, in model order). A planned tensor given
/// a codec is stored with it, and its layer index stays unused (format 3); no predictor is
/// stored if nothing is predicted.
pub fn build_file_with(
    model: &SourceModel,
    plans: &[LayerPlan],
    values: &[Vec<f32>],
    predictor: Option<&Predictor>,
    opts: &CompressOptions,
    stores: &[Store],
) -> Result<BuiltFile> {
    let predictions = predictor.map(|p| predicted_values(p, plans, values)).transpose()?;
    build(model, plans, values, predictor.map(|p| (p, predictions.as_deref())), opts, stores)
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

/// Writes the file: `predictor` with its values of each planned tensor (plan order; without
/// them the report's errors of predicted tensors are zero — the bytes are the same, as nothing
/// stored depends on what it predicts once the residuals are encoded), every tensor as
/// `stores` says. The predictor is stored only if a tensor uses it.
pub(crate) fn build(
    model: &SourceModel,
    plans: &[LayerPlan],
    values: &[Vec<f32>],
    predictor: Option<(&Predictor, Option<&[Vec<f32>]>)>,
    opts: &CompressOptions,
    stores: &[Store],
) -> Result<BuiltFile> {
    let predictor = predictor.filter(|_| stores.iter().any(Store::uses_predictor));
    let mut b = FileBuilder::new();
    let skeleton = model.skeleton.as_ref().map(|s| b.add(SectionKind::Skeleton, Encoding::Zstd, s));
    let predictor_spec = match predictor {
        Some((p, _)) => {
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
    let predicted = predictor.and_then(|(_, v)| v);
    let mut plan_of = vec![None; model.tensors.len()];
    for (k, p) in plans.iter().enumerate() {
        plan_of[p.tensor] = Some(k);
    }
    let (mut se_all, mut n_all) = (0f64, 0usize);
    let mut entries = Vec::with_capacity(model.tensors.len());
    let mut reports = Vec::with_capacity(model.tensors.len());
    for (i, t) in model.tensors.iter().enumerate() {
        let before = t.data.len() as u64;
        let (storage, report) = match (&stores[i], plan_of[i]) {
            (Store::Predicted(residual), Some(k)) => {
                let p = &plans[k];
                let mut rebuilt = std::borrow::Cow::Borrowed(predicted.map_or(&values[k], |v| &v[k]));
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
                let residual = match residual {
                    Some(r) => {
                        let stored = r.store_residual(&mut b).expect("a residual codec stores residuals");
                        after += b.stored_len(stored.section());
                        if predicted.is_some() {
                            let back = r.values(t.dtype, &[], rebuilt.len());
                            rebuilt = std::borrow::Cow::Owned(
                                rebuilt.iter().zip(back).map(|(p, r)| p + r).collect(),
                            );
                        }
                        Some(stored)
                    }
                    None => None,
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
            (Store::Predicted(_), None) => {
                return Err(crate::Error::Training(format!("tensor {} is predicted but not planned", t.name)))
            }
            (Store::Coded(e), _) => {
                let (storage, section) = e.store(&mut b, tensor(t));
                (storage, (None, 0.0, 0.0, b.stored_len(section)))
            }
        };
        let stored = match (&storage, Codec::of(&storage)) {
            (Storage::Predicted { layout, .. }, Some(r)) => format!("{}+{r}", layout.name()),
            (Storage::Predicted { layout, .. }, None) => layout.name().into(),
            (_, c) => c.unwrap_or_default().name(),
        };
        let (predicted, rmse, rel_error, bytes_after) = report;
        entries.push(TensorEntry { name: t.name.clone(), dtype: t.dtype, shape: t.shape.clone(), storage });
        reports.push(TensorReport {
            name: t.name.clone(),
            shape: t.shape.clone(),
            predicted: predicted.is_some(),
            stored,
            rmse,
            rel_error,
            bytes_before: before,
            bytes_after,
            error_alone: None,
        });
    }
    let mut metadata = model.metadata.clone();
    metadata.extend(opts.file_metadata());
    let source = Source { kind: model.kind, file_bytes: model.file_bytes, skeleton };
    let bytes = b.finish(source, predictor_spec, entries, metadata);
    Ok(BuiltFile { bytes, tensors: reports, weight_rmse: (se_all / n_all.max(1) as f64).sqrt() })
}
