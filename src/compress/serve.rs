//! Decide before spending: whether a predictor can serve a model is judged from the tensors'
//! names, dtypes and shapes alone — before any f32 copy, ordering or calibration run — so that
//! no default run spends minutes and then fails. A model it cannot serve goes straight to the
//! codecs with one line saying why.
//!
//! The judgement is the training memory check ([`check_training_budget`]) on the blocks the
//! selection would predict, at the width the options ask for (the default width under a size
//! budget: [`super::hidden_for_size`] may only widen it). On the 0.5 B-parameter LLM layout the
//! default run used to fail this check after 4 min 49 s (width 180 on 55 M blocks: 29.9 GiB
//! against an 11.8 GiB budget, issue 24).

use crate::compress::fit::{check_training_budget, hidden_for_ratio};
use crate::compress::plan::Grid;
use crate::compress::select::Decision;
use crate::compress::{CompressOptions, DEFAULT_HIDDEN};
use crate::error::Result;
use crate::ingest::SourceModel;

/// What the shapes say about training a predictor for `model` (whose tensors' `data` may be
/// empty: only names, dtypes, shapes and roles are read).
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    /// No tensor would be predicted (e.g. `--exclude '*'`): nothing to decide.
    Nothing,
    /// A predictor of this width on this many blocks fits the budget.
    Serves { hidden: usize, blocks: u64 },
    /// It cannot: the one line saying why.
    Cannot(String),
}

/// Judges `model` under `opts` from its shapes (see the module docs). `Err` for options the
/// selection refuses (an `--include` pattern that names nothing) and for a width the user
/// asked for that does not fit ([`crate::Error::Budget`], before any work).
pub fn judge(model: &SourceModel, opts: &CompressOptions) -> Result<Verdict> {
    let decisions = opts.selection.decide_all(model)?;
    let mut blocks = 0u64;
    let mut represented = 0usize;
    for (t, d) in model.tensors.iter().zip(&decisions) {
        let Decision::Predict(layout) = d else { continue };
        let dims: Vec<usize> = t.shape.iter().map(|&d| d as usize).collect();
        // The selection accepted the shape, so the grid exists.
        let Ok(grid) = Grid::new(*layout, &dims) else { continue };
        blocks = blocks.saturating_add(grid.blocks() as u64);
        represented = represented.saturating_add(grid.numel());
    }
    if blocks == 0 {
        return Ok(Verdict::Nothing);
    }
    let levels = opts.embedding.levels as usize;
    let hidden = match (opts.hidden, opts.target_ratio) {
        (Some(h), _) => h,
        (None, Some(r)) => hidden_for_ratio(represented, r, levels),
        (None, None) => DEFAULT_HIDDEN,
    };
    let source: u64 = model.file_bytes;
    match check_training_budget(hidden, opts, blocks, source) {
        Ok(()) => Ok(Verdict::Serves { hidden, blocks }),
        // A width the user asked for (--hidden, --target-ratio) is refused, not replaced.
        Err(e) if opts.hidden.is_some() || opts.target_ratio.is_some() => Err(e),
        Err(e) => Ok(Verdict::Cannot(format!("no predictor: {e}; every tensor goes to the codecs"))),
    }
}

/// `opts` with nothing predicted (what a model the predictor cannot serve is compressed with).
pub fn codecs_only(opts: &CompressOptions) -> CompressOptions {
    let mut opts = opts.clone();
    opts.selection.include.clear();
    opts.selection.exclude = vec!["*".into()];
    opts
}
