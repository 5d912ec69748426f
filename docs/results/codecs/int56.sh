#!/usr/bin/env bash
# The per-tensor points of the README's ResNet-20 table again, with int6 and int5 among the
# codecs (2026-12-02): writes docs/results/codecs/int56.tsv and int56-NAME.log beside this script.
# Usage: docs/results/codecs/int56.sh  (from the repository root, after cargo test --release --no-run)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
model=${MODEL:-../shared/models/resnet20_fashion_mnist.onnx}
tsv=$here/int56.tsv
source "$here/lib.sh"
printf 'name\toptions\tbytes\tratio\taccuracy\toriginal\tdrop_points\tagreement\tcompress_s\n' > "$tsv"
for r in 8 10 12 14 16; do
  point "int56-size$r" --size-ratio "$r" --steps 2000
done
point int56-err0.05 --max-error 0.05
