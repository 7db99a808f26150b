#!/usr/bin/env python3
"""Regenerates assets/fmnist-small/ (embedded as the `fmnist-small` dataset).

Takes, in file order, the first 500 training and the first 100 test images of every class of
Fashion-MNIST and writes them as gzipped IDX files. The output is deterministic: same input,
same bytes (gzip header mtime fixed to 0, no file name stored).

Usage: python3 tools/make_fmnist_small.py [SRC_DIR] [OUT_DIR]
  SRC_DIR defaults to /usr/share/datasets/fashion-mnist (Debian package dataset-fashion-mnist)
  OUT_DIR defaults to assets/fmnist-small
"""
import gzip
import os
import struct
import sys

PER_CLASS = {"train": 500, "t10k": 100}


def read_idx(path):
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return dims, data[4 + 4 * ndim :]


def write_idx(path, dims, body):
    header = bytes([0, 0, 8, len(dims)]) + struct.pack(">" + "I" * len(dims), *dims)
    with open(path, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as f:
            f.write(header + body)


def main():
    src = sys.argv[1] if len(sys.argv) > 1 else "/usr/share/datasets/fashion-mnist"
    out = sys.argv[2] if len(sys.argv) > 2 else "assets/fmnist-small"
    os.makedirs(out, exist_ok=True)
    for split, k in PER_CLASS.items():
        (n, h, w), images = read_idx(os.path.join(src, f"{split}-images-idx3-ubyte.gz"))
        (nl,), labels = read_idx(os.path.join(src, f"{split}-labels-idx1-ubyte.gz"))
        assert n == nl
        taken = {c: 0 for c in range(10)}
        keep = []
        for i, l in enumerate(labels):
            if taken[l] < k:
                taken[l] += 1
                keep.append(i)
        assert all(v == k for v in taken.values())
        px = h * w
        body = b"".join(images[i * px : (i + 1) * px] for i in keep)
        write_idx(os.path.join(out, f"{split}-images-idx3-ubyte.gz"), (len(keep), h, w), body)
        write_idx(os.path.join(out, f"{split}-labels-idx1-ubyte.gz"), (len(keep),), bytes(labels[i] for i in keep))
        print(f"{split}: {len(keep)} images")


if __name__ == "__main__":
    main()
