//! Data-aware rounding of quantized tensors (GPTQ, Frantar et al. 2022, written from the paper):
//! a weight matrix `W` (rows × d) multiplies layer inputs `x` (d values: a convolution's
//! im2col patch, a `Gemm`'s input row); rounding `W` to `Q` changes the layer's output by
//! `(W − Q)·x`, whose mean square is `tr((W − Q) H (W − Q)ᵀ)` with `H = E[x xᵀ]`. Quantizing
//! the columns one at a time and spreading each column's rounding error over the columns not
//! yet quantized (through the Cholesky factor of `H⁻¹`) lowers that error far below rounding
//! each value to the nearest step. The stored form is the same as [`crate::format::quant`]'s
//! (one f16 scale per group, chosen by its rule from the group's values when its first column
//! is reached), so the reader is unchanged.

use crate::error::{Error, Result};
use crate::format::quant::{self, Quantized, ScaleRule};

/// Largest input dimension handled (`H` is d×d f64 and inverted in O(d³)).
pub const MAX_DIM: usize = 4096;

/// One layer's input second moments.
#[derive(Debug, Clone)]
pub struct Moments {
    /// Values per input.
    pub d: usize,
    /// `E[x xᵀ]`, d × d.
    pub h: Vec<f64>,
    /// How the weight's values meet the inputs.
    pub layout: Layout,
    /// [`inverse_cholesky_upper`] of `h`, computed on first use: a tensor's ~40 candidates share it
    /// (recomputed per candidate it took 16% of a ResNet-20 compress, perf).
    factor: std::sync::OnceLock<Option<Vec<f64>>>,
}

impl PartialEq for Moments {
    fn eq(&self, other: &Self) -> bool {
        (self.d, &self.h, self.layout) == (other.d, &other.h, other.layout)
    }
}

/// Which axis of a stored weight multiplies the layer's inputs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// Each stored row is one output's d weights (`Conv`, `Gemm` with `transB = 1`).
    OutputRows,
    /// Each of the d stored rows is one input's weights to all outputs (`MatMul`, `Gemm`
    /// with `transB = 0`: `x · W` with `W` inputs × outputs, as transformer exports store it).
    InputRows,
}

impl Moments {
    /// The moments `h` (d × d) of a layer whose weight meets its inputs as `layout` says.
    pub fn new(d: usize, h: Vec<f64>, layout: Layout) -> Self {
        Moments { d, h, layout, factor: std::sync::OnceLock::new() }
    }

    /// The upper Cholesky factor of the damped `H⁻¹` ([`inverse_cholesky_upper`]), computed once.
    fn factor(&self) -> Result<&[f64]> {
        self.factor
            .get_or_init(|| inverse_cholesky_upper(&self.h, self.d))
            .as_deref()
            .ok_or_else(|| bad_input("the input moments are not positive definite".into()))
    }

    /// Factors the moments now (the first rounding would), so that callers can do it in
    /// parallel; fails as rounding would.
    pub fn prepare(&self) -> Result<()> {
        self.factor().map(|_| ())
    }

    /// `values` of a weight with rows of `row` values rounded data-aware onto `grid` in groups
    /// of `group` along its stored rows (the codes, row-major), or `None` when these moments do
    /// not fit its shape.
    pub fn round(
        &self,
        values: &[f32],
        row: usize,
        group: usize,
        grid: &mut impl Grid,
    ) -> Option<Result<Vec<i32>>> {
        match self.layout {
            Layout::OutputRows if self.d == row => {
                Some(self.factor().and_then(|u| round_output_rows(values, self.d, group, u, grid)))
            }
            Layout::InputRows if values.len() == self.d.checked_mul(row)? => {
                Some(self.factor().and_then(|u| round_input_rows(values, self.d, group, u, grid)))
            }
            _ => None,
        }
    }

