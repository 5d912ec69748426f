#!/bin/sh
# Format 3 measurements on the shared ResNet-20 (issue 13). Run from the repository root after
# `cargo build --release --examples`; logs go to docs/results/format3/.
set -e
N=./target/release/nerp
T=./target/release/examples/transcode
M=../shared/models/resnet20_fashion_mnist.onnx
D=docs/results/format3
W=${W:-/tmp/f3}
mkdir -p "$W"
ev() { echo "== $1"; $N inspect "$1" | sed -n '1,4p'; $N eval "$1" --json --quiet | tee -a "$D/eval.jsonl"; }
# A: one training (f32 predictor, f32 scales); the same predictor stored in each precision.
$N compress $M -o "$W/a-f32-f32.nerp" --hidden 180 --steps 3000 --seed 0 --predictor-dtype f32 --scale-dtype f32 --preprocess mean=0.286,std=0.353 --quiet
for v in "f16 f32" "f16 f16" "int8 f16" "int4 f16" "int8 f32"; do
  set -- $v
  $T "$W/a-f32-f32.nerp" "$W/a-$1-$2.nerp" "$1" "$2"
done
for f in a-f32-f32 a-f16-f32 a-f16-f16 a-int8-f16 a-int4-f16 a-int8-f32; do ev "$W/$f.nerp"; done
# B, C: the literal commands (default f16 scales).
for p in f16 int8; do
  $N compress $M -o "$W/c-$p.nerp" --hidden 180 --steps 3000 --seed 0 --predictor-dtype $p --preprocess mean=0.286,std=0.353 --quiet
  ev "$W/c-$p.nerp"
done
