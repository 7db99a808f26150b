#!/usr/bin/env python3
"""Writes format-true CIFAR-100 and downsampled-ImageNet files with synthetic pixels, for scale
runs and benchmarks where the real sets are not at hand. The files have the real layouts, so the
same readers load them (`cifar100:DIR`, `imagenet64:DIR`, `imagenet32:DIR`):

    python3 tools/make_synthetic_datasets.py cifar100 runs/c100 --per-class 50
    python3 tools/make_synthetic_datasets.py imagenet64 runs/in64 --per-class 10

- cifar100: `train.bin` and `test.bin`, records of `coarse label, fine label, 3072 pixels`
  (planar R, G, B of 32×32), as the binary version from the dataset's site.
- imagenet64 / imagenet32: `train_data_batch_1.npz` … `train_data_batch_10.npz` and
  `val_data.npz`, each with `data` (uint8, N × 3·S·S, planar RGB) and `labels` (1-based ints),
  as the downsampled-ImageNet release; the train batches also hold `mean`, as the release does.

Each class gets its own colour and stripe pattern plus noise, so networks can learn something
and the runs exercise real code paths; the figures a run gives say nothing about real data.
"""
import argparse
import os

import numpy as np


def images(rng, classes, per_class, side):
    """Class-dependent synthetic pixels (uint8, N × 3 × side × side) and 0-based labels."""
    n = classes * per_class
    labels = np.repeat(np.arange(classes), per_class)
    rng.shuffle(labels)
    yy, xx = np.mgrid[0:side, 0:side]
    out = np.empty((n, 3, side, side), dtype=np.uint8)
    for i, c in enumerate(labels):
        base = np.array([(c * 37) % 256, (c * 91) % 256, (c * 173) % 256], dtype=np.float32)
        freq = 1 + c % 7
        stripes = 40.0 * np.sin(2 * np.pi * freq * (xx if c % 2 else yy) / side)
        noise = rng.normal(0, 25, size=(3, side, side))
        out[i] = np.clip(base[:, None, None] + stripes[None] + noise, 0, 255).astype(np.uint8)
    return out, labels


def cifar100(out, per_class, test_per_class, rng):
    for name, per in (("train.bin", per_class), ("test.bin", test_per_class)):
        x, fine = images(rng, 100, per, 32)
        coarse = fine // 5
        rec = np.concatenate(
            [coarse[:, None].astype(np.uint8), fine[:, None].astype(np.uint8), x.reshape(len(x), -1)],
            axis=1,
        )
        path = os.path.join(out, name)
        rec.tofile(path + ".tmp")
        os.replace(path + ".tmp", path)
        print(f"wrote {path}: {len(x)} images")


def imagenet(out, side, per_class, test_per_class, rng):
    x, labels = images(rng, 1000, per_class, side)
    flat = x.reshape(len(x), -1)
    mean = flat.mean(axis=0)
    for k, idx in enumerate(np.array_split(np.arange(len(x)), 10), start=1):
        path = os.path.join(out, f"train_data_batch_{k}.npz")
        np.savez(path + ".tmp.npz", data=flat[idx], labels=(labels[idx] + 1).tolist(), mean=mean)
        os.replace(path + ".tmp.npz", path)
    xv, lv = images(rng, 1000, test_per_class, side)
    path = os.path.join(out, "val_data.npz")
    np.savez(path + ".tmp.npz", data=xv.reshape(len(xv), -1), labels=(lv + 1).tolist())
    os.replace(path + ".tmp.npz", path)
    print(f"wrote {out}: {len(x)} training images in 10 batches, {len(xv)} validation images")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("format", choices=["cifar100", "imagenet64", "imagenet32"])
    ap.add_argument("out")
    ap.add_argument("--per-class", type=int, default=10, help="training images per class")
    ap.add_argument("--test-per-class", type=int, default=2, help="test images per class")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    os.makedirs(a.out, exist_ok=True)
    rng = np.random.default_rng(a.seed)
    if a.format == "cifar100":
        cifar100(a.out, a.per_class, a.test_per_class, rng)
    else:
        imagenet(a.out, 64 if a.format == "imagenet64" else 32, a.per_class, a.test_per_class, rng)


if __name__ == "__main__":
    main()
