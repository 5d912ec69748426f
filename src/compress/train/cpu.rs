//! The reconstruction step on the CPU, written out on top of gemm: forward with bias + ReLU
//! fused into one pass, the backward pass by hand, [`AdamW`] over the flat parameters, and no
//! allocation per step. Parameters use the predictor's storage order ([`ParamLayout`]),
//! so the result is loaded with [`Predictor::from_flat`](crate::predictor::Predictor::from_flat)
//! like any stored predictor.
//!
//! Each batch is split into [`CHUNKS`] fixed parts that run forward and backward on their own
//! threads (single-threaded gemm each); their gradients are summed in chunk order. The result
//! therefore does not depend on the number of cores.
//!
//! Quantization-aware training ([`CpuTrainer::quantize`]): forward and backward run on the
//! stored round trip of the parameters (what the file will hold), refreshed after every
//! optimizer step, and the gradient updates the f32 parameters (straight-through estimator).
//! At h = 180 the int8 round trip (MSE clip search included) takes 13.6 ms against a 56–71 ms
//! step of 4,096 kernels (`examples/train_throughput`), so it is not amortized over steps.

use super::{AdamW, TrainConfig, TrainData};
use crate::error::Result;
use crate::format::predictor::{ParamLayout, DEPTH, OUTPUTS};
use crate::format::WeightDtype;

/// Parts each batch is split into (and the most threads used).
pub const CHUNKS: usize = 4;

/// `c (m×n) = op(a) (m×k) · op(b) (k×n)`, all row-major; `ta`/`tb`: the operand is stored
/// transposed (`a` as k×m, `b` as n×k). Single-threaded: the caller parallelizes.
#[allow(clippy::too_many_arguments)] // the BLAS signature, kept whole
fn sgemm(m: usize, n: usize, k: usize, a: &[f32], ta: bool, b: &[f32], tb: bool, c: &mut [f32]) {
    crate::linalg::sgemm(m, n, k, a, ta, b, tb, c, false)
}

/// Layer shapes and where each layer's parameters start: the format's one description.
type Layout = ParamLayout;

/// Buffers of one chunk: activations, gradient scratch and its share of the gradients.
struct Workspace {
    /// `acts[i]`: input of layer i (rows × in_i); `acts[DEPTH]`: the output.
    acts: Vec<Vec<f32>>,
    g: Vec<f32>,
    g_prev: Vec<f32>,
    grads: Vec<f32>,
    se: f64,
}

impl Workspace {
    fn new(layout: &Layout, rows: usize, params: usize) -> Self {
        let mut acts: Vec<Vec<f32>> = layout.dims.iter().map(|(i, _)| vec![0.0; rows * i]).collect();
        acts.push(vec![0.0; rows * OUTPUTS]);
        let widest = layout.dims.iter().map(|(i, o)| *i.max(o)).max().unwrap_or(0);
        Workspace {
            acts,
            g: vec![0.0; rows * widest],
            g_prev: vec![0.0; rows * widest],
            grads: vec![0.0; params],
            se: 0.0,
        }
    }

    /// Forward and backward over the kernels `idx`; leaves the weighted squared error
    /// `Σ w·(out − t)²` in `se` and the gradient of `se / count` in `grads`.
    fn run(
        &mut self,
        lay: &Layout,
        params: &[f32],
        inputs: &[f32],
        idx: &[u32],
        data: &TrainData,
        count: f32,
    ) {
        let rows = idx.len();
        let d = lay.dims[0].0;
        for (r, &i) in idx.iter().enumerate() {
            let i = i as usize;
            self.acts[0][r * d..(r + 1) * d].copy_from_slice(&inputs[i * d..(i + 1) * d]);
        }
        self.forward_layers(lay, params, rows);
        // Loss and its gradient with respect to the output.
        let out = &self.acts[DEPTH];
        let scale = 2.0 / count;
        self.se = 0.0;
        for (r, &i) in idx.iter().enumerate() {
            let i = i as usize;
            for j in 0..OUTPUTS {
                let t = i * OUTPUTS + j;
                let (diff, w) = (out[r * OUTPUTS + j] - data.targets[t], data.masks[t]);
                self.se += (w * diff * diff) as f64;
                self.g[r * OUTPUTS + j] = w * diff * scale;
            }
        }
        self.backward_layers(lay, params, rows);
    }
}

