//! The command line: help for every subcommand, clear errors and exit codes for bad input.

mod common;

use std::process::{Command, Output};

fn nerp(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nerp")).args(args).output().expect("nerp runs")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn every_subcommand_has_help() {
    for sub in ["compress", "inspect", "verify", "decompress", "run", "eval", "demo"] {
        let o = nerp(&[sub, "--help"]);
        assert!(o.status.success(), "{sub} --help failed: {}", stderr(&o));
        assert!(String::from_utf8_lossy(&o.stdout).contains("Usage"), "{sub}");
    }
}

#[test]
fn missing_files_are_usage_errors() {
    for args in [
        &["inspect", "/nonexistent/x.nerp"][..],
        &["verify", "/nonexistent/x.nerp"],
        &["decompress", "/nonexistent/x.nerp", "-o", "/tmp/x.onnx"],
        &["run", "/nonexistent/x.nerp", "--input", "/nonexistent/x.npy"],
        &["eval", "/nonexistent/x.nerp"],
        &["compress", "/nonexistent/m.onnx", "-o", "/tmp/x.nerp"],
    ] {
        let o = nerp(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {}", stderr(&o));
        let e = stderr(&o);
        assert!(e.contains("/nonexistent/") && e.starts_with("Error:"), "{args:?}: {e}");
        assert!(!e.contains("panicked"), "{args:?}: {e}");
    }
}

#[test]
fn bad_options_are_usage_errors() {
    let model = common::shared_model("resnet20_fashion_mnist.onnx");
    let m = model.to_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("x.nerp");
    let o = out.to_str().unwrap();
    for (args, needle) in [
        (vec!["compress", m, "-o", o, "--ordering", "zigzag"], "--ordering"),
        (vec!["compress", m, "-o", o, "--predictor-dtype", "f8"], "--predictor-dtype"),
        (vec!["compress", m, "-o", o, "--steps", "0"], "--steps"),
        (vec!["compress", m, "-o", o, "--lr=-1"], "--lr"),
        (vec!["compress", m, "-o", o, "--hidden", "0"], "--hidden"),
        (vec!["compress", m, "-o", o, "--hidden", "8", "--target-ratio", "2"], "--target-ratio"),
        (vec!["compress", m, "-o", o, "--preprocess", "mean=abc"], "--preprocess"),
        (vec!["compress", m, "-o", o, "--preprocess", "mean=0,std=1e-45"], "--preprocess"),
        (vec!["compress", m, "-o", o, "--max-memory", "lots"], "--max-memory"),
        (vec!["compress", m, "-o", "/nonexistent-dir/x.nerp"], "--output"),
        (vec!["compress", m, "-o", o, "--pe-base", "1e30"], "--pe-base"),
        (vec!["compress", m, "-o", o, "--steps", "1000000000000"], "--steps"),
        (vec!["eval", m, "--data", "imagenet"], "--data"),
        (vec!["eval", m, "--limit", "0"], "--limit"),
        (vec!["demo", "--hidden", "0"], "--hidden"),
        (vec!["frobnicate"], "frobnicate"),
    ] {
        let r = nerp(&args);
        assert_eq!(r.status.code(), Some(2), "{args:?}: {}", stderr(&r));
        assert!(stderr(&r).contains(needle), "{args:?}: {}", stderr(&r));
    }
    assert!(!out.exists(), "a failed compress must not leave an output file");
}

#[test]
fn verify_and_inspect_report_a_corrupt_file() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.nerp");
    std::fs::write(&bad, b"\x89NERP\r\n\x1a this is not a valid file at all").unwrap();
    let o = nerp(&["verify", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("invalid .nerp file"));
    let o = nerp(&["inspect", bad.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert!(stderr(&o).contains("bad.nerp"), "{}", stderr(&o));
}

#[test]
fn decompress_refuses_an_unknown_output_format() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("a.nerp");
    std::fs::write(&f, b"x").unwrap();
    let o = nerp(&["decompress", f.to_str().unwrap(), "-o", "out.tflite"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--output"), "{}", stderr(&o));
}

#[test]
fn compress_refuses_a_file_that_is_not_a_model() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("junk.onnx");
    std::fs::write(&f, b"definitely not protobuf \xff\xff\xff").unwrap();
    let out = dir.path().join("junk.nerp");
    let o = nerp(&["compress", f.to_str().unwrap(), "-o", out.to_str().unwrap(), "--steps", "1"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("junk.onnx"), "{}", stderr(&o));
    assert!(!out.exists());
}

#[test]
#[cfg_attr(feature = "cuda", ignore = "checks a build without the cuda feature")]
fn cuda_without_the_feature_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("a.nerp");
    std::fs::write(&f, b"x").unwrap();
    let o = nerp(&[
        "decompress",
        f.to_str().unwrap(),
        "-o",
        dir.path().join("a.onnx").to_str().unwrap(),
        "--device",
        "cuda",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--features cuda"), "{}", stderr(&o));
}

#[test]
fn verify_and_inspect_the_frozen_fixture() {
    let f = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/tiny-v1.nerp");
    // A valid container whose skeleton is not ONNX: `verify` checks what `decompress` needs.
    let o = nerp(&["verify", f]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("skeleton"));
    let o = nerp(&["inspect", f, "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let header: serde_json::Value = serde_json::from_slice(&o.stdout).expect("inspect --json prints JSON");
    assert!(header["tensors"].as_array().is_some_and(|t| !t.is_empty()));
    // The byte breakdown covers the file exactly; the predictor's share is its section.
    let bytes = &header["bytes"];
    let keys = ["predictor", "permutations", "scales", "header", "raw", "quantized", "skeleton"];
    let total: u64 = keys.iter().map(|k| bytes[k].as_u64().unwrap()).sum();
    assert_eq!(total, std::fs::metadata(f).unwrap().len());
    assert_eq!(header["file_bytes"].as_u64(), Some(total));
    let predictor =
        header["sections"][header["predictor"]["section"].as_u64().unwrap() as usize]["length"].as_u64();
    assert!(bytes["predictor"].as_u64().unwrap() >= predictor.unwrap());
    assert_eq!(header["major"].as_u64(), Some(1));
    let o = nerp(&["inspect", f]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("predictor: mlp_relu"),
        "{}",
        String::from_utf8_lossy(&o.stdout)
    );
}
