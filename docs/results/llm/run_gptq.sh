#!/bin/sh
# GPTQ on the layers' inputs with token calibration (issue 24, item 4), against rounding to
# nearest (--nearest-rounding), on the generated Qwen2-0.5B layout (×2–5 outliers, as
# run_tokens.sh): the 16 × 64 tokens of make_llm (12 fit sequences: 768 tokens, fewer than 2 per
# input value of the 896-wide layers, so GPTQ stays off) and 40 × 64 (30 fit: 1,920 tokens),
# 5% logits budget; then the llm_candle example's unseen prompt on the files.
# Usage: docs/results/llm/run_gptq.sh [DIR]   (DIR holds model.safetensors, tokens.npy,
# tokens40.npy: make_llm --layout qwen2-0.5b --outlier-factor 2,5 [--tokens 40,64])
set -e
DIR=${1:-/tmp/qwen2-0.5b-tokens}
OUT=docs/results/llm/gptq
mkdir -p $OUT
for run in "g16:tokens.npy:" "g40:tokens40.npy:" "n40:tokens40.npy:--nearest-rounding"; do
  name=${run%%:*}; rest=${run#*:}; tokens=${rest%%:*}; flags=${rest#*:}
  uptime > $OUT/$name.uptime
  /usr/bin/time -v target/release/nerp compress $DIR/model.safetensors -o $DIR/$name.nerp \
    --calibration-inputs $DIR/$tokens $flags > $OUT/$name.log 2> $OUT/$name.time
  uptime >> $OUT/$name.uptime
  ls -l $DIR/$name.nerp >> $OUT/$name.log
done
/usr/bin/time -v target/release/examples/llm_candle $DIR $DIR/g16.nerp $DIR/g40.nerp $DIR/n40.nerp \
  > $OUT/example.log 2> $OUT/example.time
