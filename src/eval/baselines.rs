//! The simple alternatives to nerp, for the size–accuracy sweep: fp16 and bf16 weights, int8,
//! int4 and int3 per-channel symmetric post-training quantization, and lossless byte-grouped zstd. Each gives
//! the bytes its file would take and the tensors the model sees after loading (dequantized to
//! the source dtype), so accuracy is measured by the same patched-ONNX path as nerp's.

use crate::compress::{build_file, CompressOptions};
use crate::error::{Error, Result};
use crate::format::quant::{self, ScaleRule};
use crate::format::{codec, DType, SourceKind};
use crate::ingest::{self, SourceModel};
use crate::runtime::regen::WeightTensor;
use prost::Message;
use std::collections::HashMap;
use tract_onnx::pb::TensorProto;

/// One baseline applied to a model.
#[derive(Debug, Clone)]
pub struct Baseline {
    pub name: &'static str,
    /// Bytes of the file as it would be stored.
    pub bytes: u64,
    /// The model's tensors as loaded (source dtypes, in source order).
    pub weights: Vec<WeightTensor>,
}

/// The source model's tensors, unchanged.
pub fn original_weights(model: &SourceModel) -> Vec<WeightTensor> {
    model
        .tensors
        .iter()
        .map(|t| WeightTensor {
            name: t.name.clone(),
            dtype: t.dtype,
            shape: t.shape.clone(),
            data: t.data.clone(),
        })
        .collect()
}

/// Every f32 tensor stored as `half` (`F16` or `Bf16`) in the ONNX file, read back as f32.
pub fn half_weights(model: &SourceModel, half: DType) -> Result<Baseline> {
    let name = match half {
        DType::F16 => "fp16 weights",
        DType::Bf16 => "bf16 weights",
        d => {
            return Err(Error::Usage { option: "baseline".into(), what: format!("{d:?} is not a half type") })
        }
    };
    let mut weights = original_weights(model);
    let mut stored = HashMap::new();
    for w in weights.iter_mut().filter(|w| w.dtype == DType::F32) {
        let bytes = codec::from_f32(half, &w.to_f32().expect("f32")).expect("float");
        w.data = codec::from_f32(DType::F32, &codec::to_f32(half, &bytes).expect("float")).expect("float");
        stored.insert(w.name.clone(), (onnx_code(half), bytes));
    }
    let bytes = onnx_file_len(model, &stored, Vec::new())?;
    Ok(Baseline { name, bytes, weights })
}

