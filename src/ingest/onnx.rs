//! ONNX: tensors come from graph initializers and `Constant` nodes (their `value` attribute),
//! in that order; the rest of the protobuf is kept as the skeleton.

use super::{Role, SourceModel, SourceTensor};
use crate::error::{Error, Result};
use crate::format::{DType, SourceKind};
use prost::Message;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use tract_onnx::pb::{GraphProto, ModelProto, TensorProto};

/// `data_location` value for external data.
const EXTERNAL: i32 = 1;

/// The tensors nerp extracts from a graph, in a fixed order: initializers, then the `value`
/// tensor of each `Constant` node. Each comes with its name (for a Constant, its output).
/// Ingest and rebuild both walk this order, so the i-th stored tensor patches the i-th slot.
pub fn tensor_slots(graph: &mut GraphProto) -> Vec<(String, &mut TensorProto)> {
    let mut slots: Vec<(String, &mut TensorProto)> =
        graph.initializer.iter_mut().map(|t| (t.name.clone(), t)).collect();
    for node in graph.node.iter_mut().filter(|n| n.op_type == "Constant" && is_default_domain(&n.domain)) {
        let name = node.output.first().cloned().unwrap_or_default();
        if let Some(t) = node.attribute.iter_mut().find(|a| a.name == "value").and_then(|a| a.t.as_mut()) {
            slots.push((name, t));
        }
    }
    slots.retain(|(_, t)| dtype_of(t.data_type).is_some());
    slots
}

/// The role of each value name from the nodes of the main graph that consume it (a shape role
/// wins over a kernel role, which wins over a matrix role).
fn roles(graph: &GraphProto) -> HashMap<String, Role> {
    let rank = |r: Role| match r {
        Role::Shape => 3,
        Role::ConvKernel => 2,
        Role::Matrix => 1,
        Role::Other => 0,
    };
    let mut roles = HashMap::new();
    for n in graph.node.iter().filter(|n| is_default_domain(&n.domain)) {
        let (role, inputs): (Role, &[usize]) = match n.op_type.as_str() {
            "Conv" | "ConvTranspose" => (Role::ConvKernel, &[1]),
            "Gemm" | "MatMul" => (Role::Matrix, &[0, 1]),
            "LSTM" | "GRU" | "RNN" => (Role::Matrix, &[1, 2]),
            "Gather" => (Role::Matrix, &[0]),
            "Resize" => (Role::Shape, &[1, 2, 3]),
            "Upsample" => (Role::Shape, &[1]),
            "Range" => (Role::Shape, &[0, 1, 2]),
            _ => continue,
        };
        for name in inputs.iter().filter_map(|&i| n.input.get(i)) {
            let r = roles.entry(name.clone()).or_insert(role);
            if rank(role) > rank(*r) {
                *r = role;
            }
        }
    }
    roles
}

fn is_default_domain(d: &str) -> bool {
    d.is_empty() || d == "ai.onnx"
}

/// Maps an ONNX data type code to a stored dtype (`None`: left in the skeleton as is).
pub fn dtype_of(code: i32) -> Option<DType> {
    Some(match code {
        1 => DType::F32,
        2 => DType::U8,
        3 => DType::I8,
        4 => DType::U16,
        5 => DType::I16,
        6 => DType::I32,
        7 => DType::I64,
        9 => DType::Bool,
        10 => DType::F16,
        11 => DType::F64,
        12 => DType::U32,
        13 => DType::U64,
        16 => DType::Bf16,
        _ => return None,
    })
}

/// Decodes an ONNX model protobuf.
pub fn decode_model(bytes: &[u8]) -> std::result::Result<ModelProto, prost::DecodeError> {
    ModelProto::decode(bytes)
}

