//! Fixtures for benchmarks and tests: a synthetic model of large 3×3 convolutions, `.nerp`
//! files with an untrained (randomly initialized) predictor, which cost no training time but
//! exercise every step of reading, regeneration and rebuilding, and safetensors files with the
//! tensor names and shapes of a decoder LLM ([`LlmLayout`], [`write_llm`]).

use crate::codec::Codec;
use crate::compress::train::{init_predictor, Rng};
use crate::compress::{build_file, make_plan, CompressOptions, Plan};
use crate::error::{Error, Result};
use crate::format::{DType, WeightDtype};
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

/// A complete `.nerp` (bytes) of `model` without a predictor: every tensor stored with `codec`
/// (rounded to nearest), as `--raw-codec` stores the tensors a file does not predict. With
/// `Codec::Coded(k)` it measures the entropy decoder inside loading (benches/nerp.rs).
pub fn codec_file(model: &SourceModel, codec: Codec) -> Result<Vec<u8>> {
    let opts = CompressOptions { raw_codec: codec, ..Default::default() };
    opts.validate()?;
    let Plan { layers: plans, values, .. } = make_plan(model, &opts)?;
    Ok(build_file(model, &plans, &values, None, &opts)?.bytes)
}

/// The tensor names and shapes of a decoder LLM, as the Hugging Face checkpoints spell them:
/// per layer q/k/v projections (with biases in the Qwen2 family), an output projection, a
/// SwiGLU MLP and two RMSNorm weights; a token embedding and a final norm; the output head
/// tied to the embedding (Qwen2: no `lm_head.weight`) or its own `lm_head.weight` (Llama, as
/// TinyLlama).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LlmLayout {
    pub family: Family,
    pub layers: usize,
    pub hidden: usize,
    pub intermediate: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub vocab: usize,
    pub rope_theta: f64,
    pub rms_norm_eps: f64,
    pub max_positions: usize,
}

/// Largest of each dimension [`LlmLayout::validate`] accepts (far above any published model;
/// keeps every product of two dimensions far from overflow).
pub const MAX_LLM_DIM: usize = 1 << 20;

/// Standard deviation of the generated weight matrices (the usual initializer's 0.02).
pub const LLM_WEIGHT_STD: f64 = 0.02;

/// Outlier input channels per weight matrix by default, at most (fewer on matrices under 32
/// columns per outlier).
pub const LLM_OUTLIER_COLUMNS: usize = 4;

/// Range of the factor an outlier input channel is multiplied by, by default.
pub const LLM_OUTLIER_FACTOR: (f64, f64) = (10.0, 50.0);

/// How [`write_llm`] draws the values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LlmValues {
    pub seed: u64,
    /// Outlier input channels per weight matrix (at most one per 32 columns).
    pub outlier_columns: usize,
    /// The factor of each outlier channel is uniform in this range.
    pub outlier_factor: (f64, f64),
}

impl Default for LlmValues {
    fn default() -> Self {
        LlmValues { seed: 0, outlier_columns: LLM_OUTLIER_COLUMNS, outlier_factor: LLM_OUTLIER_FACTOR }
    }
}

impl LlmValues {
    /// Checks the outlier settings: a finite, ordered, positive factor range.
    pub fn validate(&self) -> Result<()> {
        let (lo, hi) = self.outlier_factor;
        if !(lo.is_finite() && hi.is_finite() && lo > 0.0 && lo <= hi && hi <= 1e4) {
            return Err(Error::usage(
                "--outlier-factor",
                format!("{lo},{hi} is not a range 0 < LO <= HI <= 10000"),
            ));
        }
        Ok(())
    }
}

impl LlmLayout {
    /// Qwen2-0.5B (494 M parameters; 988 MB in f16).
    pub const QWEN2_0_5B: LlmLayout = LlmLayout {
        family: Family::Qwen2,
        layers: 24,
        hidden: 896,
        intermediate: 4864,
        heads: 14,
        kv_heads: 2,
        vocab: 151_936,
        rope_theta: 1_000_000.0,
        rms_norm_eps: 1e-6,
        max_positions: 131_072,
    };

