#!/usr/bin/env bash
# Regenerates src/predictor/gpu/kernels.ptx from src/predictor/gpu/kernels.cu with NVRTC 12.4 (from PyPI's
# nvidia-cuda-nvrtc-cu12 wheel; no GPU and no CUDA toolkit needed). PTX ISA 8.4 for compute_70
# loads on any driver of CUDA 12.4 or newer (R550+), on Volta and every later GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
dir=target/nvrtc
if [ ! -f "$dir/nvidia/cuda_nvrtc/lib/libnvrtc.so.12" ]; then
  mkdir -p "$dir"
  python3 -m pip download --quiet --no-deps --dest "$dir" nvidia-cuda-nvrtc-cu12==12.4.127
  python3 -m zipfile -e "$dir"/nvidia_cuda_nvrtc_cu12-12.4.127-*.whl "$dir"
fi
LD_LIBRARY_PATH="$PWD/$dir/nvidia/cuda_nvrtc/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" \
  cargo run --quiet --release --features cuda --example gen_ptx
