//! Function-preserving channel permutations (method.md §5): permuting a layer's output channels
//! together with every tensor that reads or writes the same channels (the next convolution's
//! input channels, biases and norms between, every conv writing into one residual stream, the
//! classifier's input features after global pooling) leaves the network's function unchanged.
//! Choosing each group's order to smooth the kernels gives the predictor a smoother target
//! without storing any permutation: the file stores the permuted network and identity orders.
//!
//! Groups come from the ONNX graph by union-find over channel axes ([`channel_groups`]); an op
//! not understood here pins the channels it touches to their original order.

use crate::error::{Error, Result};
use crate::format::DType;
use crate::ingest::{SourceModel, SourceTensor};
use std::collections::HashMap;
use tract_onnx::pb::{GraphProto, NodeProto};

/// One set of tied channel axes: permuting `size` channels along every member axis at once
/// preserves the network's function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChannelGroup {
    pub size: usize,
    /// `(tensor index in the model, axis)`, sorted.
    pub members: Vec<(usize, usize)>,
}

/// Union-find over channel axes `(value name, axis)`, each with a size (when known) and a pin.
#[derive(Default)]
struct Axes {
    ids: HashMap<(String, usize), usize>,
    keys: Vec<(String, usize)>,
    parent: Vec<usize>,
    size: Vec<Option<usize>>,
    pinned: Vec<bool>,
}

impl Axes {
    fn id(&mut self, name: &str, axis: usize) -> usize {
        if let Some(&i) = self.ids.get(&(name.to_string(), axis)) {
            return i;
        }
        let i = self.parent.len();
        self.ids.insert((name.to_string(), axis), i);
        self.keys.push((name.to_string(), axis));
        self.parent.push(i);
        self.size.push(None);
        self.pinned.push(false);
        i
    }

    fn root(&mut self, mut i: usize) -> usize {
        while self.parent[i] != i {
            self.parent[i] = self.parent[self.parent[i]];
            i = self.parent[i];
        }
        i
    }

    fn pin(&mut self, i: usize) {
        let r = self.root(i);
        self.pinned[r] = true;
    }

    fn set_size(&mut self, i: usize, n: usize) {
        let r = self.root(i);
        match self.size[r] {
            Some(m) if m != n => self.pinned[r] = true,
            _ => self.size[r] = Some(n),
        }
    }

    fn link(&mut self, a: usize, b: usize) {
        let (ra, rb) = (self.root(a), self.root(b));
        if ra == rb {
            return;
        }
        let (lo, hi) = (ra.min(rb), ra.max(rb));
        self.parent[hi] = lo;
        self.pinned[lo] |= self.pinned[hi];
        if let Some(n) = self.size[hi] {
            self.set_size(lo, n);
        }
    }
}

/// What the graph walk knows about a value name.
struct Walk<'a> {
    axes: Axes,
    tensors: HashMap<&'a str, (usize, &'a SourceTensor)>,
    /// Op type of the node producing each value.
    producer: HashMap<&'a str, &'a str>,
}

