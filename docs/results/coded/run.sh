#!/usr/bin/env bash
# nerp's size/accuracy frontier on the shared Fashion-MNIST ResNets (issue 23), in one run:
# data-free (--size-ratio R --exclude '*', calibration on 64 training images, no fine-tuning)
# and with data (the same plus the default fine-tuning of the chosen file on the training
# images). Accuracy on the full 10,000-image test set. Writes <model>.tsv and logs here.
# Usage: docs/results/coded/run.sh [resnet20|resnet56] "RATIOS data-free" "RATIOS with data"
# (an empty list runs no point of that kind; an omitted one the default list)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$here/../../.."
nerp="${NERP:-$root/target/release/nerp}"
model="${1:-resnet20}"
free="${2-default 15 20 25 30 35}"
data="${3-30 40 45 50 60}"
src="$root/../shared/models/${model}_fashion_mnist.onnx"
pre="--preprocess mean=0.286,std=0.353"
tsv="$here/$model.tsv"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
printf 'method\tsetting\tbytes\tratio\toriginal\taccuracy\tdrop\tagreement\tseconds\n' > "$tsv"
run() { # method setting args...
  local method=$1 setting=$2; shift 2
  local log="$here/$model-$method-$setting.log" out="$tmp/$method-$setting.nerp"
  local t0=$(date +%s.%N)
  "$nerp" compress "$src" -o "$out" $pre "$@" > "$log" 2>&1 || { echo "failed: $method $setting" | tee -a "$log"; return; }
  local secs=$(echo "$(date +%s.%N) - $t0" | bc)
  "$nerp" eval "$out" --original "$src" --data fashion-mnist $pre --json --quiet > "$tmp/eval.json" 2>> "$log"
  cat "$tmp/eval.json" >> "$log"
  python3 - "$tmp/eval.json" "$out" "$src" "$method" "$setting" "$secs" >> "$tsv" <<'PY'
import json, os, sys
e = json.load(open(sys.argv[1])); out, src = sys.argv[2], sys.argv[3]
b, s = os.path.getsize(out), os.path.getsize(src)
o, a = 100 * e["original_accuracy"], 100 * e["regenerated_accuracy"]
print(f"{sys.argv[4]}\t{sys.argv[5]}\t{b}\t{s / b:.2f}\t{o:.2f}\t{a:.2f}\t{o - a:.2f}\t{100 * e['agreement']:.2f}\t{float(sys.argv[6]):.0f}")
PY
  tail -1 "$tsv"
}
for r in $free; do
  if [ "$r" = default ]; then run data-free default; else run data-free "$r" --size-ratio "$r" --exclude '*'; fi
done
for r in $data; do run with-data "$r" --size-ratio "$r" --exclude '*' --data fashion-mnist; done