/// Int-`bits` per-output-channel symmetric post-training quantization (through
/// [`quant`], the format's quantizer: one f16 scale per channel, values in ±(2^(bits−1) − 1),
/// scale rule `rule`) of the f32 weights of `Conv`, `Gemm` and `MatMul` nodes; the file holds
/// the values bit-packed plus one f16 scale per channel, everything else as in the source.
pub fn int_per_channel(model: &SourceModel, bits: u8, rule: ScaleRule) -> Result<Baseline> {
    let name = match (bits, rule) {
        (8, ScaleRule::MaxAbs) => "int8 per-channel PTQ",
        (8, ScaleRule::Mse) => "int8 per-channel PTQ (mse clip)",
        (4, ScaleRule::MaxAbs) => "int4 per-channel PTQ",
        (4, ScaleRule::Mse) => "int4 per-channel PTQ (mse clip)",
        (3, ScaleRule::MaxAbs) => "int3 per-channel PTQ",
        (3, ScaleRule::Mse) => "int3 per-channel PTQ (mse clip)",
        _ => return Err(Error::usage("baseline", format!("int{bits} is not a listed baseline (8, 4, 3)"))),
    };
    let axes = weight_axes(model)?;
    let mut weights = original_weights(model);
    let mut stored = HashMap::new();
    let mut scales = Vec::new();
    for w in weights.iter_mut().filter(|w| w.dtype == DType::F32) {
        let Some(&axis) = axes.get(&w.name) else { continue };
        let dims: Vec<usize> = w.shape.iter().map(|&d| d as usize).collect();
        let Some(&channels) = dims.get(axis) else { continue };
        let (outer, inner): (usize, usize) =
            (dims[..axis].iter().product(), dims[axis + 1..].iter().product());
        let values = w.to_f32().expect("f32");
        // Channel-major copy, so that each channel is one contiguous group.
        let at = |c: usize, j: usize| (j / inner * channels + c) * inner + j % inner;
        let per = outer * inner;
        let grouped: Vec<f32> = (0..channels)
            .flat_map(|c| (0..per).map(move |j| (c, j)))
            .map(|(c, j)| values[at(c, j)])
            .collect();
        let q = quant::quantize(&grouped, per.max(1), bits, rule)
            .map_err(|e| Error::Rebuild(format!("{}: {e}", w.name)))?;
        let deq = q.dequantize();
        let mut out = vec![0f32; values.len()];
        for c in 0..channels {
            for j in 0..per {
                out[at(c, j)] = deq[c * per + j];
            }
        }
        w.data = codec::from_f32(DType::F32, &out).expect("f32");
        stored.insert(w.name.clone(), (onnx_code(DType::I8), quant::pack(&q.values, bits)));
        scales.push(TensorProto {
            name: format!("{}_scale", w.name),
            dims: vec![channels as i64],
            data_type: onnx_code(DType::F16),
            raw_data: q.scales.iter().flat_map(|s| s.to_le_bytes()).collect(),
            ..Default::default()
        });
    }
    if scales.is_empty() {
        return Err(Error::Rebuild("the model has no f32 Conv/Gemm/MatMul weights to quantize".into()));
    }
    let bytes = onnx_file_len(model, &stored, scales)?;
    Ok(Baseline { name, bytes, weights })
}

/// [`int_per_channel`] with 8 bits and max-abs scales.
pub fn int8_per_channel(model: &SourceModel) -> Result<Baseline> {
    int_per_channel(model, 8, ScaleRule::MaxAbs)
}

/// Every tensor stored raw in a `.nerp` file (byte-grouped zstd at the format's level 19, the
/// skeleton zstd), with no predictor: lossless.
pub fn zstd_lossless(model: &SourceModel) -> Result<Baseline> {
    let bytes = build_file(model, &[], &[], None, &CompressOptions::default())?.bytes;
    Ok(Baseline {
        name: "zstd-19 byte-grouped (lossless)",
        bytes: bytes.len() as u64,
        weights: original_weights(model),
    })
}

fn onnx_code(d: DType) -> i32 {
    (0..=16).find(|&c| ingest::onnx::dtype_of(c) == Some(d)).expect("every stored dtype has an ONNX code")
}

/// Output-channel axis of each weight of a `Conv` (0), `Gemm` (0 with `transB`, else 1) or
/// `MatMul` (last) node, by tensor name.
fn weight_axes(model: &SourceModel) -> Result<HashMap<String, usize>> {
    let proto = skeleton(model)?;
    let graph = proto.graph.ok_or_else(|| Error::Rebuild("skeleton has no graph".into()))?;
    let mut axes = HashMap::new();
    for n in &graph.node {
        let Some(w) = n.input.get(1) else { continue };
        let rank = model.tensors.iter().find(|t| &t.name == w).map(|t| t.shape.len());
        let axis = match (n.op_type.as_str(), rank) {
            ("Conv", Some(_)) => 0,
            ("Gemm", Some(_)) => {
                let trans_b = n.attribute.iter().find(|a| a.name == "transB").is_some_and(|a| a.i != 0);
                usize::from(!trans_b)
            }
            ("MatMul", Some(r)) if r >= 1 => r - 1,
            _ => continue,
        };
        axes.insert(w.clone(), axis);
    }
    Ok(axes)
}

fn skeleton(model: &SourceModel) -> Result<tract_onnx::pb::ModelProto> {
    match (&model.kind, &model.skeleton) {
        (SourceKind::Onnx, Some(s)) => ingest::onnx::decode_model(s)
            .map_err(|e| Error::Rebuild(format!("skeleton is not a valid ONNX protobuf: {e}"))),
        _ => Err(Error::Rebuild("baselines are measured on ONNX models".into())),
    }
}

