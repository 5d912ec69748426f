"""Fashion-MNIST from the Debian package's idx files, preprocessed as the shared models expect.

Preprocessing (the models' .json): pixels / 255, then (x - 0.286) / 0.353, shape 1x28x28.
Training augmentation for NNCodec's data-driven tools follows the models' training recipe
(random 2-pixel-shift crops, horizontal flips).
"""

import gzip
import os

import numpy as np
import torch

DEFAULT_DIR = "/usr/share/datasets/fashion-mnist"
MEAN, STD = 0.286, 0.353


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[0:4], "big")
    ndim = magic & 0xFF
    if magic >> 8 != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte idx file (magic {magic:#x})")
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise ValueError(f"{path}: {body.size} bytes of data for dims {dims}")
    return body.reshape(dims)


def load_split(root, split):
    """split 'train' (60,000) or 't10k' (10,000) -> (uint8 images N x 28 x 28, int64 labels)."""
    images = read_idx(os.path.join(root, f"{split}-images-idx3-ubyte.gz"))
    labels = read_idx(os.path.join(root, f"{split}-labels-idx1-ubyte.gz")).astype(np.int64)
    return images, labels


def normalize(images_u8):
    x = torch.from_numpy(np.ascontiguousarray(images_u8)).float().div_(255.0)
    return ((x - MEAN) / STD).unsqueeze(1)


class FashionMNIST(torch.utils.data.Dataset):
    """Preprocessed images held in memory; `augment` adds the training recipe's shift + flip."""

    def __init__(self, images_u8, labels, augment=False, pad=2):
        self.x = normalize(images_u8)
        self.y = torch.from_numpy(labels)
        self.augment = augment
        self.pad = pad
        # Padding value: a zero pixel after normalisation.
        self.fill = (0.0 - MEAN) / STD

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        x = self.x[i]
        if self.augment:
            p = self.pad
            padded = torch.nn.functional.pad(x, (p, p, p, p), value=self.fill)
            dy, dx = torch.randint(0, 2 * p + 1, (2,)).tolist()
            x = padded[:, dy : dy + 28, dx : dx + 28]
            if torch.rand(()) < 0.5:
                x = x.flip(-1)
        return x, self.y[i]


def evaluate(model, x, y, batch=500):
    """Top-1 accuracy (%) and the logits over preprocessed images x (N x 1 x 28 x 28)."""
    model.eval()
    outs = []
    with torch.no_grad():
        for s in range(0, len(x), batch):
            outs.append(model(x[s : s + batch]))
    logits = torch.cat(outs)
    acc = (logits.argmax(1) == y).float().mean().item() * 100.0
    return acc, logits
