#!/usr/bin/env python3
"""Markdown table and SVG plot of tools/distill_experiment.sh's results (standard library only).

    python3 tools/distill_report.py docs/results/distillation.tsv

Writes distillation.md and distillation.svg next to the TSV.
"""
import csv
import statistics
import sys
from collections import defaultdict
from pathlib import Path

RUNS = ["recon", "joint", "decoupled", "teacher56", "rounds2", "rounds3"]
LABELS = {
    "recon": "recon",
    "joint": "joint (NeRN)",
    "decoupled": "decoupled",
    "teacher56": "decoupled, ResNet-56 teacher",
    "rounds2": "decoupled, --rounds 2",
    "rounds3": "decoupled, --rounds 3",
}
COLORS = ["#444444", "#d62728", "#1f77b4", "#2ca02c", "#9467bd", "#ff7f0e"]
ORIGINAL = 91.90  # ResNet-20 test accuracy (../shared/models/resnet20_fashion_mnist.json)


def main(path):
    path = Path(path)
    rows = list(csv.DictReader(path.open(), delimiter="\t"))
    if not rows:
        print("no results yet")
        return
    acc = defaultdict(list)  # (hidden, run) -> [accuracy %]
    cost = defaultdict(list)  # (hidden, run) -> [(compress s, kd s)]
    budget = {(r["steps"], r["kd_steps"], r["kd_batch"]) for r in rows}
    for r in rows:
        # recon does not distil and joint does not use --kd-lr: their rows count for every kd-lr.
        lr = r.get("kd_lr") or "1e-3"
        if r["run"] not in ("recon", "joint") and lr != "1e-4":
            r["run"] = f"{r['run']}@{lr}"
        key = (int(r["hidden"]), r["run"])
        acc[key].append(100 * float(r["accuracy"]))
        cost[key].append((float(r["compress_s"]), float(r["kd_s"])))
    hs = sorted({h for h, _ in acc})
    runs = [r for r in RUNS if any((h, r) in acc for h in hs)]
    runs += sorted({r for _, r in acc if r not in RUNS})

    def cell(h, r):
        v = acc.get((h, r))
        if not v:
            return "–"
        if len(v) == 1:
            return f"{v[0]:.2f}"
        return f"{statistics.mean(v):.2f} ± {statistics.stdev(v):.2f} (n={len(v)})"

    lines = [
        "# Distillation schedules on ResNet-20 / Fashion-MNIST",
        "",
        f"Written by `tools/distill_report.py` from `{path.name}` (produced by "
        "`tools/distill_experiment.sh`). Test accuracy (%) on the full 10,000-image test set; "
        f"the original network scores {ORIGINAL:.2f}%. Budget (steps, KD steps, KD batch): "
        + ", ".join(f"({s}, {k}, {b})" for s, k, b in sorted(budget))
        + ". Mean ± sample std over seeds where several were run.",
        "",
        "| hidden | " + " | ".join(label(r) for r in runs) + " |",
        "|---|" + "---|" * len(runs),
    ]
    for h in hs:
        lines.append(f"| {h} | " + " | ".join(cell(h, r) for r in runs) + " |")
    lines += [
        "",
        "Wall time per run (s, compress only, mean over seeds; in parentheses the part spent in "
        "distillation forward/backward). The machine was shared: times are indicative only.",
        "",
        "| hidden | " + " | ".join(label(r) for r in runs) + " |",
        "|---|" + "---|" * len(runs),
    ]
    for h in hs:
        cells = []
        for r in runs:
            c = cost.get((h, r))
            if not c:
                cells.append("–")
            else:
                cells.append(f"{statistics.mean(x for x, _ in c):.0f} ({statistics.mean(y for _, y in c):.0f})")
        lines.append(f"| {h} | " + " | ".join(cells) + " |")
    (path.with_suffix(".md")).write_text("\n".join(lines) + "\n")
    (path.with_suffix(".svg")).write_text(svg(hs, runs, acc))
    print("\n".join(lines))


def label(run):
    base, _, lr = run.partition("@")
    return LABELS[base] + (f", kd-lr {lr}" if lr else "")


def svg(hs, runs, acc):
    w, h, left, right, top, bottom = 800, 440, 60, 290, 20, 50
    pw, ph = w - left - right, h - top - bottom
    xs = {v: left + (i * pw / max(1, len(hs) - 1) if len(hs) > 1 else pw / 2) for i, v in enumerate(hs)}

    def y(v):
        return top + ph * (1 - v / 100)

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" font-family="sans-serif" font-size="12">',
           f'<rect width="{w}" height="{h}" fill="white"/>']
    for t in range(0, 101, 10):
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y(t):.1f}" y2="{y(t):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{left - 6}" y="{y(t) + 4:.1f}" text-anchor="end">{t}</text>')
    for v, x in xs.items():
        out.append(f'<text x="{x:.1f}" y="{top + ph + 18}" text-anchor="middle">{v}</text>')
    out.append(f'<text x="{left + pw / 2}" y="{h - 8}" text-anchor="middle">predictor hidden width h</text>')
    out.append(f'<text x="14" y="{top + ph / 2}" transform="rotate(-90 14 {top + ph / 2})" text-anchor="middle">test accuracy (%)</text>')
    out.append(f'<line x1="{left}" x2="{left + pw}" y1="{y(ORIGINAL):.1f}" y2="{y(ORIGINAL):.1f}" stroke="black" stroke-dasharray="4 3"/>')
    for i, r in enumerate(runs):
        base, _, lr = r.partition("@")
        c = COLORS[RUNS.index(base)]
        dash = ' stroke-dasharray="2 2"' if lr else ""
        marker = "none" if lr else c
        pts = [(xs[v], y(statistics.mean(acc[(v, r)]))) for v in hs if (v, r) in acc]
        if len(pts) > 1:
            out.append(f'<polyline fill="none" stroke="{c}"{dash} stroke-width="2" points="' + " ".join(f"{a:.1f},{b:.1f}" for a, b in pts) + '"/>')
        for a, b in pts:
            out.append(f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3.5" fill="{marker}" stroke="{c}"/>')
        ly = top + 20 + 20 * i
        out.append(f'<line x1="{left + pw + 15}" x2="{left + pw + 35}" y1="{ly}" y2="{ly}" stroke="{c}"{dash} stroke-width="2"/>')
        out.append(f'<text x="{left + pw + 40}" y="{ly + 4}" font-size="10">{label(r)}</text>')
    ly = top + 20 + 20 * len(runs)
    out.append(f'<line x1="{left + pw + 15}" x2="{left + pw + 35}" y1="{ly}" y2="{ly}" stroke="black" stroke-dasharray="4 3"/>')
    out.append(f'<text x="{left + pw + 40}" y="{ly + 4}">original ({ORIGINAL:.2f}%)</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/results/distillation.tsv")
