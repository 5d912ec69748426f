#!/bin/bash
# The probe on a 4-layer, width-256 Qwen2 layout (4.8 M parameters, f16, random weights):
# --size-ratio 8 by default (probed) against the same with the budget's width forced (trained).
cd /work/main
./target/release/examples/make_llm --out /tmp/llm-probe --layers 4 --hidden 256 --intermediate 1024 --heads 8 --kv-heads 2 --vocab 4000 | tail -1
for args in "--size-ratio 8" "--size-ratio 8 --hidden 132"; do
  name=$(echo $args | tr -d ' -')
  echo "== nerp compress model.safetensors $args"
  /usr/bin/time -f "wall %e s, user %U s, max RSS %M KB" ./target/release/nerp compress /tmp/llm-probe/model.safetensors -o /tmp/llm-probe/$name.nerp $args 2>&1 | grep -E "warning|predictor|storage|allocations|file:|wall"
done
cmp /tmp/llm-probe/sizeratio8.nerp /tmp/llm-probe/sizeratio8hidden132.nerp && echo "the two files are identical"