impl<'a> Walk<'a> {
    fn tensor(&self, name: &str) -> Option<&'a SourceTensor> {
        self.tensors.get(name).map(|&(_, t)| t)
    }

    /// Ties axis `axis` of `name` (with its size when `name` is a stored tensor) to `to`.
    fn tie(&mut self, name: &str, axis: usize, to: usize) {
        let i = self.axes.id(name, axis);
        if let Some(t) = self.tensor(name) {
            match t.shape.get(axis) {
                Some(&n) => self.axes.set_size(i, n as usize),
                None => self.axes.pin(i),
            }
        }
        self.axes.link(i, to);
    }

    /// Pins every channel axis `name` may have: all axes of a stored tensor, axis 1 of a value.
    fn pin_value(&mut self, name: &str) {
        if name.is_empty() {
            return;
        }
        match self.tensor(name) {
            Some(t) => {
                for a in 0..t.shape.len() {
                    let i = self.axes.id(name, a);
                    self.axes.pin(i);
                }
            }
            None => {
                let i = self.axes.id(name, 1);
                self.axes.pin(i);
            }
        }
    }

    fn pin_node(&mut self, n: &NodeProto) {
        for v in n.input.iter().chain(&n.output) {
            self.pin_value(v);
        }
    }

    fn is_scalar(&self, name: &str) -> bool {
        self.tensor(name).is_some_and(|t| t.shape.iter().product::<u64>() == 1)
    }

    /// One node; returns false when it is not understood (the caller pins it).
    fn node(&mut self, n: &NodeProto) -> bool {
        let default_domain = n.domain.is_empty() || n.domain == "ai.onnx";
        let (Some(x), Some(y)) = (n.input.first(), n.output.first()) else { return false };
        if !default_domain || x.is_empty() || y.is_empty() {
            return false;
        }
        let int =
            |name: &str, default: i64| n.attribute.iter().find(|a| a.name == name).map_or(default, |a| a.i);
        let yc = self.axes.id(y, 1);
        match n.op_type.as_str() {
            "Conv" => {
                let Some(w) = n.input.get(1).filter(|w| self.tensor(w).is_some_and(|t| t.shape.len() >= 3))
                else {
                    return false;
                };
                if int("group", 1) != 1 || n.output.len() != 1 {
                    return false;
                }
                let xc = self.axes.id(x, 1);
                self.tie(w, 1, xc);
                self.tie(w, 0, yc);
                match n.input.get(2).filter(|b| !b.is_empty()) {
                    Some(b) if self.tensor(b).is_some_and(|t| t.shape.len() == 1) => self.tie(b, 0, yc),
                    Some(_) => return false,
                    None => {}
                }
                true
            }
            "BatchNormalization" => {
                if n.output.len() != 1 || n.input.len() != 5 {
                    return false;
                }
                if !n.input[1..].iter().all(|p| self.tensor(p).is_some_and(|t| t.shape.len() == 1)) {
                    return false;
                }
                let xc = self.axes.id(x, 1);
                self.axes.link(xc, yc);
                for p in &n.input[1..] {
                    self.tie(p, 0, yc);
                }
                true
            }
            "Relu" | "LeakyRelu" | "Sigmoid" | "Tanh" | "HardSigmoid" | "HardSwish" | "Identity" | "Clip"
            | "MaxPool" | "AveragePool" | "GlobalAveragePool" | "GlobalMaxPool" | "Dropout" => {
                // Extra outputs (MaxPool indices, Dropout mask) and non-scalar bounds: not handled.
                if n.output.iter().skip(1).any(|o| !o.is_empty())
                    || n.input.iter().skip(1).any(|b| !b.is_empty() && !self.is_scalar(b))
                {
                    return false;
                }
                let xc = self.axes.id(x, 1);
                self.axes.link(xc, yc);
                true
            }
            "Add" | "Sub" | "Mul" | "Div" => {
                // Two activations of one shape, or an activation and a scalar constant.
                if n.input.len() != 2
                    || n.input.iter().any(|i| self.tensor(i).is_some() && !self.is_scalar(i))
                {
                    return false;
                }
                let values: Vec<&String> = n.input.iter().filter(|i| self.tensor(i).is_none()).collect();
                for i in values {
                    let c = self.axes.id(i, 1);
                    self.axes.link(c, yc);
                }
                true
            }
            "Flatten" | "Reshape" => {
                // Only [N, C, 1, 1] (after global pooling) → [N, C] keeps the channel axis.
                let pooled =
                    matches!(self.producer.get(x.as_str()), Some(&"GlobalAveragePool" | &"GlobalMaxPool"));
                let to_matrix = if n.op_type == "Flatten" {
                    int("axis", 1) == 1
                } else {
                    n.input.get(1).and_then(|s| self.tensor(s)).is_some_and(|s| {
                        let v = to_i64(s.dtype, &s.data);
                        matches!(v.as_deref(), Some([a, b]) if (-1..=1).contains(a) && *b == -1)
                    })
                };
                if !(pooled && to_matrix) {
                    return false;
                }
                let xc = self.axes.id(x, 1);
                self.axes.link(xc, yc);
                true
            }
            "Gemm" => {
                let Some(w) = n.input.get(1).filter(|w| self.tensor(w).is_some_and(|t| t.shape.len() == 2))
                else {
                    return false;
                };
                if int("transA", 0) != 0 || n.output.len() != 1 {
                    return false;
                }
                let (win, wout) = if int("transB", 0) != 0 { (1, 0) } else { (0, 1) };
                let xc = self.axes.id(x, 1);
                self.tie(w, win, xc);
                self.tie(w, wout, yc);
                match n.input.get(2).filter(|b| !b.is_empty()) {
                    Some(b) if self.is_scalar(b) => {}
                    Some(b) if self.tensor(b).is_some_and(|t| t.shape.len() == 1) => self.tie(b, 0, yc),
                    Some(_) => return false,
                    None => {}
                }
                true
            }
            _ => false,
        }
    }
}

