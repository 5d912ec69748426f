#!/usr/bin/env python3
"""Training throughput of nerp's reconstruction loop next to the same loop in PyTorch (CPU).

For each predictor width it runs nerp's example binary (`examples/train_throughput.rs`),
then the equivalent PyTorch loop, one after the other (never concurrently), on the same
number of threads, and prints a markdown table of steps/s.

Setup (once; the venv lives outside the repository):

    python3 -m venv /opt/torch-venv && /opt/torch-venv/bin/pip install torch numpy
    cargo build --release --example train_throughput

Run from the repository root:

    /opt/torch-venv/bin/python tools/train_throughput.py
    /opt/torch-venv/bin/python tools/train_throughput.py --hidden 64 180 --steps 200 --out bench.md

The work per step is the same on both sides: N = 29,712 random kernels (the kernel count of
the shared ResNet-20), inputs = a precomputed positional embedding of width 6·levels
(sin/cos of coords·π·1.25^k), the predictor Linear(6L→h), 3× Linear(h→h), Linear(h→9) with
ReLU between; per step a batch of row indices (uniform, or ∝ the kernel's L2 norm on 20% of
steps), gather, masked MSE, backward, AdamW (lr 1e-3 with nerp's cosine schedule, betas
(0.9, 0.999), no weight decay), and the loss read back to the host (nerp checks it for NaN).
Both sides warm up for 3 steps and then time `--steps` steps. nerp's timed region also
covers its per-run setup (predictor init, embedding, sampler): a few milliseconds.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shlex
import subprocess
import sys
import time
from pathlib import Path

import torch

N_KERNELS = 29_712  # kernels of the shared ResNet-20, as in examples/train_throughput.rs
OUTPUTS = 9
EMBED_BASE = 1.25
WARMUP_STEPS = 3
MAGNITUDE_FRACTION = 0.2
LR, LR_MIN, LR_WARMUP = 1e-3, 1e-6, 1
BETAS = (0.9, 0.999)
REPO = Path(__file__).resolve().parent.parent


def param_count(hidden: int, levels: int) -> int:
    """Weights and biases of the predictor (same formula as `predictor::param_count`)."""
    i = 6 * levels
    dims = [(i, hidden), (hidden, hidden), (hidden, hidden), (hidden, hidden), (hidden, OUTPUTS)]
    return sum(a * b + b for a, b in dims)


def lr_at(step: int, steps: int) -> float:
    """nerp's `TrainConfig::lr_at`: linear warm-up, then cosine decay to LR_MIN."""
    if step < LR_WARMUP:
        return LR * (step + 1) / LR_WARMUP
    t = (step - LR_WARMUP) / max(steps - LR_WARMUP, 1)
    return LR_MIN + 0.5 * (LR - LR_MIN) * (1.0 + math.cos(math.pi * t))


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def git_revision() -> str:
    try:
        rev = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"],
                             capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, check=True).stdout.strip()
        return rev + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def resolve_bin(path: str) -> Path | None:
    """The nerp binary: as given (relative to the working directory), else relative to the repo."""
    p = Path(path)
    for cand in ([p] if p.is_absolute() else [Path.cwd() / p, REPO / p]):
        if cand.is_file() and os.access(cand, os.X_OK):
            return cand
    return None


