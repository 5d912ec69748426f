#!/usr/bin/env bash
# The Llama layout at size (issue 24): TinyLlama-1.1B's names and shapes (make_llm --layout
# tinyllama-1.1b, ×2–5 outliers, f16, 2.2 GB), compressed with the defaults (1% weight error)
# and with its 16 × 64 token ids (5% logits error; 768 fit tokens for 2,048-wide inputs: GPTQ
# stays off), timed with /usr/bin/time -v.
# Usage: docs/results/llm/run_tinyllama.sh [DIR]
set -e
DIR=${1:-/tmp/tinyllama}
OUT=docs/results/llm/tinyllama
mkdir -p $OUT
[ -f $DIR/tokens.npy ] || target/release/examples/make_llm --layout tinyllama-1.1b --out $DIR --outlier-factor 2,5 > $OUT/make_llm.log
for run in "default:" "t5:--calibration-inputs $DIR/tokens.npy"; do
  name=${run%%:*}; flags=${run#*:}
  uptime > $OUT/$name.uptime
  /usr/bin/time -v target/release/nerp compress $DIR/model.safetensors -o $DIR/$name.nerp $flags \
    > $OUT/$name.log 2> $OUT/$name.time
  uptime >> $OUT/$name.uptime
  ls -l $DIR/$name.nerp >> $OUT/$name.log
done