    /// Qwen2-1.5B (1.54 G parameters; 3.09 GB in f16).
    pub const QWEN2_1_5B: LlmLayout = LlmLayout {
        family: Family::Qwen2,
        layers: 28,
        hidden: 1536,
        intermediate: 8960,
        heads: 12,
        kv_heads: 2,
        vocab: 151_936,
        rope_theta: 1_000_000.0,
        rms_norm_eps: 1e-6,
        max_positions: 131_072,
    };

    /// TinyLlama-1.1B (1.10 G parameters; 2.20 GB in f16): the Llama layout without scaled
    /// rotary embeddings, an untied head.
    pub const TINYLLAMA_1_1B: LlmLayout = LlmLayout {
        family: Family::Llama,
        layers: 22,
        hidden: 2048,
        intermediate: 5632,
        heads: 32,
        kv_heads: 4,
        vocab: 32_000,
        rope_theta: 10_000.0,
        rms_norm_eps: 1e-5,
        max_positions: 2048,
    };

    /// The named layouts, as `--layout` spells them.
    pub const NAMED: [(&'static str, LlmLayout); 3] = [
        ("qwen2-0.5b", Self::QWEN2_0_5B),
        ("qwen2-1.5b", Self::QWEN2_1_5B),
        ("tinyllama-1.1b", Self::TINYLLAMA_1_1B),
    ];

    /// The layout called `name` (see [`Self::NAMED`]).
    pub fn named(name: &str) -> Option<LlmLayout> {
        Self::NAMED.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, l)| *l)
    }

    /// A small layout for tests: `layers` layers of width `hidden`, an MLP twice as wide, heads
    /// of 32 (at least one; two key/value heads where the heads split evenly), `vocab` tokens.
    pub fn small(layers: usize, hidden: usize, vocab: usize) -> LlmLayout {
        let heads = (hidden / 32).max(1);
        let kv_heads = if heads.is_multiple_of(2) { 2 } else { 1 };
        LlmLayout {
            family: Family::Qwen2,
            layers,
            hidden,
            intermediate: 2 * hidden,
            heads,
            kv_heads,
            vocab,
            rope_theta: 10_000.0,
            rms_norm_eps: 1e-6,
            max_positions: 4096,
        }
    }

    /// Values per attention head.
    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads.max(1)
    }

    /// Checks the dimensions: all positive and at most [`MAX_LLM_DIM`], heads dividing the
    /// width into an even head size (rotary embeddings), key/value heads dividing the heads.
    pub fn validate(&self) -> Result<()> {
        let dims = [
            ("--layers", self.layers),
            ("--hidden", self.hidden),
            ("--intermediate", self.intermediate),
            ("--heads", self.heads),
            ("--kv-heads", self.kv_heads),
            ("--vocab", self.vocab),
            ("max_positions", self.max_positions),
        ];
        for (flag, d) in dims {
            if d == 0 || d > MAX_LLM_DIM {
                return Err(Error::usage(flag, format!("{d} is not in 1..={MAX_LLM_DIM}")));
            }
        }
        if !self.hidden.is_multiple_of(self.heads) || !self.head_dim().is_multiple_of(2) {
            return Err(Error::usage(
                "--heads",
                format!("{} heads must divide the width {} into an even head size", self.heads, self.hidden),
            ));
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return Err(Error::usage(
                "--kv-heads",
                format!("{} key/value heads must divide the {} heads", self.kv_heads, self.heads),
            ));
        }
        let positive = |x: f64| x.is_finite() && x > 0.0;
        if !positive(self.rope_theta) || !positive(self.rms_norm_eps) {
            return Err(Error::usage("config", "rope_theta and rms_norm_eps must be positive numbers"));
        }
        Ok(())
    }

    /// Every tensor, sorted by name (the order of the data in the written file): the forward
    /// pass's table ([`crate::compress::decoder::Config::shapes`]) of this layout's own
    /// `config.json`, and Llama's untied `lm_head.weight`.
    pub fn tensors(&self) -> Vec<LlmTensor> {
        let config: crate::compress::decoder::Config =
            serde_json::from_str(&self.config_json(DType::F16)).expect("config_json writes a config");
        let mut shapes = config.shapes();
        if self.family == Family::Llama {
            shapes.push(("lm_head.weight".into(), vec![self.vocab, self.hidden]));
        }
        let mut out: Vec<LlmTensor> = shapes
            .into_iter()
            .map(|(name, shape)| {
                let kind = match (shape.len(), name.ends_with(".bias")) {
                    (1, true) => LlmKind::Bias,
                    (1, false) => LlmKind::Norm,
                    _ => LlmKind::Weight,
                };
                LlmTensor::new(name, shape, kind)
            })
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    /// Parameters of all tensors.
    pub fn parameters(&self) -> u64 {
        self.tensors().iter().map(|t| t.shape.iter().map(|&d| d as u64).product::<u64>()).sum()
    }

    /// The `config.json` Hugging Face writes beside the weights: the fields candle-transformers'
    /// `qwen2::Config` (or `llama::LlamaConfig`) reads, and the architecture's name; `dtype` as
    /// `torch_dtype`.
    pub fn config_json(&self, dtype: DType) -> String {
        let torch_dtype = match dtype {
            DType::Bf16 => "bfloat16",
            DType::F32 => "float32",
            _ => "float16",
        };
        let mut config = serde_json::json!({
            "vocab_size": self.vocab,
            "hidden_size": self.hidden,
            "intermediate_size": self.intermediate,
            "num_hidden_layers": self.layers,
            "num_attention_heads": self.heads,
            "num_key_value_heads": self.kv_heads,
            "max_position_embeddings": self.max_positions,
            "rope_theta": self.rope_theta,
            "rms_norm_eps": self.rms_norm_eps,
            "hidden_act": "silu",
            "torch_dtype": torch_dtype,
        });
        let family = match self.family {
            Family::Llama => serde_json::json!({
                "architectures": ["LlamaForCausalLM"],
                "model_type": "llama",
                "tie_word_embeddings": false,
                "attention_bias": false,
            }),
            Family::Qwen2 => serde_json::json!({
                "architectures": ["Qwen2ForCausalLM"],
                "model_type": "qwen2",
                "sliding_window": self.max_positions,
                "max_window_layers": self.layers,
                "use_sliding_window": false,
                "tie_word_embeddings": true,
            }),
        };
        if let (Some(all), serde_json::Value::Object(own)) = (config.as_object_mut(), family) {
            all.extend(own);
        }
        serde_json::to_string_pretty(&config).expect("a JSON value serializes")
    }
}

