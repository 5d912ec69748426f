//! The candle executor: the predictor as candle tensors, on any candle device. Regeneration on
//! the CPU runs it, and distillation differentiates through it with candle's autograd.

use super::{decode_weights, frequencies, param_count, round_trip, ParamLayout, DEPTH};
use crate::error::Result;
use crate::format::{Embedding, PredictorSpec, WeightDtype};
use candle_core::{Device, Tensor};

/// Embeds coordinates `(N, 3)` into `(N, 6·levels)`: for each coordinate j,
/// `[sin(p_j·ω_0) … sin(p_j·ω_{K-1}), cos(p_j·ω_0) … cos(p_j·ω_{K-1})]`.
pub fn embed(coords: &Tensor, e: Embedding) -> Result<Tensor> {
    let n = coords.dim(0)?;
    let k = e.levels as usize;
    let freqs = Tensor::from_vec(frequencies(e), (1, 1, k), coords.device())?;
    let phase = coords.unsqueeze(2)?.broadcast_mul(&freqs)?; // (N, 3, K)
    let emb = Tensor::cat(&[phase.sin()?, phase.cos()?], 2)?; // (N, 3, 2K)
    Ok(emb.reshape((n, 6 * k))?)
}

/// One linear layer, `y = x·w + b` with `w` of shape `(in, out)`.
#[derive(Debug, Clone)]
pub struct Linear {
    pub w: Tensor,
    pub b: Tensor,
}

/// The predictor's architecture and weights.
#[derive(Debug, Clone)]
pub struct Predictor {
    pub hidden: usize,
    pub embedding: Embedding,
    pub layers: Vec<Linear>,
}

impl Predictor {
    /// Builds a predictor from flat f32 parameters in storage order (for each layer: `w` as
    /// `(in, out)` row-major, then `b`).
    pub fn from_flat(hidden: usize, embedding: Embedding, flat: &[f32], device: &Device) -> Result<Self> {
        let layout = ParamLayout::new(hidden, embedding.levels as usize);
        let need = layout.len;
        if flat.len() != need {
            return Err(crate::Error::Rebuild(format!(
                "predictor needs {need} parameters, got {}",
                flat.len()
            )));
        }
        let mut layers = Vec::with_capacity(DEPTH);
        for (l, &(i, o)) in layout.dims.iter().enumerate() {
            let w = Tensor::from_slice(&flat[layout.weight(l)], (i, o), device)?;
            let b = Tensor::from_slice(&flat[layout.bias(l)], o, device)?;
            layers.push(Linear { w, b });
        }
        Ok(Predictor { hidden, embedding, layers })
    }

    /// Flat f32 parameters in storage order.
    pub fn to_flat(&self) -> Result<Vec<f32>> {
        let mut out = Vec::with_capacity(param_count(self.hidden, self.embedding.levels as usize));
        for l in &self.layers {
            out.extend(l.w.flatten_all()?.to_vec1::<f32>()?);
            out.extend(l.b.to_vec1::<f32>()?);
        }
        Ok(out)
    }

    /// Decodes stored weights of `spec.dtype`.
    pub fn from_stored(spec: &PredictorSpec, bytes: &[u8], device: &Device) -> Result<Self> {
        let (h, k) = (spec.hidden as usize, spec.embedding.levels as usize);
        Self::from_flat(h, spec.embedding, &decode_weights(spec.dtype, h, k, bytes)?, device)
    }

    /// Forward pass over embedded coordinates `(N, input_dim)` → `(N, 9)`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut x = x.clone();
        for (i, l) in self.layers.iter().enumerate() {
            x = x.matmul(&l.w)?.broadcast_add(&l.b)?;
            if i + 1 < self.layers.len() {
                x = x.relu()?;
            }
        }
        Ok(x)
    }

    /// Embeds coordinates `(N, 3)` and runs the MLP.
    pub fn predict(&self, coords: &Tensor) -> Result<Tensor> {
        self.forward(&embed(coords, self.embedding)?)
    }

    /// The device the weights live on.
    pub fn device(&self) -> &Device {
        self.layers[0].w.device()
    }

    /// The weights stored as `dtype` and read back (what storing them does).
    pub fn rounded(&self, dtype: WeightDtype) -> Result<Self> {
        let (h, k) = (self.hidden, self.embedding.levels as usize);
        Self::from_flat(h, self.embedding, &round_trip(dtype, h, k, &self.to_flat()?)?, self.device())
    }
}