/// The channel groups of an ONNX graph whose tensors are `tensors` (by name): axes tied through
/// Conv (group 1), BatchNormalization, element-wise activations, pooling, Add/Sub/Mul/Div of
/// equal-shape activations, Flatten/Reshape after global pooling and Gemm. Any other op, graph
/// inputs and outputs, and axes whose sizes disagree are pinned; groups holding no stored
/// tensor, or of size < 2, are left out.
pub fn channel_groups(graph: &GraphProto, tensors: &[SourceTensor]) -> Vec<ChannelGroup> {
    let mut walk = Walk {
        axes: Axes::default(),
        tensors: tensors.iter().enumerate().map(|(i, t)| (t.name.as_str(), (i, t))).collect(),
        producer: HashMap::new(),
    };
    for n in &graph.node {
        for o in &n.output {
            walk.producer.insert(o.as_str(), n.op_type.as_str());
        }
    }
    for n in &graph.node {
        if !walk.node(n) {
            walk.pin_node(n);
        }
    }
    for v in graph.input.iter().chain(&graph.output) {
        walk.pin_value(&v.name);
    }
    // A tensor read by a node inside a subgraph (If/Loop bodies) is not followed: pin it.
    for n in &graph.node {
        if n.attribute.iter().any(|a| a.g.is_some() || !a.graphs.is_empty()) {
            for t in tensors {
                walk.pin_value(&t.name);
            }
        }
    }
    let mut groups: HashMap<usize, ChannelGroup> = HashMap::new();
    for i in 0..walk.axes.keys.len() {
        let r = walk.axes.root(i);
        let (name, axis) = walk.axes.keys[i].clone();
        let Some(&(t, _)) = walk.tensors.get(name.as_str()) else { continue };
        if walk.axes.pinned[r] {
            continue;
        }
        let Some(size) = walk.axes.size[r] else { continue };
        groups.entry(r).or_insert(ChannelGroup { size, members: Vec::new() }).members.push((t, axis));
    }
    let mut out: Vec<ChannelGroup> = groups
        .into_values()
        .filter(|g| g.size >= 2)
        .map(|mut g| {
            g.members.sort();
            g
        })
        .collect();
    out.sort_by(|a, b| a.members.cmp(&b.members));
    out
}

/// The order of one group (new position → old channel): a greedy max-cosine chain (the same
/// chain as the block ordering, [`crate::compress::plan::chain`]) over each channel's feature vector, the
/// concatenation over the group's float tensors of rank ≥ 2 of the channel's slice, each row
/// divided by its RMS (as the predictor's targets are, [`crate::compress::plan::filter_scales`]) and each
/// slice scaled to unit length, so every tensor counts equally. Identity when the group has no
/// such tensor.
pub fn group_order(group: &ChannelGroup, tensors: &[SourceTensor]) -> Vec<u32> {
    let n = group.size;
    let mut features: Vec<Vec<f32>> = vec![Vec::new(); n];
    for &(t, axis) in &group.members {
        let t = &tensors[t];
        if t.shape.len() < 2 {
            continue;
        }
        let Some(v) = crate::format::codec::to_f32(t.dtype, &t.data) else { continue };
        let rows = t.shape[0] as usize;
        let scales = crate::compress::plan::filter_scales(&v, rows);
        let per_row = v.len() / rows;
        let (outer, inner) = axis_split(&t.shape, axis);
        for (c, f) in features.iter_mut().enumerate() {
            let start = f.len();
            for o in 0..outer {
                let base = (o * n + c) * inner;
                f.extend((base..base + inner).map(|e| v[e] / scales[e / per_row]));
            }
            let norm = f[start..].iter().map(|x| x * x).sum::<f32>().sqrt();
            if norm > 0.0 {
                f[start..].iter_mut().for_each(|x| *x /= norm);
            }
        }
    }
    let d = features[0].len();
    if d == 0 {
        return (0..n as u32).collect();
    }
    let flat: Vec<f32> = features.concat();
    let unit = crate::compress::plan::normalized(&flat, d);
    crate::compress::plan::chain(&unit, d, &(0..n as u32).collect::<Vec<_>>())
}

