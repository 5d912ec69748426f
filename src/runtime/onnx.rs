//! Weights → a runnable model: the ONNX skeleton is patched with the regenerated tensors and
//! handed to tract; safetensors sources are written back as safetensors.

use crate::error::{Error, Result};
use crate::format::{DType, NerpFile, SourceKind};
use crate::ingest::{self, safetensors::META_PREFIX};
use crate::runtime::regen::WeightTensor;
use prost::Message;
use std::path::Path;
use std::sync::Arc;
use tract_onnx::pb::{ModelProto, TensorProto};
use tract_onnx::prelude::*;

/// Images per tract call: tract's per-image cost grows with the batch, so keep it small.
pub const IMAGES_PER_RUN: usize = 4;

/// The ONNX model of a file with `weights` patched into its initializers and `Constant` nodes.
pub fn rebuild_onnx(file: &NerpFile, weights: &[WeightTensor]) -> Result<ModelProto> {
    let h = file.header();
    let (SourceKind::Onnx, Some(section)) = (h.source.kind, h.source.skeleton) else {
        return Err(Error::Rebuild(format!(
            "{} was compressed from safetensors, not ONNX",
            file.path().display()
        )));
    };
    patch_skeleton(&file.decode_section(section)?, weights).map_err(|e| in_file(file, e))
}

/// Names `file` in a rebuild error and says what to do: the skeleton and the tensors come
/// from the same file, so a mismatch means the file is corrupt.
fn in_file(file: &NerpFile, e: Error) -> Error {
    match e {
        Error::Rebuild(what) => Error::Rebuild(format!(
            "{}: {what} (the file's skeleton is corrupt or does not belong to its tensors; compress the model again)",
            file.path().display()
        )),
        e => e,
    }
}

/// Decodes an ONNX skeleton (a model whose tensors' data was taken out, in the order of
/// [`ingest::onnx::tensor_slots`]) and puts `weights` back in, checking names, dtypes and shapes.
pub fn patch_skeleton(skeleton: &[u8], weights: &[WeightTensor]) -> Result<ModelProto> {
    let mut model = ingest::onnx::decode_model(skeleton)
        .map_err(|e| Error::Rebuild(format!("skeleton is not a valid ONNX protobuf: {e}")))?;
    let graph = model.graph.as_mut().ok_or_else(|| Error::Rebuild("skeleton has no graph".into()))?;
    let slots = ingest::onnx::tensor_slots(graph);
    if slots.len() != weights.len() {
        return Err(Error::Rebuild(format!(
            "skeleton has {} tensor slots, the file stores {} tensors",
            slots.len(),
            weights.len()
        )));
    }
    for ((name, slot), w) in slots.into_iter().zip(weights) {
        check_slot(&name, slot, &w.name, w.dtype, &w.shape)?;
        slot.raw_data = w.data.clone();
    }
    Ok(model)
}

/// Fails unless skeleton slot `name` has the stored tensor's name, dtype and shape.
fn check_slot(name: &str, slot: &TensorProto, tensor: &str, dtype: DType, shape: &[u64]) -> Result<()> {
    let dims_match = ingest::onnx::dtype_of(slot.data_type) == Some(dtype)
        && slot.dims.len() == shape.len()
        && slot.dims.iter().zip(shape).all(|(&a, &b)| a as u64 == b);
    if name != tensor || !dims_match {
        return Err(Error::Rebuild(format!(
            "skeleton slot {name:?} {:?} does not match stored tensor {tensor:?} {dtype:?} {shape:?}",
            slot.dims
        )));
    }
    Ok(())
}

/// Checks, without any weight, that a file's skeleton (ONNX sources) decodes and that its
/// tensor slots match the header's tensors one to one: what [`rebuild_onnx`] needs.
pub fn check_skeleton(file: &NerpFile) -> Result<()> {
    check_skeleton_slots(file).map_err(|e| in_file(file, e))
}

