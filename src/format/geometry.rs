//! The geometry of spec section 5.1: how a predicted tensor is cut into blocks of 3×3 cells
//! (its [`Grid`]), the coordinates of its chain positions, and the walk from predictions back
//! into the tensor (permutation and per-row scales applied).

use super::predictor::OUTPUTS;
use super::Layout;

/// How one predicted tensor maps to predictor coordinates.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerPlan {
    /// Index of the tensor in the model's tensor list.
    pub tensor: usize,
    /// `l` coordinate (index among predicted tensors).
    pub layer: u32,
    /// How the tensor is cut into 3×3 blocks.
    pub grid: Grid,
    /// Chain position → block index `row·cols + col`.
    pub perm: Vec<u32>,
    /// Per-row scale the normalized prediction is multiplied by (`None`: scale 1).
    pub scales: Option<Vec<f32>>,
}

impl LayerPlan {
    /// Number of blocks (predictor coordinates).
    pub fn blocks(&self) -> usize {
        self.grid.blocks()
    }
}

/// A tensor seen as `rows × cols` blocks of [`OUTPUTS`] = 9 cells (spec section 5.1).
///
/// - [`Layout::Conv`], shape `[F, C, s…]`: the kernel of filter `f`, channel `c` is viewed as
///   `kh×kw` (`kh` = product of the spatial dims but the last, `kw` = the last; rank 3 gives
///   `kh = 1`) and padded to `3·th × 3·tw` (`th = ceil(kh/3)`), centred (offset
///   `r0 = (3·th − kh)/2`); it gives `T = th·tw` tiles, block `(f, c·T + t)`. For `kh, kw ≤ 3`
///   this is NeRN's single centred 3×3 block (format 1).
/// - [`Layout::Matrix`], shape `[d0, …, K, 1…]` (trailing unit dims dropped, so a 1×1 kernel
///   `[F, C, 1, 1]` is `F × C`): `R = d0·…` rows of `K` values, each cut into `ceil(K/9)` strips
///   of 9 consecutive values; block `(r, g)`. The tail is padding.
///
/// Rows are filters or matrix rows; they are contiguous in the tensor, and carry the scales.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Grid {
    pub layout: Layout,
    pub rows: usize,
    pub cols: usize,
    /// Conv: input channels; matrix: 1.
    channels: usize,
    /// Conv: kernel view `kh×kw`; matrix: `1×K`.
    kh: usize,
    kw: usize,
    /// Conv: tiles per kernel row/column.
    tw: usize,
    r0: usize,
    c0: usize,
}

impl Grid {
    /// The grid of a tensor of `shape` in `layout`, or why it has none.
    pub fn new(layout: Layout, shape: &[usize]) -> std::result::Result<Grid, String> {
        if shape.contains(&0) {
            return Err(format!("shape {shape:?} has a zero dimension"));
        }
        match layout {
            Layout::Conv => {
                let [f, c, spatial @ ..] = shape else {
                    return Err(format!("a conv kernel has rank 3 or more, found shape {shape:?}"));
                };
                let Some((&kw, rest)) = spatial.split_last() else {
                    return Err(format!("a conv kernel has rank 3 or more, found shape {shape:?}"));
                };
                let kh: usize = rest.iter().product();
                let (th, tw) = (kh.div_ceil(3), kw.div_ceil(3));
                Ok(Grid {
                    layout,
                    rows: *f,
                    cols: c * th * tw,
                    channels: *c,
                    kh,
                    kw,
                    tw,
                    r0: (3 * th - kh) / 2,
                    c0: (3 * tw - kw) / 2,
                })
            }
            Layout::Matrix => {
                if shape.len() < 2 {
                    return Err(format!("a matrix has rank 2 or more, found shape {shape:?}"));
                }
                // Trailing unit dimensions do not count: a 1×1 kernel [F, C, 1, 1] is [F, C].
                let kept = shape.len() - shape.iter().rev().take_while(|&&d| d == 1).count();
                let (k, rows) = match kept {
                    0 => (1, 1),
                    n => (shape[n - 1], shape[..n - 1].iter().product()),
                };
                Ok(Grid {
                    layout,
                    rows,
                    cols: k.div_ceil(OUTPUTS),
                    channels: 1,
                    kh: 1,
                    kw: k,
                    tw: 1,
                    r0: 0,
                    c0: 0,
                })
            }
        }
    }

    /// Number of blocks.
    pub fn blocks(&self) -> usize {
        self.rows * self.cols
    }

    /// Number of tensor elements.
    pub fn numel(&self) -> usize {
        self.rows * self.channels * self.kh * self.kw
    }

    /// Tiles per kernel (conv) or 1 (matrix).
    pub fn tiles(&self) -> usize {
        self.cols / self.channels
    }

    /// Element index (row-major) of cell `i` (0..9) of block `b`, `None` for padding.
    pub fn cell(&self, b: usize, i: usize) -> Option<usize> {
        let (row, col) = (b / self.cols, b % self.cols);
        match self.layout {
            Layout::Conv => {
                let t = self.tiles();
                let (c, t) = (col / t, col % t);
                let y = (t / self.tw * 3 + i / 3).checked_sub(self.r0).filter(|&y| y < self.kh)?;
                let x = (t % self.tw * 3 + i % 3).checked_sub(self.c0).filter(|&x| x < self.kw)?;
                Some(((row * self.channels + c) * self.kh + y) * self.kw + x)
            }
            Layout::Matrix => {
                let x = col * OUTPUTS + i;
                (x < self.kw).then_some(row * self.kw + x)
            }
        }
    }
}

