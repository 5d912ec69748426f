//! A differentiable forward of an ONNX network in candle, for distillation.
//!
//! Translation ([`Graph::from_proto`]: ONNX protobuf → a list of typed [`Op`]s, one small
//! parse function per op) is kept apart from execution ([`Graph::forward`], see [`ops`]).
//! Weights can be supplied per call by name (e.g. kernels computed by the predictor), so
//! gradients flow from the network's outputs back into whatever computed them. Only the op set
//! of [`OPS`] is supported; any other op is an error naming the op and the node.

pub mod conv;
pub mod ops;

use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor};
use std::collections::{HashMap, HashSet};
use tract_onnx::pb::{AttributeProto, GraphProto, ModelProto, NodeProto, TensorProto};

/// Convolution / pooling window geometry (2-D only).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Window {
    pub kernel: [usize; 2],
    pub strides: [usize; 2],
    /// Top, left, bottom, right.
    pub pads: [usize; 4],
    pub dilations: [usize; 2],
}

/// One supported operation with its attributes.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Kernel size comes from the weight; `window.kernel` is filled at run time.
    Conv {
        window: Window,
        groups: usize,
    },
    BatchNormalization {
        epsilon: f32,
    },
    Relu,
    /// Bounds from attributes (opset < 11) or inputs 1 and 2.
    Clip {
        min: Option<f32>,
        max: Option<f32>,
    },
    Sigmoid,
    HardSigmoid {
        alpha: f32,
        beta: f32,
    },
    HardSwish,
    Mul,
    Add,
    GlobalAveragePool,
    AveragePool {
        window: Window,
        count_include_pad: bool,
    },
    MaxPool {
        window: Window,
    },
    Flatten {
        axis: i64,
    },
    Reshape,
    Gemm {
        alpha: f32,
        beta: f32,
        trans_a: bool,
        trans_b: bool,
    },
    MatMul,
    Concat {
        axis: i64,
    },
}

/// One node of the translated graph.
#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub op: Op,
    pub inputs: Vec<String>,
    pub output: String,
}

/// How `Conv` runs: one-group convolutions on the CPU as one custom op with a hand-written
/// gemm backward ([`conv`]), the rest as im2col + matmul; or everything as im2col of the whole
/// batch + candle matmul (hand-written col2im backward; the default before [`conv`]); or
/// candle's `conv2d` (its input gradient is a direct-loop transposed convolution). The last two
/// are kept for comparison (`examples/distill_step.rs`, `examples/distill_cost.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConvImpl {
    #[default]
    Gemm,
    Im2col,
    /// Symmetric pads only.
    Candle,
}

/// A translated network: nodes in execution order plus its constant tensors.
#[derive(Debug, Clone)]
pub struct Graph {
    pub conv_impl: ConvImpl,
    pub nodes: Vec<Node>,
    /// Initializers and `Constant` node values (f32 and i64 tensors), on the CPU.
    pub constants: HashMap<String, Tensor>,
    pub input: String,
    pub output: String,
}

/// Translates one ONNX node into an [`Op`].
pub type Translate = fn(&NodeProto) -> Result<Op>;

/// The ops [`Graph::from_proto`] accepts, each with its translation function.
pub const OPS: &[(&str, Translate)] = &[
    ("Conv", conv),
    ("BatchNormalization", batch_norm),
    ("Relu", |_| Ok(Op::Relu)),
    ("Clip", clip),
    ("Sigmoid", |_| Ok(Op::Sigmoid)),
    ("HardSigmoid", hard_sigmoid),
    ("HardSwish", |_| Ok(Op::HardSwish)),
    ("Mul", |_| Ok(Op::Mul)),
    ("Add", |_| Ok(Op::Add)),
    ("GlobalAveragePool", |_| Ok(Op::GlobalAveragePool)),
    ("AveragePool", average_pool),
    ("MaxPool", max_pool),
    ("Flatten", |n| Ok(Op::Flatten { axis: attr_i(n, "axis").unwrap_or(1) })),
    ("Reshape", |_| Ok(Op::Reshape)),
    ("Gemm", gemm),
    ("MatMul", |_| Ok(Op::MatMul)),
    ("Concat", |n| Ok(Op::Concat { axis: attr_i(n, "axis").ok_or_else(|| node_err(n, "has no axis"))? })),
];

/// Called after each node runs, with the node, its arguments and its output.
type NodeHook<'a> = dyn FnMut(&Node, &[Option<Tensor>], &Tensor) + 'a;