/// Training state: flat parameters, the optimizer and one workspace per chunk.
pub struct CpuTrainer {
    layout: Layout,
    hidden: usize,
    levels: usize,
    /// The f32 parameters the optimizer updates.
    pub params: Vec<f32>,
    /// While quantization-aware: the stored dtype and the round trip of `params` in it, which
    /// forward and backward use instead of `params`.
    stored: Option<(WeightDtype, Vec<f32>)>,
    grads: Vec<f32>,
    opt: AdamW,
    /// Embedded coordinates of all kernels, N × in.
    inputs: Vec<f32>,
    work: Vec<Workspace>,
    threads: usize,
}

impl CpuTrainer {
    pub fn new(hidden: usize, levels: usize, params: Vec<f32>, inputs: Vec<f32>, batch: usize) -> Self {
        let layout = ParamLayout::new(hidden, levels);
        let at = layout.len;
        assert_eq!(at, params.len(), "parameter count");
        let rows = batch.div_ceil(CHUNKS);
        let work = (0..CHUNKS).map(|_| Workspace::new(&layout, rows, at)).collect();
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(CHUNKS);
        CpuTrainer {
            layout,
            hidden,
            levels,
            stored: None,
            grads: vec![0.0; at],
            opt: AdamW::new(at),
            params,
            inputs,
            work,
            threads,
        }
    }

    /// Trains through `dtype`'s stored round trip from now on (`None`: on the f32 parameters).
    /// Switching on computes the round trip; asking for the current mode does nothing.
    pub fn quantize(&mut self, dtype: Option<WeightDtype>) -> Result<()> {
        if self.stored.as_ref().map(|(d, _)| *d) == dtype {
            return Ok(());
        }
        self.stored = match dtype {
            Some(d) => Some((d, crate::predictor::round_trip(d, self.hidden, self.levels, &self.params)?)),
            None => None,
        };
        Ok(())
    }

    /// The parameters forward and backward use: the stored round trip while
    /// quantization-aware, else the f32 parameters.
    pub fn effective(&self) -> &[f32] {
        effective(&self.stored, &self.params)
    }

    /// One step on the kernels `idx`; `count` is the number of weighted cells. Returns the
    /// weighted mean squared error (of the parameters the step computed with).
    pub fn step(
        &mut self,
        idx: &[u32],
        data: &TrainData,
        count: f32,
        cfg: &TrainConfig,
        step: usize,
    ) -> Result<f64> {
        let rows = idx.len().div_ceil(CHUNKS).max(1);
        let parts: Vec<&[u32]> = idx.chunks(rows).collect();
        let per_thread = CHUNKS.div_ceil(self.threads);
        let (lay, params, inputs) = (&self.layout, effective(&self.stored, &self.params), &self.inputs[..]);
        std::thread::scope(|s| {
            for (t, work) in self.work.chunks_mut(per_thread).enumerate() {
                let parts = &parts;
                s.spawn(move || {
                    for (k, w) in work.iter_mut().enumerate() {
                        match parts.get(t * per_thread + k) {
                            Some(p) => w.run(lay, params, inputs, p, data, count),
                            None => {
                                w.grads.fill(0.0);
                                w.se = 0.0;
                            }
                        }
                    }
                });
            }
        });
        // Sum in chunk order: the same bits whatever the number of threads.
        self.grads.copy_from_slice(&self.work[0].grads);
        let mut se = self.work[0].se;
        for w in &self.work[1..] {
            for (g, x) in self.grads.iter_mut().zip(&w.grads) {
                *g += x;
            }
            se += w.se;
        }
        self.apply_adamw(cfg, step)?;
        Ok(se / count as f64)
    }
}

/// The stored round trip if there is one, else `params` (a function of the fields, so that
/// the workspaces can be borrowed beside it).
fn effective<'a>(stored: &'a Option<(WeightDtype, Vec<f32>)>, params: &'a [f32]) -> &'a [f32] {
    match stored {
        Some((_, p)) => p,
        None => params,
    }
}

/// Forward and backward over every block at once (distillation: the network needs all of its
/// kernels each step), in [`CHUNKS`] fixed row ranges with their own workspaces; gradients are
/// summed in chunk order, so the result does not depend on the number of cores.
pub struct BlockPass {
    work: Vec<Workspace>,
    rows: Vec<std::ops::Range<usize>>,
}

