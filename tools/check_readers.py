#!/usr/bin/env python3
"""Fails when a module that parses bytes from outside files loses the lint attribute that keeps it
free of `unwrap`, `expect` and unchecked indexing (clippy then enforces the rest). Run in CI."""
import pathlib
import sys

READERS = [
    "src/tensor_file.rs",
    "src/data/idx.rs",
    "src/data/cifar.rs",
    "src/data/npz.rs",
    "src/data/imagenet.rs",
    "src/data/folder.rs",
    "src/onnx/import/proto.rs",
    "src/experts/trajectory.rs",
    "src/distill/checkpoint.rs",
    "src/distill/set_file.rs",
]
LINE = "#![deny(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]"

root = pathlib.Path(__file__).resolve().parent.parent
missing = [r for r in READERS if LINE not in (root / r).read_text()]
for r in missing:
    print(f"{r}: lacks `{LINE}`")
sys.exit(1 if missing else 0)
