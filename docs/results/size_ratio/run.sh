#!/usr/bin/env bash
# The ≥10× point of issue 12 with the defaults of 2026-12-02 (format 3, channel orders):
# `--size-ratio 10`, recon only (12,000 steps), then evaluated on the full test set.
set -euo pipefail
NERP=${NERP:-target/release/nerp}
M=../shared/models/resnet20_fashion_mnist.onnx
OUT=${OUT:-/tmp/size_ratio}
mkdir -p "$OUT"
/usr/bin/time -v "$NERP" compress "$M" -o "$OUT/r10.nerp" --size-ratio 10 --seed 0 --preprocess mean=0.286,std=0.353 --quiet
"$NERP" inspect "$OUT/r10.nerp" | head -5
"$NERP" eval "$OUT/r10.nerp" --original "$M" --json --quiet
# The same size with decoupled distillation (3,000 reconstruction steps, then 100 distillation
# steps of 64 training images at lr 5e-5, between the rates found for h = 64 and h = 128).
if [ "${KD:-0}" = 1 ]; then
  /usr/bin/time -v "$NERP" compress "$M" -o "$OUT/r10-kd.nerp" --size-ratio 10 --seed 0 --preprocess mean=0.286,std=0.353 \
      --steps 3100 --schedule decoupled --kd-steps 100 --kd-batch 64 --kd-lr 5e-5 --quiet
  "$NERP" eval "$OUT/r10-kd.nerp" --original "$M" --json --quiet
fi