impl Workspace {
    /// The forward pass over the first `rows` rows of `acts[0]`: `z = a·W`, then `+ b` and ReLU
    /// in one pass; every layer's activations are kept, the output is left in `acts[DEPTH]`.
    fn forward_layers(&mut self, lay: &Layout, params: &[f32], rows: usize) {
        for l in 0..DEPTH {
            let (i, o) = lay.dims[l];
            let (w, b) = (lay.weight(l).start, lay.bias(l).start);
            let (lo, hi) = self.acts.split_at_mut(l + 1);
            let (a, z) = (&lo[l][..rows * i], &mut hi[0][..rows * o]);
            sgemm(rows, o, i, a, false, &params[w..w + i * o], false, z);
            let bias = &params[b..b + o];
            let relu = l + 1 < DEPTH;
            for row in z.chunks_exact_mut(o) {
                for (v, bb) in row.iter_mut().zip(bias) {
                    let s = *v + bb;
                    *v = if relu && s < 0.0 { 0.0 } else { s };
                }
            }
        }
    }

    /// The backward pass of [`Self::forward_layers`] from the output gradient in the first
    /// `rows × 9` values of `g`: the parameter gradients into `grads`.
    fn backward_layers(&mut self, lay: &Layout, params: &[f32], rows: usize) {
        for l in (0..DEPTH).rev() {
            let (i, o) = lay.dims[l];
            let (w, b) = (lay.weight(l).start, lay.bias(l).start);
            let a = &self.acts[l][..rows * i];
            let g = &self.g[..rows * o];
            sgemm(i, o, rows, a, true, g, false, &mut self.grads[w..w + i * o]);
            let gb = &mut self.grads[b..b + o];
            gb.fill(0.0);
            for row in g.chunks_exact(o) {
                for (s, v) in gb.iter_mut().zip(row) {
                    *s += v;
                }
            }
            if l > 0 {
                let gp = &mut self.g_prev[..rows * i];
                sgemm(rows, i, o, g, false, &params[w..w + i * o], true, gp);
                // ReLU backward: the gradient passes where the activation was positive.
                for (gv, av) in gp.iter_mut().zip(a) {
                    if *av <= 0.0 {
                        *gv = 0.0;
                    }
                }
                std::mem::swap(&mut self.g, &mut self.g_prev);
            }
        }
    }

    /// Forward over `inputs` (rows × in), keeping every layer's activations; the output is
    /// left in `acts[DEPTH]`.
    fn forward_rows(&mut self, lay: &Layout, params: &[f32], inputs: &[f32]) {
        let d = lay.dims[0].0;
        let rows = inputs.len() / d;
        self.acts[0][..rows * d].copy_from_slice(inputs);
        self.forward_layers(lay, params, rows);
    }

    /// Backward of [`Self::forward_rows`] (same rows) from the output gradient `dout`
    /// (rows × 9): this chunk's parameter gradients into `grads`.
    fn backward_rows(&mut self, lay: &Layout, params: &[f32], dout: &[f32]) {
        let rows = dout.len() / OUTPUTS;
        self.g[..rows * OUTPUTS].copy_from_slice(dout);
        self.backward_layers(lay, params, rows);
    }
}

impl CpuTrainer {
    /// Workspaces for [`Self::predict_all`] / [`Self::backward_all`] over every row of the
    /// trainer's inputs.
    pub fn block_pass(&self) -> BlockPass {
        let n = self.inputs.len() / self.layout.dims[0].0;
        let per = n.div_ceil(CHUNKS).max(1);
        let rows: Vec<_> = (0..CHUNKS).map(|c| (c * per).min(n)..((c + 1) * per).min(n)).collect();
        let work = rows.iter().map(|_| Workspace::new(&self.layout, per, self.layout.len)).collect();
        BlockPass { work, rows }
    }

