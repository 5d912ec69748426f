//! THE optimizer: AdamW (PyTorch's formulation, decoupled weight decay) over flat f32
//! parameters in storage order. The gemm trainer steps through it, also with distillation's
//! candle autograd gradients (flattened with
//! [`Predictor::to_flat`](crate::predictor::Predictor::to_flat)).

use super::TrainConfig;

/// AdamW's two moments, one per parameter.
#[derive(Debug, Clone)]
pub struct AdamW {
    m: Vec<f32>,
    v: Vec<f32>,
}

impl AdamW {
    /// Zero moments for `params` parameters.
    pub fn new(params: usize) -> Self {
        AdamW { m: vec![0.0; params], v: vec![0.0; params] }
    }

    /// One step (0-based `step`) at `cfg.lr_at(step)` with gradient `grads`. The scalars are
    /// rounded to f32 once per step, the update runs in f32.
    pub fn step(&mut self, params: &mut [f32], grads: &[f32], cfg: &TrainConfig, step: usize) {
        assert_eq!(params.len(), self.m.len(), "parameter count");
        assert_eq!(grads.len(), self.m.len(), "gradient count");
        let lr = cfg.lr_at(step) as f32;
        let (b1, b2) = (cfg.betas.0 as f32, cfg.betas.1 as f32);
        let t = (step + 1) as i32;
        let c1 = 1.0 - (cfg.betas.0).powi(t) as f32;
        let c2 = (1.0 - (cfg.betas.1).powi(t)) as f32;
        let decay = 1.0 - lr * cfg.weight_decay as f32;
        for (((p, g), m), v) in params.iter_mut().zip(grads).zip(&mut self.m).zip(&mut self.v) {
            *m = b1 * *m + (1.0 - b1) * g;
            *v = b2 * *v + (1.0 - b2) * g * g;
            *p = *p * decay - lr * (*m / c1) / ((*v / c2).sqrt() + 1e-8);
        }
    }
}
