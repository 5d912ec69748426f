//! Decide before spending (issue 24): a model the predictor cannot serve — here because the
//! memory budget (`--max-memory`) is too small to train one — goes straight to the codecs with
//! one line saying why, and never starts training. Its own test binary: the budget is
//! process-wide.

use nerp::compress::serve::{judge, Verdict};
use nerp::compress::{compress, CompressOptions};
use nerp::format::{NerpFile, Storage};
use nerp::synth::LlmLayout;

mod common;

#[test]
fn a_model_the_predictor_cannot_serve_never_starts_training() {
    let (dir, src) = common::small_llm(&LlmLayout::small(2, 128, 1000), 1);
    // Without its config.json: a decoder checkpoint under the default budget is streamed before
    // any verdict (`stream::parity_default`, tests/llm.rs).
    std::fs::remove_file(dir.path().join("config.json")).unwrap();
    let len = std::fs::metadata(&src).unwrap().len();
    let opts = CompressOptions::default();
    // With the machine's budget a predictor serves it: the verdict is not fixed.
    let model = nerp::ingest::load(&src).unwrap();
    assert!(matches!(judge(&model, &opts).unwrap(), Verdict::Serves { .. }));
    // Room to read the model, not to train on its blocks.
    nerp::format::budget::set_limit(8 * len);
    let Verdict::Cannot(why) = judge(&model, &opts).unwrap() else { panic!("a predictor fits in {len}·8") };
    assert!(why.contains("no predictor") && why.contains("memory budget"), "{why}");
    let out = dir.path().join("m.nerp");
    let mut steps = 0usize;
    let report = compress(&src, &out, &opts, &mut |_: usize, _: f64| steps += 1).unwrap();
    nerp::format::budget::set_limit(0);
    assert_eq!(steps, 0, "training started");
    assert_eq!(report.predictor_params, 0);
    assert!(report.warnings.iter().any(|w| w == &why), "{:?}", report.warnings);
    let file = NerpFile::open(&out).unwrap();
    assert!(file.header().predictor.is_none());
    assert!(file.header().tensors.iter().all(|t| !matches!(t.storage, Storage::Predicted { .. })));
}