    /// `√tr(Δ H Δᵀ)` for a change `delta` of a weight with rows of `row` values: the RMS change
    /// of the layer's outputs per input (summed over outputs), or `None` when these moments do
    /// not fit its shape. O(d² · outputs), as one rounding pass.
    pub fn output_change(&self, delta: &[f32], row: usize) -> Option<f64> {
        let d = self.d;
        let sum = match self.layout {
            Layout::OutputRows if d == row && d > 0 => delta
                .chunks_exact(d)
                .map(|r| {
                    let r: Vec<f64> = r.iter().map(|&v| v as f64).collect();
                    self.h.chunks_exact(d).zip(&r).map(|(h, ra)| ra * dot(h, &r)).sum::<f64>()
                })
                .sum::<f64>(),
            Layout::InputRows if delta.len() == d.checked_mul(row)? && row > 0 => {
                // tr(Δᵀ H Δ) = Σ_ab H_ab ⟨Δ_a, Δ_b⟩ over the stored rows Δ_a.
                let rows: Vec<Vec<f64>> =
                    delta.chunks_exact(row).map(|r| r.iter().map(|&v| v as f64).collect()).collect();
                (0..d)
                    .map(|a| {
                        let h = &self.h[a * d..(a + 1) * d];
                        h[a] * dot(&rows[a], &rows[a])
                            + 2.0 * (a + 1..d).map(|b| h[b] * dot(&rows[a], &rows[b])).sum::<f64>()
                    })
                    .sum::<f64>()
            }
            _ => return None,
        };
        Some(sum.max(0.0).sqrt())
    }

    /// [`Self::round`] onto the int-`bits` grid of [`quant`] (one f16 scale per group, chosen
    /// by [`ScaleRule::Mse`] from the group's values when its first column is reached).
    pub fn quantize(&self, values: &[f32], row: usize, group: usize, bits: u8) -> Option<Result<Quantized>> {
        // Stored rows of `row` values (an output's weights, or an input's weights to every
        // output), each cut into groups of `group`.
        let mut grid = match IntGrid::new(bits, values.len() / row.max(1), row / group.max(1)) {
            Ok(g) => g,
            Err(e) => return Some(Err(e)),
        };
        let codes = self.round(values, row, group, &mut grid)?;
        Some(codes.map(|codes| Quantized {
            bits,
            group,
            scales: grid.scales,
            values: codes.into_iter().map(|q| q as i8).collect(),
        }))
    }
}

/// A rounding grid for [`round_output_rows`] and [`round_input_rows`]: where each value of a
/// group can go, chosen group by group as the columns are reached.
pub trait Grid {
    /// Prepares group `g` of stored row `r` from its `current` values (rounding errors of the
    /// columns before it already spread over them).
    fn begin(&mut self, r: usize, g: usize, current: &[f32]) -> Result<()>;
    /// The code of `x` in group `g` of stored row `r`, and the
    /// value it decodes to.
    fn round(&mut self, r: usize, g: usize, x: f32) -> (i32, f32);
}

/// The int-`bits` grid of [`quant`]: one f16 scale per group.
struct IntGrid {
    bits: u8,
    groups: usize,
    scales: Vec<half::f16>,
}

impl IntGrid {
    fn new(bits: u8, rows: usize, groups: usize) -> Result<Self> {
        if !quant::valid_bits(bits) {
            return Err(bad_input(format!("{bits} bits")));
        }
        Ok(IntGrid { bits, groups, scales: vec![half::f16::ZERO; rows * groups] })
    }
}

impl Grid for IntGrid {
    fn begin(&mut self, r: usize, g: usize, current: &[f32]) -> Result<()> {
        self.scales[r * self.groups + g] = quant::group_scale(current, self.bits, ScaleRule::Mse)
            .ok_or_else(|| bad_input(format!("row {r}: the scale exceeds the f16 range")))?;
        Ok(())
    }

    fn round(&mut self, r: usize, g: usize, x: f32) -> (i32, f32) {
        let s = self.scales[r * self.groups + g];
        let code = quant::quant(x, s, self.bits);
        (code as i32, quant::dequant(code, s))
    }
}

/// Rows [`round_output_rows`] rounds together (16 rows of 896 f64 values: 115 KB, within L2).
const ROW_BLOCK: usize = 16;