/// Reads an ONNX file; external data files are resolved relative to its directory.
pub fn load(path: &Path, bytes: &[u8]) -> Result<SourceModel> {
    let err = |what: String| Error::Ingest { path: path.to_path_buf(), what };
    let mut model = decode_model(bytes).map_err(|e| err(format!("not a valid ONNX protobuf: {e}")))?;
    let graph = model.graph.as_mut().ok_or_else(|| err("ONNX model has no graph".into()))?;
    let roles = roles(graph);
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tensors = Vec::new();
    let mut names = HashSet::new();
    for (name, t) in tensor_slots(graph) {
        if name.is_empty() {
            return Err(err(
                "an initializer or Constant node has no name; nerp needs every tensor named".into()
            ));
        }
        if !names.insert(name.clone()) {
            return Err(err(format!("tensor name {name:?} is used twice; nerp needs unique names")));
        }
        let dtype = dtype_of(t.data_type).expect("slots have known dtypes");
        let shape = t
            .dims
            .iter()
            .map(|&d| u64::try_from(d).map_err(|_| err(format!("tensor {name}: negative dimension {d}"))))
            .collect::<Result<Vec<u64>>>()?;
        let data = take_data(t, dtype, &shape, dir).map_err(|e| err(format!("tensor {name}: {e}")))?;
        let role = roles.get(&name).copied().unwrap_or(Role::Other);
        tensors.push(SourceTensor { name, dtype, shape, data, role });
    }
    let mut skeleton = Vec::with_capacity(model.encoded_len());
    model.encode(&mut skeleton).map_err(|e| err(format!("re-encoding the graph: {e}")))?;
    Ok(SourceModel {
        kind: SourceKind::Onnx,
        file_bytes: bytes.len() as u64,
        tensors,
        skeleton: Some(skeleton),
        metadata: BTreeMap::new(),
    })
}

/// Moves a tensor's values out of the proto as little-endian bytes, leaving only its
/// name, type and dims.
fn take_data(
    t: &mut TensorProto,
    dtype: DType,
    shape: &[u64],
    dir: &Path,
) -> std::result::Result<Vec<u8>, String> {
    let numel = shape.iter().try_fold(1u64, |a, &d| a.checked_mul(d)).ok_or("element count overflows")?;
    let need = numel.checked_mul(dtype.size() as u64).ok_or("byte size overflows")?;
    let data = if t.data_location == Some(EXTERNAL) {
        read_external(t, dir, need)?
    } else if !t.raw_data.is_empty() {
        std::mem::take(&mut t.raw_data)
    } else {
        typed_data(t, dtype)
    };
    if data.len() as u64 != need {
        return Err(format!("has {} bytes of data, its shape {shape:?} needs {need}", data.len()));
    }
    t.float_data.clear();
    t.int32_data.clear();
    t.int64_data.clear();
    t.double_data.clear();
    t.uint64_data.clear();
    t.external_data.clear();
    t.data_location = None;
    Ok(data)
}

/// The little-endian bytes of a tensor stored inside the proto (raw or typed fields).
pub fn embedded_data(t: &TensorProto, dtype: DType) -> Vec<u8> {
    if t.raw_data.is_empty() {
        typed_data(t, dtype)
    } else {
        t.raw_data.clone()
    }
}

fn typed_data(t: &TensorProto, dtype: DType) -> Vec<u8> {
    match dtype {
        DType::F32 => t.float_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::F64 => t.double_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::I64 => t.int64_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::U32 => t.uint64_data.iter().flat_map(|&v| (v as u32).to_le_bytes()).collect(),
        DType::U64 => t.uint64_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        DType::I32 => t.int32_data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        // Narrow types are stored one per int32 (bit pattern for f16/bf16).
        DType::I16 | DType::U16 | DType::F16 | DType::Bf16 => {
            t.int32_data.iter().flat_map(|&v| (v as u16).to_le_bytes()).collect()
        }
        DType::I8 | DType::U8 | DType::Bool => t.int32_data.iter().map(|&v| v as u8).collect(),
    }
}

