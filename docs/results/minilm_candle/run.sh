#!/usr/bin/env bash
# docs/results/minilm_candle.md: all-MiniLM-L6-v2 compressed with `nerp compress` (defaults,
# --size-ratio 4 and 8, fp16-only and int8-only baselines), each run through candle-transformers'
# BERT from the .nerp file (examples/minilm_candle) against the original safetensors.
# Needs tools/fetch_models.sh first. Run from the repository root; logs go beside this script,
# the .nerp files to target/minilm_candle/.
set -euo pipefail
cd "$(dirname "$0")/../../.."
cargo build --release --example minilm_candle
cargo test --release --no-run >/dev/null
NERP=target/release/nerp
M=target/models/minilm
OUT=target/minilm_candle
LOG=docs/results/minilm_candle
mkdir -p "$OUT"
run() {
    local name=$1; shift
    echo "== $name: nerp compress $M/model.safetensors -o $OUT/$name.nerp $*"
    { time "$NERP" compress "$M/model.safetensors" -o "$OUT/$name.nerp" "$@"; } >"$LOG/$name.compress.log" 2>&1
    tail -3 "$LOG/$name.compress.log"
    target/release/examples/minilm_candle "$OUT/$name.nerp" "$M/model.safetensors" "$M/vocab.txt" "$M/config.json" \
        | tee "$LOG/$name.cosine.log" | tail -4
}
run fp16 --exclude '*' --raw-codec f16 --max-error off
run int8 --exclude '*' --raw-codec int8 --max-error off
run default
run ratio4 --size-ratio 4
run ratio8 --size-ratio 8
