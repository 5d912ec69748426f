#!/usr/bin/env bash
# Accuracy vs distillation budget (issue 12): the shared ResNet-20 compressed with RECON
# reconstruction steps, then K decoupled distillation steps of KD_BATCH training images
# (K = 0: reconstruction only, `--schedule recon`, the same first stage), for each hidden
# width, one seed; each file evaluated on the full 10,000-image test set (`nerp eval`).
# Rows go to docs/results/distill_curve.tsv as they complete (rows already there are skipped,
# so the run resumes), and docs/results/distill_curve.md is rewritten after each row.
#
# env: HS ("64 128"), KS ("0 50 100 200 400"), RECON (3000), KD_BATCH (64), SEED (0),
# KD_LR_64 (1e-4), KD_LR_128 (2e-5) (kd-lr for other widths: KD_LR, default 1e-4),
# NERP (binary), OUT (work dir).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
HS=${HS:-"64 128"}
KS=${KS:-"0 50 100 200 400"}
RECON=${RECON:-3000}
KD_BATCH=${KD_BATCH:-64}
SEED=${SEED:-0}
MODEL=${MODEL:-$root/../shared/models/resnet20_fashion_mnist.onnx}
OUT=${OUT:-$root/target/distill-curve}
RESULTS=$root/docs/results
if [ -z "${NERP:-}" ]; then
  (cd "$root" && cargo build --release --quiet)
  NERP=$root/target/release/nerp
fi
mkdir -p "$OUT" "$RESULTS/distill_curve"
tsv=$RESULTS/distill_curve.tsv
[ -f "$tsv" ] || printf 'hidden\tkd_steps\trecon_steps\tkd_batch\tkd_lr\tseed\taccuracy\tfile_bytes\tcompress_s\tkd_s\n' > "$tsv"
for k in $KS; do
  for h in $HS; do
    lr_var=KD_LR_$h
    lr=${!lr_var:-${KD_LR:-1e-4}}
    [ "$h" = 64 ] && lr=${KD_LR_64:-1e-4}
    [ "$h" = 128 ] && lr=${KD_LR_128:-2e-5}
    if grep -qP "^$h\t$k\t$RECON\t$KD_BATCH\t$lr\t$SEED\t" "$tsv"; then continue; fi
    f=$OUT/h${h}_k${k}_s$SEED
    log=$RESULTS/distill_curve/h${h}_k${k}_s$SEED.log
    if [ "$k" = 0 ]; then
      extra=(--schedule recon --steps "$RECON")
    else
      extra=(--schedule decoupled --steps $((RECON + k)) --kd-steps "$k" --kd-batch "$KD_BATCH" --kd-lr "$lr" --kd-log "$f.kd.json")
    fi
    start=$(date +%s.%N)
    "$NERP" compress "$MODEL" -o "$f.nerp" --hidden "$h" --seed "$SEED" \
      --preprocess mean=0.286,std=0.353 -q "${extra[@]}" > "$log" 2>&1
    secs=$(echo "$(date +%s.%N) - $start" | bc)
    kd=0
    [ "$k" = 0 ] || kd=$(python3 -c "import json,sys; print(round(sum(d['seconds'] for d in json.load(open(sys.argv[1]))),1))" "$f.kd.json")
    "$NERP" eval "$f.nerp" --json -q --threads 2 > "$f.eval.json"
    acc=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['regenerated_accuracy'])" "$f.eval.json")
    bytes=$(stat -c %s "$f.nerp")
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%.1f\t%s\n' "$h" "$k" "$RECON" "$KD_BATCH" "$lr" "$SEED" "$acc" "$bytes" "$secs" "$kd" >> "$tsv"
    echo "h=$h K=$k: accuracy $acc, $bytes bytes, ${secs}s (distillation ${kd}s)" | tee -a "$log"
    python3 - "$tsv" > "$RESULTS/distill_curve.md" <<'PY'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1]), delimiter="\t"))
hs = sorted({int(r["hidden"]) for r in rows})
ks = sorted({int(r["kd_steps"]) for r in rows})
print("# Accuracy vs distillation budget\n")
print("ResNet-20 on Fashion-MNIST (original 91.90% top-1), `tools/distill_curve.sh`: "
      "`nerp compress --hidden H --steps 3000+K --schedule decoupled --kd-steps K --kd-batch 64 "
      "--kd-lr LR --seed 0` (K = 0: `--schedule recon --steps 3000`), accuracy of `nerp eval` on "
      "the full 10,000-image test set. Machine: 2-core Xeon, shared. One seed; single runs.\n")
print("| K (distillation steps) | " + " | ".join(f"h={h} top-1 % | h={h} bytes | h={h} distillation s" for h in hs) + " |")
print("|---|" + "---|---|---|" * len(hs))
for k in ks:
    cells = []
    for h in hs:
        r = [x for x in rows if int(x["hidden"]) == h and int(x["kd_steps"]) == k]
        if r:
            r = r[-1]
            cells += [f"{float(r['accuracy']) * (100 if float(r['accuracy']) <= 1 else 1):.2f}", r["file_bytes"], r["kd_s"]]
        else:
            cells += ["–", "–", "–"]
    print(f"| {k} | " + " | ".join(cells) + " |")
print("\nkd-lr: " + ", ".join(sorted({f"h={r['hidden']}: {r['kd_lr']}" for r in rows})) + ".")
print("Raw rows: `distill_curve.tsv`; logs: `distill_curve/`.")
PY
  done
done