/// The architecture family of an [`LlmLayout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Qwen2: q/k/v biases, the head tied to the embedding.
    Qwen2,
    /// Llama: no biases, its own head.
    Llama,
}

/// What a generated tensor holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LlmKind {
    /// A weight matrix `[out, in]` (or the embedding `[vocab, hidden]`): N(0, 0.02), a few
    /// input channels (columns) multiplied by 10–50 (by default, [`LlmValues`]).
    Weight,
    /// A bias: N(0, 0.01).
    Bias,
    /// An RMSNorm weight: 1 + N(0, 0.05).
    Norm,
}

/// One tensor of an [`LlmLayout`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LlmTensor {
    pub name: String,
    pub shape: Vec<usize>,
    pub kind: LlmKind,
}

impl LlmTensor {
    fn new(name: String, shape: Vec<usize>, kind: LlmKind) -> Self {
        LlmTensor { name, shape, kind }
    }

    fn numel(&self) -> u64 {
        self.shape.iter().map(|&d| d as u64).product()
    }

    /// The outlier input channels of a weight matrix and their factors, from `rng`: up to
    /// `values.outlier_columns` distinct columns, one per 32 columns at most.
    fn outliers(&self, values: &LlmValues, rng: &mut Rng) -> Vec<(usize, f32)> {
        let cols = *self.shape.last().unwrap_or(&0);
        if self.kind != LlmKind::Weight || self.shape.len() != 2 {
            return Vec::new();
        }
        let mut out: Vec<(usize, f32)> = Vec::new();
        while out.len() < values.outlier_columns.min(cols / 32) {
            let c = rng.below(cols);
            let (lo, hi) = values.outlier_factor;
            let f = (lo + (hi - lo) * rng.uniform()) as f32;
            if out.iter().all(|&(k, _)| k != c) {
                out.push((c, f));
            }
        }
        out
    }

