//! Fixtures for benchmarks and tests: a synthetic model of large 3×3 convolutions, and `.nerp`
//! files with an untrained (randomly initialized) predictor, which cost no training time but
//! exercise every step of reading, regeneration and rebuilding.

use crate::compress::train::{init_predictor, Rng};
use crate::compress::{build_file, make_plan, CompressOptions, Plan};
use crate::error::{Error, Result};
use crate::format::WeightDtype;
use crate::ingest::SourceModel;
use crate::predictor::Predictor;
use candle_core::Device;

/// `layers` random 3×3 kernels `[channels, channels, 3, 3]` named `conv{i}.weight`, f32 bytes,
/// He-uniform from `seed` (so per-filter scales and orderings see realistic statistics).
fn conv_stack_tensors(channels: usize, layers: usize, seed: u64) -> Vec<(String, Vec<u8>)> {
    let mut rng = Rng::new(seed);
    let bound = (6.0 / (channels * 9) as f64).sqrt();
    (0..layers)
        .map(|i| {
            let data = (0..channels * channels * 9)
                .flat_map(|_| (((rng.uniform() * 2.0 - 1.0) * bound) as f32).to_le_bytes())
                .collect();
            (format!("conv{i}.weight"), data)
        })
        .collect()
}

/// Safetensors bytes of the [`conv_stack_tensors`].
pub fn conv_stack_safetensors(channels: usize, layers: usize, seed: u64) -> Result<Vec<u8>> {
    let tensors = conv_stack_tensors(channels, layers, seed);
    let views = tensors
        .iter()
        .map(|(name, data)| {
            let shape = vec![channels, channels, 3, 3];
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape, data)
                .map(|v| (name.clone(), v))
                .map_err(|e| Error::Rebuild(format!("tensor {name}: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    safetensors::serialize(views, None).map_err(|e| Error::Rebuild(format!("serializing safetensors: {e}")))
}

/// ONNX bytes of a runnable network of the [`conv_stack_tensors`]: 3×3 convolutions (pads 1)
/// with ReLU between them, input and output `1×channels×8×8`, so tract can load and run it
/// (17 layers of 256 channels = 10.0 M weights).
pub fn conv_stack_onnx(channels: usize, layers: usize, seed: u64) -> Vec<u8> {
    use tract_onnx::pb::{self, attribute_proto::AttributeType, tensor_proto::DataType};
    let c = channels as i64;
    let value = |name: String| {
        use pb::tensor_shape_proto::{dimension::Value, Dimension};
        let dim = [1, c, 8, 8].map(|d| Dimension { value: Some(Value::DimValue(d)), ..Default::default() });
        let shape = Some(pb::TensorShapeProto { dim: dim.to_vec() });
        let tensor = pb::type_proto::Tensor { elem_type: DataType::Float as i32, shape };
        let r#type = Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(tensor)),
            ..Default::default()
        });
        pb::ValueInfoProto { name, r#type, ..Default::default() }
    };
    let ints = |name: &str, v: &[i64]| pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: v.to_vec(),
        ..Default::default()
    };
    let node = |op: &str, input: Vec<String>, output: &str| pb::NodeProto {
        op_type: op.into(),
        name: output.into(),
        input,
        output: vec![output.into()],
        attribute: if op == "Conv" {
            vec![ints("kernel_shape", &[3, 3]), ints("pads", &[1, 1, 1, 1])]
        } else {
            vec![]
        },
        ..Default::default()
    };
    let (mut nodes, mut initializer, mut x) = (Vec::new(), Vec::new(), "x".to_string());
    for (l, (name, raw_data)) in conv_stack_tensors(channels, layers, seed).into_iter().enumerate() {
        nodes.push(node("Conv", vec![x, name.clone()], &format!("conv{l}")));
        x = format!("conv{l}");
        if l + 1 < layers {
            nodes.push(node("Relu", vec![x], &format!("relu{l}")));
            x = format!("relu{l}");
        }
        let dims = vec![c, c, 3, 3];
        initializer.push(pb::TensorProto {
            name,
            dims,
            data_type: DataType::Float as i32,
            raw_data,
            ..Default::default()
        });
    }
    let graph = pb::GraphProto {
        name: "conv_stack".into(),
        node: nodes,
        initializer,
        input: vec![value("x".into())],
        output: vec![value(x)],
        ..Default::default()
    };
    let model = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 17 }],
        producer_name: "nerp::synth".into(),
        graph: Some(graph),
        ..Default::default()
    };
    prost::Message::encode_to_vec(&model)
}

