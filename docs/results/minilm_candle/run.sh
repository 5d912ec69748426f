#!/usr/bin/env bash
# docs/results/minilm_candle.md: all-MiniLM-L6-v2 compressed with `nerp compress`, each file
# run through candle-transformers' BERT from the .nerp file (examples/minilm_candle, the
# candle hand-off) against the original safetensors. Needs tools/fetch_models.sh first.
# Run from anywhere; logs go beside this script, the .nerp files to target/minilm_candle/.
# SLOW=1 adds `--size-ratio 4 --steps 1` with a predictor (about 25 minutes on 2 cores);
# ONLY="default int8" runs those rows only.
set -euo pipefail
cd "$(dirname "$0")/../../.."
# NERP and EXAMPLE name prebuilt binaries (else both are built here).
if [ -z "${NERP:-}" ] || [ -z "${EXAMPLE:-}" ]; then
    cargo build --release --example minilm_candle
    cargo test --release --no-run  # builds target/release/nerp (plain `cargo build` rebuilds tract)
fi
NERP=${NERP:-target/release/nerp}
EXAMPLE=${EXAMPLE:-target/release/examples/minilm_candle}
M=target/models/minilm
OUT=target/minilm_candle
LOG=docs/results/minilm_candle
mkdir -p "$OUT"
run() {
    local name=$1; shift
    [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $name "* ]] || return 0
    echo "== $name: nerp compress $M/model.safetensors -o $OUT/$name.nerp $*"
    { time "$NERP" compress "$M/model.safetensors" -o "$OUT/$name.nerp" "$@"; } >"$LOG/$name.compress.log" 2>&1
    tail -4 "$LOG/$name.compress.log"
    "$EXAMPLE" "$OUT/$name.nerp" "$M/model.safetensors" "$M/vocab.txt" "$M/config.json" \
        | tee "$LOG/$name.cosine.log" | tail -4
}
run fp16 --exclude '*' --raw-codec f16 --max-error off
run int8 --exclude '*' --raw-codec int8 --max-error off
run int4 --exclude '*' --raw-codec int4 --max-error off
run ratio4-codecs --size-ratio 4 --exclude '*'
run ratio8-codecs --size-ratio 8 --exclude '*'
run default
if [ "${SLOW:-0}" = 1 ]; then
    run ratio4-steps1 --size-ratio 4 --steps 1
fi
