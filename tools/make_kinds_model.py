"""Writes tests/fixtures/kinds/kinds.onnx: a tiny network with one weight tensor of every kind
nerp predicts (k×k convs for k = 1, 3, 5, 7, depthwise and grouped convs, a transposed conv,
Gemm and MatMul weights, an embedding table (Gather), LSTM and GRU W/R), for tests/kinds.rs.

Needs PyTorch (CPU) and onnx: python3 -m venv /opt/torch-venv && /opt/torch-venv/bin/pip install torch numpy onnx
Run: /opt/torch-venv/bin/python tools/make_kinds_model.py
Weights of rank >= 2 are a smooth function of their indices (see smooth_).
Input "image" [1, 3, 16, 16] float, input "tokens" [1, 6] int64; outputs "logits" [1, 10],
"seq" [1, 6, 16].
"""
import os
import torch
import torch.nn as nn

torch.manual_seed(0)


class Kinds(nn.Module):
    def __init__(self):
        super().__init__()
        self.c7 = nn.Conv2d(3, 8, 7, stride=2, padding=3)  # 7×7
        self.c5 = nn.Conv2d(8, 8, 5, padding=2)  # 5×5
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)  # depthwise [8, 1, 3, 3]
        self.dw5 = nn.Conv2d(8, 8, 5, padding=2, groups=8)  # depthwise 5×5
        self.gc = nn.Conv2d(8, 12, 3, padding=1, groups=4)  # grouped [12, 2, 3, 3]
        self.pw = nn.Conv2d(12, 16, 1)  # 1×1
        self.up = nn.ConvTranspose2d(16, 6, 4, stride=2, padding=1, groups=2)  # [16, 3, 4, 4]
        self.fc = nn.Linear(6 * 16 * 16, 10)  # Gemm
        self.emb = nn.Embedding(50, 16)  # Gather
        self.lstm = nn.LSTM(16, 16, batch_first=True, bidirectional=True)
        self.gru = nn.GRU(32, 16, batch_first=True)
        self.proj = nn.Parameter(torch.randn(16, 16) * 0.2)  # MatMul with a constant

    def forward(self, image, tokens):
        x = torch.relu(self.c7(image))
        x = torch.relu(self.c5(x))
        x = torch.relu(self.dw(x))
        x = torch.relu(self.dw5(x))
        x = torch.relu(self.gc(x))
        x = torch.relu(self.pw(x))
        x = self.up(x)
        logits = self.fc(x.flatten(1))
        s, _ = self.lstm(self.emb(tokens))
        s, _ = self.gru(s)
        return logits, torch.matmul(s, self.proj)


def smooth_(w):
    """Overwrites `w` with a smooth function of its indices (scaled like the default init), so
    that a predictor can fit it and tests can tell a right layout from a wrong one."""
    idx = torch.meshgrid(*[torch.arange(d, dtype=torch.float32) for d in w.shape], indexing="ij")
    phase = sum((0.37 + 0.23 * k) * i for k, i in enumerate(idx))
    with torch.no_grad():
        w.copy_(torch.sin(phase) * (w.std() + 1e-3))


def main():
    m = Kinds().eval()
    for name, p in m.named_parameters():
        if p.dim() >= 2:
            smooth_(p)
    image = torch.randn(1, 3, 16, 16)
    tokens = torch.arange(6).reshape(1, 6) * 7 % 50
    out = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "kinds", "kinds.onnx")
    torch.onnx.export(m, (image, tokens), out, input_names=["image", "tokens"],
                      output_names=["logits", "seq"], opset_version=13, dynamo=False)
    print("wrote", out, os.path.getsize(out), "bytes")


if __name__ == "__main__":
    main()
