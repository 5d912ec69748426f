#!/usr/bin/env python3
"""Checks the module structure of src/ (issue 14): reads every `crate::` path of the library's
source and fails when

- two or more top-level modules import each other in a circle, or
- a file under src/format/ imports anything of the crate but `error` and `mmap`
  (the format stands alone: a reader of .nerp files needs nothing else), or
- a file of codec/, predictor/, runtime/ or compress/ imports a module above its layer
  (MAY_USE below).

Comments and `#[cfg(test)] mod … { … }` blocks are not read: unit tests may use the
compressor to build their inputs. Python 3 standard library only; exit status 1 on a finding.
Usage: tools/check_modules.py [SRC_DIR]  (default: src/ beside this script's folder)
"""
import pathlib
import re
import sys

FORMAT_MAY_USE = {"error", "mmap"}
# lib.rs's re-exports, by the module that defines them.
ROOT_REEXPORTS = {"Error": "error", "FormatError": "error", "Result": "error", "Device": "runtime",
                  "NerpFile": "format", "open": "format", "load_model": "runtime"}
# What each layer above the format may import (issue 25): the codecs sit on the format, the
# runtime reads files without the compressor, the compressor never reaches evaluation or the
# command line. A module missing here is not restricted (beyond the circle check).
MAY_USE = {
    "format": FORMAT_MAY_USE,
    "codec": {"error", "format"},
    "predictor": {"error", "format", "gpu", "linalg"},
    "runtime": {"error", "format", "mmap", "codec", "predictor", "gpu", "ingest", "data", "linalg"},
    "compress": {"error", "format", "mmap", "codec", "predictor", "gpu", "ingest", "data", "runtime",
                 "linalg", "synth"},
}


def strip_comments(text):
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    return re.sub(r"//[^\n]*", "", text)


def strip_test_modules(text):
    out, pos = [], 0
    for m in re.finditer(r"#\[cfg\((?:all\()?test\b[^\]]*\]\s*(pub\s+)?mod\s+\w+\s*\{", text):
        if m.start() < pos:
            continue
        out.append(text[pos:m.start()])
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        pos = i
    out.append(text[pos:])
    return "".join(out)


def split_top(inner):
    """Items of a `{a, b::{c, d}, e}` group at depth 0."""
    items, depth, cur = [], 0, ""
    for ch in inner:
        if ch == "," and depth == 0:
            items.append(cur)
            cur = ""
            continue
        depth += {"{": 1, "}": -1}.get(ch, 0)
        cur += ch
    items.append(cur)
    return [i.strip() for i in items if i.strip()]


def imported_modules(text):
    """Top-level module names named by `crate::…` paths (grouped `use` included)."""
    names = set()
    for m in re.finditer(r"\bcrate\s*::\s*(\{|\w+)", text):
        if m.group(1) != "{":
            names.add(m.group(1))
            continue
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        for item in split_top(text[m.end():i - 1]):
            head = re.match(r"\w+", item)
            if head and head.group(0) != "self":
                names.add(head.group(0))
    return names


def module_of(src, path):
    rel = path.relative_to(src)
    if len(rel.parts) == 1:
        return None if rel.stem in ("lib", "main") else rel.stem
    return rel.parts[0]


def find_cycles(edges):
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on, comps, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return comps


def main():
    root = pathlib.Path(__file__).resolve().parent.parent
    src = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else root / "src"
    edges, sources, problems = {}, {}, []
    for path in sorted(src.rglob("*.rs")):
        module = module_of(src, path)
        if module is None:
            continue
        text = strip_test_modules(strip_comments(path.read_text(encoding="utf-8")))
        for used in {ROOT_REEXPORTS.get(m, m) for m in imported_modules(text)} - {module}:
            edges.setdefault(module, set()).add(used)
            sources.setdefault((module, used), []).append(str(path.relative_to(src.parent)))
            allowed = MAY_USE.get(module)
            if allowed is not None and used not in allowed:
                problems.append(f"{path.relative_to(src.parent)}: src/{module}/ imports crate::{used} "
                                f"(only {', '.join(sorted(allowed))} are allowed)")
    for comp in find_cycles(edges):
        inside = [f"{a} -> {b} ({', '.join(sorted(set(sources[(a, b)])))})"
                  for a in comp for b in sorted(edges.get(a, ())) if b in comp]
        problems.append("modules import each other in a circle: " + ", ".join(comp) + "\n    "
                        + "\n    ".join(inside))
    for p in problems:
        print(p, file=sys.stderr)
    if problems:
        return 1
    print(f"module check: {len(edges)} modules, no circle, src/format/ stands alone, "
          f"{', '.join(sorted(set(MAY_USE) - {'format'}))} within their layers")
    return 0


if __name__ == "__main__":
    sys.exit(main())
