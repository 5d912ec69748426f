//! Which tensors are predicted, their coordinates, kernel orderings and per-filter scales.

use crate::format::{DType, Ordering};
use crate::predictor::OUTPUTS;

/// Layers with at most this many kernels are ordered by the exact greedy chain; larger ones
/// by the blocked approximation (see [`chain`]).
pub const EXACT_CHAIN_LIMIT: usize = 8192;
/// Block size of the blocked chain.
pub const CHAIN_BLOCK: usize = 2048;

/// How the kernels of one predicted tensor map to predictor coordinates.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerPlan {
    /// Index of the tensor in the model's tensor list.
    pub tensor: usize,
    /// `l` coordinate (index among predicted tensors).
    pub layer: u32,
    pub filters: usize,
    pub channels: usize,
    pub kh: usize,
    pub kw: usize,
    /// Chain position → kernel index `f·C + c`.
    pub perm: Vec<u32>,
    /// Per-filter scale the normalized prediction is multiplied by (`None`: scale 1).
    pub scales: Option<Vec<f32>>,
}

impl LayerPlan {
    /// Number of kernels (`F·C`).
    pub fn kernels(&self) -> usize {
        self.filters * self.channels
    }
}

/// Whether a tensor of this shape and dtype is a convolution kernel the predictor can represent.
pub fn is_predictable(dtype: DType, shape: &[u64]) -> bool {
    dtype.is_float()
        && matches!(shape, [f, c, kh, kw] if *f > 0 && *c > 0 && (1..=3).contains(kh) && (1..=3).contains(kw))
}

/// Top-left offset of a `kh×kw` kernel inside the predicted 3×3 block (centred).
pub fn offset(kh: usize, kw: usize) -> (usize, usize) {
    ((3 - kh) / 2, (3 - kw) / 2)
}

/// Coordinates `(l/L, f/F, c/C)` of each chain position `p` (`f = p / C`, `c = p % C`), flat
/// `N×3`.
pub fn coordinates(layer: u32, layers: u32, filters: usize, channels: usize) -> Vec<f32> {
    let l = layer as f32 / layers as f32;
    let mut out = Vec::with_capacity(filters * channels * 3);
    for f in 0..filters {
        for c in 0..channels {
            out.extend([l, f as f32 / filters as f32, c as f32 / channels as f32]);
        }
    }
    out
}

/// Per-filter RMS of a `[F, C·kh·kw]` kernel tensor (1 where it is zero or subnormal).
pub fn filter_scales(values: &[f32], filters: usize) -> Vec<f32> {
    let per = values.len() / filters;
    values
        .chunks(per)
        .map(|f| {
            let rms = (f.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / per as f64).sqrt() as f32;
            // Zero or subnormal filters keep scale 1: dividing by them would overflow.
            if rms.is_normal() {
                rms
            } else {
                1.0
            }
        })
        .collect()
}

/// Training targets in chain order: for each position, the kernel divided by its filter's scale
/// `s` and placed in a 3×3 block, and a loss weight `s` on the kernel's own cells (0 elsewhere).
///
/// The weight sits between the two obvious choices, by measurement (ResNet-20, h = 180, 1,500
/// steps, 2,000 test images): weight 1 (error of the normalized kernels) 52.8%, weight `s²`
/// (`s²·(out − k/s)² = (s·out − k)²`, the error of the original weights) 74.0%, weight `s`
/// 87.0%; the original scores 92.4%.
pub fn targets(values: &[f32], plan: &LayerPlan) -> (Vec<f32>, Vec<f32>) {
    let k = plan.kh * plan.kw;
    let (r0, c0) = offset(plan.kh, plan.kw);
    let mut t = vec![0f32; plan.kernels() * OUTPUTS];
    let mut m = vec![0f32; plan.kernels() * OUTPUTS];
    for (p, &idx) in plan.perm.iter().enumerate() {
        let idx = idx as usize;
        let s = plan.scales.as_ref().map_or(1.0, |s| s[idx / plan.channels]);
        for i in 0..plan.kh {
            for j in 0..plan.kw {
                let cell = p * OUTPUTS + (r0 + i) * 3 + c0 + j;
                t[cell] = values[idx * k + i * plan.kw + j] / s;
                m[cell] = s;
            }
        }
    }
    (t, m)
}

