//! The predictor's description (spec section 5.2): architecture, layer dimensions, parameter
//! count and flat parameter layout, embedding frequencies. The candle forward
//! ([`crate::predictor`]), the gemm trainer and the CUDA path all take their shapes from here.

use super::codec::{from_f32, to_f32};
use super::quant::{self, ScaleRule};
use super::{DType, Embedding, WeightDtype};
use std::ops::Range;

/// The one architecture format 1 and 2 know: 5 linear layers, ReLU between them, 9 outputs.
pub const ARCH: &str = "mlp_relu";
/// Values predicted per coordinate: one 3×3 kernel.
pub const OUTPUTS: usize = 9;
/// Linear layers of the MLP.
pub const DEPTH: usize = 5;

/// Width of the embedding for `levels` levels: 3 coordinates × (sin, cos) × levels.
pub fn input_dim(levels: usize) -> usize {
    6 * levels
}

/// `(in, out)` of each linear layer.
pub fn layer_dims(hidden: usize, levels: usize) -> [(usize, usize); DEPTH] {
    let i = input_dim(levels);
    [(i, hidden), (hidden, hidden), (hidden, hidden), (hidden, hidden), (hidden, OUTPUTS)]
}

/// Number of parameters (weights and biases).
pub fn param_count(hidden: usize, levels: usize) -> usize {
    layer_dims(hidden, levels).iter().map(|(i, o)| i * o + o).sum()
}

/// Frequencies `π·base^k`, computed in f64 then rounded to f32.
pub fn frequencies(e: Embedding) -> Vec<f32> {
    (0..e.levels).map(|k| (std::f64::consts::PI * e.base.powi(k as i32)) as f32).collect()
}

/// Where each linear layer's parameters lie in the flat storage order: for each layer, its
/// weight `(in, out)` row-major, then its bias `(out)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ParamLayout {
    /// `(in, out)` of each layer.
    pub dims: [(usize, usize); DEPTH],
    /// Offset of each layer's weight; its bias follows it.
    pub offsets: [usize; DEPTH],
    /// Total number of parameters.
    pub len: usize,
}

impl ParamLayout {
    /// The layout of a predictor of width `hidden` over `levels` embedding levels.
    pub fn new(hidden: usize, levels: usize) -> Self {
        let dims = layer_dims(hidden, levels);
        let mut offsets = [0; DEPTH];
        let mut at = 0;
        for (l, (i, o)) in dims.iter().enumerate() {
            offsets[l] = at;
            at += i * o + o;
        }
        ParamLayout { dims, offsets, len: at }
    }

    /// The flat range of layer `l`'s weight.
    pub fn weight(&self, l: usize) -> Range<usize> {
        let (i, o) = self.dims[l];
        self.offsets[l]..self.offsets[l] + i * o
    }

    /// The flat range of layer `l`'s bias.
    pub fn bias(&self, l: usize) -> Range<usize> {
        let (i, o) = self.dims[l];
        let start = self.offsets[l] + i * o;
        start..start + o
    }
}

/// Bytes of the `predictor` section (spec section 4.2): `P · size` for a float dtype; for
/// `int8`/`int4`, per layer `(in, out)`: `out` f16 scales, the `in·out` packed values (a whole
/// number of bytes), `out` f16 biases.
pub fn stored_len(dtype: WeightDtype, hidden: usize, levels: usize) -> u64 {
    match (dtype.float(), dtype.bits()) {
        (Some(d), _) => param_count(hidden, levels) as u64 * d.size() as u64,
        (None, Some(bits)) => layer_dims(hidden, levels)
            .iter()
            .map(|&(i, o)| 4 * o as u64 + quant::packed_len((i * o) as u64, bits).expect("fits u64"))
            .sum(),
        (None, None) => unreachable!("a weight dtype is float or quantized"),
    }
}

/// Stores flat f32 parameters (storage order, [`ParamLayout`]) as `dtype`. Quantized dtypes
/// store each layer's weight transposed, `(out, in)` row-major, so that the `in` weights of
/// one output unit are one contiguous group with one scale (per-output-unit quantization).
pub fn encode_params(
    dtype: WeightDtype,
    hidden: usize,
    levels: usize,
    flat: &[f32],
) -> Result<Vec<u8>, String> {
    encode_params_with(dtype, hidden, levels, flat, ScaleRule::default())
}

