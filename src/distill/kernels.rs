//! Predictor → convolution kernels as candle tensors (differentiable): the inverse of the
//! chain ordering, the per-filter scales and the kh×kw cells of the predicted 3×3 blocks.

use crate::error::Result;
use crate::format::Embedding;
use crate::plan::{self, LayerPlan};
use crate::predictor::{embed, Predictor, OUTPUTS};
use candle_core::{Device, Tensor};
use std::collections::HashMap;

/// One predicted tensor.
struct Layer {
    name: String,
    shape: [usize; 4],
    /// First row of this layer among all predicted rows.
    offset: usize,
    kernels: usize,
    /// Kernel index `f·C + c` → its chain position.
    chain_of_kernel: Tensor,
    /// Indices of the kernel's cells inside the 3×3 block (`None`: all 9).
    cells: Option<Tensor>,
    /// `(F·C, 1)` scale of each kernel's filter.
    scales: Option<Tensor>,
}

/// Everything needed to turn the predictor into the network's kernels.
pub struct PredictedKernels {
    /// Embedded coordinates of every chain position, `(N, input_dim)`.
    inputs: Tensor,
    layers: Vec<Layer>,
}

impl PredictedKernels {
    /// `names[p.tensor]` names each plan's tensor in the graph.
    pub fn new(plans: &[LayerPlan], names: &[String], embedding: Embedding, device: &Device) -> Result<Self> {
        let total = plans.len() as u32;
        let coords: Vec<f32> =
            plans.iter().flat_map(|p| plan::coordinates(p.layer, total, p.filters, p.channels)).collect();
        let n = coords.len() / 3;
        let inputs = embed(&Tensor::from_vec(coords, (n, 3), device)?, embedding)?;
        let mut layers = Vec::with_capacity(plans.len());
        let mut offset = 0;
        for p in plans {
            let k = p.kernels();
            let mut chain_of_kernel = vec![0u32; k];
            for (pos, &idx) in p.perm.iter().enumerate() {
                chain_of_kernel[idx as usize] = pos as u32;
            }
            let (r0, c0) = plan::offset(p.kh, p.kw);
            let cells = (p.kh * p.kw != OUTPUTS).then(|| {
                let idx: Vec<u32> =
                    (0..p.kh).flat_map(|i| (0..p.kw).map(move |j| ((r0 + i) * 3 + c0 + j) as u32)).collect();
                Tensor::from_vec(idx, p.kh * p.kw, device)
            });
            let scales = p.scales.as_ref().map(|s| {
                let per_kernel: Vec<f32> = (0..k).map(|i| s[i / p.channels]).collect();
                Tensor::from_vec(per_kernel, (k, 1), device)
            });
            layers.push(Layer {
                name: names[p.tensor].clone(),
                shape: [p.filters, p.channels, p.kh, p.kw],
                offset,
                kernels: k,
                chain_of_kernel: Tensor::from_vec(chain_of_kernel, k, device)?,
                cells: cells.transpose()?,
                scales: scales.transpose()?,
            });
            offset += k;
        }
        Ok(PredictedKernels { inputs, layers })
    }

    /// Number of predicted kernels (rows the predictor runs over per call).
    pub fn len(&self) -> usize {
        self.inputs.dim(0).unwrap_or(0)
    }

    /// Whether nothing is predicted.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Runs the predictor over every coordinate and lays the result out as the network's
    /// kernels, by tensor name. Differentiable in the predictor's weights.
    pub fn weights(&self, predictor: &Predictor) -> Result<HashMap<String, Tensor>> {
        let all = predictor.forward(&self.inputs)?;
        let mut out = HashMap::with_capacity(self.layers.len());
        for l in &self.layers {
            let mut w = all.narrow(0, l.offset, l.kernels)?.index_select(&l.chain_of_kernel, 0)?;
            if let Some(cells) = &l.cells {
                w = w.index_select(cells, 1)?;
            }
            if let Some(s) = &l.scales {
                w = w.broadcast_mul(s)?;
            }
            out.insert(l.name.clone(), w.reshape(l.shape.to_vec())?);
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
        let (plans, _) = make_plan(&model, &opts).unwrap();
        let names: Vec<String> = model.tensors.iter().map(|t| t.name.clone()).collect();
        let p = crate::train::init_predictor(8, opts.embedding, 3, &Device::Cpu).unwrap();
        let got =
            PredictedKernels::new(&plans, &names, opts.embedding, &Device::Cpu).unwrap().weights(&p).unwrap();
        let pred = crate::regen::predict_layers(&p, &plans, plans.len() as u32).unwrap();
        let mut at = 0;
        assert!(plans.iter().any(|p| p.kh == 1), "the model should have 1×1 kernels too");
        for plan in &plans {
            let n = plan.kernels() * OUTPUTS;
            let mut expect = vec![0f32; plan.kernels() * plan.kh * plan.kw];
            plan::scatter(&pred[at..at + n], plan, &mut expect);
            at += n;
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
