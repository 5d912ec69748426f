#!/bin/bash
# Issue 23, `--max-error 0.05 --data` (the budget with fine-tuning): ResNet-20, one binary after
# the other on the same machine, each file evaluated on the full 10,000-image test set.
# Usage (repo root): docs/results/coded/max_error_data.sh NERP...
# (2026-12-06, session 8: a copy of main at a84295c, then target/release/nerp with the budget's
# slack spent on a smaller file.)
M=${MODEL:-../shared/models/resnet20_fashion_mnist.onnx}
PRE="--preprocess mean=0.286,std=0.353"
for b in "$@"; do
  out="/tmp/maxerr-$(basename "$b").nerp"
  echo "== $b"
  /usr/bin/time -f "wall %e s, user %U s, sys %S s, max RSS %M KB" "$b" compress "$M" -o "$out" \
    --max-error 0.05 --data fashion-mnist $PRE 2>&1 | grep -E "^warning|storage chosen|allocations tried|fine-tuned|file:|wall"
  "$b" eval "$out" --original "$M" --data fashion-mnist $PRE --quiet 2>&1 | tail -8
done