/// What a forward pass produced.
pub struct Forward {
    pub output: Tensor,
    /// The outputs of every `Conv` and `Add` node, in execution order (when recorded).
    pub features: Vec<Tensor>,
}

impl Graph {
    /// Reads and translates an ONNX file.
    pub fn from_onnx_file(path: &std::path::Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, "reading model", e))?;
        let proto = crate::ingest::onnx::decode_model(&bytes).map_err(|e| Error::Ingest {
            path: path.into(),
            what: format!("not a valid ONNX protobuf: {e}"),
        })?;
        Self::from_proto(&proto)
    }

    /// Translates an ONNX model with one graph input and one graph output.
    pub fn from_proto(model: &ModelProto) -> Result<Self> {
        let graph = model.graph.as_ref().ok_or_else(|| Error::Rebuild("ONNX model has no graph".into()))?;
        let mut constants = HashMap::new();
        for t in &graph.initializer {
            if let Some(v) = constant(t)? {
                constants.insert(t.name.clone(), v);
            }
        }
        let mut nodes = Vec::new();
        for n in &graph.node {
            if !(n.domain.is_empty() || n.domain == "ai.onnx") {
                return Err(node_err(
                    n,
                    &format!("is in domain {:?}, only the default ONNX domain is supported", n.domain),
                ));
            }
            if n.op_type == "Constant" {
                let t = n.attribute.iter().find(|a| a.name == "value").and_then(|a| a.t.as_ref());
                let t = t.ok_or_else(|| node_err(n, "Constant without a tensor `value`"))?;
                let v = constant(t)?.ok_or_else(|| node_err(n, "Constant of an unsupported data type"))?;
                constants.insert(n.output.first().cloned().unwrap_or_default(), v);
                continue;
            }
            let translate = OPS
                .iter()
                .find(|(name, _)| *name == n.op_type)
                .map(|(_, f)| f)
                .ok_or_else(|| node_err(n, "is not supported by nerp's differentiable forward"))?;
            let outputs: Vec<&String> = n.output.iter().filter(|o| !o.is_empty()).collect();
            if outputs.len() != 1 {
                return Err(node_err(n, "must have exactly one output"));
            }
            nodes.push(Node {
                name: n.name.clone(),
                op: translate(n)?,
                inputs: n.input.clone(),
                output: outputs[0].clone(),
            });
        }
        let input = single(
            graph,
            &graph.input.iter().map(|i| &i.name).filter(|n| !constants.contains_key(*n)).collect::<Vec<_>>(),
            "input",
        )?;
        let output = single(graph, &graph.output.iter().map(|i| &i.name).collect::<Vec<_>>(), "output")?;
        Ok(Graph { conv_impl: ConvImpl::default(), nodes, constants, input, output })
    }

    /// Names of the tensors used as `Conv` kernels.
    pub fn conv_weights(&self) -> HashSet<String> {
        self.nodes
            .iter()
            .filter(|n| matches!(n.op, Op::Conv { .. }))
            .filter_map(|n| n.inputs.get(1).cloned())
            .collect()
    }

    /// Runs the graph on `input`. `weights` replace constants of the same name (each must
    /// name a constant); `record` keeps the output of every `Conv` and `Add` node.
    pub fn forward(
        &self,
        input: &Tensor,
        weights: &HashMap<String, Tensor>,
        record: bool,
    ) -> Result<Forward> {
        let mut features = Vec::new();
        let output = self.run(input, weights, &mut |node, _, out| {
            if record && matches!(node.op, Op::Conv { .. } | Op::Add) {
                features.push(out.clone());
            }
        })?;
        Ok(Forward { output, features })
    }

    /// The input activation of every `Conv`, `Gemm` and `MatMul` node on `input`, with the node (whose
    /// second input names the weight): what data-aware quantization weights its errors by.
    pub fn layer_inputs(&self, input: &Tensor) -> Result<Vec<(Node, Tensor)>> {
        let mut seen = Vec::new();
        self.run(input, &HashMap::new(), &mut |node, args, _| {
            if let (Op::Conv { .. } | Op::Gemm { .. } | Op::MatMul, Some(Some(x))) = (&node.op, args.first())
            {
                seen.push((node.clone(), x.clone()));
            }
        })?;
        Ok(seen)
    }

    /// Runs every node in order, calling `on_node` with the node, its arguments and its
    /// output; returns the graph's output.
    fn run(
        &self,
        input: &Tensor,
        weights: &HashMap<String, Tensor>,
        on_node: &mut NodeHook,
    ) -> Result<Tensor> {
        if let Some(bad) = weights.keys().find(|k| !self.constants.contains_key(*k)) {
            return Err(Error::Rebuild(format!("weight {bad:?} is not a constant of the graph")));
        }
        let mut values: HashMap<&str, Tensor> = HashMap::new();
        values.insert(&self.input, input.clone());
        let device = input.device();
        for node in &self.nodes {
            let args = node
                .inputs
                .iter()
                .map(|name| {
                    if name.is_empty() {
                        return Ok(None);
                    }
                    if let Some(v) = values.get(name.as_str()).or_else(|| weights.get(name)) {
                        return Ok(Some(v.clone()));
                    }
                    match self.constants.get(name) {
                        Some(c) => Ok(Some(c.to_device(device)?)),
                        None => Err(Error::Rebuild(format!(
                            "node {:?}: input {name:?} is not computed before it",
                            node.name
                        ))),
                    }
                })
                .collect::<Result<Vec<Option<Tensor>>>>()?;
            let out = ops::run(&node.op, &args, self.conv_impl).map_err(|e| match e {
                Error::Rebuild(what) => {
                    Error::Rebuild(format!("node {:?} ({}): {what}", node.name, op_name(&node.op)))
                }
                e => Error::Rebuild(format!("node {:?} ({}): {e}", node.name, op_name(&node.op))),
            })?;
            on_node(node, &args, &out);
            values.insert(&node.output, out);
        }
        values
            .remove(self.output.as_str())
            .ok_or_else(|| Error::Rebuild(format!("graph output {:?} is never computed", self.output)))
    }
}

