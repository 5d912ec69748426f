//! Every op of `nerp::compress::graph` against tract on tiny hand-built ONNX graphs, and the im2col
//! convolution's gradients against candle's conv2d.

mod common;

use candle_core::{Device, Tensor, Var};
use nerp::compress::graph::{ConvImpl, Graph};
use std::collections::HashMap;
use tract_onnx::pb::{
    tensor_shape_proto::{dimension, Dimension},
    type_proto, AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto,
    TensorShapeProto, TypeProto, ValueInfoProto,
};

fn value_info(name: &str, shape: Option<&[usize]>) -> ValueInfoProto {
    let shape = shape.map(|s| TensorShapeProto {
        dim: s
            .iter()
            .map(|&d| Dimension { value: Some(dimension::Value::DimValue(d as i64)), ..Default::default() })
            .collect(),
    });
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            value: Some(type_proto::Value::TensorType(type_proto::Tensor { elem_type: 1, shape })),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn f32_init(name: &str, dims: &[usize], seed: u64) -> TensorProto {
    let n = dims.iter().product();
    TensorProto {
        name: name.into(),
        data_type: 1,
        dims: dims.iter().map(|&d| d as i64).collect(),
        float_data: common::noise(n, seed),
        ..Default::default()
    }
}

fn i64_init(name: &str, v: &[i64]) -> TensorProto {
    TensorProto {
        name: name.into(),
        data_type: 7,
        dims: vec![v.len() as i64],
        int64_data: v.to_vec(),
        ..Default::default()
    }
}

fn ints(name: &str, v: &[i64]) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: 7, ints: v.to_vec(), ..Default::default() }
}

fn int(name: &str, v: i64) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: 2, i: v, ..Default::default() }
}