/// Inverse of [`targets`]: writes predictions (chain order, `N×9`) into a tensor's layout.
pub fn scatter(pred: &[f32], plan: &LayerPlan, out: &mut [f32]) {
    let k = plan.kh * plan.kw;
    let (r0, c0) = offset(plan.kh, plan.kw);
    for (p, &idx) in plan.perm.iter().enumerate() {
        let idx = idx as usize;
        let s = plan.scales.as_ref().map_or(1.0, |s| s[idx / plan.channels]);
        for i in 0..plan.kh {
            for j in 0..plan.kw {
                out[idx * k + i * plan.kw + j] = pred[p * OUTPUTS + (r0 + i) * 3 + c0 + j] * s;
            }
        }
    }
}

/// Kernel ordering of one layer: `values` is `[F, C, kh, kw]` (already divided by its scales).
pub fn order(values: &[f32], filters: usize, channels: usize, ordering: Ordering) -> Vec<u32> {
    let n = filters * channels;
    let d = values.len() / n;
    let unit = normalized(values, d);
    match ordering {
        Ordering::None => (0..n as u32).collect(),
        Ordering::Crossfilter => chain(&unit, d, &(0..n as u32).collect::<Vec<_>>()),
        Ordering::Infilter => (0..filters)
            .flat_map(|f| {
                let idx: Vec<u32> = (f * channels..(f + 1) * channels).map(|i| i as u32).collect();
                chain(&unit, d, &idx)
            })
            .collect(),
    }
}

