#!/usr/bin/env python3
"""The table of docs/results/qat.md from compress.jsonl, inspect.jsonl and eval.jsonl."""
import json, pathlib

here = pathlib.Path(__file__).parent
load = lambda f: {r["name"]: r for r in map(json.loads, (here / f).read_text().splitlines())}
comp, insp, ev = load("compress.jsonl"), load("inspect.jsonl"), load("eval.jsonl")
acc = lambda n: ev[n]["regenerated_accuracy"] if n in ev else None


def reference(name):
    """The f16 file a run is compared with: same width, seed and schedule; h187 int8 against
    the f16 file of equal bytes (h128)."""
    if "h187" in name:
        return "f16-h128"
    if "dec" in name:
        return "f16-dec-h180"
    return "f16-h180-s1" if name.endswith("-s1") else "f16-h180"


print("| run | hidden | dtype | phase | QAT steps | predictor B | file B | weight RMSE | top-1 | vs f16 (ref) | compress s |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for name, c in comp.items():
    if name not in ev:
        continue
    a, ref = acc(name), reference(name)
    phase = "—" if c["dtype"] in ("f16", "bf16", "f32") else ("PTQ" if c["qat_steps"] == 0 else f"QAT {c['qat_fraction']}")
    if "dec" in name and phase != "—":
        phase = f"recon {'PTQ' if c['qat_fraction'] == 0 else phase} + QAT distillation"
    drop = f"{100 * (a - acc(ref)):+.2f} ({ref})" if acc(ref) and ref != name else "—"
    print(f"| {name} | {c['hidden']} | {c['dtype']} | {phase} | {c['qat_steps']} | {insp[name]['bytes']['predictor']:,} "
          f"| {c['file_bytes']:,} | {c['weight_rmse']:.5f} | {100 * a:.2f}% | {drop} | {c['seconds']:.0f} |")
