#!/usr/bin/env python3
"""One decoupled distillation step in PyTorch, for comparison with nerp's
(`examples/distill_step.rs`): the same ONNX network (run by a small interpreter of its
Conv/Relu/Add/GlobalAveragePool/Flatten/Gemm nodes), the same predictor (embedding of
6·levels inputs, 5-layer ReLU MLP of width HIDDEN, 9 outputs) over the same number of 3×3
blocks (every Conv weight; 1×1 weights packed 9 to a block), its outputs gathered into the
network's weights times a per-element scale, a teacher forward without gradient, the student
forward, T²·KL at T = 4 plus the feature-map loss (every Conv and Add output, per-sample
L2-normalized), backward and an Adam step.

Tools only (needs torch, numpy, onnx: /opt/torch-venv). Prints one JSON line, milliseconds
(mean over REPEATS after one warm-up step). Images are uniform noise of the input's shape:
the cost does not depend on the values.

usage: distill_throughput.py MODEL.onnx BATCH HIDDEN REPEATS [THREADS] [LEVELS]
"""
import json
import sys
import time

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper


def attrs(node):
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def run(graph, consts, weights, x, record):
    """Runs the ONNX graph on x; `weights` override initializers by name."""
    values = {graph.input[0].name: x}
    feats = []

    def get(name):
        if name in values:
            return values[name]
        if name in weights:
            return weights[name]
        return consts[name]

    for n in graph.node:
        a = attrs(n)
        ins = [get(i) for i in n.input if i]
        if n.op_type == "Conv":
            pads = a.get("pads", [0, 0, 0, 0])
            assert pads[0] == pads[2] and pads[1] == pads[3], "symmetric pads only"
            y = F.conv2d(ins[0], ins[1], ins[2] if len(ins) > 2 else None,
                         stride=a.get("strides", [1, 1]), padding=pads[:2],
                         dilation=a.get("dilations", [1, 1]), groups=a.get("group", 1))
        elif n.op_type == "Relu":
            y = F.relu(ins[0])
        elif n.op_type == "Add":
            y = ins[0] + ins[1]
        elif n.op_type == "GlobalAveragePool":
            y = ins[0].mean(dim=(2, 3), keepdim=True)
        elif n.op_type == "Flatten":
            y = ins[0].flatten(a.get("axis", 1))
        elif n.op_type == "Gemm":
            b = ins[1].t() if a.get("transB", 0) else ins[1]
            y = ins[0] @ b
            if len(ins) > 2:
                y = y + ins[2]
        else:
            raise SystemExit(f"op {n.op_type} not supported by this tool")
        if record and n.op_type in ("Conv", "Add"):
            feats.append(y)
        values[n.output[0]] = y
    return values[graph.output[0].name], feats


def main():
    model, batch, hidden, repeats = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
    threads = int(sys.argv[5]) if len(sys.argv) > 5 else 2
    levels = int(sys.argv[6]) if len(sys.argv) > 6 else 20
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    g = onnx.load(model).graph
    consts = {t.name: torch.from_numpy(numpy_helper.to_array(t).copy()) for t in g.initializer}
    conv_w = [n.input[1] for n in g.node if n.op_type == "Conv"]
    shapes = [tuple(consts[w].shape) for w in conv_w]
    numels = [int(np.prod(s)) for s in shapes]
    # Element -> prediction index: the tensors' elements, in order, fill blocks of 9 (nerp's
    # grid packs 1×1 weights across rows the same way, giving the same block count here).
    blocks = (sum(numels) + 8) // 9
    src = torch.randperm(blocks * 9)[:sum(numels)]
    scales = torch.rand(src.numel()) * 0.1 + 0.05
    dims = [6 * levels] + [hidden] * 4 + [9]
    mlp = torch.nn.Sequential(*[m for i in range(5) for m in
                                ([torch.nn.Linear(dims[i], dims[i + 1])] + ([torch.nn.ReLU()] if i < 4 else []))])
    coords = torch.rand(blocks, 3)
    freqs = 1.25 ** torch.arange(levels, dtype=torch.float32) * np.pi
    phase = coords[:, :, None] * freqs[None, None, :]
    emb = torch.cat([phase.sin(), phase.cos()], dim=2).reshape(blocks, 6 * levels)
    opt = torch.optim.Adam(mlp.parameters(), lr=1e-4)
    shape = [batch] + [d.dim_value for d in g.input[0].type.tensor_type.shape.dim[1:]]
    T = 4.0
    times = {"predict": 0.0, "teacher": 0.0, "forward": 0.0, "backward": 0.0, "adamw": 0.0}

    def step(t):
        x = torch.rand(shape) * 2 - 1
        c = time.perf_counter()

        def lap(k):
            nonlocal c
            now = time.perf_counter()
            t[k] += now - c
            c = now

        flat = mlp(emb).reshape(-1)
        w = flat[src] * scales
        weights, at = {}, 0
        for name, s, m in zip(conv_w, shapes, numels):
            weights[name] = w[at:at + m].reshape(s)
            at += m
        lap("predict")
        with torch.no_grad():
            tl, tf = run(g, consts, {}, x, True)
        lap("teacher")
        sl, sf = run(g, consts, weights, x, True)
        kl = F.kl_div(F.log_softmax(sl / T, 1), F.log_softmax(tl / T, 1), log_target=True,
                      reduction="batchmean") * T * T
        feat = sum(((F.normalize(s.flatten(1), dim=1) - F.normalize(q.flatten(1), dim=1)) ** 2).sum()
                   for s, q in zip(sf, tf)) / batch
        loss = kl + feat
        lap("forward")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        lap("backward")
        opt.step()
        lap("adamw")

    step({k: 0.0 for k in times})  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        step(times)
    wall = time.perf_counter() - start
    ms = lambda v: round(v / repeats * 1e4) / 10
    out = {"impl": "pytorch", "torch": torch.__version__, "batch": batch, "hidden": hidden,
           "blocks": blocks, "threads": threads, "repeats": repeats, "step_ms": ms(wall)}
    out.update({k + "_ms": ms(v) for k, v in times.items()})
    print(json.dumps(out))


if __name__ == "__main__":
    main()
