"""Cosine similarity between the sentence embeddings of two all-MiniLM-L6-v2 weight files
(original and round-tripped through nerp): a small BERT forward (6 layers, mean pooling,
L2 normalisation, as sentence-transformers does) written here in PyTorch, with a WordPiece
tokenizer read from vocab.txt. Prints one JSON object.

Needs PyTorch (CPU): python3 -m venv /opt/torch-venv && /opt/torch-venv/bin/pip install torch numpy
Run: /opt/torch-venv/bin/python tools/minilm_cosine.py ORIGINAL.safetensors OTHER.safetensors VOCAB.txt
"""
import json
import os
import struct
import sys
import unicodedata

import torch

# The sentences of examples/minilm_candle (one per line). Before 2026-12-02 this tool had its
# own 16 sentences (10 shared); docs/results/real-models.md was measured on those.
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", "data",
                       "minilm_sentences.txt")) as f:
    SENTENCES = [line.strip() for line in f if line.strip()]


def load_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, v in header.items():
        if name == "__metadata__" or v["dtype"] != "F32":
            continue
        a, b = v["data_offsets"]
        out[name] = torch.frombuffer(bytearray(data[a:b]), dtype=torch.float32).reshape(v["shape"])
    return out


def basic_tokens(text):
    text = unicodedata.normalize("NFD", text.lower())
    text = "".join(c for c in text if unicodedata.category(c) != "Mn")
    out, word = [], ""
    for c in text:
        if c.isspace():
            out.append(word)
            word = ""
        elif unicodedata.category(c).startswith("P") or c in "$+<=>^`|~":
            out += [word, c]
            word = ""
        else:
            word += c
    out.append(word)
    return [w for w in out if w]


def wordpiece(word, vocab):
    pieces, start = [], 0
    while start < len(word):
        end = len(word)
        while end > start:
            sub = ("##" if start else "") + word[start:end]
            if sub in vocab:
                pieces.append(vocab[sub])
                break
            end -= 1
        if end == start:
            return [vocab["[UNK]"]]
        start = end
    return pieces


def encode(sentences, vocab):
    ids = [[vocab["[CLS]"]] + [p for w in basic_tokens(s) for p in wordpiece(w, vocab)] + [vocab["[SEP]"]]
           for s in sentences]
    n = max(map(len, ids))
    mask = torch.tensor([[1] * len(i) + [0] * (n - len(i)) for i in ids])
    return torch.tensor([i + [0] * (n - len(i)) for i in ids]), mask


def embed(w, ids, mask, layers=6, heads=12):
    ln = lambda x, p: torch.nn.functional.layer_norm(x, x.shape[-1:], w[p + ".weight"], w[p + ".bias"], 1e-12)
    lin = lambda x, p: x @ w[p + ".weight"].T + w[p + ".bias"]
    e = "embeddings."
    x = w[e + "word_embeddings.weight"][ids] + w[e + "position_embeddings.weight"][: ids.shape[1]]
    x = ln(x + w[e + "token_type_embeddings.weight"][0], e + "LayerNorm")
    bias = (1.0 - mask[:, None, None, :].float()) * -1e9
    b, t, d = x.shape
    for i in range(layers):
        p = f"encoder.layer.{i}."
        split = lambda y: y.reshape(b, t, heads, d // heads).transpose(1, 2)
        q, k, v = (split(lin(x, p + "attention.self." + n)) for n in ("query", "key", "value"))
        a = torch.softmax(q @ k.transpose(-1, -2) / (d // heads) ** 0.5 + bias, -1) @ v
        x = ln(x + lin(a.transpose(1, 2).reshape(b, t, d), p + "attention.output.dense"), p + "attention.output.LayerNorm")
        h = torch.nn.functional.gelu(lin(x, p + "intermediate.dense"))
        x = ln(x + lin(h, p + "output.dense"), p + "output.LayerNorm")
    m = mask[:, :, None].float()
    return torch.nn.functional.normalize((x * m).sum(1) / m.sum(1), dim=-1)


def main():
    orig_path, other_path, vocab_path = sys.argv[1:4]
    vocab = {t.rstrip("\n"): i for i, t in enumerate(open(vocab_path, encoding="utf-8"))}
    ids, mask = encode(SENTENCES, vocab)
    with torch.no_grad():
        a = embed(load_safetensors(orig_path), ids, mask)
        b = embed(load_safetensors(other_path), ids, mask)
    cos = (a * b).sum(-1)
    # Does each sentence keep its nearest neighbour among the others?
    sa, sb = a @ a.T, b @ b.T
    sa.fill_diagonal_(-2)
    sb.fill_diagonal_(-2)
    nn_same = (sa.argmax(1) == sb.argmax(1)).float().mean().item()
    print(json.dumps({"sentences": len(SENTENCES), "mean_cosine": cos.mean().item(),
                      "min_cosine": cos.min().item(), "nearest_neighbour_agreement": nn_same}))


if __name__ == "__main__":
    main()
