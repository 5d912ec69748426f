//! Execution of each [`Op`] with candle tensor ops, so candle's autograd differentiates it.
//!
//! Convolution and pooling go through [`Im2Col`], a custom op with a hand-written backward
//! (col2im): a convolution is then one matrix product, whose backward candle does with gemm.
//! (candle's own conv2d backward computes the input gradient with a direct-loop transposed
//! convolution, which dominated a distillation step; see `examples/distill_cost.rs`.)

use super::{ConvImpl, Op, Window};
use crate::error::{Error, Result};
use candle_core::{CpuStorage, CustomOp1, DType, Layout, Shape, Tensor, D};

/// Runs one op on its inputs (`None`: an omitted optional input).
pub fn run(op: &Op, args: &[Option<Tensor>], conv_impl: ConvImpl) -> Result<Tensor> {
    let arg = |i: usize| -> Result<&Tensor> {
        args.get(i).and_then(|a| a.as_ref()).ok_or_else(|| Error::Rebuild(format!("missing input {i}")))
    };
    let opt = |i: usize| args.get(i).and_then(|a| a.as_ref());
    match op {
        Op::Conv { window, groups } if conv_impl == ConvImpl::Candle => {
            candle_conv(arg(0)?, arg(1)?, opt(2), *window, *groups)
        }
        Op::Conv { window, groups } => {
            conv(arg(0)?, arg(1)?, opt(2), *window, *groups, conv_impl == ConvImpl::Gemm)
        }
        Op::BatchNormalization { epsilon } => {
            batch_norm(arg(0)?, arg(1)?, arg(2)?, arg(3)?, arg(4)?, *epsilon)
        }
        Op::Relu => Ok(arg(0)?.relu()?),
        Op::Clip { min, max } => clip(arg(0)?, bound(opt(1), *min)?, bound(opt(2), *max)?),
        Op::Sigmoid => sigmoid(arg(0)?),
        Op::HardSigmoid { alpha, beta } => hard_sigmoid(arg(0)?, *alpha, *beta),
        Op::HardSwish => Ok((arg(0)? * hard_sigmoid(arg(0)?, 1.0 / 6.0, 0.5)?)?),
        Op::Mul => Ok(arg(0)?.broadcast_mul(arg(1)?)?),
        Op::Add => Ok(arg(0)?.broadcast_add(arg(1)?)?),
        Op::GlobalAveragePool => Ok(arg(0)?.mean_keepdim(D::Minus1)?.mean_keepdim(D::Minus2)?),
        Op::AveragePool { window, count_include_pad } => average_pool(arg(0)?, *window, *count_include_pad),
        Op::MaxPool { window } => max_pool(arg(0)?, *window),
        Op::Flatten { axis } => flatten(arg(0)?, *axis),
        Op::Reshape => reshape(arg(0)?, arg(1)?),
        Op::Gemm { alpha, beta, trans_a, trans_b } => {
            gemm(arg(0)?, arg(1)?, opt(2), *alpha, *beta, *trans_a, *trans_b)
        }
        Op::MatMul => matmul(arg(0)?, arg(1)?),
        Op::Concat { axis } => {
            let xs: Vec<&Tensor> = args.iter().flatten().collect();
            let rank = xs.first().map_or(0, |x| x.rank());
            Ok(Tensor::cat(&xs, axis_index(*axis, rank)?)?)
        }
    }
}

fn axis_index(axis: i64, rank: usize) -> Result<usize> {
    let a = if axis < 0 { axis + rank as i64 } else { axis };
    if a < 0 || a >= rank.max(1) as i64 {
        return Err(Error::Rebuild(format!("axis {axis} is out of range for rank {rank}")));
    }
    Ok(a as usize)
}

fn dims4(x: &Tensor) -> Result<(usize, usize, usize, usize)> {
    x.dims4().map_err(|_| Error::Rebuild(format!("expected an NCHW input, got shape {:?}", x.dims())))
}

/// Output size of a window along one axis.
fn out_size(input: usize, kernel: usize, stride: usize, pad: usize, dilation: usize) -> Result<usize> {
    let span = dilation * (kernel - 1) + 1;
    if input + pad < span {
        return Err(Error::Rebuild(format!("window {span} is larger than the padded input {}", input + pad)));
    }
    Ok((input + pad - span) / stride + 1)
}

