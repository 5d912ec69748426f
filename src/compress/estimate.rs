//! The errors of many versions of one tensor (its ~40 codec candidates, or its residuals) without
//! running the model for each: a cheap *proxy* of each version's error (the change of the
//! layer's outputs, `√tr(ΔW H ΔWᵀ)` by its input moments, else `‖ΔW‖`) orders them; the model
//! runs on a few *anchors* spread over that order, and every other version's error is the
//! anchors' error per unit of proxy, interpolated in `log proxy`, times its own proxy.
//!
//! Running the model for every candidate was 55% of a ResNet-20 compress (perf, 39 candidates
//! per matrix, 64 images each). The estimate only steers the allocation: the allocation then
//! measures each tensor's pick and its neighbours before it settles, and every allocation the
//! budget considers is measured as a whole ([`crate::compress::choose::decide`]).

use crate::codec::gptq::Moments;
use crate::compress::choose::Measure;
use crate::error::Result;

/// The tensor whose versions are measured.
pub struct Source<'a> {
    /// Its index in the model.
    pub tensor: usize,
    /// The source's values.
    pub original: &'a [f32],
    /// Values per stored row.
    pub row: usize,
    /// The layer's input moments, where known.
    pub h: Option<&'a Moments>,
}

/// The error of each of the versions of tensor `of` (`family[k]` says how version k was
/// rounded, `values(k)` gives its values). Each family is estimated from its own anchors,
/// `anchors` shared in proportion to the families' sizes (at least one each): on ResNet-20 a
/// dead zone's error per unit of proxy is 1.3–1.5× that of rounding to nearest at the same
/// rung (it shrinks the weights coherently). With weight errors (cheap) or `anchors` = 0 or ≥
/// the number of versions, every version is measured. Returns each error and whether it was
/// measured.
pub fn errors(
    measure: &Measure,
    of: &Source,
    family: &[u8],
    values: impl Fn(usize) -> Vec<f32>,
    anchors: usize,
) -> Result<Vec<(f64, bool)>> {
    let Source { tensor, original, row, h } = *of;
    let n = family.len();
    if matches!(measure, Measure::Weights { .. }) || anchors == 0 || anchors >= n {
        return (0..n).map(|k| Ok((measure.error(tensor, original, &values(k))?, true))).collect();
    }
    let proxies: Vec<f64> = (0..n)
        .map(|k| {
            let delta: Vec<f32> = values(k).iter().zip(original).map(|(v, o)| v - o).collect();
            h.and_then(|m| m.output_change(&delta, row))
                .unwrap_or_else(|| delta.iter().map(|d| (*d as f64).powi(2)).sum::<f64>().sqrt())
        })
        .collect();
    let mut out = vec![(0.0, false); n];
    let mut kinds = family.to_vec();
    kinds.sort_unstable();
    kinds.dedup();
    for f in kinds {
        let members: Vec<usize> = (0..n).filter(|&k| family[k] == f).collect();
        let share = (anchors * members.len()).div_ceil(n).max(1);
        let p: Vec<f64> = members.iter().map(|&k| proxies[k]).collect();
        let mut measured = vec![None; members.len()];
        for j in pick(&p, share) {
            measured[j] = Some(measure.error(tensor, original, &values(members[j]))?);
        }
        for (j, e) in interpolate(&p, &measured).into_iter().enumerate() {
            out[members[j]] = (e, measured[j].is_some() || p[j] <= 0.0);
        }
    }
    Ok(out)
}

/// Up to `anchors` versions spread evenly over the order of their (positive) proxies, the
/// smallest and the largest included (one anchor: the middle one); versions of proxy 0 change
/// nothing and need no run.
fn pick(proxies: &[f64], anchors: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..proxies.len()).filter(|&k| proxies[k] > 0.0).collect();
    order.sort_by(|&a, &b| proxies[a].total_cmp(&proxies[b]).then(a.cmp(&b)));
    let m = order.len();
    if m <= anchors {
        return order;
    }
    if anchors == 1 {
        return vec![order[m / 2]];
    }
    let mut at: Vec<usize> =
        (0..anchors).map(|a| order[(a * (m - 1) + (anchors - 1) / 2) / (anchors - 1)]).collect();
    at.dedup();
    at
}

