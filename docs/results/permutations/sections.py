#!/usr/bin/env python3
"""Bytes of a .nerp file by section kind (stored lengths; header and padding separately).
Usage: sections.py FILE.nerp  -> one JSON line. Python 3 standard library only."""
import json
import struct
import sys

data = open(sys.argv[1], "rb").read()
header_len = struct.unpack_from("<Q", data, 16)[0]
header = json.loads(data[32:32 + header_len])
out = {"file": len(data), "header": header_len}
for s in header["sections"]:
    out[s["kind"]] = out.get(s["kind"], 0) + s["length"]
out["padding"] = len(data) - 32 - header_len - sum(s["length"] for s in header["sections"])
out["non_predictor"] = len(data) - out.get("predictor", 0)
print(json.dumps(out))
