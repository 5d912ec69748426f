#!/bin/bash
# The probe on PP-OCR rec at width 32 (where a 4,096-block probe at width 1 said 100.0% and the
# trained predictor reached 94.1%): the probe's line and the trained predictor's error, per
# binary. Usage (repo root, after tools/fetch_models.sh): docs/results/probe/run_rec.sh NERP...
M=${MODEL:-target/models/ppocr/rec.onnx}
for b in "$@"; do
  echo "== $b"
  /usr/bin/time -f "wall %e s, user %U s, max RSS %M KB" "$b" compress "$M" -o /tmp/rec-probe.nerp \
    --hidden 32 --steps 1000 --max-error off --json 2>/tmp/rec-probe.err > /tmp/rec-probe.json
  tail -1 /tmp/rec-probe.err
  python3 - <<'PY'
import json
r = json.load(open("/tmp/rec-probe.json"))
p = r["probe"]
print(f"probe: width {p['width']} on {p['sampled']} of {p['blocks']} blocks, error {100*p['error']:.1f}% "
      f"(must beat {100*p['must_beat']:.1f}%), pays {p['error'] < p['must_beat']}, {p['seconds']:.1f} s; "
      f"estimated training {p['training_seconds']:.0f} s")
print(f"trained width {r['hidden']}: final loss {r['final_loss']:.4g}, weight rmse {r['weight_rmse']:.4g}")
for w in r["warnings"]:
    if w.startswith("predictor probe"):
        print("line:", w)
PY
done
