#!/bin/sh
# Where the time of the codecs-only compress goes, by phase: a 2-layer, 32,000-token variant
# of the Qwen2-0.5B layout (58.5 M parameters), perf with DWARF call graphs (inclusive times).
set -e
DIR=/tmp/qwen2-l2
OUT=docs/results/llm
target/release/examples/make_llm --layout qwen2-0.5b --layers 2 --vocab 32000 --out $DIR
/usr/bin/time -v perf record -F 49 --call-graph dwarf,16384 -o $DIR/perf.data -- \
  target/release/nerp compress $DIR/model.safetensors -o $DIR/m.nerp --exclude '*' \
  > $OUT/profile_small.log 2> $OUT/profile_small.time
perf report -i $DIR/perf.data --children --percent-limit 1 --stdio -g none 2>/dev/null \
  | grep -v '^$' | grep -v '^#' | head -80 > $OUT/profile_small.perf.txt
