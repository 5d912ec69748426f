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
# How long, on the shared 2-core Xeon (2 threads; 10-16 other runnable jobs at the time, so
# every number below is a contended one): venv ~5 min; one test-set evaluation (10,000 images)
# 25-90 s for ResNet-20 and ~3x that for ResNet-56; encoding 0.2-1 s. ResNet-20 data-free
# (19 points) ~25 min; with data, 400 training batches at 3-8 s each, ~30-60 min per point.
# ResNet-56 ~3x per point. Use MODELS/STAGES/R20_* /R56_* to run parts.
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

run() {
    "$VENV/bin/python" -u tools/nncodec/run.py --threads "$THREADS" --data-dir "$DATA_DIR" --out "$OUT" "$@" 2>&1 \
        | grep --line-buffered -v -e 'UserWarning' -e 'torch.from_numpy' | tee -a "$OUT/$model.log"
}

for model in $MODELS; do
    case $model in
        # Data-free: every qp step of 1 on the folded ONNX weights (the accuracy is not
        # monotone in qp, so a coarse grid picks lucky or unlucky points), a coarser grid
        # without opt_qp, and NNCodec's own BN folding (--bnf) on the unfolded network: its
        # strongest data-free setting here.
        resnet20) on_qps=${R20_DATAFREE_QPS:--36,-35,-34,-33,-32,-31,-30,-29,-28,-27,-26,-25,-24,-23,-22}
                  off_qps=${R20_DATAFREE_OFF_QPS:--34,-30,-26,-22}
                  bnf_qps=${R20_BNF_QPS:--30,-28,-27,-26,-25,-24,-23,-22}
                  data_qps=${R20_DATA_QPS:--18}
                  bnf_data_qps=${R20_BNF_DATA_QPS:--20,-18}
                  batches=${R20_BATCHES:-400} ;;
        resnet56) on_qps=${R56_DATAFREE_QPS:--30,-28,-26,-24,-22,-20}
                  off_qps=${R56_DATAFREE_OFF_QPS:-}
                  bnf_qps=${R56_BNF_QPS:--28,-26,-25,-24,-22}
                  data_qps=${R56_DATA_QPS:-}
                  bnf_data_qps=${R56_BNF_DATA_QPS:--22}
                  # not measured yet: 400 batches of ResNet-56 take ~45+ min on the shared machine.
                  batches=${R56_BATCHES:-400} ;;
        *) echo "unknown model $model" >&2; exit 1 ;;
    esac
    stages=$(echo "$STAGES" | tr ',' '\n' | grep -v -e datafree -e '^data$' | paste -sd, || true)
    [ -n "$stages" ] && run --model "$model" --stages "$stages"
    if [[ ",$STAGES," == *,datafree,* ]]; then
        run --model "$model" --stages datafree --opt-qp on --datafree-qps="$on_qps"
        [ -n "$off_qps" ] && run --model "$model" --stages datafree --opt-qp off --datafree-qps="$off_qps"
        run --model "$model" --bnf --stages datafree --opt-qp on --datafree-qps="$bnf_qps"
    fi
    if [[ ",$STAGES," == *,data,* ]]; then
        # LSA + fine-tuning of the non-weight parameters (biases, BN, LSA scales), Adam lr 1e-3,
        # batches of 64; the before/after choice on the first 1,000 training images.
        [ -n "$data_qps" ] && run --model "$model" --stages data --batches "$batches" --val-images 1000 --data-qps="$data_qps"
        run --model "$model" --bnf --stages data --batches "$batches" --val-images 1000 --data-qps="$bnf_data_qps"
    fi
done

"$VENV/bin/python" tools/plot_frontier.py --out "$OUT/frontier.svg" \
    --title "NNCodec and RTN on the shared Fashion-MNIST ResNets (full test set)" \
    $(for m in $MODELS; do echo "$OUT/$m.tsv"; done)