    /// Writes the tensor's values as little-endian `dtype`, one row at a time, from a generator
    /// seeded by `values.seed` and the tensor's name (so a tensor's values do not depend on the
    /// others).
    fn write_values(
        &self,
        dtype: DType,
        values: &LlmValues,
        out: &mut impl std::io::Write,
    ) -> std::io::Result<()> {
        let name_hash = self
            .name
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3));
        let mut rng = Rng::new(values.seed ^ name_hash);
        let outliers = self.outliers(values, &mut rng);
        let cols = *self.shape.last().unwrap_or(&1);
        let rows = (self.numel() / cols.max(1) as u64) as usize;
        let (mean, std) = match self.kind {
            LlmKind::Weight => (0.0, LLM_WEIGHT_STD),
            LlmKind::Bias => (0.0, 0.01),
            LlmKind::Norm => (1.0, 0.05),
        };
        let mut normal = Normal::default();
        let mut row = vec![0f32; cols];
        let mut bytes = Vec::with_capacity(cols * dtype.size());
        for _ in 0..rows {
            for v in row.iter_mut() {
                *v = (mean + std * normal.sample(&mut rng)) as f32;
            }
            for &(c, f) in &outliers {
                row[c] *= f;
            }
            bytes.clear();
            match dtype {
                DType::F16 => bytes.extend(row.iter().flat_map(|&v| half::f16::from_f32(v).to_le_bytes())),
                DType::Bf16 => bytes.extend(row.iter().flat_map(|&v| half::bf16::from_f32(v).to_le_bytes())),
                _ => bytes.extend(row.iter().flat_map(|&v| v.to_le_bytes())),
            }
            out.write_all(&bytes)?;
        }
        Ok(())
    }
}

/// Standard normal samples by the Box–Muller transform, both of each pair used.
#[derive(Default)]
struct Normal {
    spare: Option<f64>,
}

impl Normal {
    fn sample(&mut self, rng: &mut Rng) -> f64 {
        if let Some(z) = self.spare.take() {
            return z;
        }
        let (u, v) = (1.0 - rng.uniform(), rng.uniform());
        let r = (-2.0 * u.ln()).sqrt();
        let (s, c) = (std::f64::consts::TAU * v).sin_cos();
        self.spare = Some(r * s);
        r * c
    }
}

/// What [`write_llm`] wrote.
#[derive(Debug, Clone, PartialEq)]
pub struct LlmFiles {
    /// `DIR/model.safetensors`.
    pub model: std::path::PathBuf,
    /// `DIR/config.json`.
    pub config: std::path::PathBuf,
    /// Bytes of the safetensors file.
    pub bytes: u64,
    pub parameters: u64,
}

