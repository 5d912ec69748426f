#!/usr/bin/env python3
"""Writes the first N images and labels of the Fashion-MNIST test set (t10k) as gzipped IDX files.

Used to make examples/data/fashion-mnist-1k/ (the subset bundled with nerp):

    python3 tools/make_fashion_subset.py \
        /usr/share/datasets/fashion-mnist examples/data/fashion-mnist-1k 1000

The source directory is what the Debian package dataset-fashion-mnist installs. The output is
deterministic (gzip mtime 0, no file name in the gzip header), so rerunning it gives the same bytes.
"""
import gzip
import os
import struct
import sys


def read_idx(path, magic):
    with gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb") as f:
        data = f.read()
    found, = struct.unpack(">I", data[:4])
    if found != magic:
        sys.exit(f"{path}: magic {found:#010x}, expected {magic:#010x}")
    ndim = magic & 0xFF
    dims = list(struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim]))
    return dims, data[4 + 4 * ndim:]


def find(src, name):
    for candidate in (os.path.join(src, name), os.path.join(src, name + ".gz")):
        if os.path.exists(candidate):
            return candidate
    sys.exit(f"{src}: neither {name} nor {name}.gz exists")


def write_gz(path, data):
    with open(path, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as f:
        f.write(data)


def main():
    src, dst, n = sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 1000
    (count, h, w), pixels = read_idx(find(src, "t10k-images-idx3-ubyte"), 0x00000803)
    (lcount,), labels = read_idx(find(src, "t10k-labels-idx1-ubyte"), 0x00000801)
    if count != lcount or n > count:
        sys.exit(f"{count} images, {lcount} labels; cannot take {n}")
    os.makedirs(dst, exist_ok=True)
    header = struct.pack(">IIII", 0x00000803, n, h, w)
    write_gz(os.path.join(dst, "t10k-images-idx3-ubyte.gz"), header + pixels[: n * h * w])
    header = struct.pack(">II", 0x00000801, n)
    write_gz(os.path.join(dst, "t10k-labels-idx1-ubyte.gz"), header + labels[:n])
    print(f"wrote {n} images of {h}x{w} and their labels to {dst}")


if __name__ == "__main__":
    main()