/// [`encode_params`] with the scale rule `rule` (to measure the rules).
pub fn encode_params_with(
    dtype: WeightDtype,
    hidden: usize,
    levels: usize,
    flat: &[f32],
    rule: ScaleRule,
) -> Result<Vec<u8>, String> {
    let layout = ParamLayout::new(hidden, levels);
    if flat.len() != layout.len {
        return Err(format!("{} parameters, the predictor has {}", flat.len(), layout.len));
    }
    let Some(bits) = dtype.bits() else {
        return Ok(from_f32(dtype.float().expect("float"), flat).expect("float dtype"));
    };
    let mut out = Vec::with_capacity(stored_len(dtype, hidden, levels) as usize);
    for l in 0..DEPTH {
        let (i, o) = layout.dims[l];
        let w = &flat[layout.weight(l)];
        let transposed: Vec<f32> = (0..o).flat_map(|c| (0..i).map(move |r| w[r * o + c])).collect();
        let q = quant::quantize(&transposed, i, bits, rule).map_err(|e| format!("layer {l}: {e}"))?;
        out.extend(q.encode());
        out.extend(from_f32(DType::F16, &flat[layout.bias(l)]).expect("f16"));
    }
    Ok(out)
}

/// Reads stored parameters back as flat f32 in storage order; checks the length and, for the
/// quantized dtypes, the codes and that every scale is finite (spec check 30 bounds them).
pub fn decode_params(
    dtype: WeightDtype,
    hidden: usize,
    levels: usize,
    bytes: &[u8],
) -> Result<Vec<f32>, String> {
    let need = stored_len(dtype, hidden, levels);
    if bytes.len() as u64 != need {
        return Err(format!("weights are {} bytes, {} needs {need}", bytes.len(), dtype.name()));
    }
    let Some(bits) = dtype.bits() else {
        return Ok(to_f32(dtype.float().expect("float"), bytes).expect("float dtype"));
    };
    let layout = ParamLayout::new(hidden, levels);
    let mut flat = vec![0f32; layout.len];
    let mut at = 0;
    for l in 0..DEPTH {
        let (i, o) = layout.dims[l];
        let len = quant::encoded_len((i * o) as u64, i as u64, bits).expect("fits") as usize;
        let q = quant::decode(&bytes[at..at + len], i * o, i, bits, f32::MAX)
            .map_err(|e| format!("layer {l}: {e}"))?;
        at += len;
        let deq = q.dequantize();
        let w = &mut flat[layout.weight(l)];
        for c in 0..o {
            for r in 0..i {
                w[r * o + c] = deq[c * i + r];
            }
        }
        let b = to_f32(DType::F16, &bytes[at..at + 2 * o]).expect("f16");
        at += 2 * o;
        flat[layout.bias(l)].copy_from_slice(&b);
    }
    Ok(flat)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_covers_the_parameters_in_order() {
        let l = ParamLayout::new(7, 3);
        assert_eq!(l.len, param_count(7, 3));
        let mut at = 0;
        for k in 0..DEPTH {
            assert_eq!(l.weight(k).start, at);
            assert_eq!(l.bias(k).start, l.weight(k).end);
            at = l.bias(k).end;
        }
        assert_eq!(at, l.len);
    }

    #[test]
    fn quantized_params_round_trip_per_output_unit() {
        let (h, k) = (5, 2);
        let flat: Vec<f32> = (0..param_count(h, k)).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect();
        for dtype in [WeightDtype::Int8, WeightDtype::Int4] {
            let bytes = encode_params(dtype, h, k, &flat).unwrap();
            assert_eq!(bytes.len() as u64, stored_len(dtype, h, k));
            let back = decode_params(dtype, h, k, &bytes).unwrap();
            let layout = ParamLayout::new(h, k);
            let bits = dtype.bits().unwrap();
            for l in 0..DEPTH {
                let (i, o) = layout.dims[l];
                let (w, bw) = (&flat[layout.weight(l)], &back[layout.weight(l)]);
                for c in 0..o {
                    // Output unit c (column c of the (in, out) weight) is one quantization group.
                    let column: Vec<f32> = (0..i).map(|r| w[r * o + c]).collect();
                    let expect = quant::fake_quantize(&column, i, bits, ScaleRule::default()).unwrap();
                    assert_eq!((0..i).map(|r| bw[r * o + c]).collect::<Vec<_>>(), expect, "{dtype:?}");
                }
                for (a, b) in flat[layout.bias(l)].iter().zip(&back[layout.bias(l)]) {
                    assert!((a - b).abs() <= a.abs() / 1024.0);
                }
            }
            assert!(decode_params(dtype, h, k, &bytes[1..]).unwrap_err().contains("bytes"));
        }
    }
}