    /// The predictor's output for every input row, `N×9`, into `out`; `pass` keeps the
    /// activations for [`Self::backward_all`].
    pub fn predict_all(&self, pass: &mut BlockPass, out: &mut [f32]) {
        let (lay, params, inputs) = (&self.layout, self.effective(), &self.inputs[..]);
        let d = lay.dims[0].0;
        let rows = &pass.rows;
        let mut parts: Vec<(&mut Workspace, &mut [f32])> = Vec::with_capacity(CHUNKS);
        let mut rest = out;
        for (w, r) in pass.work.iter_mut().zip(rows) {
            let (head, tail) = rest.split_at_mut(r.len() * OUTPUTS);
            parts.push((w, head));
            rest = tail;
        }
        crate::linalg::for_parts(&mut parts, self.threads, |c, (w, o)| {
            let r = rows[c].clone();
            w.forward_rows(lay, params, &inputs[r.start * d..r.end * d]);
            o.copy_from_slice(&w.acts[DEPTH][..o.len()]);
        });
    }

    /// Gradient of the parameters from the gradient `dout` (`N×9`) of the outputs of the last
    /// [`Self::predict_all`] with `pass`; left for [`Self::apply_adamw`].
    pub fn backward_all(&mut self, pass: &mut BlockPass, dout: &[f32]) {
        let (lay, params) = (&self.layout, effective(&self.stored, &self.params));
        let rows = &pass.rows;
        crate::linalg::for_parts(&mut pass.work, self.threads, |c, w| {
            let r = rows[c].clone();
            w.backward_rows(lay, params, &dout[r.start * OUTPUTS..r.end * OUTPUTS]);
        });
        // Sum in chunk order: the same bits whatever the number of threads.
        self.grads.copy_from_slice(&pass.work[0].grads);
        for w in &pass.work[1..] {
            for (g, x) in self.grads.iter_mut().zip(&w.grads) {
                *g += x;
            }
        }
    }

    /// The gradient of the last [`Self::backward_all`], in storage order.
    #[cfg(test)]
    pub fn grads(&self) -> &[f32] {
        &self.grads
    }

    /// One AdamW step on the f32 parameters with the gradient of the last step or
    /// [`Self::backward_all`]; refreshes the stored round trip while quantization-aware.
    pub fn apply_adamw(&mut self, cfg: &TrainConfig, step: usize) -> Result<()> {
        self.opt.step(&mut self.params, &self.grads, cfg, step);
        if let Some((d, stored)) = &mut self.stored {
            *stored = crate::predictor::round_trip(*d, self.hidden, self.levels, &self.params)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::train::Rng;
    use crate::format::predictor::param_count;

    /// While quantization-aware, every step computes with the round trip of the f32
    /// parameters as they are after the previous optimizer step, and switching off goes back
    /// to the f32 parameters.
    #[test]
    fn quantization_aware_steps_compute_with_the_current_round_trip() {
        let (h, k, n) = (8, 2, 64);
        let mut rng = Rng::new(9);
        let mut uniform = |len: usize| (0..len).map(|_| rng.uniform() as f32 - 0.5).collect::<Vec<_>>();
        let params = uniform(param_count(h, k));
        let data = TrainData { coords: uniform(3 * n), targets: uniform(9 * n), masks: vec![1.0; 9 * n] };
        let inputs = uniform(6 * k * n);
        let cfg = TrainConfig {
            hidden: h,
            embedding: crate::format::Embedding { base: 1.25, levels: k as u32 },
            steps: 10,
            batch: n,
            lr: 1e-2,
            lr_min: 1e-4,
            warmup: 1,
            betas: (0.9, 0.999),
            weight_decay: 0.0,
            magnitude_fraction: 0.0,
            seed: 0,
            quantize: Some(WeightDtype::Int8),
            qat_fraction: 1.0,
        };
        let idx: Vec<u32> = (0..n as u32).collect();
        let mut t = CpuTrainer::new(h, k, params, inputs, n);
        t.quantize(Some(WeightDtype::Int8)).unwrap();
        let round_trip = |p: &[f32]| crate::predictor::round_trip(WeightDtype::Int8, h, k, p).unwrap();
        for step in 0..3 {
            assert_eq!(t.effective(), &round_trip(&t.params)[..], "step {step}");
            assert_ne!(t.effective(), &t.params[..], "int8 rounds some parameter");
            t.step(&idx, &data, (9 * n) as f32, &cfg, step).unwrap();
        }
        assert_eq!(t.effective(), &round_trip(&t.params)[..]);
        t.quantize(None).unwrap();
        assert_eq!(t.effective(), &t.params[..]);
    }
}