/// Rounds `values` (rows × `d`, row-major) onto `grid` in groups of `group` values along each
/// row (`group` divides `d`), spreading rounding errors by `u` (d × d, the [`inverse_cholesky_upper`]
/// factor of `E[x xᵀ]`): the codes.
fn round_output_rows(
    values: &[f32],
    d: usize,
    group: usize,
    u: &[f64],
    grid: &mut impl Grid,
) -> Result<Vec<i32>> {
    if d == 0 || !values.len().is_multiple_of(d) || group == 0 || !d.is_multiple_of(group) || u.len() != d * d
    {
        return Err(bad_input(format!(
            "{} values, rows of {d}, groups of {group}, H of {}",
            values.len(),
            u.len()
        )));
    }
    let rows = values.len() / d;
    let mut w: Vec<f64> = values.iter().map(|&v| v as f64).collect();
    let mut q = vec![0i32; values.len()];
    // Rows are independent: a block of them stays in cache while `u` streams past once per
    // block, instead of the whole matrix passing once per column (bench `gptq/cpu`, 1,216 × 896:
    // 202 ms against 235 ms). The same operations in the same order per row: the same codes.
    for first in (0..rows).step_by(ROW_BLOCK) {
        let block = first..(first + ROW_BLOCK).min(rows);
        for j in 0..d {
            let g = j / group;
            let uj = &u[j * d..(j + 1) * d];
            for r in block.clone() {
                let row = &mut w[r * d..(r + 1) * d];
                if j % group == 0 {
                    let current: Vec<f32> = row[j..j + group].iter().map(|&v| v as f32).collect();
                    grid.begin(r, g, &current)?;
                }
                let (code, value) = grid.round(r, g, row[j] as f32);
                q[r * d + j] = code;
                let err = (row[j] - value as f64) / uj[j];
                for (x, f) in row[j + 1..].iter_mut().zip(&uj[j + 1..]) {
                    *x -= err * f;
                }
            }
        }
    }
    Ok(q)
}

/// [`round_output_rows`] for a weight stored as [`Layout::InputRows`]: `values` is d rows (one
/// per input) of outputs, rounded in groups of `group` along each row, so one input's weights
/// are rounded at once and their rounding errors spread over the rows of the inputs not yet
/// rounded. The same algorithm on the transposed matrix, with the stored form's groups.
fn round_input_rows(
    values: &[f32],
    d: usize,
    group: usize,
    u: &[f64],
    grid: &mut impl Grid,
) -> Result<Vec<i32>> {
    let n = values.len().checked_div(d).unwrap_or(0);
    if n == 0 || n * d != values.len() || group == 0 || !n.is_multiple_of(group) || u.len() != d * d {
        return Err(bad_input(format!(
            "{} values, {d} input rows, groups of {group}, H of {}",
            values.len(),
            u.len()
        )));
    }
    let mut w: Vec<f64> = values.iter().map(|&v| v as f64).collect();
    let groups = n / group;
    let mut q = vec![0i32; values.len()];
    let mut err = vec![0.0; n];
    for i in 0..d {
        let (done, rest) = w.split_at_mut((i + 1) * n);
        let row = &done[i * n..];
        for g in 0..groups {
            let current: Vec<f32> = row[g * group..(g + 1) * group].iter().map(|&v| v as f32).collect();
            grid.begin(i, g, &current)?;
        }
        for (j, e) in err.iter_mut().enumerate() {
            let (code, value) = grid.round(i, j / group, row[j] as f32);
            q[i * n + j] = code;
            *e = (row[j] - value as f64) / u[i * d + i];
        }
        for (k, later) in rest.chunks_exact_mut(n).enumerate() {
            let f = u[i * d + i + 1 + k];
            if f != 0.0 {
                later.iter_mut().zip(&err).for_each(|(v, e)| *v -= e * f);
            }
        }
    }
    Ok(q)
}

/// [`round_output_rows`] onto the int-`bits` grid (the stored form of [`quant`]).
pub fn quantize(values: &[f32], d: usize, group: usize, bits: u8, h: &[f64]) -> Result<Quantized> {
    let m = Moments::new(d, h.to_vec(), Layout::OutputRows);
    m.quantize(values, d, group, bits)
        .unwrap_or_else(|| Err(bad_input(format!("{} values, rows of {d}, H of {}", values.len(), h.len()))))
}

/// [`round_input_rows`] onto the int-`bits` grid.
pub fn quantize_input_rows(values: &[f32], d: usize, group: usize, bits: u8, h: &[f64]) -> Result<Quantized> {
    let m = Moments::new(d, h.to_vec(), Layout::InputRows);
    let row = values.len().checked_div(d).unwrap_or(0);
    m.quantize(values, row, group, bits).unwrap_or_else(|| {
        Err(bad_input(format!("{} values, {d} input rows, H of {}", values.len(), h.len())))
    })
}

