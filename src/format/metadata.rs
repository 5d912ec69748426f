//! The registered `metadata` keys (spec section 3); any other key is free-form.

/// The JSON preprocessing `{"scale", "mean", "std"}` the model's inputs need (for evaluation
/// and distillation).
pub const PREPROCESS_KEY: &str = "preprocess";
/// The concrete input shapes (JSON `[[d, …], …]`, one per model input, f32 inputs) that models
/// with dynamic input dimensions need to be built by tract.
pub const INPUT_SHAPES_KEY: &str = "input_shapes";
/// Prefix of the safetensors `__metadata__` entries: `safetensors.KEY` holds entry `KEY`.
pub const SAFETENSORS_PREFIX: &str = "safetensors.";
