//! One-group 2-D convolution as one candle custom op with a hand-written backward: per sample,
//! im2col into a reused buffer and one gemm (`W · cols` written straight into the NCHW output),
//! and for the backward `dW += dY · colsᵀ`, `dX = col2im(Wᵀ · dY)`, `db = Σ dY`.
//!
//! It replaces im2col of the whole batch + candle matmul + transpose copies (and their
//! backward through candle); `examples/distill_step.rs` times both. Deterministic: samples are
//! split into [`PARTS`] fixed parts whose weight gradients are summed in part order, whatever
//! the number of threads; each gemm is single-threaded inside those parts.

use super::Window;
use crate::linalg::{for_parts, sgemm, threads};
use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};

/// Fixed sample parts of the backward pass (their weight gradients are summed in order).
pub const PARTS: usize = 8;

/// Shapes of one convolution: input `(n, c, h, w)`, weight `(f, c, kh, kw)`, output
/// `(n, f, oh, ow)`.
#[derive(Debug, Clone, Copy)]
struct Geometry {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    f: usize,
    oh: usize,
    ow: usize,
    window: Window,
}

impl Geometry {
    fn new(x: &[usize], w: &[usize], window: Window) -> candle_core::Result<Self> {
        let (&[n, c, h, wd], &[f, cw, kh, kw]) = (x, w) else {
            return Err(candle_core::Error::Msg(format!("conv expects NCHW and FCHW, got {x:?}, {w:?}")));
        };
        if c != cw {
            return Err(candle_core::Error::Msg(format!("conv: input has {c} channels, weight {w:?}")));
        }
        let window = Window { kernel: [kh, kw], ..window };
        let Window { strides: [sh, sw], pads: [pt, pl, pb, pr], dilations: [dh, dw], .. } = window;
        let size = |input: usize, k: usize, s: usize, pad: usize, d: usize| {
            let span = d * (k - 1) + 1;
            if input + pad < span {
                return Err(candle_core::Error::Msg(format!(
                    "window {span} is larger than the padded input {}",
                    input + pad
                )));
            }
            Ok((input + pad - span) / s + 1)
        };
        let (oh, ow) = (size(h, kh, sh, pt + pb, dh)?, size(wd, kw, sw, pl + pr, dw)?);
        Ok(Geometry { n, c, h, w: wd, f, oh, ow, window })
    }

    /// Rows of the column matrix, `c·kh·kw`.
    fn ckk(&self) -> usize {
        self.c * self.window.kernel[0] * self.window.kernel[1]
    }

    /// Output pixels per sample.
    fn pixels(&self) -> usize {
        self.oh * self.ow
    }

    /// For every (column row, output row): the offset of the input row read (`None` in the
    /// padding), and the kernel column `j`.
    fn each_row(&self, mut f: impl FnMut(usize, usize, Option<usize>, usize)) {
        let Window { kernel: [kh, kw], strides: [sh, _], pads: [pt, ..], dilations: [dh, _] } = self.window;
        for ci in 0..self.c {
            for i in 0..kh {
                for j in 0..kw {
                    let row = (ci * kh + i) * kw + j;
                    for y in 0..self.oh {
                        let iy = (y * sh + i * dh) as isize - pt as isize;
                        let src =
                            (iy >= 0 && (iy as usize) < self.h).then(|| (ci * self.h + iy as usize) * self.w);
                        f(row, y, src, j);
                    }
                }
            }
        }
    }

    /// For kernel column `j`: the output columns `x0..x1` whose input column is inside the
    /// image, and the input column of `x0` (later ones follow at the column stride).
    fn inside(&self, j: usize) -> (usize, usize, usize) {
        let (sw, dw, pl) = (self.window.strides[1], self.window.dilations[1], self.window.pads[1]);
        let shift = j * dw;
        // First x with x·sw + shift ≥ pl, and the end of those with x·sw + shift − pl < w.
        let x0 = pl.saturating_sub(shift).div_ceil(sw).min(self.ow);
        let x1 = if self.w + pl > shift { ((self.w + pl - shift - 1) / sw + 1).min(self.ow) } else { 0 };
        let x1 = x1.max(x0);
        (x0, x1, x0 * sw + shift - pl.min(x0 * sw + shift))
    }

    /// One sample `(c, h, w)` → columns `(c·kh·kw, oh·ow)`.
    fn im2col(&self, input: &[f32], cols: &mut [f32]) {
        let (p, ow, sw) = (self.pixels(), self.ow, self.window.strides[1]);
        self.each_row(|row, y, src, j| {
            let out = &mut cols[row * p + y * ow..row * p + (y + 1) * ow];
            let Some(base) = src else {
                out.fill(0.0);
                return;
            };
            let (x0, x1, ix0) = self.inside(j);
            out[..x0].fill(0.0);
            out[x1..].fill(0.0);
            let from = &input[base + ix0..];
            if sw == 1 {
                out[x0..x1].copy_from_slice(&from[..x1 - x0]);
            } else {
                for (k, o) in out[x0..x1].iter_mut().enumerate() {
                    *o = from[k * sw];
                }
            }
        });
    }

