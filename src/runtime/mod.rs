//! The runtime: a validated `.nerp` file → regenerated weights ([`regen`], on a [`device`]) →
//! a model: patched ONNX run by tract, safetensors ([`onnx`]'s items, re-exported here), or
//! candle tensors ([`candle`]); [`verify`] checks everything a load needs.

pub mod candle;
pub mod device;
pub mod onnx;
pub mod regen;
pub mod stream;
pub mod verify;

pub use onnx::{
    before_softmax, check_skeleton, onnx_bytes, parse_shape, patch_skeleton, rebuild_onnx,
    stored_input_shapes, write_safetensors, InputShapes, Model, IMAGES_PER_RUN, INPUT_SHAPES_KEY,
};