/// `⟨a, b⟩` in four running sums (the compiler vectorizes it; one sum does not).
fn dot(a: &[f64], b: &[f64]) -> f64 {
    let mut s = [0.0; 4];
    let (ca, cb) = (a.chunks_exact(4), b.chunks_exact(4));
    let tail: f64 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..4 {
            s[i] += x[i] * y[i];
        }
    }
    s.iter().sum::<f64>() + tail
}

/// An error of data-aware quantization.
fn bad_input(what: String) -> Error {
    Error::Training(format!("data-aware quantization: {what}"))
}

/// The upper Cholesky factor `U` of `H⁻¹` (`H⁻¹ = Uᵀ U`), after damping `H` by 1% of its mean
/// diagonal (GPTQ's choice) and giving inputs that never vary (zero diagonal) a unit one.
fn inverse_cholesky_upper(h: &[f64], d: usize) -> Option<Vec<f64>> {
    let mut a = h.to_vec();
    let mean = (0..d).map(|i| a[i * d + i]).sum::<f64>() / d as f64;
    let damp = 0.01 * if mean > 0.0 { mean } else { 1.0 };
    for i in 0..d {
        if a[i * d + i] <= 0.0 {
            a[i * d + i] = 1.0;
        }
        a[i * d + i] += damp;
    }
    let l = cholesky(&a, d)?;
    // H⁻¹ = L⁻ᵀ L⁻¹: invert the lower triangle, then multiply.
    let mut li = vec![0.0; d * d];
    for i in 0..d {
        li[i * d + i] = 1.0 / l[i * d + i];
        for j in 0..i {
            let s: f64 = (j..i).map(|k| l[i * d + k] * li[k * d + j]).sum();
            li[i * d + j] = -s / l[i * d + i];
        }
    }
    let mut inv = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..=i {
            let s: f64 = (i..d).map(|k| li[k * d + i] * li[k * d + j]).sum();
            inv[i * d + j] = s;
            inv[j * d + i] = s;
        }
    }
    // Upper factor of H⁻¹ = the transpose of its lower Cholesky factor.
    let lc = cholesky(&inv, d)?;
    let mut u = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..=i {
            u[j * d + i] = lc[i * d + j];
        }
    }
    Some(u)
}