    /// Adjoint of [`Self::im2col`]: `grad` (one sample, zeroed here) receives the column sums.
    fn col2im(&self, cols: &[f32], grad: &mut [f32]) {
        grad.fill(0.0);
        let (p, ow, sw) = (self.pixels(), self.ow, self.window.strides[1]);
        self.each_row(|row, y, src, j| {
            let Some(base) = src else { return };
            let (x0, x1, ix0) = self.inside(j);
            let from = &cols[row * p + y * ow + x0..row * p + y * ow + x1];
            let to = &mut grad[base + ix0..];
            if sw == 1 {
                to[..from.len()].iter_mut().zip(from).for_each(|(t, v)| *t += v);
            } else {
                for (k, v) in from.iter().enumerate() {
                    to[k * sw] += v;
                }
            }
        });
    }
}

fn slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    let (start, end) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{what}: input must be contiguous")))?;
    Ok(&s.as_slice::<f32>()?[start..end])
}

/// Sample ranges of `parts` near-equal contiguous parts of `n` samples.
fn split(n: usize, parts: usize) -> Vec<std::ops::Range<usize>> {
    let per = n.div_ceil(parts).max(1);
    (0..parts).map(|p| (p * per).min(n)..((p + 1) * per).min(n)).collect()
}

/// `y = conv(x, w) + b` (one group); the custom op on `(x, w, b)`.
#[derive(Debug, Clone, Copy)]
struct Conv {
    window: Window,
}

impl CustomOp3 for Conv {
    fn name(&self) -> &'static str {
        "conv2d-gemm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w, b) = (slice(s1, l1, "conv")?, slice(s2, l2, "conv")?, slice(s3, l3, "conv")?);
        let g = Geometry::new(l1.dims(), l2.dims(), self.window)?;
        let (p, ckk, chw) = (g.pixels(), g.ckk(), g.c * g.h * g.w);
        let mut out = vec![0f32; g.n * g.f * p];
        let t = threads();
        // Every sample's output is computed alone, so the split only decides who runs it.
        let mut parts: Vec<(std::ops::Range<usize>, &mut [f32])> = Vec::new();
        let mut rest = &mut out[..];
        for r in split(g.n, t) {
            let (head, tail) = rest.split_at_mut(r.len() * g.f * p);
            parts.push((r, head));
            rest = tail;
        }
        for_parts(&mut parts, t, |_, (r, y)| {
            let mut cols = vec![0f32; ckk * p];
            for (k, s) in r.clone().enumerate() {
                g.im2col(&x[s * chw..(s + 1) * chw], &mut cols);
                let ys = &mut y[k * g.f * p..(k + 1) * g.f * p];
                sgemm(g.f, p, ckk, w, false, &cols, false, ys, false);
                for (row, bias) in ys.chunks_exact_mut(p).zip(b) {
                    row.iter_mut().for_each(|v| *v += bias);
                }
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((g.n, g.f, g.oh, g.ow))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        w: &Tensor,
        b: &Tensor,
        _res: &Tensor,
        dy: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let flat = x.apply_op3_no_bwd(w, &dy.contiguous()?, &ConvGrad { window: self.window })?;
        let (nx, nw, nb) = (x.elem_count(), w.elem_count(), b.elem_count());
        let dx = flat.narrow(0, 0, nx)?.reshape(x.shape())?;
        let dw = flat.narrow(0, nx, nw)?.reshape(w.shape())?;
        let db = flat.narrow(0, nx + nw, nb)?.reshape(b.shape())?;
        Ok((Some(dx), Some(dw), Some(db)))
    }
}

/// The backward of [`Conv`] on `(x, w, dy)`: `[dx | dw | db]` flattened into one vector.
struct ConvGrad {
    window: Window,
}

/// One part's share of the backward pass.
struct Part<'a> {
    samples: std::ops::Range<usize>,
    dx: &'a mut [f32],
    dw: Vec<f32>,
    db: Vec<f32>,
}

impl CustomOp3 for ConvGrad {
    fn name(&self) -> &'static str {
        "conv2d-gemm-backward"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, w, dy) =
            (slice(s1, l1, "conv grad")?, slice(s2, l2, "conv grad")?, slice(s3, l3, "conv grad")?);
        let g = Geometry::new(l1.dims(), l2.dims(), self.window)?;
        let (p, ckk, chw) = (g.pixels(), g.ckk(), g.c * g.h * g.w);
        let (nx, nw) = (x.len(), w.len());
        let mut dx = vec![0f32; nx];
        let mut parts: Vec<Part> = Vec::with_capacity(PARTS);
        let mut rest = &mut dx[..];
        for r in split(g.n, PARTS) {
            let (head, tail) = rest.split_at_mut(r.len() * chw);
            parts.push(Part { samples: r, dx: head, dw: vec![0.0; nw], db: vec![0.0; g.f] });
            rest = tail;
        }
        for_parts(&mut parts, threads(), |_, part| {
            let mut cols = vec![0f32; ckk * p];
            let mut dcols = vec![0f32; ckk * p];
            for (k, s) in part.samples.clone().enumerate() {
                let ds = &dy[s * g.f * p..(s + 1) * g.f * p];
                g.im2col(&x[s * chw..(s + 1) * chw], &mut cols);
                // dW (f × ckk) += dY (f × p) · colsᵀ (p × ckk)
                sgemm(g.f, ckk, p, ds, false, &cols, true, &mut part.dw, true);
                // dcols (ckk × p) = Wᵀ (ckk × f) · dY (f × p)
                sgemm(ckk, p, g.f, w, true, ds, false, &mut dcols, false);
                g.col2im(&dcols, &mut part.dx[k * chw..(k + 1) * chw]);
                for (acc, row) in part.db.iter_mut().zip(ds.chunks_exact(p)) {
                    *acc += row.iter().sum::<f32>();
                }
            }
        });
        // Sum in part order: the same bits whatever the number of threads.
        let mut dw = vec![0f32; nw];
        let mut db = vec![0f32; g.f];
        for part in &parts {
            dw.iter_mut().zip(&part.dw).for_each(|(a, v)| *a += v);
            db.iter_mut().zip(&part.db).for_each(|(a, v)| *a += v);
        }
        drop(parts);
        let mut out = dx;
        out.extend(dw);
        out.extend(db);
        let len = out.len();
        Ok((CpuStorage::F32(out), Shape::from(len)))
    }
}

