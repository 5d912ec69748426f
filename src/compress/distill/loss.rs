//! Distillation losses on candle tensors (differentiable in the student).

use crate::error::{Error, Result};
use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor, D};

/// `log_softmax(x / T)` over the last dimension.
fn log_softmax(x: &Tensor, t: f64) -> Result<Tensor> {
    let z = (x / t)?;
    Ok(z.broadcast_sub(&z.log_sum_exp(D::Minus1)?.unsqueeze(D::Minus1)?)?)
}

/// `T² · KL(softmax(teacher/T) ‖ softmax(student/T))`, mean over the batch (Hinton et al.:
/// the T² keeps gradient magnitudes comparable across temperatures).
pub fn kl_divergence(student: &Tensor, teacher: &Tensor, temperature: f64) -> Result<Tensor> {
    let lt = log_softmax(teacher, temperature)?;
    let ls = log_softmax(student, temperature)?;
    let n = student.dim(0)? as f64;
    let kl = (lt.exp()? * (lt - ls)?)?.sum_all()?;
    Ok((kl * (temperature * temperature / n))?)
}

/// `Σ_b ‖s_b/‖s_b‖ − t_b/‖t_b‖‖²` over the samples `b` of one map (norms `√(Σx² + 1e-12)`),
/// as one op with a hand-written backward in the student (as candle ops, normalize, subtract,
/// square and sum were each a pass over the map with its own allocation, forward and backward).
struct MapLoss;

/// Per sample of `x` (`rows` samples): its norm.
fn norms(x: &[f32], rows: usize) -> Vec<f64> {
    let size = x.len() / rows.max(1);
    x.chunks_exact(size.max(1))
        .map(|r| (r.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() + 1e-12).sqrt())
        .collect()
}

fn map_slices<'a>(
    s1: &'a CpuStorage,
    l1: &Layout,
    s2: &'a CpuStorage,
    l2: &Layout,
) -> candle_core::Result<(&'a [f32], &'a [f32], usize)> {
    let get = |s: &'a CpuStorage, l: &Layout| -> candle_core::Result<&'a [f32]> {
        let (a, b) = l
            .contiguous_offsets()
            .ok_or_else(|| candle_core::Error::Msg("feature loss: maps must be contiguous".into()))?;
        Ok(&s.as_slice::<f32>()?[a..b])
    };
    if l1.dims() != l2.dims() || l1.dims().is_empty() {
        return Err(candle_core::Error::Msg(format!(
            "feature maps differ in shape: {:?} vs {:?}",
            l1.dims(),
            l2.dims()
        )));
    }
    Ok((get(s1, l1)?, get(s2, l2)?, l1.dims()[0]))
}

impl CustomOp2 for MapLoss {
    fn name(&self) -> &'static str {
        "feature-map-loss"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (s, t, n) = map_slices(s1, l1, s2, l2)?;
        let size = s.len() / n.max(1);
        let (ns, nt) = (norms(s, n), norms(t, n));
        let mut total = 0f64;
        for b in 0..n {
            let (sb, tb) = (&s[b * size..(b + 1) * size], &t[b * size..(b + 1) * size]);
            total +=
                sb.iter().zip(tb).map(|(&x, &y)| (x as f64 / ns[b] - y as f64 / nt[b]).powi(2)).sum::<f64>();
        }
        Ok((CpuStorage::F32(vec![total as f32]), Shape::from(())))
    }

    fn bwd(
        &self,
        s: &Tensor,
        t: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let g = s.apply_op2_no_bwd(t, &MapLossGrad)?;
        Ok((Some(g.broadcast_mul(grad)?), None))
    }
}

/// The gradient of [`MapLoss`] in the student: with `u = s/‖s‖`, `d = 2(u − t/‖t‖)`,
/// `∂L/∂s = d/‖s‖ − s·(s·d)/‖s‖³` per sample.
struct MapLossGrad;

