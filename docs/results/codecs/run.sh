#!/usr/bin/env bash
# The size-accuracy frontier of per-tensor codecs on the shared ResNet-20 (issues 12, 15):
# `nerp compress --size-ratio R` / `--max-error E` with calibration images (64 training images,
# --preprocess), data-aware (GPTQ) or nearest rounding, against one codec for every tensor
# (int8, int4; nothing predicted). Each file is evaluated on the full 10,000-image test set.
# Writes docs/results/codecs/frontier.tsv and one log per point beside this script.
# Usage: docs/results/codecs/run.sh  (from the repository root, after cargo build --release)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${NERP:-target/release/nerp}
cp "$bin" /tmp/nerp-frontier   # a rebuild must not replace the binary mid-run
bin=/tmp/nerp-frontier
model=${MODEL:-../shared/models/resnet20_fashion_mnist.onnx}
pre=mean=0.286,std=0.353
out=$(mktemp -d)
tsv=$here/frontier.tsv
printf 'name\toptions\tbytes\tratio\taccuracy\toriginal\tdrop_points\tagreement\tcompress_s\n' > "$tsv"
point() {
  local name=$1; shift
  local log=$here/$name.log
  local t0=$(date +%s.%N)
  "$bin" compress "$model" -o "$out/$name.nerp" --preprocess "$pre" "$@" > "$log" 2>&1
  local t1=$(date +%s.%N)
  "$bin" eval "$out/$name.nerp" --original "$model" --json --quiet > "$out/$name.json" 2>> "$log"
  python3 - "$name" "$*" "$out/$name.nerp" "$out/$name.json" "$(echo "$t1 - $t0" | bc)" "$model" >> "$tsv" <<'PY'
import json, os, sys
name, opts, path, js, secs, model = sys.argv[1:]
d = json.load(open(js)); b = os.path.getsize(path); src = os.path.getsize(model)
acc, orig = d["regenerated_accuracy"], d["original_accuracy"]
print(f"{name}\t{opts}\t{b}\t{src/b:.2f}\t{100*acc:.2f}\t{100*orig:.2f}\t{100*(orig-acc):.2f}\t{100*d['agreement']:.2f}\t{float(secs):.1f}")
PY
  tail -1 "$tsv"
}
# One codec for every tensor of rank >= 2 (nothing predicted).
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