fn float(name: &str, v: f32) -> AttributeProto {
    AttributeProto { name: name.into(), r#type: 1, f: v, ..Default::default() }
}

/// A one-node model `y = op(x, inits…)`, opset 13 (14 for HardSwish).
fn model(
    op: &str,
    attrs: Vec<AttributeProto>,
    x: &[usize],
    inits: Vec<TensorProto>,
    inputs: &[&str],
) -> ModelProto {
    let mut input = vec!["x".to_string()];
    input.extend(inputs.iter().map(|s| s.to_string()));
    let node = NodeProto {
        name: format!("the_{op}"),
        op_type: op.into(),
        input,
        output: vec!["y".into()],
        attribute: attrs,
        ..Default::default()
    };
    ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: 14 }],
        graph: Some(GraphProto {
            name: "g".into(),
            node: vec![node],
            initializer: inits,
            input: vec![value_info("x", Some(x))],
            output: vec![value_info("y", None)],
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Runs the model in tract and in nerp's graph; returns max |difference| (asserting shapes).
fn compare(m: &ModelProto, x: &[usize]) -> f32 {
    let n: usize = x.iter().product();
    let input = common::noise(n, 99).iter().map(|v| v * 3.0).collect::<Vec<f32>>();
    let (expect, shape) = nerp::runtime::Model::from_proto(m).unwrap().run_f32(&input, x).unwrap();
    let g = Graph::from_proto(m).unwrap();
    let out = g
        .forward(&Tensor::from_slice(&input, x, &Device::Cpu).unwrap(), &HashMap::new(), false)
        .unwrap()
        .output;
    assert_eq!(out.dims(), &shape[..], "shape");
    let got = out.flatten_all().unwrap().to_vec1::<f32>().unwrap();
    assert!(expect.iter().any(|v| v.abs() > 0.01), "degenerate test: tract's output is ~0");
    expect.iter().zip(&got).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max)
}

fn check(op: &str, attrs: Vec<AttributeProto>, x: &[usize], inits: Vec<TensorProto>, inputs: &[&str]) {
    let d = compare(&model(op, attrs, x, inits, inputs), x);
    println!("{op}: max |tract - graph| = {d:.2e}");
    assert!(d < 1e-4, "{op}: {d}");
}

#[test]
fn conv_with_groups_strides_pads_dilations() {
    let attrs = vec![
        ints("strides", &[2, 1]),
        ints("pads", &[1, 0, 2, 1]),
        ints("dilations", &[1, 2]),
        int("group", 2),
    ];
    check(
        "Conv",
        attrs,
        &[2, 4, 9, 8],
        vec![f32_init("w", &[6, 2, 3, 3], 1), f32_init("b", &[6], 2)],
        &["w", "b"],
    );
    check("Conv", vec![], &[1, 3, 5, 5], vec![f32_init("w", &[4, 3, 1, 1], 3)], &["w"]);
}

#[test]
fn batch_norm_inference() {
    let mut var = f32_init("var", &[3], 7);
    var.float_data.iter_mut().for_each(|v| *v = v.abs() + 0.1);
    let inits = vec![f32_init("s", &[3], 4), f32_init("b", &[3], 5), f32_init("m", &[3], 6), var];
    check("BatchNormalization", vec![float("epsilon", 1e-3)], &[2, 3, 4, 4], inits, &["s", "b", "m", "var"]);
}

#[test]
fn activations() {
    check("Relu", vec![], &[2, 3, 4, 4], vec![], &[]);
    check("Sigmoid", vec![], &[2, 3, 4, 4], vec![], &[]);
    check("HardSigmoid", vec![float("alpha", 0.3), float("beta", 0.4)], &[2, 3, 4, 4], vec![], &[]);
    check("HardSwish", vec![], &[2, 3, 4, 4], vec![], &[]);
    let bound = |name: &str, v: f32| TensorProto {
        name: name.into(),
        data_type: 1,
        float_data: vec![v],
        ..Default::default()
    };
    check("Clip", vec![], &[2, 3, 4, 4], vec![bound("lo", -0.5), bound("hi", 1.5)], &["lo", "hi"]);
}

#[test]
fn broadcasting_binary_ops() {
    check("Mul", vec![], &[2, 3, 4, 4], vec![f32_init("c", &[1, 3, 1, 1], 8)], &["c"]);
    check("Add", vec![], &[2, 3, 4, 4], vec![f32_init("c", &[4], 9)], &["c"]);
}

#[test]
fn pools() {
    check("GlobalAveragePool", vec![], &[2, 3, 5, 4], vec![], &[]);
    let w = || vec![ints("kernel_shape", &[3, 3]), ints("strides", &[2, 2]), ints("pads", &[1, 1, 1, 1])];
    check("MaxPool", w(), &[2, 3, 7, 6], vec![], &[]);
    check("AveragePool", w(), &[2, 3, 7, 6], vec![], &[]);
    let mut incl = w();
    incl.push(int("count_include_pad", 1));
    check("AveragePool", incl, &[2, 3, 7, 6], vec![], &[]);
}

#[test]
fn shape_and_matrix_ops() {
    check("Flatten", vec![int("axis", 2)], &[2, 3, 4, 5], vec![], &[]);
    check("Reshape", vec![], &[2, 3, 4, 5], vec![i64_init("shape", &[0, -1, 5])], &["shape"]);
    let gemm = vec![float("alpha", 0.5), float("beta", 2.0), int("transB", 1)];
    check("Gemm", gemm, &[3, 4], vec![f32_init("b", &[5, 4], 10), f32_init("c", &[5], 11)], &["b", "c"]);
    check("MatMul", vec![], &[2, 3, 4], vec![f32_init("b", &[4, 5], 12)], &["b"]);
    check("Concat", vec![int("axis", -3)], &[2, 3, 4, 4], vec![f32_init("c", &[2, 2, 4, 4], 13)], &["c"]);
}

#[test]
fn an_unsupported_op_is_an_error_naming_op_and_node() {
    let m = model("Softmax", vec![], &[2, 3], vec![], &[]);
    let e = Graph::from_proto(&m).unwrap_err().to_string();
    assert!(e.contains("Softmax") && e.contains("the_Softmax"), "{e}");
}

/// Gradients of `Σ y²` w.r.t. input and weight: im2col conv vs candle's conv2d.
#[test]
fn im2col_conv_gradients_match_candle_conv2d() {
    let attrs = vec![ints("strides", &[2, 2]), ints("pads", &[1, 1, 1, 1]), ints("dilations", &[2, 2])];
    let m = model("Conv", attrs, &[2, 3, 9, 9], vec![f32_init("w", &[4, 3, 3, 3], 14)], &["w"]);
    let mut g = Graph::from_proto(&m).unwrap();
    let grads = |g: &Graph| {
        let x = Var::from_tensor(
            &Tensor::from_vec(common::noise(2 * 3 * 81, 15), (2, 3, 9, 9), &Device::Cpu).unwrap(),
        )
        .unwrap();
        let w = Var::from_tensor(&g.constants["w"].copy().unwrap()).unwrap();
        let weights = HashMap::from([("w".to_string(), w.as_tensor().clone())]);
        let y = g.forward(x.as_tensor(), &weights, false).unwrap().output;
        let store = y.sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let flat =
            |v: &Var| store.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
        (flat(&x), flat(&w))
    };
    let (gx, gw) = grads(&g);
    g.conv_impl = ConvImpl::Candle;
    let (cx, cw) = grads(&g);
    let max = |a: &[f32], b: &[f32]| a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    let (dx, dw) = (max(&gx, &cx), max(&gw, &cw));
    println!("input grad diff {dx:.2e}, weight grad diff {dw:.2e}");
    assert!(gx.iter().any(|v| v.abs() > 1e-3) && dx < 1e-4 && dw < 1e-4, "{dx} {dw}");
}

#[test]
fn matmul_layer_moments_are_the_input_vectors_second_moments() {
    // `x · b` with b stored inputs × outputs: d = 4, one sample per vector along the last axis.
    let m = model("MatMul", vec![], &[2, 3, 4], vec![f32_init("b", &[4, 5], 12)], &["b"]);
    let x = common::noise(24, 7);
    let batches = vec![(x.clone(), vec![2, 3, 4])];
    let mut want = vec![0.0f64; 16];
    for v in x.chunks(4) {
        for i in 0..4 {
            for j in 0..4 {
                want[i * 4 + j] += v[i] as f64 * v[j] as f64 / 6.0;
            }
        }
    }
    let tract = nerp::compress::moments::Hessians::collect_tract(&m, &[], &batches).unwrap();
    let ours = nerp::compress::moments::Hessians::collect(&Graph::from_proto(&m).unwrap(), &batches).unwrap();
    for h in [&tract.0["b"], &ours.0["b"]] {
        assert_eq!((h.d, h.layout), (4, nerp::codec::gptq::Layout::InputRows));
        let worst = h.h.iter().zip(&want).fold(0f64, |a, (x, y)| a.max((x - y).abs()));
        assert!(worst < 1e-5, "{worst}");
    }
}
