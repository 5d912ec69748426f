#!/usr/bin/env bash
# Predicted + residual storage (issue 15, spec section 5.3b) on the shared ResNet-20: the
# per-tensor choice under a byte budget with 2/3/4-bit residuals allowed (the default) and
# without (`--residual off`), in one run, beside single-codec files (int3, int2 for every
# float tensor of rank >= 2). Same protocol as docs/results/codecs (64 calibration images,
# full 10,000-image test set). Writes table.tsv and one log per point beside this script.
# Usage: docs/results/residual/run.sh  (from the repository root, after cargo test --release --no-run)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
model=${MODEL:-../shared/models/resnet20_fashion_mnist.onnx}
tsv=$here/table.tsv
source "$here/../codecs/lib.sh"
printf 'name\toptions\tbytes\tratio\taccuracy\toriginal\tdrop_points\tagreement\tcompress_s\n' > "$tsv"
point default
point default-off --residual off
for r in 12 14 16; do
  point "size$r" --size-ratio "$r" --steps 2000
  point "size$r-off" --size-ratio "$r" --steps 2000 --residual off
done
point int3-weights --raw-codec int3 --min-values 1000000000 --max-error off
point int2-weights --raw-codec int2 --min-values 1000000000 --max-error off