/// One-group convolution of `x (N, C, H, W)` with `w (F, C, kh, kw)` plus `b (F)` (zeros when
/// `None`), differentiable in all three. CPU tensors only.
pub fn conv2d(x: &Tensor, w: &Tensor, b: Option<&Tensor>, window: Window) -> crate::error::Result<Tensor> {
    let f = w.dim(0)?;
    let b = match b {
        Some(b) => b.reshape(f)?,
        None => Tensor::zeros(f, candle_core::DType::F32, w.device())?,
    };
    Ok(x.contiguous()?.apply_op3(&w.contiguous()?, &b.contiguous()?, Conv { window })?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn noise(n: usize, seed: u64) -> Vec<f32> {
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
            })
            .collect()
    }

    fn var(dims: &[usize], seed: u64) -> Var {
        let n = dims.iter().product();
        Var::from_tensor(&Tensor::from_vec(noise(n, seed), dims, &Device::Cpu).unwrap()).unwrap()
    }

    /// The hand-written backward (input, weight and bias) matches central finite differences of
    /// `L = Σ r ⊙ y²` with strides, asymmetric pads and dilations, a batch larger than
    /// [`PARTS`] with a remainder.
    #[test]
    fn gradients_match_finite_differences() {
        let window = Window { kernel: [0, 0], strides: [2, 1], pads: [1, 0, 2, 1], dilations: [1, 2] };
        let (x, w, b) = (var(&[11, 3, 6, 5], 1), var(&[4, 3, 3, 2], 2), var(&[4], 3));
        let probe = |x: &Tensor, w: &Tensor, b: &Tensor| conv2d(x, w, Some(b), window).unwrap();
        let y = probe(x.as_tensor(), w.as_tensor(), b.as_tensor());
        let r = Tensor::from_vec(noise(y.elem_count(), 4), y.shape(), &Device::Cpu).unwrap();
        let loss = |y: &Tensor| (y.sqr().unwrap() * &r).unwrap().sum_all().unwrap();
        let store = loss(&y).backward().unwrap();
        for (which, v) in [x.clone(), w.clone(), b.clone()].iter().enumerate() {
            let g = store.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            let base = v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
            for i in (0..base.len()).step_by(base.len() / 7 + 1) {
                let eps = 1e-2f32;
                let at = |d: f32| {
                    let mut p = base.clone();
                    p[i] += d;
                    let t = Tensor::from_vec(p, v.shape(), &Device::Cpu).unwrap();
                    let mut args = [x.as_tensor().clone(), w.as_tensor().clone(), b.as_tensor().clone()];
                    args[which] = t;
                    loss(&probe(&args[0], &args[1], &args[2])).to_scalar::<f32>().unwrap() as f64
                };
                let fd = (at(eps) - at(-eps)) / (2.0 * eps as f64);
                assert!(
                    (fd - g[i] as f64).abs() < 2e-3 * fd.abs().max(1.0),
                    "input {which} entry {i}: backward {} vs finite difference {fd}",
                    g[i]
                );
            }
        }
    }

    /// The forward equals candle's `conv2d` (symmetric geometry, which candle supports).
    #[test]
    fn forward_matches_candle_conv2d() {
        let window = Window { kernel: [0, 0], strides: [2, 2], pads: [1; 4], dilations: [1, 1] };
        let (x, w) = (var(&[3, 4, 9, 7], 5), var(&[5, 4, 3, 3], 6));
        let got = conv2d(x.as_tensor(), w.as_tensor(), None, window).unwrap();
        let expect = x.as_tensor().conv2d(w.as_tensor(), 1, 2, 1, 1).unwrap();
        let d = (got - expect).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-5, "{d}");
    }
}