/// Lower Cholesky factor of a symmetric positive definite `a` (d × d), `None` if it is not.
fn cholesky(a: &[f64], d: usize) -> Option<Vec<f64>> {
    let mut l = vec![0.0; d * d];
    for i in 0..d {
        for j in 0..=i {
            let s: f64 = (0..j).map(|k| l[i * d + k] * l[j * d + k]).sum();
            if i == j {
                let v = a[i * d + i] - s;
                if v <= 0.0 || !v.is_finite() {
                    return None;
                }
                l[i * d + i] = v.sqrt();
            } else {
                l[i * d + j] = (a[i * d + j] - s) / l[j * d + j];
            }
        }
    }
    Some(l)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compress::train::Rng;

    /// Output error `Σ ((W − Q) x)²` over samples `xs` (n × d).
    fn output_error(w: &[f32], q: &[f32], xs: &[f64], d: usize) -> f64 {
        let rows = w.len() / d;
        xs.chunks(d)
            .map(|x| {
                (0..rows)
                    .map(|r| (0..d).map(|j| (w[r * d + j] - q[r * d + j]) as f64 * x[j]).sum::<f64>().powi(2))
                    .sum::<f64>()
            })
            .sum()
    }

    /// `n` samples of `d` strongly correlated features (a shared base, small noise and a
    /// `slope` per feature, as neighbouring pixels of a patch are) and their `E[x xᵀ]`.
    fn correlated(rng: &mut Rng, d: usize, n: usize, slope: f64) -> (Vec<f64>, Vec<f64>) {
        let mut xs = Vec::with_capacity(n * d);
        for _ in 0..n {
            let base = rng.uniform() * 2.0 - 1.0;
            xs.extend((0..d).map(|j| base + 0.3 * (rng.uniform() - 0.5) + slope * j as f64));
        }
        let mut h = vec![0.0; d * d];
        for x in xs.chunks(d) {
            for i in 0..d {
                for j in 0..d {
                    h[i * d + j] += x[i] * x[j] / n as f64;
                }
            }
        }
        (xs, h)
    }

    #[test]
    fn cholesky_inverse_factor_is_exact_on_a_small_matrix() {
        let h = [4.0, 2.0, 2.0, 3.0];
        let u = inverse_cholesky_upper(&h, 2).unwrap();
        // Uᵀ U = (H + damp I)⁻¹ with damp = 0.035.
        let (a, b, c) = (4.035, 2.0, 3.035);
        let det = a * c - b * b;
        let inv = [c / det, -b / det, -b / det, a / det];
        for i in 0..2 {
            for j in 0..2 {
                let s: f64 = (0..2).map(|k| u[k * 2 + i] * u[k * 2 + j]).sum();
                assert!((s - inv[i * 2 + j]).abs() < 1e-12, "{i},{j}: {s} vs {}", inv[i * 2 + j]);
            }
        }
    }

    #[test]
    fn output_change_is_the_rms_output_change_in_both_layouts() {
        let (d, rows, n) = (12, 5, 200);
        let mut rng = Rng::new(3);
        let (xs, h) = correlated(&mut rng, d, n, 0.05);
        let delta: Vec<f32> = (0..rows * d).map(|_| (rng.uniform() - 0.5) as f32).collect();
        let zero = vec![0f32; rows * d];
        let want = (output_error(&delta, &zero, &xs, d) / n as f64).sqrt();
        let got = Moments::new(d, h.clone(), Layout::OutputRows).output_change(&delta, d).unwrap();
        assert!((got - want).abs() < 1e-9 * want, "{got} vs {want}");
        // The same change stored inputs × outputs.
        let t: Vec<f32> = (0..d * rows).map(|k| delta[(k % rows) * d + k / rows]).collect();
        let got = Moments::new(d, h.clone(), Layout::InputRows).output_change(&t, rows).unwrap();
        assert!((got - want).abs() < 1e-9 * want, "{got} vs {want}");
        assert_eq!(Moments::new(d, h, Layout::OutputRows).output_change(&delta, d + 1), None);
    }

    #[test]
    fn correlated_inputs_give_a_smaller_output_error_than_rounding() {
        let (d, rows, n) = (32, 8, 512);
        let mut rng = Rng::new(5);
        let (xs, h) = correlated(&mut rng, d, n, 0.01);
        let w: Vec<f32> = (0..rows * d).map(|_| (rng.uniform() * 2.0 - 1.0) as f32).collect();
        for bits in [2u8, 3, 4] {
            let rtn = quant::fake_quantize(&w, 16, bits, ScaleRule::Mse).unwrap();
            let gptq = quantize(&w, d, 16, bits, &h).unwrap().dequantize();
            let (e_rtn, e_gptq) = (output_error(&w, &rtn, &xs, d), output_error(&w, &gptq, &xs, d));
            assert!(e_gptq < e_rtn, "{bits} bits: GPTQ {e_gptq} vs rounding {e_rtn}");
        }
    }

    #[test]
    fn input_rows_give_a_smaller_output_error_than_rounding() {
        // `x · W` with W stored inputs × outputs (a MatMul weight), correlated inputs.
        let (d, outputs, n) = (24, 48, 400);
        let mut rng = Rng::new(9);
        let (xs, h) = correlated(&mut rng, d, n, 0.02);
        let w: Vec<f32> = (0..d * outputs).map(|_| (rng.uniform() * 2.0 - 1.0) as f32).collect();
        let transpose =
            |m: &[f32]| -> Vec<f32> { (0..outputs * d).map(|k| m[(k % d) * outputs + k / d]).collect() };
        for bits in [2u8, 3, 4] {
            let rtn = quant::fake_quantize(&w, 16, bits, ScaleRule::Mse).unwrap();
            let gptq = quantize_input_rows(&w, d, 16, bits, &h).unwrap();
            assert_eq!((gptq.scales.len(), gptq.values.len()), (d * outputs / 16, d * outputs));
            let gptq = gptq.dequantize();
            let (wt, rt, gt) = (transpose(&w), transpose(&rtn), transpose(&gptq));
            let (e_rtn, e_gptq) = (output_error(&wt, &rt, &xs, d), output_error(&wt, &gt, &xs, d));
            assert!(e_gptq < e_rtn, "{bits} bits: GPTQ {e_gptq} vs rounding {e_rtn}");
        }
        let m = Moments::new(d, h, Layout::InputRows);
        assert!(m.quantize(&w, outputs, 16, 4).is_some());
        assert!(m.quantize(&w[..d * 16], outputs, 16, 4).is_none(), "wrong shape: nearest rounding");
    }
}