/// Writes `dir/model.safetensors`, the tensors of `layout` as `dtype` (f16, bf16 or f32) with
/// values drawn as `values` says (see [`LlmKind`]; same arguments, same bytes), and `dir/config.json`
/// ([`LlmLayout::config_json`]). Streaming: the header first (every offset follows from the
/// shapes), then each tensor one row at a time, so memory stays at one row whatever the size.
/// The file is written beside its name and renamed into place when complete.
pub fn write_llm(
    layout: &LlmLayout,
    dtype: DType,
    values: &LlmValues,
    dir: &std::path::Path,
) -> Result<LlmFiles> {
    use std::io::Write;
    layout.validate()?;
    values.validate()?;
    if !matches!(dtype, DType::F16 | DType::Bf16 | DType::F32) {
        return Err(Error::usage("--dtype", format!("{dtype:?} is not f16, bf16 or f32")));
    }
    let tensors = layout.tensors();
    let st_dtype = crate::ingest::safetensors::to_safetensors(dtype);
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({ "format": "pt" }));
    let mut offset = 0u64;
    for t in &tensors {
        let end = offset + t.numel() * dtype.size() as u64;
        header.insert(
            t.name.clone(),
            serde_json::json!({ "dtype": format!("{st_dtype:?}"), "shape": t.shape, "data_offsets": [offset, end] }),
        );
        offset = end;
    }
    let mut json = serde_json::to_vec(&serde_json::Value::Object(header)).expect("a JSON value serializes");
    // Padded with spaces to a multiple of 8, as the safetensors writer does, so the data is aligned.
    json.resize(json.len().next_multiple_of(8), b' ');
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, "creating folder", e))?;
    let (model, config) = (dir.join("model.safetensors"), dir.join("config.json"));
    let tmp = dir.join(format!(".model.safetensors.tmp-{}", std::process::id()));
    let _guard = crate::format::output::TempGuard::register(&tmp);
    let result = (|| {
        let file = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, "creating", e))?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, file);
        let io = |e| Error::io(&tmp, "writing", e);
        w.write_all(&(json.len() as u64).to_le_bytes()).map_err(io)?;
        w.write_all(&json).map_err(io)?;
        for t in &tensors {
            t.write_values(dtype, values, &mut w).map_err(io)?;
        }
        let file = w.into_inner().map_err(|e| io(e.into_error()))?;
        file.sync_all().map_err(|e| Error::io(&tmp, "flushing", e))?;
        std::fs::rename(&tmp, &model).map_err(|e| Error::io(&model, "renaming into place", e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result?;
    crate::format::write_atomic(&config, layout.config_json(dtype).as_bytes())?;
    Ok(LlmFiles { model, config, bytes: 8 + json.len() as u64 + offset, parameters: layout.parameters() })
}

/// Writes `sequences` token-id sequences of `len` tokens, uniform over `vocab` (int64 `.npy`,
/// `[sequences, len]`, seed `seed`): calibration inputs for a generated model, whose random
/// weights give no text more meaning than random ids.
pub fn write_tokens(
    path: &std::path::Path,
    sequences: usize,
    len: usize,
    vocab: usize,
    seed: u64,
) -> Result<()> {
    if sequences == 0 || len == 0 || vocab == 0 {
        return Err(Error::usage(
            "--tokens",
            "sequences, their length and the vocabulary must be at least 1",
        ));
    }
    let mut rng = Rng::new(seed ^ 0x746f_6b65_6e73); // "tokens"
    let ids: Vec<i64> = (0..sequences * len).map(|_| rng.below(vocab) as i64).collect();
    crate::data::npy::write_i64(path, &ids, &[sequences, len])
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
    #[test]
    fn qwen2_layouts_have_the_published_parameter_counts() {
        assert_eq!(LlmLayout::QWEN2_0_5B.parameters(), 494_032_768);
        assert_eq!(LlmLayout::QWEN2_1_5B.parameters(), 1_543_714_304);
        let names: Vec<String> = LlmLayout::QWEN2_0_5B.tensors().into_iter().map(|t| t.name).collect();
        assert_eq!(names.len(), 24 * 12 + 2);
        for n in ["model.embed_tokens.weight", "model.norm.weight", "model.layers.23.self_attn.k_proj.bias"] {
            assert!(names.iter().any(|x| x == n), "{n}");
        }
        assert!(!names.iter().any(|n| n.starts_with("lm_head")), "tied embeddings: no head");
        let k = LlmLayout::QWEN2_0_5B
            .tensors()
            .into_iter()
            .find(|t| t.name.ends_with("0.self_attn.k_proj.weight"));
        assert_eq!(k.unwrap().shape, vec![128, 896]);
    }

    #[test]
    fn bad_llm_layouts_are_usage_errors() {
        let ok = LlmLayout::small(2, 128, 1000);
        ok.validate().unwrap();
        for (bad, flag) in [
            (LlmLayout { layers: 0, ..ok }, "--layers"),
            (LlmLayout { heads: 3, ..ok }, "--heads"),
            (LlmLayout { kv_heads: 3, ..ok }, "--kv-heads"),
            (LlmLayout { vocab: MAX_LLM_DIM + 1, ..ok }, "--vocab"),
            (LlmLayout { hidden: 96, heads: 32, kv_heads: 1, ..ok }, "--heads"), // odd head size
        ] {
            match bad.validate() {
                Err(Error::Usage { option, .. }) => assert_eq!(option, flag),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        let dir = tempfile::tempdir().unwrap();
        assert!(write_llm(&ok, DType::I8, &LlmValues::default(), dir.path()).is_err());
        for f in [(0.0, 1.0), (5.0, 2.0), (1.0, f64::NAN)] {
            let v = LlmValues { outlier_factor: f, ..Default::default() };
            assert!(matches!(write_llm(&ok, DType::F16, &v, dir.path()), Err(Error::Usage { .. })), "{f:?}");
        }
    }

    #[test]
    fn a_small_llm_is_valid_safetensors_with_the_stated_statistics() {
        let dir = tempfile::tempdir().unwrap();
        let layout = LlmLayout::small(2, 128, 1000);
        let five = LlmValues { seed: 5, ..Default::default() };
        let files = write_llm(&layout, DType::F16, &five, dir.path()).unwrap();
        let bytes = std::fs::read(&files.model).unwrap();
        assert_eq!(bytes.len() as u64, files.bytes);
        assert_eq!(u64::from_le_bytes(bytes[..8].try_into().unwrap()) % 8, 0);
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let mut names: Vec<&str> = st.names().into_iter().collect();
        names.sort();
        let want = layout.tensors();
        assert_eq!(names, want.iter().map(|t| t.name.as_str()).collect::<Vec<_>>());
        for t in &want {
            let view = st.tensor(&t.name).unwrap();
            assert_eq!((view.dtype(), view.shape()), (safetensors::Dtype::F16, t.shape.as_slice()));
            let v = crate::format::codec::to_f32(DType::F16, view.data()).unwrap();
            let mean = v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64;
            match t.kind {
                LlmKind::Norm => assert!((mean - 1.0).abs() < 0.02, "{}: mean {mean}", t.name),
                LlmKind::Bias => assert!(v.iter().all(|x| x.abs() < 0.07), "{}", t.name),
                LlmKind::Weight => {
                    // Columns far above the rest (×10–50) hold the outliers: 4 per matrix here.
                    let cols = t.shape[1];
                    let col_rms: Vec<f64> = (0..cols)
                        .map(|c| {
                            let s: f64 = v.iter().skip(c).step_by(cols).map(|&x| (x as f64).powi(2)).sum();
                            (s / (v.len() / cols) as f64).sqrt()
                        })
                        .collect();
                    let outliers = col_rms.iter().filter(|&&r| r > 5.0 * LLM_WEIGHT_STD).count();
                    assert_eq!(outliers, LLM_OUTLIER_COLUMNS, "{}", t.name);
                    let mut plain: Vec<f64> =
                        col_rms.into_iter().filter(|&r| r < 5.0 * LLM_WEIGHT_STD).collect();
                    plain.sort_by(f64::total_cmp);
                    let median = plain[plain.len() / 2];
                    assert!(
                        (median - LLM_WEIGHT_STD).abs() < 0.004,
                        "{}: median column RMS {median}",
                        t.name
                    );
                }
            }
        }
        let config: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&files.config).unwrap()).unwrap();
        assert_eq!(config["num_key_value_heads"], 2);
        assert_eq!(config["tie_word_embeddings"], true);
        // Same seed, same bytes; another seed, other values.
        let again = tempfile::tempdir().unwrap();
        write_llm(&layout, DType::F16, &five, again.path()).unwrap();
        assert_eq!(std::fs::read(again.path().join("model.safetensors")).unwrap(), bytes);
        write_llm(&layout, DType::F16, &LlmValues { seed: 6, ..five }, again.path()).unwrap();
        assert_ne!(std::fs::read(again.path().join("model.safetensors")).unwrap(), bytes);
        assert!(std::fs::read_dir(again.path()).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .contains("tmp")));
    }
}