/// The ONNX name of an op.
pub fn op_name(op: &Op) -> &'static str {
    match op {
        Op::Conv { .. } => "Conv",
        Op::BatchNormalization { .. } => "BatchNormalization",
        Op::Relu => "Relu",
        Op::Clip { .. } => "Clip",
        Op::Sigmoid => "Sigmoid",
        Op::HardSigmoid { .. } => "HardSigmoid",
        Op::HardSwish => "HardSwish",
        Op::Mul => "Mul",
        Op::Add => "Add",
        Op::GlobalAveragePool => "GlobalAveragePool",
        Op::AveragePool { .. } => "AveragePool",
        Op::MaxPool { .. } => "MaxPool",
        Op::Flatten { .. } => "Flatten",
        Op::Reshape => "Reshape",
        Op::Gemm { .. } => "Gemm",
        Op::MatMul => "MatMul",
        Op::Concat { .. } => "Concat",
    }
}

fn single(_g: &GraphProto, names: &[&String], what: &str) -> Result<String> {
    match names {
        [one] => Ok((*one).clone()),
        _ => Err(Error::Rebuild(format!("the graph must have exactly one {what}, it has {}", names.len()))),
    }
}

fn node_err(n: &NodeProto, what: &str) -> Error {
    Error::Rebuild(format!("node {:?} (op {}): {what}", n.name, n.op_type))
}

/// An f32 or i64 tensor proto as a CPU tensor (`None` for other data types).
fn constant(t: &TensorProto) -> Result<Option<Tensor>> {
    let dims: Vec<usize> = t.dims.iter().map(|&d| d.max(0) as usize).collect();
    let numel: usize = dims.iter().product();
    let bad = |got: usize| {
        Error::Rebuild(format!("tensor {:?} has {got} values, its shape {dims:?} needs {numel}", t.name))
    };
    use crate::format::DType as Stored;
    let (dtype, width) = match crate::ingest::onnx::dtype_of(t.data_type) {
        Some(d @ (Stored::F32 | Stored::I64)) => (d, d.size()),
        _ => return Ok(None),
    };
    let bytes = crate::ingest::onnx::embedded_data(t, dtype);
    if bytes.len() != numel * width {
        return Err(bad(bytes.len() / width));
    }
    let words = bytes.chunks_exact(width);
    let tensor = if dtype == Stored::F32 {
        let v: Vec<f32> = words.map(|b| f32::from_le_bytes(b.try_into().expect("4 bytes"))).collect();
        Tensor::from_vec(v, dims, &Device::Cpu)?
    } else {
        let v: Vec<i64> = words.map(|b| i64::from_le_bytes(b.try_into().expect("8 bytes"))).collect();
        Tensor::from_vec(v, dims, &Device::Cpu)?
    };
    debug_assert!(matches!(tensor.dtype(), DType::F32 | DType::I64));
    Ok(Some(tensor))
}

