#!/bin/sh
# Issue 24: the decoder checkpoint's int4-parity default on the 1.5 B layout (time and memory by
# size; session 9). The example is not run (its f32 model and five references exceed the machine).
set -e
DIR=${1:-/tmp/q15}
[ -f $DIR/model.safetensors ] || target/release/examples/make_llm --layout qwen2-1.5b --out $DIR --outlier-factor 2,5
uptime
/usr/bin/time -f "wall %e s, user %U s, system %S s, max RSS %M KB" target/release/nerp compress $DIR/model.safetensors -o $DIR/default.nerp -q
ls -l $DIR/model.safetensors $DIR/default.nerp
uptime
