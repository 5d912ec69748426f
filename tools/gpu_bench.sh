#!/usr/bin/env bash
# Runs on the GPU machine (from the repository root, after tools/gpu_bench_prepare.sh was run on
# the build machine and target/gpu-bench carried over): the GPU-vs-CPU test and the CPU-vs-GPU
# regeneration report for ResNet-20, ResNet-56 and a 10.0 M-weight synthetic convnet.
# Writes everything to ${OUT:-target/gpu-bench/out}.
set -uo pipefail
cd "$(dirname "$0")/.."
bench=target/gpu-bench
out=${OUT:-$bench/out}
mkdir -p "$out"
# cuBLAS: the CUDA toolkit's or PyTorch's wheel (cudarc loads libcublas.so.13/.12 at run time).
lib=$(find / -xdev \( -name 'libcublas.so.13*' -o -name 'libcublas.so.12*' \) 2>/dev/null | head -n 1)
[ -n "$lib" ] && export LD_LIBRARY_PATH="$(dirname "$lib")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
# The test binary finds its fixtures under the path it was built in.
root=$(cat "$bench/build_root.txt")
if [ -n "$root" ] && [ ! -e "$root" ]; then mkdir -p "$(dirname "$root")" && ln -s "$PWD" "$root"; fi
mkdir -p ../shared/models && cp $bench/*.onnx ../shared/models/ 2>/dev/null
{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
  echo "cuBLAS: ${lib:-not found}"
  nproc
} 2>&1 | tee "$out/machine.txt"
NERP_REQUIRE_GPU=1 "$bench/gpu-test" --include-ignored --nocapture --test-threads 1 2>&1 | tee "$out/gpu-test.txt"
"$bench/regen_report" --repeat "${REPEAT:-7}" --wide 256x17 --out "$out/regen_report.md" \
  $bench/resnet20_fashion_mnist.onnx $bench/resnet56_fashion_mnist.onnx 2>&1 | tee "$out/regen_report.txt"
