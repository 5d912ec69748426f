//! How much changing some of a model's tensors changes its outputs: the model is rebuilt with
//! the changed values and run in tract on a few calibration inputs, and the outputs are compared
//! with the original's ([`Calibration::error`], the relative L2 error of the first output, the
//! same figure `nerp eval --inputs` reports — except that an output computed by a final
//! `Softmax` is compared before it, see [`before_softmax`]). Used to choose a storage per tensor
//! ([`crate::compress::choose`]) and to check that a compressed model still works.

use crate::error::{Error, Result};
use crate::ingest::SourceModel;
use crate::runtime::regen::WeightTensor;
use crate::runtime::Model;

/// Inputs per tract call (as in `nerp eval`: tract's cost per input grows with the batch).
const BATCH: usize = crate::runtime::IMAGES_PER_RUN;

/// The original model's tensors, its outputs on the calibration inputs, and how to rebuild it.
pub struct Calibration {
    skeleton: Vec<u8>,
    shapes: Vec<Vec<usize>>,
    tensors: Vec<WeightTensor>,
    /// Batches of f32 inputs with their shapes.
    inputs: Vec<(Vec<f32>, Vec<usize>)>,
    /// The original model's first output on each batch, concatenated.
    reference: Vec<f32>,
    reference_norm: f64,
}

impl Calibration {
    /// Runs the original `model` (an ONNX source: it needs a skeleton) on `inputs`, each a flat
    /// f32 array with its shape; `shapes` are the `--input-shape`s, if any.
    pub fn new(
        model: &SourceModel,
        inputs: Vec<(Vec<f32>, Vec<usize>)>,
        shapes: Vec<Vec<usize>>,
    ) -> Result<Self> {
        let skeleton = model
            .skeleton
            .clone()
            .ok_or_else(|| Error::usage("--max-error", "output errors need an ONNX model (it is run)"))?;
        if inputs.is_empty() {
            return Err(Error::usage("--calibration", "needs at least one calibration input"));
        }
        let tensors = crate::compress::permute::as_weights(model);
        let mut c =
            Calibration { skeleton, shapes, tensors, inputs, reference: Vec::new(), reference_norm: 0.0 };
        c.reference = c.outputs(&[])?;
        c.reference_norm = c.reference.iter().map(|v| (*v as f64).powi(2)).sum::<f64>().sqrt();
        crate::error::check_finite(
            || "the original model's outputs on the calibration inputs".into(),
            &c.reference,
            NON_FINITE,
        )?;
        Ok(c)
    }

    /// Calibration batches from `images` (N×C×H×W, preprocessed), [`BATCH`] images per run.
    pub fn image_batches(data: &crate::data::Dataset) -> Vec<(Vec<f32>, Vec<usize>)> {
        let [c, h, w] = data.shape;
        (0..data.len())
            .step_by(BATCH)
            .map(|b| {
                let e = (b + BATCH).min(data.len());
                (data.batch(b, e).0.to_vec(), vec![e - b, c, h, w])
            })
            .collect()
    }

    /// The first output on every calibration batch with the tensors `changes` (index into the
    /// model's tensors → new f32 values) replaced.
    fn outputs(&self, changes: &[(usize, &[f32])]) -> Result<Vec<f32>> {
        let mut weights = self.tensors.clone();
        for &(i, values) in changes {
            let t = &mut weights[i];
            t.data = crate::format::codec::from_f32(t.dtype, values)
                .ok_or_else(|| Error::Training(format!("tensor {} is not a float tensor", t.name)))?;
        }
        let mut proto = crate::runtime::patch_skeleton(&self.skeleton, &weights)?;
        before_softmax(&mut proto);
        let model = Model::from_proto_shaped(&proto, &self.shapes)?;
        let mut out = Vec::new();
        for (x, shape) in &self.inputs {
            out.extend(model.run_f32(x, shape)?.0);
        }
        Ok(out)
    }

    /// Relative L2 error of the first output, `‖y − y₀‖ / ‖y₀‖` over all calibration inputs,
    /// with `changes` applied; a non-finite output counts as an infinite error.
    pub fn error(&self, changes: &[(usize, &[f32])]) -> Result<f64> {
        let y = self.outputs(changes)?;
        if y.len() != self.reference.len() {
            return Err(Error::Rebuild(format!(
                "the changed model gives {} output values, the original {}",
                y.len(),
                self.reference.len()
            )));
        }
        if y.iter().any(|v| !v.is_finite()) {
            return Ok(f64::INFINITY);
        }
        let diff: f64 = y.iter().zip(&self.reference).map(|(a, b)| ((a - b) as f64).powi(2)).sum();
        Ok(diff.sqrt() / self.reference_norm.max(f64::MIN_POSITIVE))
    }

    /// Number of calibration batches.
    pub fn batches(&self) -> usize {
        self.inputs.len()
    }
}

/// Makes the model's first output the input of the `Softmax` that computes it (possibly
/// through `Identity` nodes), if one does:
/// probabilities saturate, logits keep the margin. On the PP-OCR direction classifier's four
/// calibration lines every tensor alone at int2 changed the probabilities by less than 0.005%,
/// and the file the budget chose on them flipped 1 of the 4 evaluation lines (relative error
/// 0.38 on the probabilities); the recognizer's output is a `Softmax` too.
fn before_softmax(proto: &mut tract_onnx::pb::ModelProto) {
    let Some(graph) = proto.graph.as_mut() else { return };
    let Some(first) = graph.output.first().map(|o| o.name.clone()) else { return };
    // Through `Identity` nodes (Paddle's exports end with one).
    let mut name = first;
    let logits = loop {
        let Some(n) = graph.node.iter().find(|n| n.output.first() == Some(&name)) else { break None };
        match (n.op_type.as_str(), n.input.first()) {
            ("Identity", Some(x)) => name = x.clone(),
            ("Softmax", Some(x)) => break Some(x.clone()),
            _ => break None,
        }
    };
    if let (Some(logits), Some(out)) = (logits, graph.output.first_mut()) {
        // Its type (shape) is left to tract: the logits have the probabilities' shape.
        out.name = logits;
    }
}

const NON_FINITE: &str = "check the calibration inputs and their preprocessing (--preprocess)";
