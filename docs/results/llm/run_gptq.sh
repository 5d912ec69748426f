#!/usr/bin/env bash
# GPTQ on the layers' inputs with token calibration (issue 24, item 4), against rounding to
# nearest (--nearest-rounding), on the generated Qwen2-0.5B layout (×2–5 outliers, as
# run_tokens.sh): the 16 × 64 tokens of make_llm (12 fit sequences: 768 tokens, fewer than 2 per
# input value of the 896-wide layers, so GPTQ stays off) and 40 × 64 (30 fit: 1,920 tokens),
# 5% logits budget, and under --size-ratio 4 (the logits' error measured at the same bytes);
# then the llm_candle example's unseen prompt on the files.
# Usage: [RUNS="g40 n40"] docs/results/llm/run_gptq.sh [DIR]   (DIR holds model.safetensors, tokens.npy,
# tokens40.npy: make_llm --layout qwen2-0.5b --outlier-factor 2,5 [--tokens 40,64])
set -e
DIR=${1:-/tmp/qwen2-0.5b-tokens}
OUT=docs/results/llm/gptq
mkdir -p $OUT
RUNS=${RUNS:-"g16 g40 n40 g40r4 n40r4"}
for run in "g16:tokens.npy:" "g40:tokens40.npy:" "n40:tokens40.npy:--nearest-rounding" \
    "g40r4:tokens40.npy:--size-ratio 4" "n40r4:tokens40.npy:--size-ratio 4 --nearest-rounding"; do
  name=${run%%:*}; rest=${run#*:}; tokens=${rest%%:*}; flags=${rest#*:}
  case " $RUNS " in *" $name "*) ;; *) continue ;; esac
  uptime > $OUT/$name.uptime
  /usr/bin/time -v target/release/nerp compress $DIR/model.safetensors -o $DIR/$name.nerp \
    --calibration-inputs $DIR/$tokens $flags > $OUT/$name.log 2> $OUT/$name.time
  uptime >> $OUT/$name.uptime
  ls -l $DIR/$name.nerp >> $OUT/$name.log
done
files=""
for name in $RUNS; do files="$files $DIR/$name.nerp"; done
/usr/bin/time -v target/release/examples/llm_candle $DIR $files > $OUT/example-${RUNS// /-}.log \
  2> $OUT/example-${RUNS// /-}.time