/// Coordinates `(l/L, row/rows, col/cols)` of each chain position `p` (`row = p / cols`,
/// `col = p % cols`), flat `N×3`.
pub fn coordinates(layer: u32, layers: u32, rows: usize, cols: usize) -> Vec<f32> {
    let l = layer as f32 / layers as f32;
    let mut out = Vec::with_capacity(rows * cols * 3);
    for f in 0..rows {
        for c in 0..cols {
            out.extend([l, f as f32 / rows as f32, c as f32 / cols as f32]);
        }
    }
    out
}

/// Inverse of the compressor's training targets: writes predictions (chain order, `N×9`) into a
/// tensor's layout.
pub fn scatter(pred: &[f32], plan: &LayerPlan, out: &mut [f32]) {
    for (k, e, s) in cells(plan) {
        out[e] = pred[k] * s;
    }
}

/// Every real (non-padding) cell of a plan in chain order, as (index into the `N×9`
/// predictions, tensor element, the scale of its row): the one walk behind the
/// compressor's targets, [`scatter`] and distillation's differentiable layout.
pub fn cells(plan: &LayerPlan) -> impl Iterator<Item = (usize, usize, f32)> + '_ {
    let g = &plan.grid;
    plan.perm.iter().enumerate().flat_map(move |(p, &idx)| {
        let idx = idx as usize;
        let s = plan.scales.as_ref().map_or(1.0, |s| s[idx / g.cols]);
        (0..OUTPUTS).filter_map(move |i| g.cell(idx, i).map(|e| (p * OUTPUTS + i, e, s)))
    })
}

/// Where each plan's predictions lie in the flat `N×9` predictions of all `plans`, in order
/// (the predictor runs over the chain positions of one plan after the other).
pub fn prediction_ranges(plans: &[LayerPlan]) -> Vec<std::ops::Range<usize>> {
    let mut at = 0;
    plans
        .iter()
        .map(|p| {
            let n = p.blocks() * OUTPUTS;
            at += n;
            at - n..at
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Shapes of every kind: v1 kernels, k > 3, 1-D/3-D convs, depthwise, matrices, LSTM.
    pub(crate) fn cases() -> Vec<(Layout, Vec<usize>)> {
        vec![
            (Layout::Conv, vec![4, 3, 3, 3]),
            (Layout::Conv, vec![4, 3, 1, 1]),
            (Layout::Conv, vec![4, 3, 2, 2]),
            (Layout::Conv, vec![4, 3, 1, 3]),
            (Layout::Conv, vec![5, 2, 5, 5]),
            (Layout::Conv, vec![3, 2, 7, 7]),
            (Layout::Conv, vec![2, 3, 4, 6]),
            (Layout::Conv, vec![6, 1, 5, 5]),
            (Layout::Conv, vec![4, 2, 9]),
            (Layout::Conv, vec![2, 2, 3, 3, 3]),
            (Layout::Matrix, vec![7, 20]),
            (Layout::Matrix, vec![5, 9]),
            (Layout::Matrix, vec![3, 1]),
            (Layout::Matrix, vec![2, 12, 5]),
            (Layout::Matrix, vec![6, 20, 1, 1]),
            (Layout::Matrix, vec![4, 1, 1]),
        ]
    }

    #[test]
    fn grid_cells_cover_every_element_once() {
        for (layout, shape) in cases() {
            let g = Grid::new(layout, &shape).unwrap();
            assert_eq!(g.numel(), shape.iter().product::<usize>(), "{shape:?}");
            let mut seen = vec![0u32; g.numel()];
            for b in 0..g.blocks() {
                // Every block holds at least one element (no all-padding blocks).
                let mut any = false;
                for i in 0..OUTPUTS {
                    if let Some(e) = g.cell(b, i) {
                        seen[e] += 1;
                        any = true;
                    }
                }
                assert!(any, "{layout:?} {shape:?}: block {b} is all padding");
            }
            assert!(seen.iter().all(|&n| n == 1), "{layout:?} {shape:?}: {seen:?}");
        }
    }

    #[test]
    fn grid_matches_v1_for_small_kernels() {
        // Format 1: element [f, c, i, j] of a kh×kw ≤ 3×3 kernel is cell (r0+i)·3 + c0+j of
        // block f·C + c, with r0 = (3 − kh)/2.
        for (kh, kw) in [(1, 1), (2, 2), (3, 3), (1, 3), (3, 2)] {
            let (f, c) = (3, 4);
            let g = Grid::new(Layout::Conv, &[f, c, kh, kw]).unwrap();
            assert_eq!((g.rows, g.cols), (f, c));
            let (r0, c0) = ((3 - kh) / 2, (3 - kw) / 2);
            for k in 0..f * c {
                for i in 0..kh {
                    for j in 0..kw {
                        assert_eq!(g.cell(k, (r0 + i) * 3 + c0 + j), Some((k * kh + i) * kw + j));
                    }
                }
            }
        }
    }

    #[test]
    fn tiles_are_centred() {
        // 7×7 → 3×3 tiles of a 9×9 padded kernel; the centre tap (3, 3) is the centre of tile 4.
        let g = Grid::new(Layout::Conv, &[1, 1, 7, 7]).unwrap();
        assert_eq!(g.cols, 9);
        assert_eq!(g.cell(4, 4), Some(3 * 7 + 3));
        assert_eq!(g.cell(0, 0), None);
        assert_eq!(g.cell(0, 4), Some(0));
        // Grid errors name the shape.
        assert!(Grid::new(Layout::Conv, &[4, 3]).unwrap_err().contains("rank 3"));
        assert!(Grid::new(Layout::Matrix, &[4]).unwrap_err().contains("rank 2"));
        assert!(Grid::new(Layout::Matrix, &[4, 0]).unwrap_err().contains("zero"));
    }
}