/// ONNX bytes of a tiny residual network (input `1×2×6×6`, output `1×3`), random weights from
/// `seed`: `conv0` (2→4, bias) → BatchNormalization → Relu = `r0`; `conv1` (4→4) on `r0`;
/// Add(`r0`, conv1) → Relu → `conv2` (4→5) → `mid_op` → GlobalAveragePool → Flatten → Gemm
/// (`fc.weight` `[3, 5]`, transB, bias). Channel groups: {conv0 out, bias, norm, conv1 in and
/// out, conv2 in} and {conv2 out, fc in}; `mid_op` other than `Relu` is for testing pins.
pub fn residual_onnx(mid_op: &str, seed: u64) -> Vec<u8> {
    use tract_onnx::pb::{self, attribute_proto::AttributeType, tensor_proto::DataType};
    let mut rng = Rng::new(seed);
    let mut init = Vec::new();
    let mut tensor = |name: &str, dims: &[i64], lo: f64, hi: f64| {
        let n: i64 = dims.iter().product();
        let raw_data = (0..n).flat_map(|_| ((lo + (hi - lo) * rng.uniform()) as f32).to_le_bytes()).collect();
        init.push(pb::TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type: DataType::Float as i32,
            raw_data,
            ..Default::default()
        });
    };
    tensor("conv0.weight", &[4, 2, 3, 3], -0.5, 0.5);
    tensor("conv0.bias", &[4], -0.1, 0.1);
    for p in ["bn.scale", "bn.bias", "bn.mean", "bn.var"] {
        let (lo, hi) = if p == "bn.bias" || p == "bn.mean" { (-0.2, 0.2) } else { (0.5, 1.5) };
        tensor(p, &[4], lo, hi);
    }
    tensor("conv1.weight", &[4, 4, 3, 3], -0.3, 0.3);
    tensor("conv2.weight", &[5, 4, 3, 3], -0.3, 0.3);
    tensor("fc.weight", &[3, 5], -0.5, 0.5);
    tensor("fc.bias", &[3], -0.1, 0.1);
    let attr_ints = |name: &str, v: &[i64]| pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: v.to_vec(),
        ..Default::default()
    };
    let attr_int = |name: &str, i: i64| pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Int as i32,
        i,
        ..Default::default()
    };
    let node = |op: &str, input: &[&str], output: &str, attribute: Vec<pb::AttributeProto>| pb::NodeProto {
        op_type: op.into(),
        name: output.into(),
        input: input.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        attribute,
        ..Default::default()
    };
    let conv = || vec![attr_ints("kernel_shape", &[3, 3]), attr_ints("pads", &[1, 1, 1, 1])];
    let nodes = vec![
        node("Conv", &["x", "conv0.weight", "conv0.bias"], "c0", conv()),
        node("BatchNormalization", &["c0", "bn.scale", "bn.bias", "bn.mean", "bn.var"], "b0", vec![]),
        node("Relu", &["b0"], "r0", vec![]),
        node("Conv", &["r0", "conv1.weight"], "c1", conv()),
        node("Add", &["r0", "c1"], "s", vec![]),
        node("Relu", &["s"], "s2", vec![]),
        node("Conv", &["s2", "conv2.weight"], "c2", conv()),
        node(mid_op, &["c2"], "m", vec![]),
        node("GlobalAveragePool", &["m"], "g", vec![]),
        node("Flatten", &["g"], "f", vec![attr_int("axis", 1)]),
        node("Gemm", &["f", "fc.weight", "fc.bias"], "y", vec![attr_int("transB", 1)]),
    ];
    let value = |name: &str, dims: &[i64]| {
        use pb::tensor_shape_proto::{dimension::Value, Dimension};
        let dim = dims.iter().map(|&d| Dimension { value: Some(Value::DimValue(d)), ..Default::default() });
        let shape = Some(pb::TensorShapeProto { dim: dim.collect() });
        let tensor = pb::type_proto::Tensor { elem_type: DataType::Float as i32, shape };
        let r#type = Some(pb::TypeProto {
            value: Some(pb::type_proto::Value::TensorType(tensor)),
            ..Default::default()
        });
        pb::ValueInfoProto { name: name.into(), r#type, ..Default::default() }
    };
    let graph = pb::GraphProto {
        name: "residual".into(),
        node: nodes,
        initializer: init,
        input: vec![value("x", &[1, 2, 6, 6])],
        output: vec![value("y", &[1, 3])],
        ..Default::default()
    };
    let model = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 17 }],
        producer_name: "nerp::synth".into(),
        graph: Some(graph),
        ..Default::default()
    };
    prost::Message::encode_to_vec(&model)
}

