#!/bin/sh
# examples/llm_candle (CPU, f32) on the generated Qwen2-0.5B layout with the codecs-only .nerp
# of run_compress.sh, then the reference codecs alone on two other draws of the layout: no
# outlier channels, and milder ones (factors 2-5).  Set GEN=1 to (re)generate the variants.
set -e
DIR=${1:-/tmp/qwen2-0.5b}
OUT=docs/results/llm
/usr/bin/time -v target/release/examples/llm_candle $DIR $DIR/m.nerp > $OUT/example.log 2> $OUT/example.time
for v in "none:--outliers 0" "mild:--outlier-factor 2,5"; do
  name=${v%%:*}; flags=${v#*:}
  [ -n "$GEN" ] || [ ! -f /tmp/qwen2-0.5b-$name/model.safetensors ] && \
    target/release/examples/make_llm --layout qwen2-0.5b --out /tmp/qwen2-0.5b-$name $flags
  target/release/examples/llm_candle /tmp/qwen2-0.5b-$name > $OUT/example-outliers-$name.log
done