/// `(product of dims before axis, product of dims after axis)`.
fn axis_split(shape: &[u64], axis: usize) -> (usize, usize) {
    let p = |s: &[u64]| s.iter().product::<u64>() as usize;
    (p(&shape[..axis]), p(&shape[axis + 1..]))
}

/// Reorders `t` along `axis`: new index `j` holds old index `order[j]`.
pub fn permute_axis(t: &mut SourceTensor, axis: usize, order: &[u32]) {
    let n = order.len();
    let (outer, inner) = axis_split(&t.shape, axis);
    let bytes = inner * t.dtype.size();
    let old = std::mem::take(&mut t.data);
    let mut new = Vec::with_capacity(old.len());
    for o in 0..outer {
        for &c in order {
            let at = (o * n + c as usize) * bytes;
            new.extend_from_slice(&old[at..at + bytes]);
        }
    }
    t.data = new;
}

/// What [`permute_model`] did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PermuteReport {
    /// Groups found (each with its chosen order).
    pub groups: Vec<(ChannelGroup, Vec<u32>)>,
}

/// Permutes the channels of an ONNX source model in place, group by group (see the module
/// doc); a model without a graph (safetensors) is left as it is.
pub fn permute_model(model: &mut SourceModel) -> Result<PermuteReport> {
    let Some(skeleton) = model.skeleton.as_ref() else { return Ok(PermuteReport::default()) };
    let proto = crate::ingest::onnx::decode_model(skeleton)
        .map_err(|e| Error::Training(format!("channel ordering: the graph does not decode: {e}")))?;
    let Some(graph) = proto.graph.as_ref() else { return Ok(PermuteReport::default()) };
    let groups = channel_groups(graph, &model.tensors);
    let mut report = PermuteReport::default();
    for g in groups {
        if g.members.iter().any(|&(t, a)| model.tensors[t].shape.get(a) != Some(&(g.size as u64))) {
            continue;
        }
        let order = group_order(&g, &model.tensors);
        for &(t, axis) in &g.members {
            permute_axis(&mut model.tensors[t], axis, &order);
        }
        report.groups.push((g, order));
    }
    Ok(report)
}

/// The values of an integer tensor (shape operands), else `None`.
fn to_i64(dtype: DType, bytes: &[u8]) -> Option<Vec<i64>> {
    match dtype {
        DType::I64 => {
            Some(bytes.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8"))).collect())
        }
        DType::I32 => {
            Some(bytes.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().expect("4")) as i64).collect())
        }
        _ => None,
    }
}

/// The source model's tensors as weights (e.g. to patch the skeleton after [`permute_model`]).
pub fn as_weights(model: &SourceModel) -> Vec<crate::runtime::regen::WeightTensor> {
    model
        .tensors
        .iter()
        .map(|t| crate::runtime::regen::WeightTensor {
            name: t.name.clone(),
            dtype: t.dtype,
            shape: t.shape.clone(),
            data: t.data.clone(),
        })
        .collect()
}

/// Metadata key of a file whose channels were reordered ([`permute_model`]): its tensors are
/// the permuted network's (the same function), so a weight-space comparison applies
/// [`permute_model`] to the original first.
pub const CHANNEL_ORDER_KEY: &str = "channel_order";

#[cfg(feature = "compress")]
#[cfg(test)]
mod tests {
    use super::*;

