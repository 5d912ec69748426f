"""The shared Fashion-MNIST ResNets as PyTorch modules, weights read from the ONNX files.

The ONNX exports (/work/shared/models/resnet{20,56}_fashion_mnist.onnx) have BatchNorm folded
into the convolutions, so every Conv carries a bias and there is no BN layer left. The graph,
read with the `onnx` package, is the CIFAR-style ResNet:

    conv1 3x3 1->16 (+bias), ReLU
    3 stages of n BasicBlocks (n = 3 for ResNet-20, 9 for ResNet-56), 16/32/64 channels;
      block: conv1 3x3 (stride 2 in the first block of stages 2 and 3), ReLU, conv2 3x3,
             + shortcut (identity, or `short.0`: 1x1 conv stride 2 with bias), ReLU
    GlobalAveragePool, Flatten, fc 64->10 (Gemm, transB)

`load_from_onnx` does not trust this description: it walks the graph's Conv and Gemm nodes,
maps each to the module of the same scope name, and checks kernel, stride, padding, groups and
every initializer's shape before copying. The module keeps the exporter's names (conv1,
layers.3.short.0, fc), so NNCodec's per-tensor logs name the same tensors as nerp does.
"""

import onnx
import onnx.numpy_helper
import torch
import torch.nn as nn
import torch.nn.functional as F

WIDTHS = (16, 32, 64)


class BasicBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=True)
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, 0, bias=True))
        else:
            self.short = None

    def forward(self, x):
        y = F.relu(self.conv1(x))
        y = self.conv2(y)
        s = x if self.short is None else self.short(x)
        return F.relu(y + s)


class FoldedResNet(nn.Module):
    """CIFAR-style ResNet-(6n+2) with BatchNorm folded into conv weights and biases."""

    def __init__(self, depth, num_classes=10, in_channels=1):
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"depth must be 6n+2, got {depth}")
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, WIDTHS[0], 3, 1, 1, bias=True)
        blocks = []
        cin = WIDTHS[0]
        for stage, width in enumerate(WIDTHS):
            for i in range(n):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(cin, width, stride))
                cin = width
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(WIDTHS[-1], num_classes)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = self.layers(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


def _module_path(node):
    """'/layers/layers.3/short/short.0/Conv' -> 'layers.3.short.0'.

    The exporter names each scope by its full dotted path inside its parent
    ('layers' then 'layers.3'), so a component is dropped when the next one extends it.
    """
    parts = [p for p in node.name.split("/") if p][:-1]
    kept = [p for i, p in enumerate(parts) if not (i + 1 < len(parts) and parts[i + 1].startswith(p + "."))]
    return ".".join(kept)


def load_from_onnx(path, depth):
    """Builds FoldedResNet(depth) and copies the ONNX initializers into it, checking the graph."""
    graph = onnx.load(path).graph
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    model = FoldedResNet(depth)
    modules = dict(model.named_modules())
    state = {}
    for node in graph.node:
        if node.op_type not in ("Conv", "Gemm"):
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        name = "fc" if node.op_type == "Gemm" else _module_path(node)
        mod = modules.get(name)
        if mod is None:
            raise ValueError(f"ONNX node {node.name} maps to '{name}', which the module does not have")
        if node.op_type == "Conv":
            if not isinstance(mod, nn.Conv2d):
                raise ValueError(f"{name} is not a Conv2d")
            want = {
                "kernel_shape": list(mod.kernel_size),
                "strides": list(mod.stride),
                "pads": list(mod.padding) * 2,
                "group": mod.groups,
                "dilations": list(mod.dilation),
            }
            for key, value in want.items():
                if key in attrs and attrs[key] != value:
                    raise ValueError(f"{name}: ONNX {key}={attrs[key]}, module has {value}")
        else:
            if attrs.get("transB") != 1 or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
                raise ValueError(f"Gemm {node.name}: unexpected attributes {attrs}")
        if len(node.input) != 3:
            raise ValueError(f"{node.name}: expected weight and bias inputs (BatchNorm folded)")
        for key, init_name in (("weight", node.input[1]), ("bias", node.input[2])):
            value = torch.from_numpy(inits[init_name].copy())
            target = getattr(mod, key)
            if tuple(value.shape) != tuple(target.shape):
                raise ValueError(f"{name}.{key}: ONNX shape {tuple(value.shape)}, module {tuple(target.shape)}")
            state[f"{name}.{key}"] = value
    missing = set(model.state_dict()) - set(state)
    if missing:
        raise ValueError(f"parameters without an ONNX initializer: {sorted(missing)}")
    ops = [n.op_type for n in graph.node]
    n_add = ops.count("Add")
    if n_add != len(model.layers):
        raise ValueError(f"ONNX has {n_add} residual Adds, module has {len(model.layers)} blocks")
    model.load_state_dict(state)
    model.eval()
    return model


# -- the unfolded network (conv without bias + BatchNorm), from the .safetensors -------------


class BNBlock(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, 0, bias=False), nn.BatchNorm2d(cout))
        else:
            self.short = None

    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        s = x if self.short is None else self.short(x)
        return F.relu(y + s)


class BNResNet(nn.Module):
    """The same ResNet-(6n+2) with its BatchNorm layers, as trained (names as in the safetensors)."""

    def __init__(self, depth, num_classes=10, in_channels=1):
        super().__init__()
        n = (depth - 2) // 6
        self.conv1 = nn.Conv2d(in_channels, WIDTHS[0], 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(WIDTHS[0])
        blocks = []
        cin = WIDTHS[0]
        for stage, width in enumerate(WIDTHS):
            for i in range(n):
                blocks.append(BNBlock(cin, width, 2 if stage > 0 and i == 0 else 1))
                cin = width
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(WIDTHS[-1], num_classes)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layers(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.fc(x)


def read_safetensors(path):
    """name -> numpy array; the format is an 8-byte little-endian header length, a JSON header
    of dtype/shape/data_offsets per tensor, then the raw little-endian data."""
    import json
    import struct

    import numpy as np

    dtypes = {"F32": np.float32, "I64": np.int64, "F16": np.float16}
    with open(path, "rb") as f:
        blob = f.read()
    (n,) = struct.unpack("<Q", blob[:8])
    header = json.loads(blob[8 : 8 + n])
    out = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        start, end = meta["data_offsets"]
        arr = np.frombuffer(blob[8 + n + start : 8 + n + end], dtype=dtypes[meta["dtype"]])
        out[name] = arr.reshape(meta["shape"]).copy()
    return out


def load_bn_model(path, depth):
    model = BNResNet(depth)
    tensors = read_safetensors(path)
    state = model.state_dict()
    if set(tensors) != set(state):
        raise ValueError(f"safetensors and module differ: {sorted(set(tensors) ^ set(state))[:6]}")
    model.load_state_dict({k: torch.from_numpy(v) for k, v in tensors.items()})
    model.eval()
    return model
