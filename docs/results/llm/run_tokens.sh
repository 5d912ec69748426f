#!/bin/sh
# Token-id calibration (issue 24, item 4) on the generated Qwen2-0.5B layout (×2–5 outliers, the
# "mild" model of run_stream.sh; make_llm also writes 16 × 64 random token ids, tokens.npy):
# compress under the default check (5% logits error, 12 fit + 4 held-back sequences), without
# tokens (the default: 1% weight error) and with tokens and --max-error 0.1, timed with
# /usr/bin/time -v; then the example's fixed prompt (a sequence no allocation saw) on the three
# files beside the references.
# Usage: docs/results/llm/run_tokens.sh [DIR]
set -e
DIR=${1:-/tmp/qwen2-0.5b-tokens}
OUT=docs/results/llm/tokens
mkdir -p $OUT
[ -f $DIR/tokens.npy ] || target/release/examples/make_llm --layout qwen2-0.5b --out $DIR --outlier-factor 2,5 > $OUT/make_llm.log
T="--calibration-inputs $DIR/tokens.npy"
for run in "t5:$T" "default:" "t10:$T --max-error 0.1"; do
  name=${run%%:*}; flags=${run#*:}
  uptime > $OUT/$name.uptime
  /usr/bin/time -v target/release/nerp compress $DIR/model.safetensors -o $DIR/$name.nerp \
    $flags > $OUT/$name.log 2> $OUT/$name.time
  uptime >> $OUT/$name.uptime
  ls -l $DIR/$name.nerp >> $OUT/$name.log
done
/usr/bin/time -v target/release/examples/llm_candle $DIR $DIR/t5.nerp $DIR/default.nerp $DIR/t10.nerp \
  > $OUT/example.log 2> $OUT/example.time
