//! The gemm executor: the predictor on flat f32 parameters in storage order ([`ParamLayout`]),
//! its embedding written out in f32, the forward pass with bias + ReLU fused into one pass over
//! each product, and the backward pass by hand — no allocation per call once a [`Workspace`]
//! exists. Single-threaded: the trainer (`compress::train`) splits its batches into fixed parts,
//! one workspace each, so results do not depend on the number of cores.

use crate::error::Result;
use crate::format::predictor::{frequencies, ParamLayout, DEPTH, OUTPUTS};
use crate::format::Embedding;

/// `c (m×n) = op(a) (m×k) · op(b) (k×n)`, all row-major; `ta`/`tb`: the operand is stored
/// transposed (`a` as k×m, `b` as n×k).
#[allow(clippy::too_many_arguments)] // the BLAS signature, kept whole
fn sgemm(m: usize, n: usize, k: usize, a: &[f32], ta: bool, b: &[f32], tb: bool, c: &mut [f32]) {
    crate::linalg::sgemm(m, n, k, a, ta, b, tb, c, false)
}

/// Embeds flat `N×3` coordinates into `N × 6·levels` (spec section 5.2): for each coordinate
/// `p_j`, `sin(p_j·ω_k)` for every k, then `cos(p_j·ω_k)`, the product rounded to f32.
pub fn embed(coords: &[f32], e: Embedding) -> Vec<f32> {
    let freqs = frequencies(e);
    let mut out = Vec::with_capacity(coords.len() * 2 * freqs.len());
    for &p in coords {
        out.extend(freqs.iter().map(|w| (p * w).sin()));
        out.extend(freqs.iter().map(|w| (p * w).cos()));
    }
    out
}

/// The buffers of forward and backward over up to `capacity` rows: every layer's activations,
/// the gradient scratch and the parameter gradients.
#[derive(Debug, Clone)]
pub struct Workspace {
    layout: ParamLayout,
    capacity: usize,
    /// `acts[i]`: input of layer i (rows × in_i); `acts[DEPTH]`: the output.
    acts: Vec<Vec<f32>>,
    g: Vec<f32>,
    g_prev: Vec<f32>,
    grads: Vec<f32>,
}

impl Workspace {
    /// Buffers for the predictor of `layout` over up to `capacity` rows.
    pub fn new(layout: ParamLayout, capacity: usize) -> Self {
        let mut acts: Vec<Vec<f32>> = layout.dims.iter().map(|(i, _)| vec![0.0; capacity * i]).collect();
        acts.push(vec![0.0; capacity * OUTPUTS]);
        let widest = layout.dims.iter().map(|(i, o)| *i.max(o)).max().unwrap_or(0);
        Workspace {
            layout,
            capacity,
            acts,
            g: vec![0.0; capacity * widest],
            g_prev: vec![0.0; capacity * widest],
            grads: vec![0.0; layout.len],
        }
    }

    /// The most rows one pass takes.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Width of a row of the input: the embedding's.
    pub fn input_dim(&self) -> usize {
        self.layout.dims[0].0
    }

    /// The embedded input of the first `rows` rows (rows × input_dim), to fill before
    /// [`Self::forward`].
    pub fn input_mut(&mut self, rows: usize) -> &mut [f32] {
        let d = self.input_dim();
        &mut self.acts[0][..rows * d]
    }

    /// The forward pass over the first `rows` rows of the input: `z = a·W`, then `+ b` and ReLU
    /// in one pass; every layer's activations are kept for [`Self::backward`]. Returns the
    /// output, rows × 9.
    pub fn forward(&mut self, params: &[f32], rows: usize) -> &[f32] {
        let lay = self.layout;
        for l in 0..DEPTH {
            let (i, o) = lay.dims[l];
            let (w, b) = (lay.weight(l), lay.bias(l));
            let (lo, hi) = self.acts.split_at_mut(l + 1);
            let (a, z) = (&lo[l][..rows * i], &mut hi[0][..rows * o]);
            sgemm(rows, o, i, a, false, &params[w], false, z);
            let bias = &params[b];
            let relu = l + 1 < DEPTH;
            for row in z.chunks_exact_mut(o) {
                for (v, bb) in row.iter_mut().zip(bias) {
                    let s = *v + bb;
                    *v = if relu && s < 0.0 { 0.0 } else { s };
                }
            }
        }
        &self.acts[DEPTH][..rows * OUTPUTS]
    }

    /// The output of the last [`Self::forward`] over `rows` rows.
    pub fn output(&self, rows: usize) -> &[f32] {
        &self.acts[DEPTH][..rows * OUTPUTS]
    }

    /// The output of the last [`Self::forward`] and the buffer for its gradient (both
    /// rows × 9), to fill before [`Self::backward`].
    pub fn output_and_grad_mut(&mut self, rows: usize) -> (&[f32], &mut [f32]) {
        (&self.acts[DEPTH][..rows * OUTPUTS], &mut self.g[..rows * OUTPUTS])
    }

    /// The backward pass of the last [`Self::forward`] (same `params` and `rows`) from the
    /// output gradient: the parameter gradients, in storage order, into [`Self::grads`].
    pub fn backward(&mut self, params: &[f32], rows: usize) {
        let lay = self.layout;
        for l in (0..DEPTH).rev() {
            let (i, o) = lay.dims[l];
            let a = &self.acts[l][..rows * i];
            let g = &self.g[..rows * o];
            sgemm(i, o, rows, a, true, g, false, &mut self.grads[lay.weight(l)]);
            let gb = &mut self.grads[lay.bias(l)];
            gb.fill(0.0);
            for row in g.chunks_exact(o) {
                for (s, v) in gb.iter_mut().zip(row) {
                    *s += v;
                }
            }
            if l > 0 {
                let gp = &mut self.g_prev[..rows * i];
                sgemm(rows, i, o, g, false, &params[lay.weight(l)], true, gp);
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

    /// The parameter gradients of the last [`Self::backward`], in storage order.
    pub fn grads(&self) -> &[f32] {
        &self.grads
    }

    /// Zeroes the parameter gradients (a workspace that took no rows contributes nothing).
    pub fn clear_grads(&mut self) {
        self.grads.fill(0.0);
    }
}

/// Runs the predictor with `hidden` units, `embedding` and flat f32 parameters (storage order)
/// over flat `N×3` coordinates, `batch` rows at a time; returns `N×9` values.
pub fn predict(
    hidden: usize,
    embedding: Embedding,
    flat: &[f32],
    coords: &[f32],
    batch: usize,
) -> Result<Vec<f32>> {
    let layout = super::flat_layout(hidden, embedding, flat)?;
    let n = coords.len() / 3;
    let batch = batch.clamp(1, n.max(1));
    let mut work = Workspace::new(layout, batch);
    let mut out = Vec::with_capacity(n * OUTPUTS);
    for chunk in coords[..n * 3].chunks(batch * 3) {
        let rows = chunk.len() / 3;
        work.input_mut(rows).copy_from_slice(&embed(chunk, embedding));
        out.extend_from_slice(work.forward(flat, rows));
    }
    Ok(out)
}