/// `x (N, C, H, W)` → columns `(C·kh·kw, N·OH·OW)`; out-of-image cells hold `pad_value`.
#[derive(Debug, Clone, Copy)]
pub struct Im2Col {
    pub window: Window,
    pub pad_value: f32,
}

impl Im2Col {
    fn geometry(&self, dims: &[usize]) -> Result<[usize; 6]> {
        let [n, c, h, w] = dims else {
            return Err(Error::Rebuild(format!("im2col expects NCHW, got {dims:?}")));
        };
        let Window { kernel: [kh, kw], strides: [sh, sw], pads: [pt, pl, pb, pr], dilations: [dh, dw] } =
            self.window;
        let oh = out_size(*h, kh, sh, pt + pb, dh)?;
        let ow = out_size(*w, kw, sw, pl + pr, dw)?;
        Ok([*n, *c, *h, *w, oh, ow])
    }

    /// Visits every (column row, column, input offset or None for padding).
    fn each(&self, g: [usize; 6], mut f: impl FnMut(usize, Option<usize>)) {
        let [n, c, h, w, oh, ow] = g;
        let Window { kernel: [kh, kw], strides: [sh, sw], pads: [pt, pl, ..], dilations: [dh, dw] } =
            self.window;
        let cols = n * oh * ow;
        for ci in 0..c {
            for i in 0..kh {
                for j in 0..kw {
                    let row = (ci * kh + i) * kw + j;
                    for b in 0..n {
                        let base = (b * c + ci) * h * w;
                        for y in 0..oh {
                            let iy = (y * sh + i * dh) as isize - pt as isize;
                            let out = row * cols + (b * oh + y) * ow;
                            for x in 0..ow {
                                let ix = (x * sw + j * dw) as isize - pl as isize;
                                let inside = iy >= 0 && (iy as usize) < h && ix >= 0 && (ix as usize) < w;
                                f(out + x, inside.then(|| base + iy as usize * w + ix as usize));
                            }
                        }
                    }
                }
            }
        }
    }
}

fn contiguous_f32<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    let (start, end) = l
        .contiguous_offsets()
        .ok_or_else(|| candle_core::Error::Msg(format!("{what}: input must be contiguous")))?;
    Ok(&s.as_slice::<f32>()?[start..end])
}

fn msg(e: Error) -> candle_core::Error {
    candle_core::Error::Msg(e.to_string())
}

