#!/usr/bin/env bash
# The distillation experiment (docs/distillation.md): ResNet-20 on Fashion-MNIST, for each
# hidden width and seed: recon, joint, decoupled, decoupled with the ResNet-56 teacher, and
# decoupled with --rounds 2 and 3, all at the same total number of optimizer steps (STEPS, of
# which KD_STEPS carry a distillation term). Each .nerp is evaluated on the full 10k test set.
# Results: docs/results/distillation.{tsv,md,svg} (tools/distill_report.py).
#
#   tools/distill_experiment.sh                      # full grid
#   HS="32 64 128" SEEDS="0" tools/distill_experiment.sh   # reduced grid
#
# Env: HS, SEEDS, STEPS (2000), KD_STEPS (80), KD_BATCH (16), KD_LR (1e-4), RUNS (what to run, default all:
# "recon joint decoupled teacher56 rounds2 rounds3"), NERP (binary), OUT (work dir).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
HS=${HS:-"32 48 64 96 128"}
SEEDS=${SEEDS:-"0"}
STEPS=${STEPS:-2000}
KD_STEPS=${KD_STEPS:-80}
KD_BATCH=${KD_BATCH:-16}
KD_LR=${KD_LR:-1e-4}
RUNS=${RUNS:-"recon joint decoupled teacher56 rounds2 rounds3"}
MODEL=${MODEL:-$root/../shared/models/resnet20_fashion_mnist.onnx}
TEACHER=${TEACHER:-$root/../shared/models/resnet56_fashion_mnist.onnx}
OUT=${OUT:-$root/target/distill-experiment}
RESULTS=$root/docs/results
if [ -z "${NERP:-}" ]; then
  (cd "$root" && cargo build --release --quiet)
  NERP=$root/target/release/nerp
fi
mkdir -p "$OUT" "$RESULTS"
tsv=$RESULTS/distillation.tsv
[ -f "$tsv" ] || printf 'hidden\tseed\trun\tsteps\tkd_steps\tkd_batch\taccuracy\tcompress_s\tkd_s\tfile_bytes\tkd_lr\n' > "$tsv"
for h in $HS; do
  for s in $SEEDS; do
    for run in $RUNS; do
      if grep -qP "^$h\t$s\t$run\t$STEPS\t$KD_STEPS\t$KD_BATCH\t.*\t$KD_LR$" "$tsv"; then continue; fi
      case $run in
        recon) extra=(--schedule recon) ;;
        joint) extra=(--schedule joint) ;;
        decoupled) extra=(--schedule decoupled) ;;
        teacher56) extra=(--schedule decoupled --teacher "$TEACHER") ;;
        rounds2) extra=(--schedule decoupled --rounds 2) ;;
        rounds3) extra=(--schedule decoupled --rounds 3) ;;
        *) echo "unknown run $run" >&2; exit 2 ;;
      esac
      f=$OUT/h${h}_s${s}_$run
      start=$(date +%s.%N)
      nice -n 5 "$NERP" compress "$MODEL" -o "$f.nerp" --hidden "$h" --steps "$STEPS" --seed "$s" \
        --kd-steps "$KD_STEPS" --kd-batch "$KD_BATCH" --kd-lr "$KD_LR" --preprocess mean=0.286,std=0.353 \
        --kd-log "$f.kd.json" -q "${extra[@]}"
      secs=$(echo "$(date +%s.%N) - $start" | bc)
      kd=$(python3 -c "import json,sys; print(round(sum(d['seconds'] for d in json.load(open(sys.argv[1]))),1))" "$f.kd.json")
      nice -n 5 "$NERP" eval "$f.nerp" --json -q --threads 2 > "$f.eval.json"
      acc=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['regenerated_accuracy'])" "$f.eval.json")
      bytes=$(stat -c %s "$f.nerp")
      printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.1f\t%s\t%s\t%s\n' "$h" "$s" "$run" "$STEPS" "$KD_STEPS" "$KD_BATCH" "$acc" "$secs" "$kd" "$bytes" "$KD_LR" >> "$tsv"
      echo "h=$h seed=$s $run: accuracy $acc, ${secs}s (distillation ${kd}s)"
    done
  done
done
python3 "$root/tools/distill_report.py" "$tsv"