fn read_external(t: &TensorProto, dir: &Path, need: u64) -> std::result::Result<Vec<u8>, String> {
    let get = |k: &str| t.external_data.iter().find(|e| e.key == k).map(|e| e.value.as_str());
    let location = get("location").ok_or("external data without a location")?;
    let rel = Path::new(location);
    if rel.is_absolute() || rel.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
        return Err(format!(
            "external data location {location:?} must be a relative path inside the model's folder \
             (no `..`, no absolute path)"
        ));
    }
    let offset: u64 = get("offset").map_or(Ok(0), |v| v.parse()).map_err(|_| "bad external data offset")?;
    let length: u64 =
        get("length").map_or(Ok(need), |v| v.parse()).map_err(|_| "bad external data length")?;
    if length != need {
        return Err(format!("external data length is {length} bytes, its shape and dtype need {need}"));
    }
    if need > crate::format::limits::MAX_DECODED_SECTION {
        return Err(format!(
            "needs {need} bytes, more than the {} a .nerp section can hold",
            crate::format::limits::MAX_DECODED_SECTION
        ));
    }
    crate::format::budget::current()
        .check(|| format!("external data {location:?}"), need)
        .map_err(|e| e.to_string())?;
    let file = open_external(dir, rel)?;
    let mut f = file.0;
    let len = file.1;
    let end = offset.checked_add(length).filter(|&e| e <= len).ok_or_else(|| {
        format!("external data [{offset}, +{length}) is outside {location:?} ({len} bytes)")
    })?;
    use std::io::{Read, Seek};
    f.seek(std::io::SeekFrom::Start(offset)).map_err(|e| format!("external data {location:?}: {e}"))?;
    let mut data = vec![0u8; (end - offset) as usize];
    f.read_exact(&mut data).map_err(|e| format!("external data {location:?}: {e}"))?;
    Ok(data)
}

/// Opens external data file `rel` of the model in `dir`: it must resolve (symlinks followed)
/// to a regular file inside `dir`. Opened without blocking, so a FIFO swapped in after the
/// check cannot hang the process, and checked again on the open descriptor.
fn open_external(dir: &Path, rel: &Path) -> std::result::Result<(std::fs::File, u64), String> {
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    let shown = rel.display();
    let base = dir.canonicalize().map_err(|e| format!("model folder {}: {e}", dir.display()))?;
    let path = dir
        .join(rel)
        .canonicalize()
        .map_err(|e| format!("external data file {shown} (next to the model): {e}"))?;
    if !path.starts_with(&base) {
        return Err(format!(
            "external data file {shown} resolves to {}, outside the model's folder {}",
            path.display(),
            base.display()
        ));
    }
    let regular = |m: std::io::Result<std::fs::Metadata>| match m {
        Ok(m) if m.is_file() => Ok(m.len()),
        Ok(_) => Err(format!("external data file {shown} is not a regular file (a FIFO, device or folder)")),
        Err(e) => Err(format!("external data file {shown}: {e}")),
    };
    regular(std::fs::metadata(&path))?;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&path)
        .map_err(|e| format!("external data file {shown}: {e}"))?;
    let len = regular(f.metadata())?;
    Ok((f, len))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_onnx::pb::NodeProto;

    fn node(op: &str, inputs: &[&str]) -> NodeProto {
        NodeProto {
            op_type: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn resize_scales_and_range_bounds_are_shapes_whatever_else_reads_them() {
        let graph = GraphProto {
            node: vec![
                node("Conv", &["x", "w", "b"]),
                node("Resize", &["y", "roi", "scales"]),
                node("Upsample", &["y", "up"]),
                node("Range", &["start", "limit", "delta"]),
                // A value both multiplied and used as a scale stays exact.
                node("MatMul", &["scales", "m"]),
            ],
            ..Default::default()
        };
        let r = roles(&graph);
        assert_eq!(r["w"], Role::ConvKernel);
        assert_eq!(r["m"], Role::Matrix);
        for name in ["roi", "scales", "up", "start", "limit", "delta"] {
            assert_eq!(r[name], Role::Shape, "{name}");
        }
        assert!(!r.contains_key("b"), "a bias has no role of its own");
    }
}
