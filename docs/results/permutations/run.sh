#!/usr/bin/env bash
# One row of docs/results/permutations.md per ordering, same model, width, steps and seed.
# Usage: docs/results/permutations/run.sh ORDERING...   (run from the worktree root)
set -euo pipefail
NERP=${NERP:-target/release/nerp}
MODEL=../shared/models/resnet20_fashion_mnist.onnx
OUT=docs/results/permutations
TMP=${TMPDIR:-/tmp}/nerp-perm
mkdir -p "$TMP"
for o in "$@"; do
  f="$TMP/resnet20_h128_s3000_$o.nerp"
  start=$(date +%s.%N)
  $NERP compress "$MODEL" -o "$f" --hidden 128 --steps 3000 --seed 0 --ordering "$o" \
    --preprocess mean=0.286,std=0.353 --quiet > "$OUT/compress_$o.log" 2>&1
  end=$(date +%s.%N)
  echo "{\"ordering\": \"$o\", \"compress_seconds\": $(echo "$end - $start" | bc)}" > "$OUT/time_$o.json"
  python3 "$OUT/sections.py" "$f" > "$OUT/sections_$o.json"
  $NERP eval "$f" --original "$MODEL" --json --quiet > "$OUT/eval_$o.json" 2> "$OUT/eval_$o.log"
  sha256sum "$f" >> "$OUT/sha256.txt"
done
