#!/usr/bin/env bash
# Installs what nerp's demo and tests need on a fresh Debian machine: Fashion-MNIST, test and
# train splits (package dataset-fashion-mnist; the distillation tests read the train split).
# Without root or apt it only says what is missing; the demo then falls back to the bundled
# 1,000-image subset, and the distillation tests fail saying so.
set -euo pipefail
dir=/usr/share/datasets/fashion-mnist
if [ -f "$dir/t10k-images-idx3-ubyte.gz" ] && [ -f "$dir/train-images-idx3-ubyte.gz" ]; then
  exit 0
fi
if [ "$(id -u)" = 0 ] && command -v apt-get > /dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq dataset-fashion-mnist > /dev/null
  echo "installed dataset-fashion-mnist"
else
  echo "note: Fashion-MNIST is not installed (sudo apt-get install dataset-fashion-mnist);" \
       "nerp falls back to its bundled 1,000-image subset" >&2
fi
