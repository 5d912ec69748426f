#!/bin/sh
# Issue 24, default >= 3.5x: would a default weight-error budget equal to int4 g128 RTN's own
# weight error (10.94% on this layout) keep the logits within int4 RTN's? (session 8)
# The generated Qwen2-0.5B layout with x2-5 outliers (the README's LLM table), then the example.
set -e
DIR=${1:-/tmp/qm}
[ -f $DIR/model.safetensors ] || target/release/examples/make_llm --layout qwen2-0.5b --out $DIR --outlier-factor 2,5
/usr/bin/time -f "wall %e s, user %U s, max RSS %M KB" target/release/nerp compress $DIR/model.safetensors -o $DIR/e109.nerp --max-error 0.109 -q
ls -l $DIR/e109.nerp
target/release/examples/llm_candle $DIR $DIR/e109.nerp