impl CustomOp2 for MapLossGrad {
    fn name(&self) -> &'static str {
        "feature-map-loss-grad"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (s, t, n) = map_slices(s1, l1, s2, l2)?;
        let size = s.len() / n.max(1);
        let (ns, nt) = (norms(s, n), norms(t, n));
        let mut out = vec![0f32; s.len()];
        for b in 0..n {
            let r = b * size..(b + 1) * size;
            let (sb, tb) = (&s[r.clone()], &t[r.clone()]);
            let (is, it) = (1.0 / ns[b], 1.0 / nt[b]);
            let o = &mut out[r];
            // d = 2(s/‖s‖ − t/‖t‖), kept in `o` until the projection below.
            let mut sd = 0f64;
            for ((o, &x), &y) in o.iter_mut().zip(sb).zip(tb) {
                let d = 2.0 * (x as f64 * is - y as f64 * it);
                sd += x as f64 * d;
                *o = d as f32;
            }
            let k = (sd * is * is * is) as f32;
            let is = is as f32;
            for (o, &x) in o.iter_mut().zip(sb) {
                *o = *o * is - x * k;
            }
        }
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// NeRN's feature-map loss: for every recorded map (conv outputs and residual sums), the
/// squared distance between the per-sample L2-normalized student and teacher maps, summed over
/// maps and averaged over the batch.
pub fn feature_loss(student: &[Tensor], teacher: &[Tensor]) -> Result<Tensor> {
    if student.len() != teacher.len() || student.is_empty() {
        return Err(Error::Training(format!(
            "feature-map loss needs matching maps: student has {}, teacher {}",
            student.len(),
            teacher.len()
        )));
    }
    let n = student[0].dim(0)? as f64;
    let mut total: Option<Tensor> = None;
    for (s, t) in student.iter().zip(teacher) {
        if s.dims() != t.dims() {
            return Err(Error::Training(format!(
                "feature maps differ in shape: {:?} vs {:?}",
                s.dims(),
                t.dims()
            )));
        }
        let d = s.contiguous()?.apply_op2(&t.contiguous()?, MapLoss)?;
        total = Some(match total {
            Some(acc) => (acc + d)?,
            None => d,
        });
    }
    Ok((total.expect("at least one map") / n)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn kl_is_zero_for_equal_logits_and_positive_otherwise() {
        let a = Tensor::new(&[[1f32, 2.0, 3.0], [0.5, -1.0, 0.0]], &Device::Cpu).unwrap();
        let b = Tensor::new(&[[3f32, 2.0, 1.0], [0.5, -1.0, 0.0]], &Device::Cpu).unwrap();
        let same = kl_divergence(&a, &a, 4.0).unwrap().to_scalar::<f32>().unwrap();
        let diff = kl_divergence(&a, &b, 4.0).unwrap().to_scalar::<f32>().unwrap();
        assert!(same.abs() < 1e-6, "{same}");
        // By hand: row 0, T = 4: p = softmax([.75,.5,.25]), q = softmax([.25,.5,.75]);
        // KL(p‖q) = Σ p (log p − log q) = (p0 − p2)·0.5; × T² / batch 2.
        let e = [0.75f64.exp(), 0.5f64.exp(), 0.25f64.exp()];
        let s: f64 = e.iter().sum();
        let expect = (e[0] - e[2]) / s * 0.5 * 16.0 / 2.0;
        assert!((diff as f64 - expect).abs() < 1e-5, "{diff} vs {expect}");
    }

    #[test]
    fn feature_loss_ignores_scale_per_sample() {
        let a = Tensor::new(&[[[[1f32, 2.0]]], [[[3.0, -1.0]]]], &Device::Cpu).unwrap();
        let scaled = Tensor::new(&[[[[2f32, 4.0]]], [[[0.3, -0.1]]]], &Device::Cpu).unwrap();
        let other = Tensor::new(&[[[[2f32, 1.0]]], [[[3.0, -1.0]]]], &Device::Cpu).unwrap();
        let l0 = feature_loss(std::slice::from_ref(&a), &[scaled]).unwrap().to_scalar::<f32>().unwrap();
        let l1 = feature_loss(&[a], &[other]).unwrap().to_scalar::<f32>().unwrap();
        assert!(l0 < 1e-6, "{l0}");
        assert!(l1 > 0.1, "{l1}");
    }

    /// The fused backward matches central finite differences (in f64 terms of the loss).
    #[test]
    fn feature_loss_gradient_matches_finite_differences() {
        let vals: Vec<f32> = (0..2 * 3 * 4).map(|i| ((i * 37 % 11) as f32 - 5.0) / 3.0).collect();
        let teach: Vec<f32> = (0..2 * 3 * 4).map(|i| ((i * 13 % 7) as f32 - 3.0) / 2.0).collect();
        let t = Tensor::from_vec(teach, (2, 3, 4), &Device::Cpu).unwrap();
        let s = candle_core::Var::from_vec(vals.clone(), (2, 3, 4), &Device::Cpu).unwrap();
        let l = feature_loss(std::slice::from_ref(s.as_tensor()), std::slice::from_ref(&t)).unwrap();
        let g = l
            .backward()
            .unwrap()
            .get(s.as_tensor())
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        for i in 0..vals.len() {
            let at = |d: f32| {
                let mut v = vals.clone();
                v[i] += d;
                let x = Tensor::from_vec(v, (2, 3, 4), &Device::Cpu).unwrap();
                feature_loss(&[x], std::slice::from_ref(&t)).unwrap().to_scalar::<f32>().unwrap() as f64
            };
            let fd = (at(1e-2) - at(-1e-2)) / 2e-2;
            assert!((fd - g[i] as f64).abs() < 1e-3 * fd.abs().max(0.1), "entry {i}: {} vs {fd}", g[i]);
        }
    }
}