/// Each `d`-vector scaled to unit length (zero vectors stay zero).
pub fn normalized(values: &[f32], d: usize) -> Vec<f32> {
    values
        .chunks(d)
        .flat_map(|v| {
            let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
            let inv = if norm > 0.0 { 1.0 / norm } else { 0.0 };
            v.iter().map(move |x| x * inv)
        })
        .collect()
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// Greedy max-cosine chain over the items `idx` of unit vectors `unit` (dimension `d`).
///
/// Exact (NeRN's O(n²) chain from the first item) up to [`EXACT_CHAIN_LIMIT`] items. Beyond
/// that: items are sorted by their projection on the dominant direction, cut into blocks of
/// [`CHAIN_BLOCK`], and each block is chained exactly, each block starting from the item most
/// similar to the end of the previous one. O(n·block) instead of O(n²).
pub fn chain(unit: &[f32], d: usize, idx: &[u32]) -> Vec<u32> {
    chain_with(unit, d, idx, EXACT_CHAIN_LIMIT, CHAIN_BLOCK)
}

/// [`chain`] with explicit limits (for measuring what the blocked chain gives up).
pub fn chain_with(unit: &[f32], d: usize, idx: &[u32], exact_limit: usize, block: usize) -> Vec<u32> {
    if idx.len() <= exact_limit.max(1) || block == 0 {
        return exact_chain(unit, d, idx, None);
    }
    let dir = dominant_direction(unit, d, idx);
    let mut sorted: Vec<(f32, u32)> =
        idx.iter().map(|&i| (dot(&unit[i as usize * d..][..d], &dir), i)).collect();
    sorted.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
    let sorted: Vec<u32> = sorted.into_iter().map(|(_, i)| i).collect();
    let mut out = Vec::with_capacity(idx.len());
    for block in sorted.chunks(block) {
        let prev = out.last().copied();
        out.extend(exact_chain(unit, d, block, prev));
    }
    out
}

fn exact_chain(unit: &[f32], d: usize, idx: &[u32], after: Option<u32>) -> Vec<u32> {
    if idx.is_empty() {
        return Vec::new();
    }
    let v = |i: u32| &unit[i as usize * d..][..d];
    let mut rest: Vec<u32> = idx.to_vec();
    let mut out = Vec::with_capacity(idx.len());
    let first = match after {
        Some(a) => argmax(&rest, |j| dot(v(a), v(j))),
        None => 0,
    };
    let mut cur = rest.remove(first);
    out.push(cur);
    while !rest.is_empty() {
        let best = argmax(&rest, |j| dot(v(cur), v(j)));
        // `remove` (not swap_remove) keeps ties resolved towards the lowest original position.
        cur = rest.remove(best);
        out.push(cur);
    }
    out
}

fn argmax(items: &[u32], score: impl Fn(u32) -> f32) -> usize {
    let mut best = (0, f32::NEG_INFINITY);
    for (k, &j) in items.iter().enumerate() {
        let s = score(j);
        if s > best.1 {
            best = (k, s);
        }
    }
    best.0
}

/// Dominant direction of the items (a few power iterations on their second-moment matrix).
fn dominant_direction(unit: &[f32], d: usize, idx: &[u32]) -> Vec<f32> {
    let mut m = vec![0f64; d * d];
    for &i in idx {
        let v = &unit[i as usize * d..][..d];
        for a in 0..d {
            for b in 0..d {
                m[a * d + b] += (v[a] * v[b]) as f64;
            }
        }
    }
    let mut x = vec![1.0f64; d];
    for _ in 0..50 {
        let y: Vec<f64> = (0..d).map(|a| (0..d).map(|b| m[a * d + b] * x[b]).sum()).collect();
        let n = y.iter().map(|v| v * v).sum::<f64>().sqrt();
        if n == 0.0 {
            break;
        }
        x = y.into_iter().map(|v| v / n).collect();
    }
    x.into_iter().map(|v| v as f32).collect()
}

/// Mean cosine similarity of consecutive kernels in an order (the smoothness an order gives).
pub fn smoothness(values: &[f32], d: usize, order: &[u32]) -> f64 {
    let unit = normalized(values, d);
    let v = |i: u32| &unit[i as usize * d..][..d];
    let sum: f64 = order.windows(2).map(|w| dot(v(w[0]), v(w[1])) as f64).sum();
    sum / (order.len().saturating_sub(1).max(1)) as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lcg(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed;
        (0..n)
            .map(|_| {
                s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    }

    #[test]
    fn orderings_are_permutations() {
        let (f, c) = (8, 5);
        let v = lcg(f * c * 9, 1);
        for o in [Ordering::None, Ordering::Infilter, Ordering::Crossfilter] {
            let mut p = order(&v, f, c, o);
            p.sort();
            assert_eq!(p, (0..(f * c) as u32).collect::<Vec<_>>(), "{o:?}");
        }
    }

    #[test]
    fn chain_is_smoother_than_natural_order() {
        let (f, c) = (32, 32);
        let v = lcg(f * c * 9, 7);
        let natural = smoothness(&v, 9, &order(&v, f, c, Ordering::None));
        let chained = smoothness(&v, 9, &order(&v, f, c, Ordering::Crossfilter));
        assert!(chained > natural + 0.3, "chained {chained} natural {natural}");
    }

    #[test]
    fn blocked_chain_covers_large_layers() {
        let n = EXACT_CHAIN_LIMIT + 3 * CHAIN_BLOCK + 17;
        let unit = normalized(&lcg(n * 9, 3), 9);
        let mut p = chain(&unit, 9, &(0..n as u32).collect::<Vec<_>>());
        p.sort();
        assert_eq!(p, (0..n as u32).collect::<Vec<_>>());
    }

    #[test]
    fn targets_and_scatter_are_inverse() {
        for (kh, kw) in [(3, 3), (1, 1), (2, 2), (1, 3)] {
            let (f, c) = (4, 3);
            let v = lcg(f * c * kh * kw, 5);
            let scales = filter_scales(&v, f);
            let perm = order(&v, f, c, Ordering::Crossfilter);
            let plan = LayerPlan {
                tensor: 0,
                layer: 0,
                filters: f,
                channels: c,
                kh,
                kw,
                perm,
                scales: Some(scales),
            };
            let (t, _) = targets(&v, &plan);
            let mut back = vec![0f32; v.len()];
            scatter(&t, &plan, &mut back);
            for (a, b) in v.iter().zip(&back) {
                assert!((a - b).abs() <= 1e-6 * a.abs().max(1.0), "{kh}x{kw}: {a} vs {b}");
            }
        }
    }
}
