#!/usr/bin/env python3
"""NeRN's reconstruction recipe in PyTorch (CPU), as a baseline for nerp's size-accuracy sweep.

Trains a NeRN predictor on the kernels nerp predicts (exported by
`cargo run --release --example sweep -- kernels MODEL.onnx KERNELS.safetensors`) and writes the
reconstructed kernels as safetensors plus a JSON description, which
`cargo run --release --example sweep -- add POINTS.json RUN.json` evaluates with nerp's own
evaluation path (the kernels are patched into the ONNX model and run in tract on the full
Fashion-MNIST test set).

The recipe follows the NeRN paper (Ashkenazi et al., ICLR 2023) and its reference code
(github.com/maorash/NeRN); this is an independent implementation:

* coordinates (layer/L, filter/F, channel/C) ("local" normalization), each embedded as
  sin/cos(pi * base^k * p) for k < levels, interleaved; published: base 0.76, 40 levels
  (240 inputs); the code's default: base 1.25, 20 levels (120 inputs);
* a 5-layer ReLU MLP (4 hidden linear+ReLU blocks of width `hidden`, a final linear to 9 values);
  torch default init followed by fmod(w, 2) on the weight matrices;
* crossfilter ordering: per layer, a greedy chain over all kernels by cosine similarity starting
  at kernel 0; the kernel at chain position j gets the coordinate of natural index j;
* magnitude-oriented batching: with probability 0.8 a uniform batch of 4096 distinct kernels,
  else 4096 kernels drawn with replacement with probability proportional to their L2 norm;
* the L2 reconstruction loss (root of the mean squared error); 1x1 kernels are compared on the
  center of the predicted 3x3 (NeRN's "center" sampling);
* Ranger (RAdam + Lookahead k=6, alpha=0.5), betas (0.5, 0.999), eps 1e-5, weight decay 1e-3,
  cosine-decayed lr (to 1e-6) over the run: lr 5e-3 published, 1e-3 with the code's embedding.

Differences from NeRN, stated: NeRN's full objective also has feature-map and output
distillation terms (weights 1e-4) that need the training data; nerp is data-free, so only the
reconstruction term is used. NeRN computes its L2 loss over all kernels each step (gradients
through the batch only); this uses the batch's RMSE, which gives the same gradient direction.
With --seconds the cosine schedule runs over wall time (equal-time comparisons).

Setup (the venv is not part of the repository and never needed by tests):
    python3 -m venv /opt/torch-venv && /opt/torch-venv/bin/pip install torch numpy
"""

import argparse
import json
import math
import os
import struct
import sys
import time

import numpy as np
import torch

OUTPUTS = 9


