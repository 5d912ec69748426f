//! The compressor's plan: which blocks are chained in which order (the greedy chain), the
//! per-filter scales and the training targets. The geometry they rest on (grids, cells,
//! coordinates, scatter) is the format's: [`crate::format::geometry`], re-exported here.

use crate::compress::select::Decision;
use crate::compress::CompressOptions;
use crate::error::{Error, Result};
pub use crate::format::geometry::{cells, coordinates, prediction_ranges, scatter, Grid, LayerPlan};
use crate::format::predictor::OUTPUTS;
use crate::format::{self, Ordering, SourceKind};
use crate::format::{DType, Layout};
use crate::ingest::SourceModel;

/// Layers with at most this many kernels are ordered by the exact greedy chain; larger ones
/// by the blocked approximation (see [`chain`]).
pub const EXACT_CHAIN_LIMIT: usize = 8192;
/// Block size of the blocked chain.
pub const CHAIN_BLOCK: usize = 2048;

/// Whether a tensor of this dtype and shape has a grid in `layout` (float, no zero dims).
pub fn is_predictable(dtype: DType, shape: &[u64], layout: Layout) -> bool {
    let shape: Vec<usize> = shape.iter().map(|&d| d as usize).collect();
    dtype.is_float() && Grid::new(layout, &shape).is_ok()
}

/// Per-row RMS of a tensor with `rows` contiguous rows (1 where it is zero or subnormal).
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

/// The blocks of a tensor in natural block order (`N×9`, padding 0), each divided by its row's
/// scale: what the ordering chains.
pub fn blocks(values: &[f32], grid: &Grid, scales: Option<&[f32]>) -> Vec<f32> {
    let mut out = vec![0f32; grid.blocks() * OUTPUTS];
    for (b, block) in out.chunks_mut(OUTPUTS).enumerate() {
        let s = scales.map_or(1.0, |s| s[b / grid.cols]);
        for (i, v) in block.iter_mut().enumerate() {
            if let Some(e) = grid.cell(b, i) {
                *v = values[e] / s;
            }
        }
    }
    out
}

/// Training targets in chain order: for each position, the block divided by its row's scale
/// `s`, and a loss weight `s` on the block's real cells (0 on padding).
///
/// The weight sits between the two obvious choices, by measurement (ResNet-20, h = 180, 1,500
/// steps, 2,000 test images): weight 1 (error of the normalized kernels) 52.8%, weight `s²`
/// (`s²·(out − k/s)² = (s·out − k)²`, the error of the original weights) 74.0%, weight `s`
/// 87.0%; the original scores 92.4%.
pub fn targets(values: &[f32], plan: &LayerPlan) -> (Vec<f32>, Vec<f32>) {
    let mut t = vec![0f32; plan.blocks() * OUTPUTS];
    let mut m = vec![0f32; plan.blocks() * OUTPUTS];
    for (k, e, s) in cells(plan) {
        t[k] = values[e] / s;
        m[k] = s;
    }
    (t, m)
}

/// Block ordering of one layer: `values` holds `filters × channels` blocks of equal size in
/// natural order (e.g. [`blocks`]); `infilter` chains within each row.
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

/// The compressor's plan of a source model.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The predicted layers (grids, orderings, scales), in layer order.
    pub layers: Vec<LayerPlan>,
    /// The f32 values of each predicted layer's tensor, in the same order.
    pub values: Vec<Vec<f32>>,
    /// What happens to every tensor of the model, in model order.
    pub decisions: Vec<Decision>,
}

/// The predicted layers of a source model (grids, orderings, scales), their values, and the
/// decision for every tensor.
pub fn make_plan(model: &SourceModel, opts: &CompressOptions) -> Result<Plan> {
    let decisions = opts.selection.decide_all(model)?;
    let mut plans = Vec::new();
    let mut values = Vec::new();
    for (i, t) in model.tensors.iter().enumerate() {
        let Decision::Predict(layout) = decisions[i] else { continue };
        let v = format::codec::to_f32(t.dtype, &t.data).expect("float");
        if let Some(bad) = v.iter().find(|x| !x.is_finite()) {
            return Err(Error::Training(format!(
                "tensor {} contains {bad}; nerp cannot fit non-finite weights",
                t.name
            )));
        }
        let dims: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
        let grid =
            Grid::new(layout, &dims).map_err(|what| Error::Training(format!("tensor {}: {what}", t.name)))?;
        // Rounded to the stored precision first, so the predictor is fitted to what is stored.
        let scales = opts.filter_scales.then(|| {
            let s = filter_scales(&v, grid.rows);
            let stored = format::codec::from_f32(opts.scale_dtype.dtype(), &s).expect("float");
            let back = format::codec::to_f32(opts.scale_dtype.dtype(), &stored).expect("float");
            // A scale that rounds to 0 in f16 (RMS below 3e-8) keeps scale 1, as in plan.
            back.into_iter().map(|x| if x.is_normal() { x } else { 1.0 }).collect()
        });
        let blocks = blocks(&v, &grid, scales.as_deref());
        let perm = order(&blocks, grid.rows, grid.cols, opts.ordering);
        let layer = plans.len() as u32;
        plans.push(LayerPlan { tensor: i, layer, grid, perm, scales });
        values.push(v);
    }
    Ok(Plan { layers: plans, values, decisions })
}

/// Applies `opts.channels` to `model` (ONNX: permute the channel groups; otherwise fall back
/// to a stored chain) and returns the options the rest of the pipeline uses.
pub(crate) fn with_channel_order(model: &mut SourceModel, opts: &CompressOptions) -> Result<CompressOptions> {
    let mut opts = opts.clone();
    if !opts.channels {
        return Ok(opts);
    }
    if model.kind != SourceKind::Onnx {
        opts.channels = false;
        if opts.ordering == Ordering::None {
            opts.ordering = Ordering::Crossfilter;
        }
        return Ok(opts);
    }
    let report = crate::compress::permute::permute_model(model)?;
    opts.metadata.insert(
        crate::compress::permute::CHANNEL_ORDER_KEY.into(),
        format!("chain over {} groups", report.groups.len()),
    );
    Ok(opts)
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

    use crate::format::geometry::tests::cases;

    #[test]
    fn targets_and_scatter_are_inverse() {
        for (layout, shape) in cases() {
            let grid = Grid::new(layout, &shape).unwrap();
            let v = lcg(grid.numel(), 5);
            let scales = filter_scales(&v, grid.rows);
            let perm = order(&blocks(&v, &grid, Some(&scales)), grid.rows, grid.cols, Ordering::Crossfilter);
            let plan = LayerPlan { tensor: 0, layer: 0, grid, perm, scales: Some(scales) };
            let (t, m) = targets(&v, &plan);
            assert_eq!(m.iter().filter(|&&w| w > 0.0).count(), v.len());
            let mut back = vec![f32::NAN; v.len()];
            scatter(&t, &plan, &mut back);
            for (a, b) in v.iter().zip(&back) {
                assert!((a - b).abs() <= 1e-6 * a.abs().max(1.0), "{shape:?}: {a} vs {b}");
            }
        }
    }
}
