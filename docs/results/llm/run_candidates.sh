#!/bin/sh
# The LLM codecs with int8 in groups of 128 (751e843): --max-error 0.1 and --size-ratio 4 (the
# weights' error, no tokens) on the ×2–5 model of run_tokens.sh (the same bytes as run_stream.sh's
# "mild" model: same command and seed), timed; then the example on both files. The default's
# run is run_tokens.sh's `default`.
# Usage: docs/results/llm/run_candidates.sh [DIR]
set -e
DIR=${1:-/tmp/qwen2-0.5b-tokens}
OUT=docs/results/llm/candidates
mkdir -p $OUT
for run in "e10:--max-error 0.1" "ratio4:--size-ratio 4"; do
  name=${run%%:*}; flags=${run#*:}
  uptime > $OUT/$name.uptime
  /usr/bin/time -v target/release/nerp compress $DIR/model.safetensors -o $DIR/$name.nerp $flags \
    > $OUT/$name.log 2> $OUT/$name.time
  uptime >> $OUT/$name.uptime
  ls -l $DIR/$name.nerp >> $OUT/$name.log
done
/usr/bin/time -v target/release/examples/llm_candle $DIR $DIR/e10.nerp $DIR/ratio4.nerp --no-references \
  > $OUT/example.log 2> $OUT/example.time
