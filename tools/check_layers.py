#!/usr/bin/env python3
"""Fails when a module of src/ refers to a module of a higher layer (or of its own layer, other
than itself), so the crate's layering holds: each layer may use only the layers below it.

    python3 tools/check_layers.py          # prints the edges, exit 1 on a violation

A reference is any `crate::NAME` path in a source file (use lines and inline paths alike),
comments excluded; NAME is the top-level module, or `runtime::store` style sub-module where the
layer table names one.
"""
import os
import re
import sys

# Bottom to top. Modules on one line form one layer and may not refer to each other.
LAYERS = [
    ["atomic_file", "block_cache", "progress"],
    ["tensor_file", "config_file"],
    ["compiler"],
    ["onnx"],
    ["runtime"],
    ["zoo"],
    ["compile_cache"],
    ["data"],
    ["train"],
    ["experts"],
    ["eval"],
    ["distill"],
    ["cli"],
]

SRC = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src")


def module_of(rel):
    """The layer-table module a source file belongs to (`runtime/store.rs` -> `runtime::store`
    if listed, else `runtime`)."""
    parts = rel[:-3].split(os.sep)
    if parts[-1] == "mod":
        parts = parts[:-1]
    if not parts or parts == ["lib"] or parts == ["main"]:
        return None
    sub = "::".join(parts[:2])
    return sub if any(sub in layer for layer in LAYERS) else parts[0]


def layer_of(name):
    for i, layer in enumerate(LAYERS):
        if name in layer:
            return i
    return None


def referenced(text):
    text = re.sub(r"//[^\n]*", "", text)
    names = set()
    for m in re.finditer(r"crate::(\w+)(?:::(\w+))?", text):
        top, sub = m.group(1), m.group(2)
        qualified = f"{top}::{sub}" if sub else top
        names.add(qualified if layer_of(qualified) is not None else top)
    # `use crate::{a, b::c}` groups.
    for m in re.finditer(r"crate::\{([^}]*)\}", text):
        for item in m.group(1).split(","):
            top = item.strip().split("::")[0]
            if top:
                names.add(top)
    return names


def main():
    bad, unknown = [], set()
    for root, _, files in os.walk(SRC):
        for f in files:
            if not f.endswith(".rs"):
                continue
            path = os.path.join(root, f)
            rel = os.path.relpath(path, SRC)
            me = module_of(rel)
            if me is None:
                continue
            mine = layer_of(me)
            if mine is None:
                unknown.add(me)
                continue
            with open(path, encoding="utf-8") as fh:
                text = fh.read()
            for other in sorted(referenced(text)):
                if other == me or other.startswith(me + "::") or me.startswith(other + "::"):
                    continue
                theirs = layer_of(other)
                if theirs is None:
                    unknown.add(other)
                elif theirs >= mine:
                    bad.append(f"{rel}: {me} (layer {mine}) refers to {other} (layer {theirs})")
    for u in sorted(unknown):
        bad.append(f"module '{u}' is in no layer of tools/check_layers.py")
    for b in bad:
        print(b)
    if bad:
        sys.exit(1)
    print("layers: every reference points downward")


if __name__ == "__main__":
    main()
