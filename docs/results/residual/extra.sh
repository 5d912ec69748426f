#!/usr/bin/env bash
# Rows appended to table.tsv after run.sh (same protocol, a build that also accepts --hidden
# with --size-ratio): the byte budget around a narrower predictor than the widest that fits,
# so that bytes are left for residuals and codecs.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
model=${MODEL:-../shared/models/resnet20_fashion_mnist.onnx}
tsv=$here/table.tsv
source "$here/../codecs/lib.sh"
for r in 12 14 16; do
  for h in 24 48; do
    point "size$r-h$h" --size-ratio "$r" --hidden "$h" --steps 2000
    point "size$r-h$h-off" --size-ratio "$r" --hidden "$h" --steps 2000 --residual off
  done
done
