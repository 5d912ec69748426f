"""Per-channel symmetric round-to-nearest int8 / int4: the common anchor for the table.

Every weight tensor (conv and fc, ndim > 1) gets one scale per output channel,
scale = max|w_row| / (2^(b-1) - 1), rounded to f16 (the stored value is the one used to
dequantize), codes in [-(2^(b-1) - 1), 2^(b-1) - 1] packed at b bits. Biases are kept as f32.
Bytes = ceil(codes * b / 8) per tensor + 2 per output channel + 4 per bias value; the ratio is
ONNX file bytes / these bytes, the same definition as for NNCodec's bitstream.
"""

import math

import torch


def quantize_state(state, bits):
    """Returns (dequantized state dict, stored bytes)."""
    qmax = 2 ** (bits - 1) - 1
    out = {}
    total = 0
    for name, w in state.items():
        if w.ndim > 1:
            rows = w.reshape(w.shape[0], -1)
            scale = rows.abs().amax(dim=1) / qmax
            scale = scale.to(torch.float16).to(torch.float32)
            safe = torch.where(scale > 0, scale, torch.ones_like(scale))
            codes = torch.clamp(torch.round(rows / safe[:, None]), -qmax, qmax)
            out[name] = (codes * scale[:, None]).reshape(w.shape)
            total += math.ceil(rows.numel() * bits / 8) + 2 * w.shape[0]
        else:
            out[name] = w.clone()
            total += 4 * w.numel()
    return out, total
