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
        (vec!["compress", m, "-o", o, "--size-ratio", "0.5"], "--size-ratio"),
        (vec!["compress", m, "-o", o, "--size-ratio", "10", "--target-ratio", "8"], "--size-ratio"),
        (vec!["compress", m, "-o", o, "--residual", "9"], "--residual"),
        (vec!["compress", m, "-o", o, "--residual", "two"], "--residual"),
        (vec!["compress", m, "-o", o, "--size-ratio", "1000", "--steps", "1"], "--size-ratio"),
        (vec!["compress", m, "-o", o, "--preprocess", "mean=abc"], "--preprocess"),
        (vec!["compress", m, "-o", o, "--preprocess", "mean=0,std=1e-45"], "--preprocess"),
        (vec!["compress", m, "-o", o, "--max-memory", "lots"], "--max-memory"),
        (vec!["compress", m, "-o", "/nonexistent-dir/x.nerp"], "--output"),
        (vec!["compress", m, "-o", o, "--pe-base", "1e30"], "--pe-base"),
        (vec!["compress", m, "-o", o, "--steps", "1000000000000"], "--steps"),
        (
            vec!["compress", m, "-o", o, "--predictor-dtype", "int8", "--qat-fraction", "1.5"],
            "--qat-fraction",
        ),
        (vec!["compress", m, "-o", o, "--qat-fraction=-0.1"], "--qat-fraction"),
        (vec!["compress", m, "-o", o, "--qat-fraction", "NaN"], "--qat-fraction"),
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

/// The bundled ResNet-20 with one more node of an operator no engine knows after its output:
/// nerp reads the weights, tract cannot build the model.
fn model_tract_cannot_run(path: &std::path::Path) {
    use prost::Message;
    use tract_onnx::pb::{ModelProto, NodeProto};
    let bytes = std::fs::read("examples/models/resnet20_fashion_mnist.onnx").unwrap();
    let mut proto = ModelProto::decode(bytes.as_slice()).unwrap();
    let graph = proto.graph.as_mut().unwrap();
    let out = graph.output[0].name.clone();
    graph.node.push(NodeProto {
        op_type: "NerpNoSuchOperator".into(),
        input: vec![out],
        output: vec!["mystery".into()],
        name: "mystery".into(),
        ..Default::default()
    });
    graph.output[0].name = "mystery".into();
    std::fs::write(path, proto.encode_to_vec()).unwrap();
}

#[test]
fn a_model_tract_cannot_run_compresses_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let (src, out) = (dir.path().join("odd.onnx"), dir.path().join("odd.nerp"));
    model_tract_cannot_run(&src);
    let (s, o) = (src.to_str().unwrap(), out.to_str().unwrap());
    let c = nerp(&["compress", s, "-o", o, "--steps", "20", "--hidden", "8", "--quiet"]);
    assert!(c.status.success(), "{}", stderr(&c));
    assert!(
        stderr(&c).contains("warning: the inference engine (tract) cannot run this model"),
        "{}",
        stderr(&c)
    );
    let back = dir.path().join("back.onnx");
    let d = nerp(&["decompress", o, "-o", back.to_str().unwrap()]);
    assert!(d.status.success(), "{}", stderr(&d));
    assert!(std::fs::metadata(&back).unwrap().len() > 1000);
    // Distillation has to run the model: refused, naming the problem, nothing written.
    let kd = dir.path().join("kd.nerp");
    let args = [
        "compress",
        s,
        "-o",
        kd.to_str().unwrap(),
        "--steps",
        "20",
        "--schedule",
        "decoupled",
        "--kd-steps",
        "5",
        "--quiet",
    ];
    let k = nerp(&args);
    assert_eq!(k.status.code(), Some(1), "{}", stderr(&k));
    assert!(stderr(&k).contains("distillation runs the model"), "{}", stderr(&k));
    assert!(!kd.exists());
}

#[test]
fn a_closed_stdout_ends_quietly() {
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let o = Command::new(env!("CARGO_BIN_EXE_nerp"))
        .args(["inspect", "tests/fixtures/tiny-v1.nerp"])
        .stdout(writer)
        .output()
        .unwrap();
    assert!(!stderr(&o).contains("panicked"), "{}", stderr(&o));
}
