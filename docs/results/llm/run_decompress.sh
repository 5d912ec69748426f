#!/bin/sh
# nerp decompress of the codecs-only .nerp (run_compress.sh) to safetensors: time and peak RSS,
# sampled by perf; and the 1.5B layout's generation (time, RSS).
set -e
DIR=${1:-/tmp/qwen2-0.5b}
OUT=docs/results/llm
/usr/bin/time -v perf record -F 99 -g -o $DIR/perf-dec.data -- \
  target/release/nerp decompress --device cpu $DIR/m.nerp -o $DIR/back.safetensors > $OUT/decompress.log 2> $OUT/decompress.time
perf report -i $DIR/perf-dec.data --no-children --percent-limit 1 --stdio -g none 2>/dev/null | grep -v '^#' | grep -v '^$' | cut -c1-130 > $OUT/decompress.perf.txt
rm -f $DIR/back.safetensors
/usr/bin/time -v target/release/examples/make_llm --layout qwen2-1.5b --out /tmp/qwen2-1.5b > $OUT/make_llm-1.5b.log 2>&1