fn check_skeleton_slots(file: &NerpFile) -> Result<()> {
    let h = file.header();
    let Some(section) = h.source.skeleton else { return Ok(()) };
    let bytes = file.decode_section(section)?;
    let mut model = ingest::onnx::decode_model(&bytes)
        .map_err(|e| Error::Rebuild(format!("skeleton is not a valid ONNX protobuf: {e}")))?;
    let graph = model.graph.as_mut().ok_or_else(|| Error::Rebuild("skeleton has no graph".into()))?;
    let slots = ingest::onnx::tensor_slots(graph);
    if slots.len() != h.tensors.len() {
        return Err(Error::Rebuild(format!(
            "skeleton has {} tensor slots, the file stores {} tensors",
            slots.len(),
            h.tensors.len()
        )));
    }
    for ((name, slot), t) in slots.iter().zip(&h.tensors) {
        check_slot(name, slot, &t.name, t.dtype, &t.shape)?;
    }
    Ok(())
}

/// Serializes an ONNX model.
pub fn onnx_bytes(model: &ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}

pub use crate::format::metadata::INPUT_SHAPES_KEY;

/// Concrete f32 input shapes, one per model input (empty: use the model's own).
pub type InputShapes = Vec<Vec<usize>>;

/// Parses `"1,3,48,320"` into a shape.
pub fn parse_shape(s: &str) -> Result<Vec<usize>> {
    let dims: std::result::Result<Vec<usize>, _> = s.split(',').map(|d| d.trim().parse::<usize>()).collect();
    match dims {
        Ok(d) if !d.is_empty() && !d.contains(&0) => Ok(d),
        _ => Err(Error::usage(
            "--input-shape",
            format!("{s:?} is not a list of positive integers like 1,3,48,320"),
        )),
    }
}

/// The input shapes stored in a file's metadata (none if absent).
pub fn stored_input_shapes(file: &NerpFile) -> Result<InputShapes> {
    let bad = |what: String| {
        Error::Rebuild(format!("{}: metadata {INPUT_SHAPES_KEY} {what}", file.path().display()))
    };
    let shapes: InputShapes = match file.header().metadata.get(INPUT_SHAPES_KEY) {
        Some(json) => serde_json::from_str(json).map_err(|e| bad(format!("is not a list of shapes: {e}")))?,
        None => return Ok(Vec::new()),
    };
    for s in &shapes {
        let numel = s.iter().try_fold(1u64, |a, &d| a.checked_mul(d as u64));
        if s.is_empty()
            || s.contains(&0)
            || numel.is_none_or(|n| n > crate::format::limits::MAX_TENSOR_ELEMENTS)
        {
            return Err(bad(format!(
                "holds shape {s:?}: each needs positive dimensions and at most 2^32 elements"
            )));
        }
    }
    Ok(shapes)
}

/// A model ready to run in tract.
#[derive(Clone)]
pub struct Model {
    plan: Arc<TypedRunnableModel>,
}

impl Model {
    /// Builds and optimizes a tract model from an ONNX protobuf.
    pub fn from_proto(proto: &ModelProto) -> Result<Self> {
        Self::from_proto_shaped(proto, &[])
    }

    /// [`Model::from_proto`] with concrete f32 input shapes (for dynamic input dimensions).
    pub fn from_proto_shaped(proto: &ModelProto, shapes: &[Vec<usize>]) -> Result<Self> {
        let model = tract_onnx::onnx().model_for_proto_model(proto)?;
        Self::from_inference(with_shapes(model, shapes)?)
    }

    /// Regenerates a `.nerp` file's weights on `device` and builds its model (ONNX sources),
    /// with the input shapes stored in the file, if any.
    pub fn from_file(file: &NerpFile, device: &crate::Device) -> Result<Self> {
        let weights = crate::runtime::regen::regenerate(file, device)?;
        Self::from_proto_shaped(&rebuild_onnx(file, &weights)?, &stored_input_shapes(file)?)
    }

    /// Loads an ONNX file into tract.
    pub fn from_onnx_file(path: &Path) -> Result<Self> {
        Self::from_onnx_file_shaped(path, &[])
    }

