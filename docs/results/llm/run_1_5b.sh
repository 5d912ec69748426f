#!/bin/sh
# The 1.5 B-parameter layout (issue 24's third target: <= 6 minutes within 24 GB): default
# compress, --size-ratio 4 and decompress on a generated Qwen2-1.5B layout (x2-5 outliers, as
# the 0.5 B "mild" model), timed with /usr/bin/time -v (user CPU is the load-independent figure).
# Usage: docs/results/llm/run_1_5b.sh [DIR]   (NERP overrides the binary, OUT the log folder)
set -e
DIR=${1:-/tmp/qwen2-1.5b-mild}
NERP=${NERP:-target/release/nerp}
OUT=${OUT:-docs/results/llm/stream-1.5b}
mkdir -p $OUT
[ -f $DIR/model.safetensors ] || target/release/examples/make_llm --layout qwen2-1.5b --out $DIR --outlier-factor 2,5
ls -l $DIR/model.safetensors > $OUT/source.txt
for run in "default:" "ratio4:--size-ratio 4"; do
  name=${run%%:*}; flags=${run#*:}
  uptime > $OUT/$name.uptime
  /usr/bin/time -v $NERP compress $DIR/model.safetensors -o $DIR/$name.nerp $flags \
    > $OUT/$name.log 2> $OUT/$name.time
  uptime >> $OUT/$name.uptime
  ls -l $DIR/$name.nerp >> $OUT/$name.log
done
/usr/bin/time -v $NERP decompress $DIR/default.nerp -o $DIR/back.safetensors \
  > $OUT/decompress.log 2> $OUT/decompress.time
ls -l $DIR/back.safetensors >> $OUT/decompress.log
rm -f $DIR/back.safetensors
