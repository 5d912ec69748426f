//! A synthetic wide convnet (ONNX) for measurements on models larger than the reference ones:
//! `layers` 3×3 convolutions of `channels` → `channels` (pads 1, ReLU between), input
//! 1×channels×8×8, weights uniform in ±1/√(9·channels). 18 layers of 256 channels = 10.6 M weights.

use tract_onnx::pb::{self, attribute_proto::AttributeType, tensor_proto::DataType};

fn dims(shape: &[i64]) -> Option<pb::TypeProto> {
    use pb::tensor_shape_proto::{dimension::Value, Dimension};
    let dim =
        shape.iter().map(|&d| Dimension { value: Some(Value::DimValue(d)), ..Default::default() }).collect();
    let tensor = pb::type_proto::Tensor {
        elem_type: DataType::Float as i32,
        shape: Some(pb::TensorShapeProto { dim }),
    };
    Some(pb::TypeProto { value: Some(pb::type_proto::Value::TensorType(tensor)), ..Default::default() })
}

fn ints(name: &str, v: &[i64]) -> pb::AttributeProto {
    pb::AttributeProto {
        name: name.into(),
        r#type: AttributeType::Ints as i32,
        ints: v.to_vec(),
        ..Default::default()
    }
}

/// The model's ONNX bytes.
pub fn wide_convnet(channels: usize, layers: usize, seed: u64) -> Vec<u8> {
    let mut rng = nerp::train::Rng::new(seed);
    let bound = 1.0 / (9.0 * channels as f64).sqrt();
    let c = channels as i64;
    let (mut nodes, mut initializer) = (Vec::new(), Vec::new());
    let mut x = "x".to_string();
    for l in 0..layers {
        let w = format!("conv{l}.weight");
        let raw: Vec<u8> = (0..channels * channels * 9)
            .flat_map(|_| (((rng.uniform() * 2.0 - 1.0) * bound) as f32).to_le_bytes())
            .collect();
        initializer.push(pb::TensorProto {
            name: w.clone(),
            dims: vec![c, c, 3, 3],
            data_type: DataType::Float as i32,
            raw_data: raw,
            ..Default::default()
        });
        let conv = format!("conv{l}");
        nodes.push(pb::NodeProto {
            op_type: "Conv".into(),
            name: conv.clone(),
            input: vec![x, w],
            output: vec![conv.clone()],
            attribute: vec![ints("kernel_shape", &[3, 3]), ints("pads", &[1, 1, 1, 1])],
            ..Default::default()
        });
        x = conv;
        if l + 1 < layers {
            let relu = format!("relu{l}");
            nodes.push(pb::NodeProto {
                op_type: "Relu".into(),
                name: relu.clone(),
                input: vec![x],
                output: vec![relu.clone()],
                ..Default::default()
            });
            x = relu;
        }
    }
    let io = |name: &str| pb::ValueInfoProto {
        name: name.into(),
        r#type: dims(&[1, c, 8, 8]),
        ..Default::default()
    };
    let graph = pb::GraphProto {
        name: "wide_convnet".into(),
        node: nodes,
        initializer,
        input: vec![io("x")],
        output: vec![pb::ValueInfoProto { name: x, r#type: dims(&[1, c, 8, 8]), ..Default::default() }],
        ..Default::default()
    };
    let model = pb::ModelProto {
        ir_version: 8,
        opset_import: vec![pb::OperatorSetIdProto { domain: String::new(), version: 17 }],
        producer_name: "nerp examples/support/wide_convnet.rs".into(),
        graph: Some(graph),
        ..Default::default()
    };
    prost::Message::encode_to_vec(&model)
}
