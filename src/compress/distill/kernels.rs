//! Predictor → the network's predicted tensors as candle tensors (differentiable): for every
//! element of a tensor, the predictor output it comes from (undoing the chain ordering and the
//! grid of 3×3 blocks, whatever the layout) and the scale of its row.

use crate::compress::plan::{self, LayerPlan};
use crate::error::Result;
use crate::format::Embedding;
use crate::ingest::SourceModel;
use crate::predictor::{embed, Predictor};
use candle_core::{Device, Tensor};
use std::collections::HashMap;

/// One predicted tensor.
struct Layer {
    name: String,
    shape: Vec<usize>,
    /// Element (row-major) → index into the flat `N×9` predictions.
    source: Tensor,
    /// Element → the scale of its row (`None`: scale 1).
    scales: Option<Tensor>,
}

/// One predicted tensor as plain vectors, for the CPU distillation step
/// ([`super::KernelTrainer`]).
pub struct HostLayer {
    pub name: String,
    pub shape: Vec<usize>,
    /// Element (row-major) → index into the flat `N×9` predictions.
    pub source: Vec<u32>,
    /// Element → the scale of its row (`None`: scale 1).
    pub scales: Option<Vec<f32>>,
}

/// Everything needed to turn the predictor into the network's predicted tensors.
pub struct PredictedKernels {
    /// Embedded coordinates of every chain position, `(N, input_dim)`.
    inputs: Tensor,
    layers: Vec<Layer>,
}

impl PredictedKernels {
    /// The plans' tensors are `model.tensors[p.tensor]`.
    pub fn new(
        plans: &[LayerPlan],
        model: &SourceModel,
        embedding: Embedding,
        device: &Device,
    ) -> Result<Self> {
        let coords = crate::runtime::regen::layer_coordinates(plans, plans.len() as u32);
        let n = coords.len() / 3;
        let inputs = embed(&Tensor::from_vec(coords, (n, 3), device)?, embedding)?;
        let mut layers = Vec::with_capacity(plans.len());
        for (p, range) in plans.iter().zip(plan::prediction_ranges(plans)) {
            let offset = range.start;
            let numel = p.grid.numel();
            let mut source = vec![0u32; numel];
            let mut scales = p.scales.as_ref().map(|_| vec![1f32; numel]);
            for (k, e, s) in plan::cells(p) {
                source[e] = (offset + k) as u32;
                if let Some(out) = scales.as_mut() {
                    out[e] = s;
                }
            }
            let t = &model.tensors[p.tensor];
            layers.push(Layer {
                name: t.name.clone(),
                shape: t.shape.iter().map(|&d| d as usize).collect(),
                source: Tensor::from_vec(source, numel, device)?,
                scales: scales.map(|s| Tensor::from_vec(s, numel, device)).transpose()?,
            });
        }
        Ok(PredictedKernels { inputs, layers })
    }

    /// Number of predicted blocks (rows the predictor runs over per call).
    pub fn len(&self) -> usize {
        self.inputs.dim(0).unwrap_or(0)
    }

    /// Whether nothing is predicted.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The embedded coordinates (`N × input_dim`, row-major) and every predicted tensor's
    /// element sources, as plain vectors.
    pub fn host(&self) -> Result<(Vec<f32>, Vec<HostLayer>)> {
        let layers = self
            .layers
            .iter()
            .map(|l| {
                Ok(HostLayer {
                    name: l.name.clone(),
                    shape: l.shape.clone(),
                    source: l.source.to_vec1::<u32>()?,
                    scales: l.scales.as_ref().map(|s| s.to_vec1::<f32>()).transpose()?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok((self.inputs.flatten_all()?.to_vec1::<f32>()?, layers))
    }

    /// Runs the predictor over every coordinate and lays the result out as the network's
    /// tensors, by name. Differentiable in the predictor's weights.
    pub fn weights(&self, predictor: &Predictor) -> Result<HashMap<String, Tensor>> {
        let all = predictor.forward(&self.inputs)?.flatten_all()?;
        let mut out = HashMap::with_capacity(self.layers.len());
        for l in &self.layers {
            let mut w = all.index_select(&l.source, 0)?;
            if let Some(s) = &l.scales {
                w = w.mul(s)?;
            }
            out.insert(l.name.clone(), w.reshape(l.shape.clone())?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::{make_plan, CompressOptions};

    /// The differentiable kernels are exactly what regeneration from the file produces.
    #[test]
    fn kernels_match_regeneration() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("examples/models/resnet20_fashion_mnist.onnx");
        let model = crate::ingest::load(&path).unwrap();
        let opts = CompressOptions::default();
        let plans = make_plan(&model, &opts).unwrap().layers;
        let names: Vec<String> = model.tensors.iter().map(|t| t.name.clone()).collect();
        let p = crate::compress::train::init_predictor(8, opts.embedding, 3, &Device::Cpu).unwrap();
        let got =
            PredictedKernels::new(&plans, &model, opts.embedding, &Device::Cpu).unwrap().weights(&p).unwrap();
        let pred = crate::runtime::regen::predict_layers(&p, &plans, plans.len() as u32).unwrap();
        let matrices = plans.iter().filter(|p| p.grid.layout == crate::format::Layout::Matrix).count();
        assert!(matrices > 0 && matrices < plans.len(), "the model should have 1×1 kernels (matrices) too");
        for (plan, range) in plans.iter().zip(plan::prediction_ranges(&plans)) {
            let mut expect = vec![0f32; plan.grid.numel()];
            plan::scatter(&pred[range], plan, &mut expect);
            let w = got[&names[plan.tensor]].flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let max = w.iter().zip(&expect).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(
                max <= 1e-6 * expect.iter().fold(1f32, |m, v| m.max(v.abs())),
                "{}: {max}",
                names[plan.tensor]
            );
        }
    }
}