def run_nerp(binary: Path, hidden: int, batch: int, steps: int, levels: int, threads: int) -> dict:
    """Runs nerp's example once; returns its JSON line (with `steps_per_s`)."""
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    cmd = [str(binary), str(hidden), str(batch), str(steps), str(levels)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    lines = [l for l in proc.stdout.splitlines() if l.strip().startswith("{")]
    if not lines:
        raise RuntimeError(f"{shlex.join(cmd)} printed no JSON line: {proc.stdout!r}")
    return json.loads(lines[-1])


def make_data(levels: int, seed: int = 1):
    """Random coords/targets (masks all 1) like the nerp example, and the embedded inputs."""
    g = torch.Generator().manual_seed(seed)
    coords = torch.rand(N_KERNELS, 3, generator=g)
    targets = torch.rand(N_KERNELS, OUTPUTS, generator=g) - 0.5
    masks = torch.ones(N_KERNELS, OUTPUTS)
    # Frequencies π·base^k computed in f64, rounded to f32 (predictor::frequencies).
    freqs = torch.tensor([math.pi * EMBED_BASE ** k for k in range(levels)], dtype=torch.float64).float()
    phase = coords.unsqueeze(2) * freqs.view(1, 1, levels)  # (N, 3, K)
    inputs = torch.cat([phase.sin(), phase.cos()], dim=2).reshape(N_KERNELS, 6 * levels).contiguous()
    return inputs, targets, masks


def make_predictor(hidden: int, levels: int) -> torch.nn.Sequential:
    d = 6 * levels
    return torch.nn.Sequential(
        torch.nn.Linear(d, hidden), torch.nn.ReLU(),
        torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
        torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
        torch.nn.Linear(hidden, hidden), torch.nn.ReLU(),
        torch.nn.Linear(hidden, OUTPUTS),
    )


def run_torch(hidden: int, batch: int, steps: int, levels: int, adamw_impl: str) -> dict:
    """The same reconstruction loop in PyTorch; returns steps/s over `steps` timed steps."""
    torch.manual_seed(0)
    inputs, targets, masks = make_data(levels)
    norms = targets.norm(dim=1)  # L2 norm of each kernel: the magnitude-sampling weights
    model = make_predictor(hidden, levels)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params == param_count(hidden, levels), (n_params, param_count(hidden, levels))
    kw = {} if adamw_impl == "default" else {adamw_impl: True}
    opt = torch.optim.AdamW(model.parameters(), lr=LR, betas=BETAS, weight_decay=0.0, eps=1e-8, **kw)
    pick = random.Random(1)
    bsz = min(batch, N_KERNELS)

    def step(s: int, total: int) -> float:
        for group in opt.param_groups:
            group["lr"] = lr_at(s, total)
        if pick.random() < MAGNITUDE_FRACTION:
            idx = torch.multinomial(norms, bsz, replacement=True)
        else:
            idx = torch.randint(0, N_KERNELS, (bsz,))
        x, t, m = inputs[idx], targets[idx], masks[idx]
        out = model(x)
        loss = (((out - t) * m) ** 2).sum() / m.sum()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        v = loss.item()
        if not math.isfinite(v):
            raise RuntimeError(f"PyTorch loss became {v} at step {s}")
        return v

    for s in range(WARMUP_STEPS):
        step(s, WARMUP_STEPS)
    t0 = time.perf_counter()
    for s in range(steps):
        loss = step(s, steps)
    secs = time.perf_counter() - t0
    return {"impl": "pytorch", "hidden": hidden, "batch": batch, "steps": steps,
            "seconds": round(secs, 4), "steps_per_s": round(steps / secs, 3),
            "params": n_params, "last_mse": loss}


def fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hidden", type=int, nargs="+", default=[64, 96, 128, 180], help="predictor widths")
    ap.add_argument("--batch", type=int, default=4096, help="kernels per step")
    ap.add_argument("--steps", type=int, default=100, help="timed steps (after 3 warm-up steps)")
    ap.add_argument("--levels", type=int, default=20, help="embedding levels (input width 6·levels)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(),
                    help="threads for both (torch.set_num_threads / RAYON_NUM_THREADS)")
    ap.add_argument("--nerp-bin", default="target/release/examples/train_throughput",
                    help="nerp's example binary (cargo build --release --example train_throughput)")
    ap.add_argument("--adamw-impl", choices=["default", "foreach", "fused"], default="default",
                    help="torch.optim.AdamW implementation (default: PyTorch's own choice)")
    ap.add_argument("--out", help="also write the markdown report to this file")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    binary = resolve_bin(args.nerp_bin)
    if binary is None:
        print(f"warning: nerp binary {args.nerp_bin} not found; build it with "
              "`cargo build --release --example train_throughput`; skipping nerp", file=sys.stderr)

    rows = []
    for h in args.hidden:
        nerp_sps = None
        if binary is not None:
            try:
                r = run_nerp(binary, h, args.batch, args.steps, args.levels, args.threads)
                print(json.dumps(r), file=sys.stderr, flush=True)
                nerp_sps = float(r["steps_per_s"])
            except RuntimeError as e:
                print(f"error: {e}", file=sys.stderr, flush=True)
        r = run_torch(h, args.batch, args.steps, args.levels, args.adamw_impl)
        print(json.dumps(r), file=sys.stderr, flush=True)
        rows.append((h, r["params"], nerp_sps, r["steps_per_s"]))

    command = shlex.join([sys.executable, *sys.argv])
    lines = [
        f"CPU: {cpu_model()} · threads: {args.threads} · torch {torch.__version__} "
        f"(AdamW: {args.adamw_impl}) · batch {args.batch} · steps {args.steps} "
        f"(+{WARMUP_STEPS} warm-up) · levels {args.levels} · N {N_KERNELS} · nerp {git_revision()}",
        "",
        f"Command: `{command}`",
        "",
        "| hidden | predictor parameters | nerp steps/s | PyTorch steps/s | nerp/PyTorch |",
        "|---:|---:|---:|---:|---:|",
    ]
    for h, p, n, t in rows:
        ratio = None if n is None else n / t
        lines.append(f"| {h} | {p:,} | {fmt(n)} | {fmt(t)} | {'—' if ratio is None else f'{ratio:.2f}×'} |")
    report = "\n".join(lines) + "\n"
    print(report, end="")
    if args.out:
        Path(args.out).write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
