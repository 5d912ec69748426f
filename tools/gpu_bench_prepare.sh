#!/usr/bin/env bash
# Builds what tools/gpu_bench.sh runs on a GPU machine that has no Rust toolchain: the
# regen_report example and the GPU test binary with the `cuda` feature, plus the reference models,
# into target/gpu-bench (carry that folder to the GPU machine, e.g. the device tool's `carry`).
set -euo pipefail
cd "$(dirname "$0")/.."
out=target/gpu-bench
mkdir -p "$out"
cargo build --release --features cuda --example regen_report
cp target/release/examples/regen_report "$out/"
test_bin=$(cargo test --release --features cuda --test gpu --no-run --message-format=json 2>/dev/null \
  | python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m["target"]["name"] == "gpu" and m.get("executable"):
        print(m["executable"])')
cp "$test_bin" "$out/gpu-test"
for m in resnet20_fashion_mnist resnet56_fashion_mnist; do
  src=../shared/models/$m.onnx
  [ -f "$src" ] || src=examples/models/$m.onnx
  [ -f "$src" ] && cp "$src" "$out/"
done
strip "$out/regen_report" "$out/gpu-test"
pwd > "$out/build_root.txt"  # the tests find their fixtures under this path
ls -la "$out"
du -sh "$out"
