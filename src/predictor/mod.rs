//! THE predictor: a positional embedding of a kernel's coordinate followed by a 5-layer ReLU MLP
//! with 9 outputs (one 3×3 block). What it is — shapes, the flat parameter layout, the
//! embedding's frequencies, its stored dtypes — is the format's description
//! ([`crate::format::predictor`], spec section 5.2, re-exported here); this module holds the
//! code that runs it, one executor per place it runs:
//!
//! - [`candle`] (re-exported here: [`Predictor`], [`embed`]): candle tensors on any candle
//!   device. Regeneration on the CPU, and distillation's autograd through the predictor.
//! - [`gemm`] (`compress` feature): forward and hand-written backward on flat f32 parameters
//!   over gemm, with the embedding written out in f32. The trainer of reconstruction and of
//!   distillation's CPU step (`compress::train`) runs it.
//! - [`gpu`]: cuBLAS + two CUDA kernels (`cuda` feature; without it a stand-in whose `open`
//!   fails, so callers need no `#[cfg]`).
//!
//! `tests/predictor.rs` runs every compiled executor on the same coordinates and weights against
//! one f64 evaluation of spec section 5.2.

pub mod candle;
#[cfg(feature = "compress")]
pub mod gemm;
pub mod gpu;

pub use self::candle::{embed, Linear, Predictor};
pub use crate::format::predictor::{
    frequencies, input_dim, layer_dims, param_count, ParamLayout, ARCH, DEPTH, OUTPUTS,
};

use crate::error::Result;
use crate::format::WeightDtype;

/// The parameter layout of a predictor with `hidden` units and `embedding`, after checking that
/// `flat` holds exactly its parameters (what every executor taking flat parameters checks).
pub fn flat_layout(hidden: usize, embedding: crate::format::Embedding, flat: &[f32]) -> Result<ParamLayout> {
    let layout = ParamLayout::new(hidden, embedding.levels as usize);
    if flat.len() != layout.len {
        return Err(crate::Error::Rebuild(format!(
            "predictor needs {} parameters, got {}",
            layout.len,
            flat.len()
        )));
    }
    Ok(layout)
}

/// Flat parameters stored as `dtype` and read back (what the file holds): what
/// quantization-aware training computes with.
pub fn round_trip(dtype: WeightDtype, hidden: usize, levels: usize, flat: &[f32]) -> Result<Vec<f32>> {
    decode_weights(dtype, hidden, levels, &encode_weights(dtype, hidden, levels, flat)?)
}

/// Stores f32 parameters (storage order) as `dtype` (spec section 5.2; quantized dtypes go
/// through [`crate::format::quant`]).
pub fn encode_weights(dtype: WeightDtype, hidden: usize, levels: usize, flat: &[f32]) -> Result<Vec<u8>> {
    crate::format::predictor::encode_params(dtype, hidden, levels, flat).map_err(crate::Error::Training)
}

/// Reads stored `dtype` parameters as f32 in storage order.
pub fn decode_weights(dtype: WeightDtype, hidden: usize, levels: usize, bytes: &[u8]) -> Result<Vec<f32>> {
    crate::format::predictor::decode_params(dtype, hidden, levels, bytes)
        .map_err(|e| crate::Error::Rebuild(format!("predictor weights: {e}")))
}
