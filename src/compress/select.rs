//! Which tensors are predicted and which stay raw: the policy, `--include/--exclude` name
//! patterns, and the reason given for every raw tensor.
//!
//! For each tensor, in this order (the first rule that applies decides):
//! 1. not floating point → raw;
//! 2. no predictor layout: a tensor the model uses as a convolution kernel (ONNX `Conv`,
//!    `ConvTranspose` input 1; safetensors rank ≥ 4) gets [`Layout::Conv`], except 1×1
//!    (pointwise) kernels, which get [`Layout::Matrix`] (`[F, C, 1, 1]` as `F × C`); a weight matrix
//!    (ONNX `Gemm`/`MatMul` constant operand, `LSTM`/`GRU`/`RNN` `W` and `R`, `Gather` table;
//!    safetensors rank 2 or 3) gets [`Layout::Matrix`]. Rank < 2 tensors (biases, norms, scalars)
//!    → raw; an ONNX tensor of rank ≥ 2 with no such use → raw, unless an `--include` pattern
//!    names it (then [`Layout::Matrix`]);
//! 3. matched by an `--exclude` pattern → raw (exclusion always wins);
//! 4. if `--include` patterns are given: predicted iff matched by one (size thresholds do not
//!    apply to an explicitly included tensor);
//! 5. otherwise predicted iff it has at least `--min-values` values and, for matrices other
//!    than 1×1 kernels, at least [`MIN_MATRIX_VALUES`] (a small classifier head costs little
//!    raw and its error matters most).
//!
//! Patterns are matched against the whole tensor name: `*` matches any run of characters
//! (also none, also `.` and `/`), `?` exactly one character, everything else itself.

use crate::compress::plan;
use crate::error::{Error, Result};
use crate::format::{Layout, SourceKind};
use crate::ingest::{Role, SourceModel, SourceTensor};

/// Matrices with fewer values stay raw unless `--include` names them.
pub const MIN_MATRIX_VALUES: usize = 16_384;

/// Which tensors to predict.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Selection {
    /// If non-empty, only tensors matching one of these are predicted.
    pub include: Vec<String>,
    /// Tensors matching one of these stay raw.
    pub exclude: Vec<String>,
    /// Tensors with fewer values stay raw (not applied to included tensors).
    pub min_values: usize,
}

/// The decision for one tensor.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Predict(Layout),
    /// Stored raw, and why.
    Raw(String),
}

/// Whether `name` matches the glob `pattern` (`*`, `?`), on whole names.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n): (Vec<char>, Vec<char>) = (pattern.chars().collect(), name.chars().collect());
    // Iterative matcher with backtracking to the last `*`: O(|p|·|n|) worst case.
    let (mut i, mut j, mut star, mut mark) = (0, 0, None, 0);
    while j < n.len() {
        if i < p.len() && (p[i] == '?' || p[i] == n[j]) {
            i += 1;
            j += 1;
        } else if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if let Some(s) = star {
            i = s + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&c| c == '*')
}

impl Selection {
    /// Checks the patterns before any work starts.
    pub fn validate(&self) -> Result<()> {
        for (flag, pats) in [("--include", &self.include), ("--exclude", &self.exclude)] {
            if let Some(p) = pats.iter().find(|p| p.is_empty()) {
                return Err(Error::usage(flag, format!("empty pattern {p:?}; use e.g. '*.weight'")));
            }
        }
        Ok(())
    }

    fn matches(pats: &[String], name: &str) -> Option<String> {
        pats.iter().find(|p| glob_match(p, name)).cloned()
    }

    /// The layout a tensor would be predicted with, or why it cannot be predicted at all.
    pub fn layout(kind: SourceKind, t: &SourceTensor, included: bool) -> std::result::Result<Layout, String> {
        if !t.dtype.is_float() {
            return Err(format!("dtype {:?} is not floating point", t.dtype));
        }
        if t.shape.len() < 2 {
            return Err("rank < 2 (biases, norms and scalars stay raw)".into());
        }
        let pointwise = t.shape.len() >= 3 && t.shape[2..].iter().all(|&d| d == 1);
        let layout = match (t.role, kind) {
            // A 1×1 kernel is a matrix [F, C]: as 3×3 blocks it would use 1 cell of 9.
            (Role::ConvKernel, _) if pointwise => Layout::Matrix,
            (Role::ConvKernel, _) => Layout::Conv,
            (Role::Matrix, _) => Layout::Matrix,
            (Role::Other, SourceKind::Safetensors) => Layout::Matrix,
            (Role::Other, SourceKind::Onnx) if included => Layout::Matrix,
            (Role::Shape, _) => return Err("decides other values' shapes (kept exact)".into()),
            (Role::Other, SourceKind::Onnx) => {
                return Err("not used as a Conv/ConvTranspose kernel, Gemm/MatMul operand, RNN weight or \
                            Gather table (name it with --include to predict it as a matrix)"
                    .into())
            }
        };
        let shape: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
        plan::Grid::new(layout, &shape)?;
        Ok(layout)
    }

