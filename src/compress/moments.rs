//! The layers' input second moments `E[x xᵀ]` that data-aware rounding ([`crate::codec::gptq`])
//! needs: collected by running the model on the calibration inputs, through nerp's own graph
//! or through tract.

use crate::codec::gptq::{Layout, Moments, MAX_DIM};
use crate::compress::graph::{ops, Graph, Op};
use crate::data::Dataset;
use crate::error::{Error, Result};
use candle_core::{Device, Tensor};
use std::collections::HashMap;

/// `E[x xᵀ]` of each weight's layer inputs, by weight name.
#[derive(Debug, Clone, Default)]
pub struct Hessians(pub HashMap<String, Moments>);

impl Hessians {
    /// Runs `graph` on `images` ([`crate::runtime::IMAGES_PER_RUN`] at a time): see [`Self::collect`].
    pub fn collect_images(graph: &Graph, images: &Dataset) -> Result<Self> {
        let [c, h, w] = images.shape;
        let batches: Vec<(Vec<f32>, Vec<usize>)> = (0..images.len())
            .step_by(crate::runtime::IMAGES_PER_RUN)
            .map(|b| {
                let e = (b + crate::runtime::IMAGES_PER_RUN).min(images.len());
                (images.batch(b, e).0.to_vec(), vec![e - b, c, h, w])
            })
            .collect();
        Self::collect(graph, &batches)
    }

    /// Runs `graph` on each batch (flat f32 values with their shape) and accumulates the input
    /// second moments of every one-group `Conv`, `Gemm` and `MatMul` with a constant weight
    /// (see [`Layout`]), for inputs of at most [`MAX_DIM`] values.
    pub fn collect(graph: &Graph, batches: &[(Vec<f32>, Vec<usize>)]) -> Result<Self> {
        let mut sums = Sums::new(usize::MAX);
        for (values, shape) in batches {
            let x = Tensor::from_slice(values, shape.as_slice(), &Device::Cpu)?;
            for (node, input) in graph.layer_inputs(&x)? {
                let Some(weight) = node.inputs.get(1) else { continue };
                let Some(wt) = graph.constants.get(weight) else { continue };
                sums.add(weight, &node.op, &input, wt.dims())?;
            }
        }
        Ok(sums.finish())
    }

    /// [`Self::collect`] for any model tract runs (`proto`, with its weights; `shapes`: the
    /// `--input-shape`s, if any): the inputs of its one-group `Conv`, `Gemm` and `MatMul`
    /// layers with constant weights (initializers or `Constant` nodes) are made outputs of the tract model, and each layer's
    /// columns are subsampled to at most [`MAX_SAMPLES`] per batch (the Gram matrix of a
    /// detector's full-page activations would take minutes on two cores).
    pub fn collect_tract(
        proto: &tract_onnx::pb::ModelProto,
        shapes: &[Vec<usize>],
        batches: &[(Vec<f32>, Vec<usize>)],
    ) -> Result<Self> {
        use tract_onnx::prelude::{tvec, Framework, InferenceModelExt, IntoRunnable};
        let graph = proto.graph.as_ref().ok_or_else(|| Error::Rebuild("ONNX model has no graph".into()))?;
        // The weights: initializers and `Constant` node values.
        let shape = |t: &tract_onnx::pb::TensorProto| t.dims.iter().map(|&d| d as usize).collect::<Vec<_>>();
        let mut dims: HashMap<&str, Vec<usize>> =
            graph.initializer.iter().map(|t| (t.name.as_str(), shape(t))).collect();
        for n in graph.node.iter().filter(|n| n.op_type == "Constant") {
            let value = n.attribute.iter().find(|a| a.name == "value").and_then(|a| a.t.as_ref());
            if let (Some(t), Some(out)) = (value, n.output.first()) {
                dims.insert(out.as_str(), shape(t));
            }
        }
        let translate =
            |op: &str| crate::compress::graph::OPS.iter().find(|(name, _)| *name == op).map(|(_, f)| f);
        // (weight, its op, the name of its input); each input taken once as a model output.
        let mut layers = Vec::new();
        let mut inputs: Vec<&str> = Vec::new();
        for n in &graph.node {
            let (Some(x), Some(w)) = (n.input.first(), n.input.get(1)) else { continue };
            let Some(wd) = dims.get(w.as_str()) else { continue };
            let Some(Ok(op)) = translate(&n.op_type).map(|f| f(n)) else { continue };
            let fits = match op {
                Op::Conv { groups: 1, .. } => wd.len() == 4,
                Op::Gemm { trans_a: false, .. } | Op::MatMul => wd.len() == 2,
                _ => false,
            };
            if fits {
                if !inputs.contains(&x.as_str()) {
                    inputs.push(x);
                }
                layers.push((w.clone(), op, inputs.iter().position(|i| i == x).expect("pushed")));
            }
        }
        if layers.is_empty() {
            return Ok(Hessians::default());
        }
        let mut model =
            crate::runtime::onnx::with_shapes(tract_onnx::onnx().model_for_proto_model(proto)?, shapes)?;
        let outlets = inputs
            .iter()
            .map(|name| {
                // Values by their label; the model's inputs by their source node's name.
                let source =
                    || model.node_by_name(name).ok().map(|n| tract_onnx::prelude::OutletId::new(n.id, 0));
                model.find_outlet_label(name).or_else(source).ok_or_else(|| {
                    Error::Rebuild(format!("tract has no value named {name} to collect layer inputs from"))
                })
            })
            .collect::<Result<Vec<_>>>()?;
        model.select_output_outlets(&outlets)?;
        let plan = model.into_optimized()?.into_runnable()?;
        let mut sums = Sums::new(MAX_SAMPLES);
        for (values, shape) in batches {
            let x = tract_onnx::prelude::Tensor::from_shape(shape, values)?;
            let outputs = plan.run(tvec!(x.into()))?;
            let inputs: Vec<Tensor> = outputs
                .iter()
                .map(|o| -> Result<Tensor> {
                    let o = o.cast_to::<f32>()?;
                    Ok(Tensor::from_slice(o.try_as_plain_ram()?.as_slice::<f32>()?, o.shape(), &Device::Cpu)?)
                })
                .collect::<Result<_>>()?;
            for (weight, op, i) in &layers {
                sums.add(weight, op, &inputs[*i], &dims[weight.as_str()])?;
            }
        }
        Ok(sums.finish())
    }
}

