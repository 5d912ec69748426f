#!/bin/bash
# The probe on ResNet-20: --size-ratio 40 by default (probe) against the same with the width forced (the training the probe skipped).
cd /work/main
M=../shared/models/resnet20_fashion_mnist.onnx
P="--preprocess mean=0.286,std=0.353"
for args in "--size-ratio 40" "--size-ratio 40 --hidden 33"; do
  name=$(echo $args | tr -d ' -')
  echo "== nerp compress $args"
  /usr/bin/time -f "wall %e s, user %U s, max RSS %M KB" ./target/release/nerp compress $M -o /tmp/probe/$name.nerp $args $P 2>&1 | grep -E "warning|predictor|storage|file:|wall|error"
  ./target/release/nerp eval /tmp/probe/$name.nerp --original $M 2>&1 | tail -6
done
