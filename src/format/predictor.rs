//! The predictor's description (spec section 5.2): architecture, layer dimensions, parameter
//! count and flat parameter layout, embedding frequencies. The candle forward
//! ([`crate::predictor`]), the gemm trainer and the CUDA path all take their shapes from here.

use super::Embedding;
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
}