/// Layer-input columns taken per batch at most by [`Hessians::collect_tract`] (evenly spaced).
pub const MAX_SAMPLES: usize = 8192;

/// Running sums of `x xᵀ` by weight name: `(d, Σ x xᵀ, samples, layout)`, at most
/// `max_samples` columns of each layer per batch.
struct Sums {
    sums: HashMap<String, (usize, Vec<f64>, usize, Layout)>,
    max_samples: usize,
}

impl Sums {
    fn new(max_samples: usize) -> Self {
        Sums { sums: HashMap::new(), max_samples }
    }

    /// Adds the columns of `input` as layer `op` (weight `weight` of shape `wdims`) sees them:
    /// a one-group `Conv`'s im2col patches, a `Gemm`'s rows, a `MatMul`'s vectors along its
    /// last axis; other ops and inputs of more than [`MAX_DIM`] values are skipped.
    fn add(&mut self, weight: &str, op: &Op, input: &Tensor, wdims: &[usize]) -> Result<()> {
        // Columns (d × samples) of what multiplies the weight.
        let (cols, layout) = match *op {
            Op::Conv { mut window, groups: 1 } if wdims.len() == 4 && input.dims().len() == 4 => {
                window.kernel = [wdims[2], wdims[3]];
                (ops::im2col(input, window, 0.0)?.0, Layout::OutputRows)
            }
            Op::Gemm { trans_a: false, trans_b: true, .. } if input.dims().len() == 2 => {
                (input.t()?, Layout::OutputRows)
            }
            Op::Gemm { trans_a: false, trans_b: false, .. } | Op::MatMul
                if wdims.len() == 2 && input.dims().last() == Some(&wdims[0]) =>
            {
                (input.reshape(((), wdims[0]))?.t()?, Layout::InputRows)
            }
            _ => return Ok(()),
        };
        let (d, n) = cols.dims2()?;
        if d > MAX_DIM || n == 0 {
            return Ok(());
        }
        let cols = match n.div_ceil(self.max_samples) {
            1 => cols.contiguous()?,
            step => {
                let picks: Vec<u32> = (0..n).step_by(step).map(|i| i as u32).collect();
                let len = picks.len();
                cols.index_select(&Tensor::from_vec(picks, len, &Device::Cpu)?, 1)?.contiguous()?
            }
        };
        let gram: Vec<f32> = cols.matmul(&cols.t()?)?.flatten_all()?.to_vec1()?;
        let entry = self.sums.entry(weight.to_string()).or_insert_with(|| (d, vec![0.0; d * d], 0, layout));
        if (entry.0, entry.3) != (d, layout) {
            return Ok(()); // a weight shared by layers of different kinds: the first one's
        }
        for (s, g) in entry.1.iter_mut().zip(&gram) {
            *s += *g as f64;
        }
        entry.2 += cols.dims()[1];
        Ok(())
    }

    /// The means `E[x xᵀ]`.
    fn finish(self) -> Hessians {
        Hessians(
            self.sums
                .into_iter()
                .map(|(k, (d, mut h, n, layout))| {
                    h.iter_mut().for_each(|v| *v /= n.max(1) as f64);
                    (k, Moments::new(d, h, layout))
                })
                .collect(),
        )
    }
}
