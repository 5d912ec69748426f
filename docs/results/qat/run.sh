#!/usr/bin/env bash
# Quantization-aware training of the int8/int4 predictor on the shared ResNet-20 (issue 13
# item 4): f16 vs int8 PTQ vs int8 QAT at several fractions vs int4, h = 180, 3000 steps,
# seed 0, then the equal-bytes point and a decoupled distillation (recon + 100 distillation
# steps; int8: the distillation stage quantization-aware) in f16 and int8. Usage: docs/results/qat/run.sh [NAME...] (default: all).
# Writes compress.jsonl / eval.jsonl / run.log beside this script. Runs a private copy of
# the binary (NERP, default /tmp/nerp-qat-run) so a rebuild does not replace it mid-run.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
model=${MODEL:-$root/../shared/models/resnet20_fashion_mnist.onnx}
nerp=${NERP:-/tmp/nerp-qat-run}
[ -x "$nerp" ] || cp "$root/target/release/nerp" "$nerp"
out=${OUT:-/tmp/qat-runs}
mkdir -p "$out"
pre="mean=0.286,std=0.353"

# name hidden dtype qat-fraction steps [extra compress flags...] (seed 0 unless extra sets it)
dec="--schedule decoupled --kd-steps 100 --kd-batch 64 --kd-lr 5e-5"
runs=(
  "f16-h180 180 f16 0 3000"
  "int8-ptq-h180 180 int8 0 3000"
  "int8-qat0.1-h180 180 int8 0.1 3000"
  "int8-qat0.3-h180 180 int8 0.3 3000"
  "int8-qat1.0-h180 180 int8 1 3000"
  "int4-qat0.3-h180 180 int4 0.3 3000"
  "int8-qat0.2-h180 180 int8 0.2 3000"
  "int8-qat0.5-h180 180 int8 0.5 3000"
  "int4-ptq-h180 180 int4 0 3000"
  "f16-h128 128 f16 0 3000"
  "int8-qat0.3-h187 187 int8 0.3 3000"
  "f16-dec-h180 180 f16 0 3100 $dec"
  "int8-dec-h180 180 int8 0.2 3100 $dec"
  "int8-dec-ptq-h180 180 int8 0 3100 $dec"
  "int8-dec-qat0.1-h180 180 int8 0.1 3100 $dec"
  "f16-h180-s1 180 f16 0 3000 --seed 1"
  "int8-qat0.1-h180-s1 180 int8 0.1 3000 --seed 1"
  "int8-ptq-h180-s1 180 int8 0 3000 --seed 1"
)

for r in "${runs[@]}"; do
  read -r name hidden dtype frac steps extra <<<"$r"
  if [ $# -gt 0 ] && [[ ! " $* " == *" $name "* ]]; then continue; fi
  f="$out/$name.nerp"
  echo "$(date -u +%FT%TZ) compress $name" | tee -a "$here/run.log"
  seed=--seed=0
  [[ "${extra:-}" == *--seed* ]] && seed=
  # shellcheck disable=SC2086 # $extra is a list of flags
  "$nerp" compress "$model" -o "$f" --hidden "$hidden" --steps "$steps" $seed \
    --predictor-dtype "$dtype" --qat-fraction "$frac" --preprocess "$pre" --json ${extra:-} \
    | python3 -c "import json,sys; r=json.load(sys.stdin); r.pop('tensors'); r.pop('kd_losses'); r['name']='$name'; r['dtype']='$dtype'; r['qat_fraction']=$frac; print(json.dumps(r))" \
    >>"$here/compress.jsonl"
  "$nerp" inspect "$f" --json | python3 -c "import json,sys; v=json.load(sys.stdin); print(json.dumps({'name':'$name','bytes':v['bytes']}))" >>"$here/inspect.jsonl"
  echo "$(date -u +%FT%TZ) eval $name" | tee -a "$here/run.log"
  "$nerp" eval "$f" --data fashion-mnist --json \
    | python3 -c "import json,sys; r=json.load(sys.stdin); r['name']='$name'; print(json.dumps(r))" >>"$here/eval.jsonl"
  tail -n1 "$here/eval.jsonl" | tee -a "$here/run.log"
done
echo "$(date -u +%FT%TZ) done" | tee -a "$here/run.log"
