#!/bin/sh
# Phase 2 (streaming LLM path): default compress, --size-ratio 4, decompress, on a generated
# Qwen2-0.5B layout, timed with /usr/bin/time -v.  The ×2–5 ("mild") model is generated once
# (make_llm --outlier-factor 2,5); the ×10–50 model (phase 1's default) is /tmp/qwen2-0.5b.
# Usage: docs/results/llm/run_stream.sh [NAME (mild)] [DIR]
set -e
NAME=${1:-mild}
DIR=${2:-/tmp/qwen2-0.5b-$NAME}
OUT=docs/results/llm/stream-$NAME
mkdir -p $OUT
[ -f $DIR/model.safetensors ] || target/release/examples/make_llm --layout qwen2-0.5b --out $DIR --outlier-factor 2,5
for run in "default:" "ratio4:--size-ratio 4"; do
  name=${run%%:*}; flags=${run#*:}
  uptime > $OUT/$name.uptime
  /usr/bin/time -v target/release/nerp compress $DIR/model.safetensors -o $DIR/$name.nerp $flags \
    > $OUT/$name.log 2> $OUT/$name.time
  uptime >> $OUT/$name.uptime
  ls -l $DIR/$name.nerp >> $OUT/$name.log
done
/usr/bin/time -v target/release/nerp decompress $DIR/default.nerp -o $DIR/back.safetensors \
  > $OUT/decompress.log 2> $OUT/decompress.time
ls -l $DIR/back.safetensors >> $OUT/decompress.log
