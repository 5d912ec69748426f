#!/bin/bash
# Issue 23, compress with fine-tuning <= 3 min: ResNet-20 at --size-ratio 45 with --data, one
# binary after the other on the same machine. Usage (repo root): docs/results/coded/finetune_time.sh NERP...
# (2026-12-06: a copy of target/release/nerp with keep_freed_memory, then one built without it).
M=${MODEL:-../shared/models/resnet20_fashion_mnist.onnx}
for b in "$@"; do
  echo "== $b"
  /usr/bin/time -f "wall %e s, user %U s, sys %S s, max RSS %M KB" "$b" compress "$M" -o "/tmp/ftcmp-$(basename "$b").nerp" \
    --size-ratio 45 --exclude '*' --data fashion-mnist --preprocess mean=0.286,std=0.353 2>&1 | grep -E "fine-tuned|file:|wall"
done