    /// [`Model::from_onnx_file`] with concrete f32 input shapes.
    pub fn from_onnx_file_shaped(path: &Path, shapes: &[Vec<usize>]) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::io(path, "opening model", std::io::Error::from(std::io::ErrorKind::NotFound)));
        }
        let model = tract_onnx::onnx()
            .model_for_path(path)
            .map_err(|e| Error::Ingest { path: path.to_path_buf(), what: format!("{e:#}") })?;
        Self::from_inference(with_shapes(model, shapes)?)
    }

    /// [`Model::from_onnx_file_shaped`] with the first output cut before a final `Softmax`
    /// ([`before_softmax`]): the logits the compressor compares (external data files are not
    /// read).
    pub fn from_onnx_file_logits(path: &Path, shapes: &[Vec<usize>]) -> Result<Self> {
        let bad =
            |e: &dyn std::fmt::Display| Error::Ingest { path: path.to_path_buf(), what: format!("{e:#}") };
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, "reading model", e))?;
        let mut proto = ingest::onnx::decode_model(&bytes).map_err(|e| bad(&e))?;
        before_softmax(&mut proto);
        Self::from_proto_shaped(&proto, shapes)
    }

    fn from_inference(model: InferenceModel) -> Result<Self> {
        let plan = model.into_optimized()?.into_runnable()?;
        Ok(Model { plan })
    }

    /// Runs the model on `inputs`.
    pub fn run(&self, inputs: TVec<TValue>) -> Result<TVec<TValue>> {
        Ok(self.plan.run(inputs)?)
    }

    /// Runs a single f32 input of `shape`; returns the first output as f32 with its shape.
    pub fn run_f32(&self, input: &[f32], shape: &[usize]) -> Result<(Vec<f32>, Vec<usize>)> {
        let t = Tensor::from_shape(shape, input)?;
        let out = self.run(tvec!(t.into()))?;
        let first =
            out.first().ok_or_else(|| Error::Rebuild("the model has no outputs".into()))?.cast_to::<f32>()?;
        Ok((first.try_as_plain_ram()?.as_slice::<f32>()?.to_vec(), first.shape().to_vec()))
    }
}

/// Makes the model's first output the input of the `Softmax` that computes it (possibly
/// through `Identity` nodes), if one does (then `true`): what the compressor measures
/// ([`crate::compress::calibrate`]) and `nerp eval --logits` compares:
/// probabilities saturate, logits keep the margin. On the PP-OCR direction classifier's four
/// calibration lines every tensor alone at int2 changed the probabilities by less than 0.005%,
/// and the file the budget chose on them flipped 1 of the 4 evaluation lines (relative error
/// 0.38 on the probabilities); the recognizer's output is a `Softmax` too.
pub fn before_softmax(proto: &mut ModelProto) -> bool {
    let Some(graph) = proto.graph.as_mut() else { return false };
    let Some(first) = graph.output.first().map(|o| o.name.clone()) else { return false };
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
        return true;
    }
    false
}

/// Sets the input facts of `model` to f32 tensors of `shapes` (none: unchanged).
pub(crate) fn with_shapes(mut model: InferenceModel, shapes: &[Vec<usize>]) -> Result<InferenceModel> {
    if shapes.is_empty() {
        return Ok(model);
    }
    let inputs = model.inputs.len();
    if shapes.len() != inputs {
        return Err(Error::usage(
            "--input-shape",
            format!(
                "the model has {inputs} inputs, {} shapes were given (one per input, in order)",
                shapes.len()
            ),
        ));
    }
    for (i, s) in shapes.iter().enumerate() {
        model = model.with_input_fact(i, f32::fact(s).into())?;
    }
    Ok(model)
}

/// Writes the weights as a safetensors file (atomically), with the source's metadata.
pub fn write_safetensors(file: &NerpFile, weights: &[WeightTensor], path: &Path) -> Result<()> {
    let views = weights
        .iter()
        .map(|w| {
            let shape: Vec<usize> = w.shape.iter().map(|&d| d as usize).collect();
            let dtype = ingest::safetensors::to_safetensors(w.dtype);
            let view = safetensors::tensor::TensorView::new(dtype, shape, &w.data)
                .map_err(|e| Error::Rebuild(format!("tensor {}: {e}", w.name)))?;
            Ok((w.name.clone(), view))
        })
        .collect::<Result<Vec<_>>>()?;
    let meta: std::collections::HashMap<String, String> = file
        .header()
        .metadata
        .iter()
        .filter_map(|(k, v)| k.strip_prefix(META_PREFIX).map(|k| (k.to_string(), v.clone())))
        .collect();
    let meta = if meta.is_empty() { None } else { Some(meta) };
    let bytes = safetensors::serialize(views, meta)
        .map_err(|e| Error::Rebuild(format!("serializing safetensors: {e}")))?;
    crate::format::write_atomic(path, &bytes)
}