/// Every version's error: measured where given; 0 where its proxy is 0; else its proxy times
/// the error per proxy of the anchors around it, linear in `log proxy` between them and that of
/// the nearest anchor beyond them. An infinite error (a non-finite output) carries to every
/// version with a larger proxy than its anchor's, up to the next finite anchor.
fn interpolate(proxies: &[f64], measured: &[Option<f64>]) -> Vec<f64> {
    let mut anchors: Vec<(f64, f64)> = proxies
        .iter()
        .zip(measured)
        .filter_map(|(&p, e)| e.filter(|_| p > 0.0).map(|e| (p, e / p)))
        .collect();
    anchors.sort_by(|a, b| a.0.total_cmp(&b.0));
    proxies
        .iter()
        .zip(measured)
        .map(|(&p, e)| match (e, anchors.as_slice()) {
            (Some(e), _) => *e,
            _ if p <= 0.0 => 0.0,
            (None, []) => f64::INFINITY,
            (None, a) => {
                let above = a.partition_point(|x| x.0 < p);
                let ratio = match (above.checked_sub(1).map(|i| a[i]), a.get(above)) {
                    (Some(lo), Some(hi)) if hi.0 > lo.0 => {
                        let t = (p.ln() - lo.0.ln()) / (hi.0.ln() - lo.0.ln());
                        if lo.1.is_finite() && hi.1.is_finite() {
                            (1.0 - t) * lo.1 + t * hi.1
                        } else if !lo.1.is_finite() {
                            f64::INFINITY
                        } else {
                            lo.1
                        }
                    }
                    (Some(lo), _) => lo.1,
                    (None, Some(hi)) => hi.1,
                    (None, None) => unreachable!("anchors are not empty"),
                };
                ratio * p
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn anchors_span_the_order_and_skip_unchanged_versions() {
        let proxies = [5.0, 0.0, 1.0, 3.0, 2.0, 4.0, 6.0];
        assert_eq!(pick(&proxies, 3), vec![2, 5, 6]);
        assert_eq!(pick(&proxies, 10), vec![2, 4, 3, 5, 0, 6]);
        assert_eq!(pick(&proxies, 2), vec![2, 6]);
        assert_eq!(pick(&proxies, 1), vec![5]);
    }

    #[test]
    fn a_linear_error_is_recovered_exactly_and_a_curved_one_between_its_anchors() {
        // Error = 2·proxy: the ratio is 2 everywhere.
        let proxies: Vec<f64> = (1..=12).map(|k| k as f64 * 0.1).collect();
        let mut measured = vec![None; 12];
        for k in pick(&proxies, 4) {
            measured[k] = Some(2.0 * proxies[k]);
        }
        for (p, e) in proxies.iter().zip(interpolate(&proxies, &measured)) {
            assert!((e - 2.0 * p).abs() < 1e-12, "{p}: {e}");
        }
        // Error = proxy²: estimates lie between the anchors' ratios, exact at the anchors.
        let mut measured = vec![None; 12];
        let at = pick(&proxies, 4);
        for &k in &at {
            measured[k] = Some(proxies[k] * proxies[k]);
        }
        let est = interpolate(&proxies, &measured);
        for w in at.windows(2) {
            for k in w[0]..=w[1] {
                let (lo, hi) = (proxies[w[0]] * proxies[k], proxies[w[1]] * proxies[k]);
                assert!(est[k] >= lo - 1e-12 && est[k] <= hi + 1e-12, "{k}: {} not in [{lo}, {hi}]", est[k]);
            }
        }
    }

    #[test]
    fn unchanged_versions_cost_nothing_and_a_broken_anchor_breaks_what_lies_beyond() {
        let proxies = [0.0, 1.0, 2.0, 3.0, 4.0];
        let measured = [None, Some(1.0), None, Some(f64::INFINITY), None];
        let e = interpolate(&proxies, &measured);
        assert_eq!(e[0], 0.0);
        assert_eq!(e[2], 2.0);
        assert!(e[4].is_infinite());
    }
}
