#!/usr/bin/env bash
# Rows appended to table.tsv by the build that compares the codecs-only and with-predictor
# allocations by their measured error (before it, the quadrature estimate chose the widest
# predictor at 14x and 16x: rows size14 and size16).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
model=${MODEL:-../shared/models/resnet20_fashion_mnist.onnx}
tsv=$here/table.tsv
source "$here/../codecs/lib.sh"
for r in 14 16; do
  point "size$r-measured" --size-ratio "$r" --steps 2000
done