impl CustomOp1 for Im2Col {
    fn name(&self) -> &'static str {
        "im2col"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let x = contiguous_f32(s, l, "im2col")?;
        let g = self.geometry(l.dims()).map_err(msg)?;
        let [n, c, _, _, oh, ow] = g;
        let rows = c * self.window.kernel[0] * self.window.kernel[1];
        let mut out = vec![0f32; rows * n * oh * ow];
        self.each(g, |o, i| out[o] = i.map_or(self.pad_value, |i| x[i]));
        Ok((CpuStorage::F32(out), Shape::from((rows, n * oh * ow))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad: &Tensor) -> candle_core::Result<Option<Tensor>> {
        let op = Col2Im { im2col: *self, dims: arg.dims().to_vec() };
        Ok(Some(grad.contiguous()?.apply_op1_no_bwd(&op)?))
    }
}

/// Adjoint of [`Im2Col`]: sums columns back into an `(N, C, H, W)` tensor.
struct Col2Im {
    im2col: Im2Col,
    dims: Vec<usize>,
}

impl CustomOp1 for Col2Im {
    fn name(&self) -> &'static str {
        "col2im"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> candle_core::Result<(CpuStorage, Shape)> {
        let cols = contiguous_f32(s, l, "col2im")?;
        let g = self.im2col.geometry(&self.dims).map_err(msg)?;
        let mut out = vec![0f32; self.dims.iter().product()];
        self.im2col.each(g, |o, i| {
            if let Some(i) = i {
                out[i] += cols[o];
            }
        });
        Ok((CpuStorage::F32(out), Shape::from(self.dims.clone())))
    }
}

/// Columns of `x` for `window`, `(C·kh·kw, N·OH·OW)`, and `(OH, OW)`.
pub fn im2col(x: &Tensor, window: Window, pad_value: f32) -> Result<(Tensor, usize, usize)> {
    let op = Im2Col { window, pad_value };
    let g = op.geometry(x.dims())?;
    let cols = if x.device().is_cpu() {
        x.contiguous()?.apply_op1(op)?
    } else {
        // Other devices: the same columns through the CPU (correct, not fast).
        x.to_device(&candle_core::Device::Cpu)?.contiguous()?.apply_op1(op)?.to_device(x.device())?
    };
    Ok((cols, g[4], g[5]))
}

/// `fused`: one-group convolutions on the CPU go through [`super::conv::conv2d`].
fn conv(
    x: &Tensor,
    w: &Tensor,
    b: Option<&Tensor>,
    mut window: Window,
    groups: usize,
    fused: bool,
) -> Result<Tensor> {
    let (n, c, _, _) = dims4(x)?;
    let (f, cg, kh, kw) = dims4(w)?;
    if c != cg * groups || f % groups != 0 {
        return Err(Error::Rebuild(format!(
            "input has {c} channels, weight {:?} with {groups} groups needs {}",
            w.dims(),
            cg * groups
        )));
    }
    window.kernel = [kh, kw];
    if fused && groups == 1 && x.device().is_cpu() {
        return super::conv::conv2d(x, w, b, window);
    }
    let fg = f / groups;
    let mut outs = Vec::with_capacity(groups);
    let mut size = (0, 0);
    for g in 0..groups {
        let xg = if groups == 1 { x.clone() } else { x.narrow(1, g * cg, cg)? };
        let wg = if groups == 1 { w.clone() } else { w.narrow(0, g * fg, fg)? };
        let (cols, oh, ow) = im2col(&xg, window, 0.0)?;
        size = (oh, ow);
        // (F, C·kh·kw) × (C·kh·kw, N·OH·OW) → (F, N, OH, OW)
        outs.push(wg.reshape((fg, cg * kh * kw))?.matmul(&cols)?.reshape((fg, n, oh, ow))?);
    }
    let y = if groups == 1 { outs.pop().expect("one group") } else { Tensor::cat(&outs, 0)? };
    let y = y.transpose(0, 1)?.contiguous()?;
    debug_assert_eq!(y.dims(), &[n, f, size.0, size.1]);
    match b {
        Some(b) => Ok(y.broadcast_add(&b.reshape((1, f, 1, 1))?)?),
        None => Ok(y),
    }
}

fn candle_conv(x: &Tensor, w: &Tensor, b: Option<&Tensor>, window: Window, groups: usize) -> Result<Tensor> {
    let [p, ..] = window.pads;
    let symmetric = window.pads.iter().all(|&q| q == p)
        && window.strides[0] == window.strides[1]
        && window.dilations[0] == window.dilations[1];
    if !symmetric {
        return Err(Error::Rebuild("candle's conv2d needs equal pads, strides and dilations".into()));
    }
    let y = x.conv2d(w, p, window.strides[0], window.dilations[0], groups)?;
    match b {
        Some(b) => Ok(y.broadcast_add(&b.reshape((1, b.elem_count(), 1, 1))?)?),
        None => Ok(y),
    }
}

fn per_channel(t: &Tensor) -> Result<Tensor> {
    Ok(t.reshape((1, t.elem_count(), 1, 1))?)
}

fn batch_norm(
    x: &Tensor,
    scale: &Tensor,
    bias: &Tensor,
    mean: &Tensor,
    var: &Tensor,
    eps: f32,
) -> Result<Tensor> {
    let inv = (var + eps as f64)?.sqrt()?.recip()?;
    let y = x.broadcast_sub(&per_channel(mean)?)?.broadcast_mul(&per_channel(&(scale * inv)?)?)?;
    Ok(y.broadcast_add(&per_channel(bias)?)?)
}

fn bound(t: Option<&Tensor>, attr: Option<f32>) -> Result<Option<f32>> {
    match t {
        Some(t) => Ok(Some(
            t.to_dtype(DType::F32)?
                .flatten_all()?
                .to_vec1::<f32>()?
                .first()
                .copied()
                .ok_or_else(|| Error::Rebuild("Clip bound is empty".into()))?,
        )),
        None => Ok(attr),
    }
}

fn clip(x: &Tensor, min: Option<f32>, max: Option<f32>) -> Result<Tensor> {
    let mut y = x.clone();
    if let Some(lo) = min {
        y = y.maximum(lo)?;
    }
    if let Some(hi) = max {
        y = y.minimum(hi)?;
    }
    Ok(y)
}

fn sigmoid(x: &Tensor) -> Result<Tensor> {
    Ok((x.neg()?.exp()? + 1.0)?.recip()?)
}

fn hard_sigmoid(x: &Tensor, alpha: f32, beta: f32) -> Result<Tensor> {
    Ok(x.affine(alpha as f64, beta as f64)?.maximum(0f32)?.minimum(1f32)?)
}

/// Runs a pooling window over every channel separately: columns `(kh·kw, N·C·OH·OW)`.
fn pool_columns(x: &Tensor, window: Window, pad_value: f32) -> Result<(Tensor, [usize; 4])> {
    let (n, c, h, w) = dims4(x)?;
    let (cols, oh, ow) = im2col(&x.reshape((n * c, 1, h, w))?, window, pad_value)?;
    Ok((cols, [n, c, oh, ow]))
}

fn average_pool(x: &Tensor, window: Window, count_include_pad: bool) -> Result<Tensor> {
    let (cols, [n, c, oh, ow]) = pool_columns(x, window, 0.0)?;
    let sum = cols.sum(0)?.reshape((n, c, oh, ow))?;
    let k = (window.kernel[0] * window.kernel[1]) as f64;
    if count_include_pad || window.pads == [0; 4] {
        return Ok((sum / k)?);
    }
    // Divide each output by the number of in-image cells of its window.
    let (_, _, h, w) = dims4(x)?;
    let ones = Tensor::ones((1, 1, h, w), DType::F32, x.device())?;
    let (counts, _, _) = im2col(&ones, window, 0.0)?;
    let counts = counts.sum(0)?.reshape((1, 1, oh, ow))?;
    Ok(sum.broadcast_div(&counts)?)
}

fn max_pool(x: &Tensor, window: Window) -> Result<Tensor> {
    let (cols, [n, c, oh, ow]) = pool_columns(x, window, f32::NEG_INFINITY)?;
    Ok(cols.max(0)?.reshape((n, c, oh, ow))?)
}

fn flatten(x: &Tensor, axis: i64) -> Result<Tensor> {
    let rank = x.rank();
    let a = if axis < 0 { axis + rank as i64 } else { axis };
    if a < 0 || a > rank as i64 {
        return Err(Error::Rebuild(format!("axis {axis} is out of range for rank {rank}")));
    }
    let outer: usize = x.dims()[..a as usize].iter().product();
    Ok(x.reshape((outer, x.elem_count() / outer.max(1)))?)
}

fn reshape(x: &Tensor, shape: &Tensor) -> Result<Tensor> {
    let spec = shape.to_dtype(DType::I64)?.flatten_all()?.to_vec1::<i64>()?;
    let mut dims = Vec::with_capacity(spec.len());
    let mut infer = None;
    for (i, &s) in spec.iter().enumerate() {
        match s {
            0 => dims.push(
                *x.dims()
                    .get(i)
                    .ok_or_else(|| Error::Rebuild(format!("shape {spec:?}: no dim {i} to copy")))?,
            ),
            -1 if infer.is_none() => {
                infer = Some(i);
                dims.push(1);
            }
            s if s > 0 => dims.push(s as usize),
            _ => return Err(Error::Rebuild(format!("invalid target shape {spec:?}"))),
        }
    }
    if let Some(i) = infer {
        let known: usize = dims.iter().product();
        if known == 0 || !x.elem_count().is_multiple_of(known) {
            return Err(Error::Rebuild(format!("cannot reshape {:?} into {spec:?}", x.dims())));
        }
        dims[i] = x.elem_count() / known;
    }
    Ok(x.reshape(dims)?)
}

fn gemm(
    a: &Tensor,
    b: &Tensor,
    c: Option<&Tensor>,
    alpha: f32,
    beta: f32,
    ta: bool,
    tb: bool,
) -> Result<Tensor> {
    let a = if ta { a.t()? } else { a.clone() };
    let b = if tb { b.t()? } else { b.clone() };
    let mut y = a.contiguous()?.matmul(&b.contiguous()?)?;
    if alpha != 1.0 {
        y = (y * alpha as f64)?;
    }
    match c {
        Some(c) if beta != 0.0 => Ok(y.broadcast_add(&(c * beta as f64)?)?),
        _ => Ok(y),
    }
}

fn matmul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.rank() < 2 || b.rank() < 2 {
        return Err(Error::Rebuild(format!(
            "MatMul of ranks {} and {} (1-D operands) is not supported",
            a.rank(),
            b.rank()
        )));
    }
    Ok(a.contiguous()?.broadcast_matmul(&b.contiguous()?)?)
}
