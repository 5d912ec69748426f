#!/usr/bin/env bash
# NNCodec (MPEG NNC reference software, PyPI `nncodec`) on the shared Fashion-MNIST ResNet-20
# and ResNet-56, next to per-channel int8/int4 round-to-nearest. Python is used here for a
# baseline only; nerp's tests and CI never need it.
#
#   tools/nncodec_baseline.sh            # venv (once) + both models, every stage
#   MODELS=resnet20 STAGES=check,rtn,datafree tools/nncodec_baseline.sh
#
# Writes docs/results/nncodec/<model>.tsv (one row per point, appended; a rerun skips the
# rows already there), <model>.log, frontier.svg. The venv is tools/.venv-nncodec (git-ignored,
# ~5 GB: PyPI's torch wheel pulls the CUDA libraries even though only the CPU is used).
#
# How long, on the shared 2-core Xeon (2 threads, other jobs running): venv ~5 min; ResNet-20
# data-free sweep ~12 min, with data ~8 min per point (400 training batches); ResNet-56 about
# 2.5x that. Each test-set evaluation (10,000 images) takes 30-80 s of it.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-tools/.venv-nncodec}
OUT=${OUT:-docs/results/nncodec}
MODELS=${MODELS:-"resnet20 resnet56"}
STAGES=${STAGES:-check,rtn,datafree,data}
THREADS=${THREADS:-2}
DATA_DIR=${DATA_DIR:-/usr/share/datasets/fashion-mnist}

if [ ! -f "$DATA_DIR/t10k-images-idx3-ubyte.gz" ]; then
    echo "Fashion-MNIST not found in $DATA_DIR (apt-get install -y dataset-fashion-mnist)" >&2
    exit 1
fi

if [ ! -x "$VENV/bin/python" ]; then
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install --no-cache-dir "numpy<2" torch==2.5.1 torchvision==0.20.1
    # nncodec builds its DeepCABAC extension with pybind11; it asks for numpy<2.
    "$VENV/bin/pip" install --no-cache-dir "numpy<2" pybind11 nncodec==2.1.3 onnx onnxruntime matplotlib
fi

export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS
mkdir -p "$OUT"
"$VENV/bin/pip" freeze > "$OUT/pip-freeze.txt"

for model in $MODELS; do
    case $model in
        resnet20) datafree_qps=${R20_DATAFREE_QPS:--36,-34,-32,-30,-28,-26,-24,-22,-20,-18}
                  data_qps=${R20_DATA_QPS:--24,-22,-20,-18,-16,-14} ;;
        resnet56) datafree_qps=${R56_DATAFREE_QPS:--36,-34,-32,-30,-28,-26,-24,-22,-20,-18}
                  data_qps=${R56_DATA_QPS:--22,-18,-14} ;;
        *) echo "unknown model $model" >&2; exit 1 ;;
    esac
    "$VENV/bin/python" -u tools/nncodec/run.py --model "$model" --out "$OUT" --stages "$STAGES" \
        --threads "$THREADS" --data-dir "$DATA_DIR" \
        --datafree-qps="$datafree_qps" --data-qps="$data_qps" 2>&1 \
        | grep --line-buffered -v -e 'UserWarning' -e 'torch.from_numpy' | tee -a "$OUT/$model.log"
done

"$VENV/bin/python" tools/plot_frontier.py --out "$OUT/frontier.svg" \
    --title "NNCodec and RTN on the shared Fashion-MNIST ResNets (full test set)" \
    $(for m in $MODELS; do echo "$OUT/$m.tsv"; done)
