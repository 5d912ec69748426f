//! Distillation losses on candle tensors (differentiable in the student).

use crate::error::{Error, Result};
use candle_core::{Tensor, D};

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

/// Each sample's map flattened and scaled to unit L2 norm, `(N, numel/N)`.
fn normalize(f: &Tensor) -> Result<Tensor> {
    let n = f.dim(0)?;
    let flat = f.reshape((n, f.elem_count() / n))?;
    let norm = (flat.sqr()?.sum_keepdim(1)? + 1e-12)?.sqrt()?;
    Ok(flat.broadcast_div(&norm)?)
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
        let d = (normalize(s)? - normalize(t)?)?.sqr()?.sum_all()?;
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
}