    /// The decision for one tensor (module docs give the rules).
    pub fn decide(&self, kind: SourceKind, t: &SourceTensor) -> Decision {
        let included = Self::matches(&self.include, &t.name);
        let layout = match Self::layout(kind, t, included.is_some()) {
            Ok(l) => l,
            Err(why) => return Decision::Raw(why),
        };
        if let Some(p) = Self::matches(&self.exclude, &t.name) {
            return Decision::Raw(format!("excluded by --exclude {p:?}"));
        }
        if !self.include.is_empty() {
            return match included {
                Some(_) => Decision::Predict(layout),
                None => Decision::Raw("not named by any --include pattern".into()),
            };
        }
        let numel: u64 = t.shape.iter().product();
        if (numel as usize) < self.min_values {
            return Decision::Raw(format!("{numel} values < --min-values {}", self.min_values));
        }
        if layout == Layout::Matrix && t.role != Role::ConvKernel && (numel as usize) < MIN_MATRIX_VALUES {
            return Decision::Raw(format!(
                "matrix of {numel} values < {MIN_MATRIX_VALUES} (name it with --include to predict it)"
            ));
        }
        Decision::Predict(layout)
    }

    /// Decisions for every tensor of `model`; fails if an `--include` pattern names no tensor
    /// that can be predicted (so a typo is not silently ignored).
    pub fn decide_all(&self, model: &SourceModel) -> Result<Vec<Decision>> {
        self.validate()?;
        let decisions: Vec<Decision> = model.tensors.iter().map(|t| self.decide(model.kind, t)).collect();
        for p in &self.include {
            let named: Vec<(&SourceTensor, &Decision)> =
                model.tensors.iter().zip(&decisions).filter(|(t, _)| glob_match(p, &t.name)).collect();
            if named.iter().any(|(_, d)| matches!(d, Decision::Predict(_))) {
                continue;
            }
            let what = match named.first() {
                None => format!("pattern {p:?} matches no tensor name (see `nerp inspect` for the names)"),
                Some((t, Decision::Raw(why))) => {
                    format!(
                        "pattern {p:?} names no tensor that can be predicted; e.g. {} {:?}: {why}",
                        t.name, t.shape
                    )
                }
                Some(_) => unreachable!("checked above"),
            };
            return Err(Error::usage("--include", what));
        }
        Ok(decisions)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::DType;

    #[test]
    fn globs() {
        for (p, n, m) in [
            ("*", "a.b/c", true),
            ("*.weight", "layer.0.weight", true),
            ("*.weight", "layer.0.bias", false),
            ("enc*attn*", "encoder.layer.0.attention.self.query.weight", false),
            ("enc*att*", "encoder.layer.0.attention.self.query.weight", true),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("abc", "abcd", false),
            ("*a*a*", "banana", true),
            ("", "", true),
        ] {
            assert_eq!(glob_match(p, n), m, "{p} vs {n}");
        }
    }

    fn t(name: &str, shape: &[u64], role: Role) -> SourceTensor {
        let numel: u64 = shape.iter().product();
        SourceTensor {
            name: name.into(),
            dtype: DType::F32,
            shape: shape.to_vec(),
            data: vec![0; numel as usize * 4],
            role,
        }
    }

    #[test]
    fn policy_order() {
        let conv = t("conv.w", &[8, 4, 5, 5], Role::ConvKernel);
        let fc = t("fc.w", &[10, 64], Role::Matrix);
        let big = t("emb", &[1000, 64], Role::Matrix);
        let bias = t("conv.b", &[8], Role::Other);
        let other = t("pos", &[100, 200], Role::Other);
        let s = Selection::default();
        let onnx = SourceKind::Onnx;
        assert_eq!(s.decide(onnx, &conv), Decision::Predict(Layout::Conv));
        assert_eq!(s.decide(onnx, &big), Decision::Predict(Layout::Matrix));
        assert!(matches!(s.decide(onnx, &fc), Decision::Raw(w) if w.contains("--include")));
        assert!(matches!(s.decide(onnx, &bias), Decision::Raw(w) if w.contains("rank < 2")));
        assert!(matches!(s.decide(onnx, &other), Decision::Raw(w) if w.contains("--include")));
        assert_eq!(s.decide(SourceKind::Safetensors, &other), Decision::Predict(Layout::Matrix));
        let inc = Selection { include: vec!["fc.*".into(), "pos".into()], ..Default::default() };
        assert_eq!(inc.decide(onnx, &fc), Decision::Predict(Layout::Matrix));
        assert_eq!(inc.decide(onnx, &other), Decision::Predict(Layout::Matrix));
        assert!(matches!(inc.decide(onnx, &conv), Decision::Raw(_)));
        let both =
            Selection { include: vec!["*".into()], exclude: vec!["conv.*".into()], ..Default::default() };
        assert!(matches!(both.decide(onnx, &conv), Decision::Raw(w) if w.contains("--exclude")));
        assert_eq!(both.decide(onnx, &fc), Decision::Predict(Layout::Matrix));
        let min = Selection { min_values: 1000, ..Default::default() };
        assert!(matches!(min.decide(onnx, &conv), Decision::Raw(w) if w.contains("--min-values")));
    }
}