def read_safetensors(path):
    """(ordered names, {name: float32 array}) of an f32 safetensors file with metadata `order`."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    meta = header.pop("__metadata__", {}) or {}
    base = 8 + n
    arrays = {}
    for name, t in header.items():
        if t["dtype"] != "F32":
            raise SystemExit(f"{path}: tensor {name} is {t['dtype']}, expected F32")
        a, b = t["data_offsets"]
        arrays[name] = np.frombuffer(data[base + a : base + b], dtype="<f4").reshape(t["shape"])
    order = meta.get("order", "").split("\n") if meta.get("order") else sorted(arrays)
    return order, arrays


def write_safetensors(path, tensors):
    """Writes {name: float32 array} (names in the given order) atomically."""
    header, blobs, offset = {}, [], 0
    for name, a in tensors.items():
        b = np.ascontiguousarray(a, dtype="<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))
    os.replace(tmp, path)


def crossfilter_order(kernels):
    """Greedy max-cosine-similarity chain over the rows of `kernels` (N x K), from row 0."""
    n = kernels.shape[0]
    if kernels.shape[1] == 1:
        v = kernels[:, 0] / max(np.linalg.norm(kernels), 1e-30)
        sim = -((v[:, None] - v[None, :]) ** 2)
    else:
        norms = np.linalg.norm(kernels, axis=1, keepdims=True)
        u = kernels / np.maximum(norms, 1e-30)
        sim = u @ u.T
    used = np.zeros(n, dtype=bool)
    order = [0]
    used[0] = True
    cur = 0
    for _ in range(n - 1):
        row = np.where(used, -np.inf, sim[cur])
        cur = int(np.argmax(row))
        order.append(cur)
        used[cur] = True
    return np.array(order)


def embed(pos, base, levels):
    """(N, 3) coordinates -> (N, 6*levels): per coordinate, sin/cos interleaved per level."""
    freqs = torch.tensor([math.pi * base**k for k in range(levels)], dtype=torch.float64)
    x = pos.to(torch.float64)[:, :, None] * freqs  # (N, 3, levels)
    return torch.stack([torch.sin(x), torch.cos(x)], dim=-1).reshape(pos.shape[0], -1).float()


def param_count(inputs, hidden, blocks=5):
    return inputs * hidden + hidden + (blocks - 2) * (hidden * hidden + hidden) + hidden * OUTPUTS + OUTPUTS


class Predictor(torch.nn.Module):
    def __init__(self, inputs, hidden, blocks=5):
        super().__init__()
        dims = [inputs] + [hidden] * (blocks - 1)
        self.body = torch.nn.ModuleList(torch.nn.Linear(a, b) for a, b in zip(dims, dims[1:]))
        self.head = torch.nn.Linear(hidden, OUTPUTS)
        with torch.no_grad():
            for p in self.parameters():
                if p.dim() >= 2:
                    p.copy_(torch.fmod(p, 2))

    def forward(self, x):
        for layer in self.body:
            x = torch.relu(layer(x))
        return self.head(x)


class Lookahead:
    """Lookahead (Zhang et al. 2019) around an inner optimizer: every k steps the slow weights
    move alpha of the way to the fast weights, and the fast weights restart from them."""

    def __init__(self, inner, k=6, alpha=0.5):
        self.inner, self.k, self.alpha, self.steps = inner, k, alpha, 0
        self.slow = [p.detach().clone() for g in inner.param_groups for p in g["params"]]

    def step(self):
        self.inner.step()
        self.steps += 1
        if self.steps % self.k == 0:
            fast = [p for g in self.inner.param_groups for p in g["params"]]
            with torch.no_grad():
                for s, p in zip(self.slow, fast):
                    s.add_(p - s, alpha=self.alpha)
                    p.copy_(s)


def build_targets(order, arrays):
    """Embedding inputs (coordinates), 3x3 targets, masks and kernel norms in chain order."""
    layers = len(order)
    coords, targets, masks, norms, chains = [], [], [], [], []
    for l, name in enumerate(order):
        w = arrays[name]
        f, c, kh, kw = w.shape
        flat = w.reshape(f * c, kh * kw)
        chain = crossfilter_order(flat)  # chain position j holds kernel chain[j]
        chains.append(chain)
        j = np.arange(f * c)
        coords.append(np.stack([np.full(f * c, l / layers), (j // c) / f, (j % c) / c], axis=1))
        t = np.zeros((f * c, 3, 3), dtype=np.float32)
        m = np.zeros((f * c, 3, 3), dtype=np.float32)
        r0, c0 = (3 - kh) // 2, (3 - kw) // 2
        t[:, r0 : r0 + kh, c0 : c0 + kw] = flat[chain].reshape(-1, kh, kw)
        m[:, r0 : r0 + kh, c0 : c0 + kw] = 1.0
        targets.append(t.reshape(-1, OUTPUTS))
        masks.append(m.reshape(-1, OUTPUTS))
        norms.append(np.linalg.norm(flat[chain], axis=1))
    return (
        torch.tensor(np.concatenate(coords), dtype=torch.float32),
        torch.tensor(np.concatenate(targets)),
        torch.tensor(np.concatenate(masks)),
        torch.tensor(np.concatenate(norms), dtype=torch.float64),
        chains,
    )


def reconstruct(model, emb, order, arrays, chains):
    """Predicted kernels per tensor (original order restored, 1x1 from the center)."""
    with torch.no_grad():
        pred = torch.cat([model(emb[i : i + 65536]) for i in range(0, emb.shape[0], 65536)]).numpy()
    out, at = {}, 0
    for name, chain in zip(order, chains):
        f, c, kh, kw = arrays[name].shape
        n = f * c
        k = pred[at : at + n].reshape(n, 3, 3)
        r0, c0 = (3 - kh) // 2, (3 - kw) // 2
        w = np.empty((n, kh, kw), dtype=np.float32)
        w[chain] = k[:, r0 : r0 + kh, c0 : c0 + kw]
        out[name] = w.reshape(f, c, kh, kw)
        at += n
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("kernels", help="safetensors from `sweep kernels`")
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--label", required=True)
    ap.add_argument("--base", type=float, default=0.76)
    ap.add_argument("--levels", type=int, default=40)
    ap.add_argument("--lr", type=float, default=5e-3)
    ap.add_argument("--hidden", type=int, help="predictor width (default: --match-params)")
    ap.add_argument("--match-params", type=int, help="largest width with at most this many parameters")
    ap.add_argument("--steps", type=int, default=3000, help="steps (cosine over steps)")
    ap.add_argument("--seconds", type=float, help="train for this wall time instead (cosine over time)")
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: on a shared 2-core machine 2 threads ran 10x slower per op)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    rng = np.random.default_rng(a.seed)
    inputs = 6 * a.levels
    hidden = a.hidden
    if hidden is None:
        if a.match_params is None:
            raise SystemExit("give --hidden or --match-params")
        hidden = max(h for h in range(1, 4096) if param_count(inputs, h) <= a.match_params)
    params = param_count(inputs, hidden)

    order, arrays = read_safetensors(a.kernels)
    coords, targets, masks, norms, chains = build_targets(order, arrays)
    emb = embed(coords, a.base, a.levels)
    n = emb.shape[0]
    probs = (norms / norms.sum()).numpy()
    model = Predictor(inputs, hidden)
    assert sum(p.numel() for p in model.parameters()) == params
    inner = torch.optim.RAdam(
        model.parameters(), lr=a.lr, betas=(0.5, 0.999), eps=1e-5, weight_decay=1e-3, decoupled_weight_decay=True
    )
    opt = Lookahead(inner)
    lr_min = 1e-6

    start = time.monotonic()
    step = 0
    while True:
        elapsed = time.monotonic() - start
        frac = elapsed / a.seconds if a.seconds else step / a.steps
        if frac >= 1.0:
            break
        lr = lr_min + (a.lr - lr_min) * 0.5 * (1 + math.cos(math.pi * frac))
        for g in inner.param_groups:
            g["lr"] = lr
        if rng.random() < 0.8:
            idx = rng.choice(n, size=min(a.batch, n), replace=False)
        else:
            idx = rng.choice(n, size=a.batch, replace=True, p=probs)
        idx = torch.from_numpy(idx)
        pred = model(emb[idx])
        m = masks[idx]
        loss = torch.sqrt(((pred - targets[idx]) ** 2 * m).sum() / m.sum())
        inner.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        if step % 500 == 0:
            print(f"step {step} loss {loss.item():.5f} lr {lr:.2e} {time.monotonic() - start:.0f}s", flush=True)
    seconds = time.monotonic() - start

    os.makedirs(a.out, exist_ok=True)
    recon = {}
    for dtype, size in (("f32", 4), ("f16", 2)):
        m = Predictor(inputs, hidden)
        m.load_state_dict(model.state_dict())
        if dtype == "f16":
            with torch.no_grad():
                for p in m.parameters():
                    p.copy_(p.half().float())
        recon[dtype] = reconstruct(m, emb, order, arrays, chains)
        se = sum(float(((recon[dtype][k] - arrays[k]) ** 2).sum()) for k in order)
        count = sum(arrays[k].size for k in order)
        stem = f"{a.label}-{dtype}"
        write_safetensors(os.path.join(a.out, stem + ".safetensors"), recon[dtype])
        desc = {
            "label": f"NeRN {a.label} {dtype}",
            "weights": stem + ".safetensors",
            "params": params,
            "bytes_per_param": size,
            "train_seconds": seconds,
            "steps": step,
            "hidden": hidden,
            "base": a.base,
            "levels": a.levels,
            "lr": a.lr,
            "weight_rmse": math.sqrt(se / count),
            "torch": torch.__version__,
            "threads": a.threads,
            "command": " ".join(["tools/nern_baseline.py"] + sys.argv[1:]),
        }
        with open(os.path.join(a.out, stem + ".json"), "w") as f:
            json.dump(desc, f, indent=1)
        print(json.dumps(desc))


if __name__ == "__main__":
    main()
