#!/bin/sh
# Codecs-only compress of the generated Qwen2-0.5B layout, timed (/usr/bin/time -v) and
# sampled by perf at 49 Hz (leaf functions; no frame pointers in the release build).
# Usage: docs/results/llm/run_compress.sh [DIR (/tmp/qwen2-0.5b)]
set -e
DIR=${1:-/tmp/qwen2-0.5b}
OUT=docs/results/llm
uptime > $OUT/compress.uptime
/usr/bin/time -v perf record -F 49 -g -o $DIR/perf.data -- \
  target/release/nerp compress $DIR/model.safetensors -o $DIR/m.nerp --exclude '*' \
  > $OUT/compress.log 2> $OUT/compress.time
uptime >> $OUT/compress.uptime
perf report -i $DIR/perf.data --no-children --percent-limit 0.5 --stdio 2>/dev/null | grep -v '^$' | head -150 > $OUT/compress.perf.txt