/// Length of the ONNX file with the tensors in `stored` replaced by (data type, raw bytes),
/// the others as in the source, and `extra` initializers appended. Counted as the source file's
/// length plus the change in encoded length, so encoding details of the source (which a
/// re-encoding may not reproduce byte for byte) count as stored.
fn onnx_file_len(
    model: &SourceModel,
    stored: &HashMap<String, (i32, Vec<u8>)>,
    extra: Vec<TensorProto>,
) -> Result<u64> {
    let mut proto = crate::runtime::patch_skeleton(
        model.skeleton.as_deref().ok_or_else(|| Error::Rebuild("no ONNX skeleton".into()))?,
        &original_weights(model),
    )?;
    let before = proto.encoded_len() as u64;
    let graph = proto.graph.as_mut().expect("patched model has a graph");
    for (name, slot) in ingest::onnx::tensor_slots(graph) {
        if let Some((code, bytes)) = stored.get(&name) {
            slot.data_type = *code;
            slot.raw_data = bytes.clone();
        }
    }
    graph.initializer.extend(extra);
    Ok((model.file_bytes + proto.encoded_len() as u64).saturating_sub(before))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resnet20() -> SourceModel {
        let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        ingest::load(&root.join("examples/models/resnet20_fashion_mnist.onnx")).unwrap()
    }

    #[test]
    fn sizes_order_as_expected_and_lossless_is_lossless() {
        let m = resnet20();
        let f32_len = crate::runtime::patch_skeleton(m.skeleton.as_ref().unwrap(), &original_weights(&m))
            .unwrap()
            .encoded_len() as u64;
        let (f16, bf16, int8, z) = (
            half_weights(&m, DType::F16).unwrap(),
            half_weights(&m, DType::Bf16).unwrap(),
            int8_per_channel(&m).unwrap(),
            zstd_lossless(&m).unwrap(),
        );
        // Re-encoding the unchanged model gives the source file's length up to encoding details.
        assert!(f32_len.abs_diff(m.file_bytes) < m.file_bytes / 1000, "{f32_len} vs {}", m.file_bytes);
        assert!(f16.bytes == bf16.bytes && f16.bytes < f32_len * 52 / 100, "{} of {f32_len}", f16.bytes);
        assert!(int8.bytes < f32_len * 27 / 100 && int8.bytes > f32_len / 5, "{} of {f32_len}", int8.bytes);
        assert!(z.bytes < f32_len);
        let file = crate::format::NerpFile::from_bytes(
            build_file(&m, &[], &[], None, &CompressOptions::default()).unwrap().bytes,
            "z.nerp",
        )
        .unwrap();
        assert_eq!(crate::runtime::regen::regenerate(&file, &crate::Device::Cpu).unwrap(), z.weights);
    }

    #[test]
    fn int8_error_is_within_half_a_step_per_channel() {
        let m = resnet20();
        let q = int8_per_channel(&m).unwrap();
        let conv = m
            .tensors
            .iter()
            .position(|t| t.role == crate::ingest::Role::ConvKernel && t.shape[1] > 1)
            .unwrap();
        let (orig, deq) = (m.tensors[conv].data.clone(), q.weights[conv].to_f32().unwrap());
        let orig = codec::to_f32(DType::F32, &orig).unwrap();
        let per = orig.len() / m.tensors[conv].shape[0] as usize;
        for (o, d) in orig.chunks(per).zip(deq.chunks(per)) {
            // The scale is the f16 at or above max|w|/127 (at most 2^-10 above it).
            let step = o.iter().fold(0f32, |a, v| a.max(v.abs())) / 127.0 * (1.0 + 1.0 / 1024.0);
            assert!(o.iter().zip(d).all(|(a, b)| (a - b).abs() <= step * 0.5 + 1e-7));
            assert!(d.iter().any(|v| v.abs() > 0.0));
        }
    }
}