    fn load(bytes: Vec<u8>) -> (tempfile::TempDir, std::path::PathBuf, SourceModel) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("m.onnx");
        std::fs::write(&path, bytes).unwrap();
        let model = crate::ingest::load(&path).unwrap();
        (dir, path, model)
    }

    /// Groups as sorted `(name, axis)` lists.
    fn named(model: &SourceModel) -> Vec<Vec<(String, usize)>> {
        let proto = crate::ingest::onnx::decode_model(model.skeleton.as_ref().unwrap()).unwrap();
        channel_groups(proto.graph.as_ref().unwrap(), &model.tensors)
            .into_iter()
            .map(|g| g.members.iter().map(|&(t, a)| (model.tensors[t].name.clone(), a)).collect())
            .collect()
    }

    fn names(v: &[(&str, usize)]) -> Vec<(String, usize)> {
        let mut v: Vec<(String, usize)> = v.iter().map(|&(n, a)| (n.to_string(), a)).collect();
        v.sort();
        v
    }

    #[test]
    fn residual_groups_follow_the_add_and_the_classifier() {
        let (_d, _p, model) = load(crate::synth::residual_onnx("Relu", 1));
        let mut got = named(&model);
        got.iter_mut().for_each(|g| g.sort());
        got.sort();
        let mut want = vec![
            names(&[
                ("conv0.weight", 0),
                ("conv0.bias", 0),
                ("bn.scale", 0),
                ("bn.bias", 0),
                ("bn.mean", 0),
                ("bn.var", 0),
                ("conv1.weight", 0),
                ("conv1.weight", 1),
                ("conv2.weight", 1),
            ]),
            names(&[("conv2.weight", 0), ("fc.weight", 1)]),
        ];
        want.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn an_unknown_op_pins_its_channels() {
        let (_d, _p, model) = load(crate::synth::residual_onnx("MysteryOp", 1));
        let got = named(&model);
        // conv2's outputs pass through the unknown op: that group is gone, the other stays.
        assert_eq!(got.len(), 1, "{got:?}");
        assert!(got[0].contains(&("conv1.weight".to_string(), 1)));
        assert!(!got.iter().flatten().any(|(n, a)| n == "fc.weight" || (n == "conv2.weight" && *a == 0)));
    }

    #[test]
    fn permuting_the_residual_net_preserves_its_function() {
        let (_d, path, mut model) = load(crate::synth::residual_onnx("Relu", 3));
        let report = permute_model(&mut model).unwrap();
        assert_eq!(report.groups.len(), 2);
        // The test means something only if some order is not the identity.
        let moved = report.groups.iter().any(|(_, o)| o.iter().enumerate().any(|(i, &c)| i != c as usize));
        assert!(moved, "{:?}", report.groups);
        let before = crate::runtime::Model::from_onnx_file(&path).unwrap();
        let proto =
            crate::runtime::patch_skeleton(model.skeleton.as_ref().unwrap(), &as_weights(&model)).unwrap();
        let after = crate::runtime::Model::from_proto(&proto).unwrap();
        for seed in 0..4 {
            let mut rng = crate::compress::train::Rng::new(seed);
            let x: Vec<f32> = (0..72).map(|_| (rng.uniform() * 2.0 - 1.0) as f32).collect();
            let (a, _) = before.run_f32(&x, &[1, 2, 6, 6]).unwrap();
            let (b, _) = after.run_f32(&x, &[1, 2, 6, 6]).unwrap();
            for (u, v) in a.iter().zip(&b) {
                assert!((u - v).abs() <= 1e-5 * u.abs().max(1.0), "{a:?} vs {b:?}");
            }
        }
        // And the weights did move: conv1's kernel differs from the original's.
        let original = crate::ingest::load(&path).unwrap();
        let i = model.tensors.iter().position(|t| t.name == "conv1.weight").unwrap();
        assert_ne!(model.tensors[i].data, original.tensors[i].data);
    }

    #[test]
    fn permute_axis_moves_slices() {
        let mut t = SourceTensor {
            name: "t".into(),
            dtype: DType::U8,
            shape: vec![2, 3],
            data: vec![0, 1, 2, 10, 11, 12],
            role: crate::ingest::Role::Other,
        };
        permute_axis(&mut t, 1, &[2, 0, 1]);
        assert_eq!(t.data, vec![2, 0, 1, 12, 10, 11]);
        permute_axis(&mut t, 0, &[1, 0]);
        assert_eq!(t.data, vec![12, 10, 11, 2, 0, 1]);
    }
}
