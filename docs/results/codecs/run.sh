#!/usr/bin/env bash
# The size-accuracy frontier of per-tensor codecs on the shared ResNet-20 (issues 12, 15):
# `nerp compress --size-ratio R` / `--max-error E` with calibration images (64 training images,
# --preprocess), data-aware (GPTQ) or nearest rounding, against one codec for every tensor
# (int8, int4; nothing predicted). Each file is evaluated on the full 10,000-image test set.
# Writes docs/results/codecs/frontier.tsv and one log per point beside this script.
# Usage: docs/results/codecs/run.sh  (from the repository root, after cargo build --release)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
model=${MODEL:-../shared/models/resnet20_fashion_mnist.onnx}
tsv=$here/frontier.tsv
source "$here/lib.sh"
printf 'name\toptions\tbytes\tratio\taccuracy\toriginal\tdrop_points\tagreement\tcompress_s\n' > "$tsv"
# --steps 2000 bounds the predictor trained where codecs alone miss 5% output error (R >= 12).
# One codec for every float tensor (nothing predicted; since this run, rank < 2 tensors stay raw:
# see extra.sh for the rows as the code now writes them).
point int8-all --raw-codec int8 --min-values 1000000000 --max-error off
point int4-all --raw-codec int4 --min-values 1000000000 --max-error off
# Per-tensor choice under a byte budget, data-aware and nearest rounding.
for r in 4 6 8 10 12 14; do
  point "size$r-gptq" --size-ratio "$r" --steps 2000
  point "size$r-nearest" --size-ratio "$r" --nearest-rounding --steps 2000
done
# Under an error budget (relative output error on the calibration images).
for e in 0.02 0.05 0.1; do
  point "err$e-gptq" --max-error "$e"
done
# The 10x point with other calibration sets (robustness of the winning point).
for n in 32 128; do
  point "size10-gptq-cal$n" --size-ratio 10 --calibration "$n"
done
