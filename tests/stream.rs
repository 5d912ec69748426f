//! The streaming compress of the LLM path (issue 24): memory stays bounded on a generated model
//! larger than the budget allows to hold twice (the budget check refuses the whole-model path,
//! not the streaming one); the file does not depend on the thread count; streaming decompress
//! gives back every tensor. Its own test binary: the memory budget is process-wide.

use nerp::compress::serve::{judge, Verdict};
use nerp::compress::{compress, stream, CompressOptions};
use nerp::format::{NerpFile, Storage};
use nerp::synth::{write_llm, LlmLayout, LlmValues};

#[test]
fn memory_stays_bounded_and_the_file_does_not_depend_on_threads() {
    let dir = tempfile::tempdir().unwrap();
    let layout = LlmLayout::small(4, 512, 8000);
    let values = LlmValues { seed: 3, outlier_columns: 4, outlier_factor: (2.0, 5.0) };
    write_llm(&layout, nerp::format::DType::F16, &values, dir.path()).unwrap();
    let src = dir.path().join("model.safetensors");
    let len = std::fs::metadata(&src).unwrap().len();
    let opts = CompressOptions::default();
    // Less than twice the model: reading it whole (ingest) is refused.
    nerp::format::budget::set_limit(len * 3 / 2);
    let e = nerp::ingest::load(&src).unwrap_err();
    assert!(matches!(e, nerp::Error::Budget { .. }), "{e}");
    let shapes = stream::Source::open(&src).unwrap().shapes();
    assert!(matches!(judge(&shapes, &opts).unwrap(), Verdict::Cannot(_)));
    let out = dir.path().join("m.nerp");
    let report = compress(&src, &out, &opts, &mut |_: usize, _: f64| panic!("training started")).unwrap();
    let storage = report.storage.as_ref().unwrap();
    // A decoder checkpoint (its config.json beside it): the int4-parity default (tests/llm.rs).
    assert!(storage.met, "{storage:?}");
    assert!(report.file_bytes < len, "{} of {len}", report.file_bytes);
    // One thread gives the same bytes as two.
    let one = dir.path().join("one.nerp");
    stream::compress_on(&src, &one, &opts, None, 1, &mut |_, _| {}).unwrap();
    assert_eq!(std::fs::read(&out).unwrap(), std::fs::read(&one).unwrap());
    // The budget below one tensor's section twice: a typed refusal, no file.
    nerp::format::budget::set_limit(len / 8);
    let refused = dir.path().join("refused.nerp");
    let e = compress(&src, &refused, &opts, &mut |_: usize, _: f64| ()).unwrap_err();
    assert!(matches!(e, nerp::Error::Budget { .. }), "{e}");
    assert!(!refused.exists());
    nerp::format::budget::set_limit(0);

    // Streaming decompress: raw tensors as they were, the others within the file's error.
    let file = NerpFile::open(&out).unwrap();
    let back = dir.path().join("back.safetensors");
    let written = nerp::runtime::stream::write_safetensors(&file, &back).unwrap().unwrap();
    assert_eq!(written, std::fs::metadata(&back).unwrap().len());
    let (orig, got) = (std::fs::read(&src).unwrap(), std::fs::read(&back).unwrap());
    let (a, b) = (
        safetensors::SafeTensors::deserialize(&orig).unwrap(),
        safetensors::SafeTensors::deserialize(&got).unwrap(),
    );
    let (mut diff, mut norm) = (0f64, 0f64);
    for t in &file.header().tensors {
        let (x, y) = (a.tensor(&t.name).unwrap(), b.tensor(&t.name).unwrap());
        assert_eq!((x.dtype(), x.shape()), (y.dtype(), y.shape()), "{}", t.name);
        let f = |d: &[u8]| nerp::format::codec::to_f32(nerp::format::DType::F16, d).unwrap();
        if t.shape.len() >= 2 {
            norm += f(x.data()).iter().map(|p| (*p as f64).powi(2)).sum::<f64>();
        }
        if matches!(t.storage, Storage::Raw { .. }) {
            assert_eq!(x.data(), y.data(), "{}", t.name);
            continue;
        }
        diff += f(x.data()).iter().zip(f(y.data())).map(|(p, q)| ((p - q) as f64).powi(2)).sum::<f64>();
    }
    // The weight error, as estimated (f16 rounding of the decoded values aside).
    assert!((diff / norm).sqrt() <= storage.estimated_error * 1.01 + 1e-4, "{}", (diff / norm).sqrt());
}
