#!/usr/bin/env bash
# Rows added to frontier.tsv after run.sh: one codec for every weight tensor now that codecs
# leave rank < 2 tensors raw, and the shared ResNet-56 at 8x and 10x.
# Usage: docs/results/codecs/extra.sh  (from the repository root, after run.sh)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
tsv=$here/frontier.tsv
model=${MODEL:-../shared/models/resnet20_fashion_mnist.onnx}
source "$here/lib.sh"
point int8-weights --raw-codec int8 --min-values 1000000000 --max-error off
point int4-weights --raw-codec int4 --min-values 1000000000 --max-error off
model=../shared/models/resnet56_fashion_mnist.onnx
point r56-int8-weights --raw-codec int8 --min-values 1000000000 --max-error off
point r56-int4-weights --raw-codec int4 --min-values 1000000000 --max-error off
point r56-size8-gptq --size-ratio 8 --steps 2000
point r56-size10-gptq --size-ratio 10 --steps 2000
