#!/usr/bin/env bash
# Reconstruction-only settings sweep on the shared ResNet-20: compress with each setting, then
# evaluate on the first LIMIT Fashion-MNIST test images. One markdown row per setting.
# Usage: tools/recon_sweep.sh OUT_DIR STEPS LIMIT "name|compress flags" ...
set -euo pipefail
out=$1 steps=$2 limit=$3; shift 3
model=${MODEL:-../shared/models/resnet20_fashion_mnist.onnx}
nerp=${NERP:-target/release/nerp}
mkdir -p "$out"
echo "| setting | flags | steps | weight RMSE | param ratio | bytes | compress s | accuracy | original | agreement |"
echo "|---|---|---|---|---|---|---|---|---|---|"
for spec in "$@"; do
  name=${spec%%|*} flags=${spec#*|}
  # shellcheck disable=SC2086
  "$nerp" compress "$model" -o "$out/$name.nerp" --steps "$steps" $flags > "$out/$name.log"
  rmse=$(grep -o 'weight RMSE [0-9.]*' "$out/$name.log" | awk '{print $3}')
  ratio=$(grep -o '([0-9.]*x); weight' "$out/$name.log" | tr -d '(x); weight')
  secs=$(grep -o 'in [0-9.]* s' "$out/$name.log" | awk '{print $2}')
  bytes=$(stat -c %s "$out/$name.nerp")
  json=$("$nerp" eval "$out/$name.nerp" --original "$model" --limit "$limit" --preprocess mean=0.286,std=0.353 --json)
  acc=$(echo "$json" | python3 -c 'import json,sys; d=json.load(sys.stdin); print("%.2f%% | %.2f%% | %.2f%%" % (100*d["regenerated_accuracy"], 100*d["original_accuracy"], 100*d["agreement"]))')
  echo "| $name | \`$flags\` | $steps | $rmse | $ratio | $bytes | $secs | $acc |"
done
