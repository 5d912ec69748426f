#!/bin/sh
# Issue 24, default >= 3.5x with logits no worse than int4 g128 RTN: the default budget of a
# decoder checkpoint matched matrix by matrix to int4 g128 zero-point RTN's error (session 9).
# The README's LLM layout (Qwen2-0.5B names and shapes, x2-5 outliers), then the example.
set -e
DIR=${1:-/tmp/qm}
[ -f $DIR/model.safetensors ] || target/release/examples/make_llm --layout qwen2-0.5b --out $DIR --outlier-factor 2,5
/usr/bin/time -f "wall %e s, user %U s, max RSS %M KB" target/release/nerp compress $DIR/model.safetensors -o $DIR/default.nerp --json > $DIR/default.json
ls -l $DIR/default.nerp
uptime
target/release/examples/llm_candle $DIR $DIR/default.nerp