/// A complete `.nerp` (bytes) of `model` whose predictor (width `hidden`, stored as `dtype`) is
/// freshly initialized from `seed` instead of trained; with the predictor it holds.
pub fn untrained_file(
    model: &SourceModel,
    hidden: usize,
    dtype: WeightDtype,
    seed: u64,
) -> Result<(Vec<u8>, Predictor)> {
    let opts = CompressOptions { predictor_dtype: dtype, hidden: Some(hidden), ..Default::default() };
    opts.validate()?;
    let Plan { layers: plans, values, .. } = make_plan(model, &opts)?;
    let p = init_predictor(hidden, opts.embedding, seed, &Device::Cpu)?.rounded(dtype)?;
    let bytes = build_file(model, &plans, &values, Some(&p), &opts)?.bytes;
    Ok((bytes, p))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::{NerpFile, Storage};

    #[test]
    fn conv_stack_is_all_predicted_and_regenerates_to_its_shapes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stack.safetensors");
        std::fs::write(&path, conv_stack_safetensors(8, 3, 1).unwrap()).unwrap();
        let model = crate::ingest::load(&path).unwrap();
        assert_eq!(model.tensors.len(), 3);
        let (bytes, _) = untrained_file(&model, 16, WeightDtype::F16, 2).unwrap();
        let file = NerpFile::from_bytes(bytes, "stack.nerp").unwrap();
        let h = file.header();
        assert!(h.tensors.iter().all(|t| matches!(t.storage, Storage::Predicted { .. })));
        let w = crate::runtime::regen::regenerate(&file, &crate::Device::Cpu).unwrap();
        assert!(w.iter().all(|t| t.shape == [8, 8, 3, 3] && t.data.len() == 8 * 8 * 9 * 4));
    }

    #[test]
    fn conv_stack_onnx_runs_in_tract_and_regenerates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("stack.onnx");
        std::fs::write(&path, conv_stack_onnx(8, 3, 1)).unwrap();
        let (y, shape) = crate::runtime::Model::from_onnx_file(&path)
            .unwrap()
            .run_f32(&[0.5; 8 * 64], &[1, 8, 8, 8])
            .unwrap();
        assert_eq!(shape, vec![1, 8, 8, 8]);
        assert!(y.iter().any(|v| *v != 0.0));
        let model = crate::ingest::load(&path).unwrap();
        let (bytes, _) = untrained_file(&model, 16, WeightDtype::F16, 2).unwrap();
        let file = NerpFile::from_bytes(bytes, "stack.nerp").unwrap();
        assert!(file.header().tensors.iter().all(|t| matches!(t.storage, Storage::Predicted { .. })));
        crate::runtime::Model::from_file(&file, &crate::Device::Cpu).unwrap();
    }

    #[test]
    fn same_seed_same_bytes() {
        assert_eq!(conv_stack_safetensors(4, 2, 7).unwrap(), conv_stack_safetensors(4, 2, 7).unwrap());
        assert_ne!(conv_stack_safetensors(4, 2, 7).unwrap(), conv_stack_safetensors(4, 2, 8).unwrap());
    }
}
