#!/bin/bash
# The probe with a sample wide enough for width 8 (MIN_PROBE_WIDTH) against the fixed
# 4,096-block sample, per binary: ResNet-20 --size-ratio 40, a 4.8 M-parameter Qwen2 layout at
# --size-ratio 8 (both probed and refused before), then PP-OCR rec at width 32 (run_rec.sh).
# Usage (repo root, after tools/fetch_models.sh): docs/results/probe/run_min_width.sh NERP...
M=../shared/models/resnet20_fashion_mnist.onnx
P="--preprocess mean=0.286,std=0.353"
[ -f /tmp/llm-probe/model.safetensors ] || ./target/release/examples/make_llm --out /tmp/llm-probe --layers 4 \
  --hidden 256 --intermediate 1024 --heads 8 --kv-heads 2 --vocab 4000 | tail -1
for b in "$@"; do
  n=$(basename "$b")
  echo "== $b: ResNet-20 --size-ratio 40"
  /usr/bin/time -f "wall %e s, user %U s, max RSS %M KB" "$b" compress $M -o /tmp/mw-r20-$n.nerp --size-ratio 40 $P 2>&1 \
    | grep -E "predictor probe|file:|wall"
  echo "== $b: Qwen2 layout --size-ratio 8"
  /usr/bin/time -f "wall %e s, user %U s, max RSS %M KB" "$b" compress /tmp/llm-probe/model.safetensors -o /tmp/mw-llm-$n.nerp \
    --size-ratio 8 2>&1 | grep -E "predictor probe|file:|wall"
done
set -- "$@"
if [ $# -ge 2 ]; then
  for m in r20 llm; do
    cmp /tmp/mw-$m-$(basename "$1").nerp /tmp/mw-$m-$(basename "$2").nerp && echo "$m: the two binaries' files are identical"
  done
fi
docs/results/probe/run_rec.sh "$@"
