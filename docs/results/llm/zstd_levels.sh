#!/bin/sh
# zstd speed and ratio by level on 32 MiB of the generated model's f16 weights, byte-grouped as
# nerp stores raw f16 tensors (zstd_bytegroup, element 2): low bytes, then high bytes.
# Usage: docs/results/llm/zstd_levels.sh [model.safetensors]
SRC=${1:-/tmp/qwen2-0.5b/model.safetensors}
python3 - "$SRC" /tmp/zstd_sample.bin <<'PY'
import sys
src, out = sys.argv[1], sys.argv[2]
with open(src, 'rb') as f:
    f.seek(64 << 20)          # inside model.embed_tokens.weight (the first 272 MB)
    b = f.read(32 << 20)
open(out, 'wb').write(b[0::2] + b[1::2])
PY
for l in 1 3 9 19; do
  /usr/bin/time -f "level $l: %e s" zstd -q -$l -c /tmp/zstd_sample.bin > /tmp/zstd_sample.zst
  echo "level $l: $(stat -c %s /tmp/zstd_sample.zst) of $(stat -c %s /tmp/zstd_sample.bin) bytes"
done
