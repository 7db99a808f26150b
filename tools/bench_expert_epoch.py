#!/usr/bin/env python3
"""One expert epoch, timed in plain PyTorch and in `tesla experts` in the same run, with the ratios.

    python3 tools/bench_expert_epoch.py --tesla target/release/tesla --work runs/bench-expert-epoch

An epoch is what the reference code's buffer script runs per epoch: SGD (lr 0.01, no momentum,
batch 256) over the training images in a shuffled order, then top-1 accuracy on the whole test
set. PyTorch trains the same ConvNet as an `nn.Module` with `optimizer.step()`, as that script
does, without augmentation (it would add PyTorch's own DSA cost); `tesla experts` is timed with
its DSA (the default) and without (`--dsa-strategy none`). The training images are a
class-balanced subset of `--limit` Fashion-MNIST images (the same count on both sides). Times are
medians over the epochs after the first, which compiles or warms up.
"""
import argparse
import gzip
import json
import os
import statistics
import subprocess
import sys
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_iteration import expert_parameters  # noqa: E402
from bench_torch import build, machine  # noqa: E402  (the same ConvNet as the graph benchmark)

FASHION_MNIST = "/usr/share/datasets/fashion-mnist"


def idx(path, offset):
    with gzip.open(path, "rb") as f:
        return torch.frombuffer(bytearray(f.read()[offset:]), dtype=torch.uint8)


def fashion_mnist(split):
    prefix = "train" if split == "train" else "t10k"
    images = idx(os.path.join(FASHION_MNIST, f"{prefix}-images-idx3-ubyte.gz"), 16)
    labels = idx(os.path.join(FASHION_MNIST, f"{prefix}-labels-idx1-ubyte.gz"), 8).long()
    x = images.float().div(255).reshape(-1, 1, 28, 28)
    return (x - 0.2860) / 0.3530, labels


def balanced(x, y, n, classes, seed):
    g = torch.Generator().manual_seed(seed)
    per = max(n // classes, 1)
    keep = [torch.nonzero(y == c).flatten() for c in range(classes)]
    keep = torch.cat([k[torch.randperm(len(k), generator=g)[:per]] for k in keep])
    return x[keep], y[keep]


def reference_epochs(model, train, test, batch, epochs):
    (x, y), (xt, yt) = train, test
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.0)
    loss_fn = nn.CrossEntropyLoss()
    seconds = []
    for _ in range(epochs):
        t = time.perf_counter()
        model.train()
        for chunk in torch.randperm(len(x)).split(batch):
            loss = loss_fn(model(x[chunk]), y[chunk])
            opt.zero_grad()
            loss.backward()
            opt.step()
        model.eval()
        with torch.no_grad():
            correct = sum((model(xt[i:i + 500]).argmax(1) == yt[i:i + 500]).sum().item()
                          for i in range(0, len(xt), 500))
        seconds.append(time.perf_counter() - t)
        assert 0 <= correct <= len(xt)
    return statistics.median(seconds[1:])


def tesla_epochs(a, dsa, torch_params):
    out = os.path.join(a.work, f"experts-{dsa}")
    subprocess.run(["rm", "-rf", out], check=True)
    cmd = [a.tesla, "experts", "--dataset", "fashion-mnist", "--model", a.model, "--experts", "1",
           "--epochs", str(a.epochs), "--limit", str(a.limit), "--dsa-strategy", dsa,
           "--backend", a.backend, "--out", out]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)}: {r.stderr.strip().splitlines()[-1:]}")
    tesla_params = expert_parameters(os.path.join(out, "expert_0000.safetensors"))
    if tesla_params != torch_params:
        sys.exit(f"error: tesla's {a.model} has {tesla_params} parameters, the PyTorch reference "
                 f"{torch_params}: the two would not do the same work")
    with open(os.path.join(out, "expert_0000.json")) as f:
        return statistics.median([e["seconds"] for e in json.load(f)][1:])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="convnet-d3")
    ap.add_argument("--limit", type=int, default=10000, help="training images per epoch")
    ap.add_argument("--epochs", type=int, default=3, help="epochs run; the first is not timed")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backend", default="ort")
    ap.add_argument("--tesla", required=True, help="the tesla binary")
    ap.add_argument("--work", default="runs/bench-expert-epoch")
    a = ap.parse_args()
    if a.epochs < 2:
        sys.exit("error: --epochs must be at least 2 (the first is not timed)")
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    os.makedirs(a.work, exist_ok=True)
    classes = 10
    train = balanced(*fashion_mnist("train"), a.limit, classes, 0)
    test = fashion_mnist("test")
    model = build(a.model, 1, 28, classes)
    torch_params = sum(p.numel() for p in model.parameters())
    ref = reference_epochs(model, train, test, 256, a.epochs)
    with_dsa = tesla_epochs(a, "color_crop_cutout_flip_scale_rotate", torch_params)
    plain = tesla_epochs(a, "none", torch_params)
    print(machine())
    print(f"one expert epoch, {a.model}, {len(train[0])} Fashion-MNIST training images at batch "
          f"256 and the {len(test[0])} test images, {a.threads} threads, backend {a.backend} "
          f"(s/epoch, median of {a.epochs - 1})")
    print(f"{'PyTorch':>10} {'tesla, DSA':>20} {'tesla, no DSA':>20}")
    print(f"{ref:>10.2f} {with_dsa:>11.2f} (×{ref / with_dsa:.2f}) {plain:>11.2f} "
          f"(×{ref / plain:.2f})")


if __name__ == "__main__":
    main()
