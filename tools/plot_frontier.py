#!/usr/bin/env python3
"""Accuracy against compression ratio (log x) from any number of TSVs, into one SVG.

Each TSV needs a header with at least the columns `method`, `ratio` and `accuracy`; an optional
`model` column names the model, otherwise the file name does (docs/results/nncodec/resnet20.tsv
-> resnet20). One series per (model, method), points joined in order of ratio; one colour per
method, one marker and line style per model. A series with a single point is a lone marker.

    tools/.venv-nncodec/bin/python tools/plot_frontier.py --out frontier.svg a.tsv b.tsv
    ... --label nerp=path/to/nerp.tsv    # name the model of a file explicitly

Needs matplotlib only (the NNCodec venv has it). The SVG carries no date, and its ids are
seeded, so the same TSVs give the same bytes.
"""

import argparse
import csv
import os
import sys
from collections import OrderedDict


def read_points(path, model):
    with open(path, newline="") as f:
        reader = csv.DictReader(f, delimiter="\t")
        missing = {"method", "ratio", "accuracy"} - set(reader.fieldnames or [])
        if missing:
            raise SystemExit(f"{path}: missing columns {sorted(missing)}")
        for row in reader:
            try:
                ratio, acc = float(row["ratio"]), float(row["accuracy"])
            except ValueError:
                continue  # a row without numbers (e.g. an unfinished point)
            yield row.get("model") or model, row["method"], ratio, acc


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("tsv", nargs="+", help="TSV files, or NAME=PATH to name the model of a file")
    p.add_argument("--out", required=True, help="SVG to write")
    p.add_argument("--title", default="Accuracy against compression ratio")
    p.add_argument("--min-accuracy", type=float, default=None, help="lower y limit (default: fit the points)")
    args = p.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.hashsalt"] = "nerp-frontier"
    matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: a smaller, greppable SVG
    import matplotlib.pyplot as plt

    series = OrderedDict()
    for spec in args.tsv:
        name, _, path = spec.rpartition("=")
        model = name or os.path.splitext(os.path.basename(path))[0]
        for m, method, ratio, acc in read_points(path, model):
            series.setdefault((m, method), []).append((ratio, acc))
    if not series:
        sys.exit("no points in the given files")

    models = list(OrderedDict.fromkeys(m for m, _ in series))
    methods = list(OrderedDict.fromkeys(meth for _, meth in series))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    markers = ["o", "s", "^", "D", "v", "P", "X"]
    styles = ["-", "--", ":", "-."]

    fig, ax = plt.subplots(figsize=(8, 5.5))
    for (model, method), pts in series.items():
        pts.sort()
        mi, ki = models.index(model), methods.index(method)
        ax.plot(
            [r for r, _ in pts],
            [a for _, a in pts],
            marker=markers[mi % len(markers)],
            linestyle=styles[mi % len(styles)] if len(pts) > 1 else "none",
            color=colours[ki % len(colours)],
            markersize=5,
            label=f"{model}: {method}",
        )
    ax.set_xscale("log")
    ax.set_xlabel("compression ratio (original file bytes / compressed bytes), log scale")
    ax.set_ylabel("test accuracy (%)")
    if args.min_accuracy is not None:
        ax.set_ylim(bottom=args.min_accuracy)
    ax.set_title(args.title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    fig.savefig(args.out, format="svg", metadata={"Date": None})
    print(f"{args.out}: {sum(len(v) for v in series.values())} points, {len(series)} series")


if __name__ == "__main__":
    main()