fn attr<'a>(n: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    n.attribute.iter().find(|a| a.name == name)
}

fn attr_i(n: &NodeProto, name: &str) -> Option<i64> {
    attr(n, name).map(|a| a.i)
}

fn attr_f(n: &NodeProto, name: &str) -> Option<f32> {
    attr(n, name).map(|a| a.f)
}

fn attr_ints(n: &NodeProto, name: &str) -> Option<Vec<i64>> {
    attr(n, name).map(|a| a.ints.clone())
}

fn pair(n: &NodeProto, name: &str, default: usize) -> Result<[usize; 2]> {
    match attr_ints(n, name) {
        None => Ok([default; 2]),
        Some(v) if v.len() == 2 && v.iter().all(|&x| x >= 0) => Ok([v[0] as usize, v[1] as usize]),
        Some(v) => Err(node_err(n, &format!("attribute {name} = {v:?}: only 2-D windows are supported"))),
    }
}

/// Window attributes shared by Conv and the pools (`kernel_shape` optional for Conv).
fn window(n: &NodeProto, need_kernel: bool) -> Result<Window> {
    if let Some(a) = attr(n, "auto_pad") {
        let s = String::from_utf8_lossy(&a.s);
        if s != "NOTSET" && !s.is_empty() {
            return Err(node_err(n, &format!("auto_pad {s} is not supported; export with explicit pads")));
        }
    }
    if attr_i(n, "ceil_mode").unwrap_or(0) != 0 {
        return Err(node_err(n, "ceil_mode = 1 is not supported"));
    }
    let kernel = match attr_ints(n, "kernel_shape") {
        Some(_) => pair(n, "kernel_shape", 1)?,
        None if need_kernel => return Err(node_err(n, "has no kernel_shape")),
        None => [0, 0],
    };
    let pads = match attr_ints(n, "pads") {
        None => [0; 4],
        Some(v) if v.len() == 4 && v.iter().all(|&x| x >= 0) => {
            [v[0] as usize, v[1] as usize, v[2] as usize, v[3] as usize]
        }
        Some(v) => return Err(node_err(n, &format!("pads {v:?}: expected 4 non-negative values"))),
    };
    let w = Window { kernel, strides: pair(n, "strides", 1)?, pads, dilations: pair(n, "dilations", 1)? };
    if w.strides.contains(&0) || w.dilations.contains(&0) {
        return Err(node_err(n, "strides and dilations must be positive"));
    }
    Ok(w)
}

fn conv(n: &NodeProto) -> Result<Op> {
    let groups = attr_i(n, "group").unwrap_or(1);
    if groups < 1 {
        return Err(node_err(n, "group must be positive"));
    }
    Ok(Op::Conv { window: window(n, false)?, groups: groups as usize })
}

fn batch_norm(n: &NodeProto) -> Result<Op> {
    if attr_i(n, "training_mode").unwrap_or(0) != 0 {
        return Err(node_err(n, "training_mode = 1 is not supported (inference mode only)"));
    }
    Ok(Op::BatchNormalization { epsilon: attr_f(n, "epsilon").unwrap_or(1e-5) })
}

fn clip(n: &NodeProto) -> Result<Op> {
    Ok(Op::Clip { min: attr_f(n, "min"), max: attr_f(n, "max") })
}

fn hard_sigmoid(n: &NodeProto) -> Result<Op> {
    Ok(Op::HardSigmoid { alpha: attr_f(n, "alpha").unwrap_or(0.2), beta: attr_f(n, "beta").unwrap_or(0.5) })
}

fn average_pool(n: &NodeProto) -> Result<Op> {
    Ok(Op::AveragePool {
        window: window(n, true)?,
        count_include_pad: attr_i(n, "count_include_pad").unwrap_or(0) != 0,
    })
}

fn max_pool(n: &NodeProto) -> Result<Op> {
    if n.output.iter().filter(|o| !o.is_empty()).count() > 1 {
        return Err(node_err(n, "the Indices output is not supported"));
    }
    Ok(Op::MaxPool { window: window(n, true)? })
}

fn gemm(n: &NodeProto) -> Result<Op> {
    Ok(Op::Gemm {
        alpha: attr_f(n, "alpha").unwrap_or(1.0),
        beta: attr_f(n, "beta").unwrap_or(1.0),
        trans_a: attr_i(n, "transA").unwrap_or(0) != 0,
        trans_b: attr_i(n, "transB").unwrap_or(0) != 0,
    })
}
