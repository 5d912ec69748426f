#!/usr/bin/env python3
"""A decoder of entropy-coded streams written from spec/nerp-v1.md section 4.4 alone (not
from the Rust code), run on the spec's test vectors: evidence that the section is complete
enough to implement. Usage: python3 tools/entropy_spec_decoder.py [HEX N R MAX_ABS]
(no arguments: the test vectors)."""

import sys


class Context:
    def __init__(self):
        self.p, self.k = 16384, 0

    def update(self, x):
        s = min((self.k + 1).bit_length(), 7)
        t = 32737 if x else 31
        self.p += (t - self.p) >> s  # Python's >> rounds towards -inf, as the spec requires
        self.k = min(self.k + 1, 63)


def decode(data, n, R, max_abs):
    L = len(data)
    if not (R >= 1 and max_abs <= 32768 and L >= 1 and n < 5871 * L):
        raise ValueError("parameters")
    sig = [Context() for _ in range(7)]
    sign = [Context() for _ in range(9)]
    prefix = [[Context() for _ in range(15)] for _ in range(7)]
    msb = [[Context() for _ in range(16)] for _ in range(7)]
    st = {"range": 2**32 - 1, "code": 0, "pos": 0}

    def next_byte():
        b = data[st["pos"]] if st["pos"] < L else 0
        st["pos"] += 1
        return b

    def normalize():
        while st["range"] < 2**24:
            st["range"] *= 256
            st["code"] = st["code"] * 256 + next_byte()

    def bin_(ctx):
        bound = (st["range"] // 2**15) * ctx.p
        if st["code"] < bound:
            x, st["range"] = 1, bound
        else:
            x = 0
            st["code"] -= bound
            st["range"] -= bound
        ctx.update(x)
        normalize()
        return x

    def bypass(w):
        r = st["range"] // 2**w
        v = st["code"] // r
        if v >= 2**w:
            raise ValueError("bypass value out of range")
        st["code"] -= v * r
        st["range"] = r
        normalize()
        return v

    for _ in range(4):
        st["code"] = st["code"] * 256 + next_byte()
    if st["code"] == 2**32 - 1:
        raise ValueError("starts with FF FF FF FF")
    sigma = lambda x: 0 if x == 0 else (1 if x > 0 else 2)
    out = []
    for i in range(n):
        col = i % R
        a = out[i - 1] if col >= 1 else 0
        b = out[i - 2] if col >= 2 else 0
        kappa = min((2 * abs(a) + abs(b)).bit_length(), 6)
        if not bin_(sig[kappa]):
            out.append(0)
        else:
            negative = bin_(sign[sigma(a) + 3 * sigma(b)])
            e = 0
            while e < 15 and bin_(prefix[kappa][e]):
                e += 1
            m = 2**e
            if e >= 1:
                m += bin_(msb[kappa][e]) * 2 ** (e - 1)
            if e >= 2:
                m += bypass(e - 1)
            if m > max_abs:
                raise ValueError(f"|code| {m} above {max_abs}")
            out.append(-m if negative else m)
        if st["pos"] > L + 3:
            raise ValueError("truncated")
    if st["pos"] != L + 3:
        raise ValueError("trailing bytes")
    if st["code"] >= 2**24:
        raise ValueError("not the encoder's final byte")
    return out


VECTORS = [
    ("998164be", 4, [0, 1, -1, 2, 0, 0, 5, -3]),
    ("4000000000004000d3107d39", 5, [32768, -32768, 0, 1000, 7]),
    ("eb", 20, [0] * 20),
    ("00", 3, []),
]

if __name__ == "__main__":
    if len(sys.argv) == 5:
        print(decode(bytes.fromhex(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])))
    else:
        for hexstr, R, codes in VECTORS:
            data = bytes.fromhex(hexstr)
            assert decode(data, len(codes), R, 32768) == codes, hexstr
            for bad in (data[:-1], data + b"\0"):
                try:
                    decode(bad, len(codes), R, 32768)
                    raise SystemExit(f"accepted a corrupted {hexstr}")
                except ValueError:
                    pass
        print(f"{len(VECTORS)} test vectors decode; their truncations and extensions are refused")
