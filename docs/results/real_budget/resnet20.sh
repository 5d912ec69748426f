#!/usr/bin/env bash
# The shared ResNet-20 under the default check and error budgets (issue 26): per file, the error
# `compress` printed (on the 64 training images after the 64 it fitted to, and since 2026-12-06
# the 95% bound from their spread that the budget is checked against) against the same
# figure on the 10,000 Fashion-MNIST test images, the evaluation set (`nerp eval`: relative
# logit error, top-1 agreement, accuracy). Rows into resnet20.tsv, logs beside it.
# Usage: docs/results/real_budget/resnet20.sh   (from the repository root, after a release build)
# ROWS="default budget5" runs only those rows (and replaces them in resnet20.tsv).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${NERP:-target/release/nerp}
cp "$bin" /tmp/nerp-r20-$$; bin=/tmp/nerp-r20-$$
src=${MODEL:-../shared/models/resnet20_fashion_mnist.onnx}
[ -f "$src" ] || src=examples/models/resnet20_fashion_mnist.onnx
out=$(mktemp -d)
tsv=$here/resnet20.tsv
[ -n "${ROWS:-}" ] && [ -f "$tsv" ] || printf 'storage\tbytes\tratio\tprinted (held back)\tfitted\ttest set: rel logit error\ttop-1 agreement\taccuracy\tseconds\n' > "$tsv"
row() { # name options...
  local name=$1; shift
  if [ -n "${ROWS:-}" ] && [[ " $ROWS " != *" $name "* ]]; then return; fi
  awk -F'\t' -v n="$name" '$1 != n && $1 !~ ("^" n " ")' "$tsv" > "$tsv.tmp" && mv "$tsv.tmp" "$tsv"
  local f=$out/$name.nerp log=$here/resnet20-$name.log
  "$bin" compress "$src" -o "$f" --preprocess mean=0.286,std=0.353 "$@" > "$log" 2>&1
  "$bin" eval "$f" --original "$src" --json --quiet > "$f.json" 2>> "$log"
  python3 - "$name $*" "$f" "$f.json" "$src" "$log" >> "$tsv" <<'PY'
import json, os, re, sys
name, f, js, src, log = sys.argv[1:]
d = json.load(open(js)); b = os.path.getsize(f); s = os.path.getsize(src)
text = open(log).read()
held = re.findall(r"on the (\d+) held-back inputs ([0-9.]+)%", text)
fit = re.findall(r"on the (\d+) fit inputs ([0-9.]+)%", text)
secs = re.findall(r"bytes \([0-9.]+x\) in ([0-9.]+) s", text)
bound = re.findall(r"at most ([0-9.]+)% on inputs like them", text)
printed = f"{float(held[-1][1]) / 100:.4f} ({held[-1][0]})" if held else "-"
if bound:
    printed += f", 95% bound {float(bound[-1]) / 100:.4f}"
fitted = f"{float(fit[-1][1]) / 100:.4f} ({fit[-1][0]})" if fit else "-"
print(f"{name}\t{b}\t{s/b:.2f}\t{printed}\t{fitted}\t{d['rel_logit_error']:.4f}\t{d['agreement']:.4f}"
      f"\t{d['regenerated_accuracy']:.4f}\t{secs[-1] if secs else '-'}")
PY
  tail -1 "$tsv"
}
row default
row budget5 --max-error 0.05
row budget2 --max-error 0.02
row budget10 --max-error 0.1
row size10 --size-ratio 10 --steps 20
# Fine-tuned by distillation on the training images (--data), the check's 64 left out.
row budget5-finetuned --max-error 0.05 --data fashion-mnist
