#!/usr/bin/env python3
"""The same graphs as `tesla bench step`, timed in PyTorch in the same run, with the ratios.

    python3 tools/bench_torch.py convnet-d3 --input 1x28x28 --batch 256 --tesla target/release/tesla
    python3 tools/bench_torch.py resnet18 --onnx resnet18.onnx --input 3x32x32 --batch 32 --tesla target/release/tesla

PyTorch runs the way the reference TESLA/MTT code does (a functional network over one flat
parameter vector theta, autograd): `step` is the loss and its gradient in theta; `pass 2` is
the reverse-over-reverse product of pass 2 (d<v, grad>/d(x, theta, y), keeping the graph of
the gradient); `logits` is the forward; `pass 2, dx` is pass 2's product in the images only,
the one tesla mode runs at every step. The soft-label cross-entropy, inputs and v are the ones
`tesla bench step` uses. MODEL is `convnet-dN[-wW]` (the MTT ConvNet with instance norm, as the
built-in builder) or a `torchvision.models` name, which `tesla` then reads from the ONNX file
given with `--onnx` (export it with `tools/export_model.py`). With `--tesla`, the tesla binary
is run on the same shapes right after, PyTorch is timed again after it, and the table gives
every backend's img/s and its ratio to the mean of PyTorch's two timings; given several binaries (builds before and after a change), it runs each in turn. Threads: `--threads` for PyTorch (default 2, this machine's cores).
"""
import argparse
import re
import statistics
import subprocess
import sys
import time

import torch
from torch import nn
from torch.func import functional_call


def machine():
    """The CPU a table was measured on, as one line: the same source's ratios to PyTorch differed
    by up to 1.7 times between two hosts of one machine type, so each table names the family and
    model it ran on."""
    return f"cpu: {cpu()}; torch {torch.__version__}"


def cpu():
    """The CPU's model name, family, model and logical cores, from /proc/cpuinfo."""
    fields, cores = {}, 0
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, _, value = line.partition(":")
                key = key.strip()
                if key == "processor":
                    cores += 1
                elif key in ("model name", "cpu family", "model") and key not in fields:
                    fields[key] = value.strip()
    except OSError:
        return "unknown (no /proc/cpuinfo)"
    return (f"{fields.get('model name', 'unknown')}, family {fields.get('cpu family', '?')} "
            f"model {fields.get('model', '?')}, {cores} logical cores")


def convnet(depth, width, channels, hw, classes):
    layers, c, s = [], channels, hw
    for d in range(depth):
        # As tesla's builder and MTT's ConvNet: a 1-channel (28×28) input is padded by 3 in the
        # first layer, so that the network runs on 32×32 maps.
        pad = 3 if channels == 1 and d == 0 else 1
        layers += [nn.Conv2d(c, width, 3, padding=pad), nn.GroupNorm(width, width, affine=True),
                   nn.ReLU(), nn.AvgPool2d(2)]
        c, s = width, (s + 2 * pad - 2) // 2
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(width * s * s, classes))


def build(name, c, h, classes):
    m = re.fullmatch(r"convnet-d(\d+)(?:-w(\d+))?", name)
    if m:
        return convnet(int(m.group(1)), int(m.group(2) or 128), c, h, classes)
    import torchvision
    return getattr(torchvision.models, name)(weights=None, num_classes=classes)


def timed(fn, reps):
    fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def torch_rates(model, x, y, reps):
    params = dict(model.named_parameters())
    buffers = dict(model.named_buffers())
    shapes = [(n, p.shape) for n, p in params.items()]
    theta = torch.cat([p.detach().reshape(-1) for p in params.values()]).requires_grad_(True)
    v = torch.full_like(theta, 1e-3)

    numels = [s.numel() for _, s in shapes]

    def unflat(th):
        # torch.split, as the reference code's ReparamModule: one backward for all the views
        # (slicing each one would add P zeros per parameter tensor in the backward).
        parts = torch.split(th, numels)
        return {**{n: p.view(s) for (n, s), p in zip(shapes, parts)}, **buffers}

    def loss_of(th, xx, yy):
        logits = functional_call(model, unflat(th), (xx,))
        return -(yy * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()

    def step():
        loss = loss_of(theta, x, y)
        return torch.autograd.grad(loss, theta)

    def pass2():
        xx = x.detach().requires_grad_(True)
        yy = y.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(loss_of(theta, xx, yy), theta, create_graph=True)
        return torch.autograd.grad((g * v).sum(), (xx, theta, yy))

    def pass2_dx():
        # What tesla mode runs at every step: the images' gradient only.
        xx = x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(loss_of(theta, xx, y), theta, create_graph=True)
        return torch.autograd.grad((g * v).sum(), xx)

    def logits():
        with torch.no_grad():
            return functional_call(model, unflat(theta), (x,))

    b = x.shape[0]
    return [b / timed(f, reps) for f in (step, pass2, logits, pass2_dx)]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--input", default="1x28x28")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--onnx", help="the ONNX export tesla reads for a torchvision MODEL")
    ap.add_argument("--tesla", nargs="+", metavar="BINARY",
                    help="tesla binaries: also run `tesla bench step` on the same work with each")
    ap.add_argument("--backends", default="ort,tract")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    c, h, w = (int(v) for v in a.input.split("x"))
    torch.manual_seed(0)
    model = build(a.model, c, h, a.classes).train()
    b_i, _, h_i, w_i = torch.meshgrid(torch.arange(a.batch), torch.arange(c), torch.arange(h),
                                      torch.arange(w), indexing="ij")
    x = ((b_i * 7 + h_i * 3 + w_i) % 11).float() / 11.0 - 0.5
    y = torch.zeros(a.batch, a.classes)
    y[torch.arange(a.batch), torch.arange(a.batch) % a.classes] = 1.0
    before = torch_rates(model, x, y, a.reps)
    rates = {}
    for binary in a.tesla or []:
        # With several binaries (a build before and after a change, say), each row names its own.
        label = "" if len(a.tesla) == 1 else f" [{binary}]"
        spec = a.onnx or a.model
        cmd = [binary, "bench", "step", "--model", spec, "--input", a.input, "--classes",
               str(a.classes), "--batch", str(a.batch), "--reps", str(a.reps), "--backends",
               a.backends]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode != 0:
            sys.exit(f"error: {' '.join(cmd)} failed: {out.stderr.strip().splitlines()[-1:]}")
        torch_params = sum(p.numel() for p in model.parameters())
        for line in out.stdout.splitlines():
            f = line.split()
            if len(f) == 2 and f[0] == "parameters" and int(f[1]) != torch_params:
                sys.exit(f"error: tesla's {spec} has {f[1]} parameters, the PyTorch reference "
                         f"{torch_params}: the two would not do the same work")
            if len(f) >= 5 and f[0] in ("tract", "ort", "ort-cuda"):
                rates[f"tesla {f[0]}{label}"] = [float(v) for v in f[1:5]]
    # PyTorch is timed again after tesla: on a shared machine its speed drifts within minutes,
    # and the ratios are to the mean of the two, with both rows shown.
    after = torch_rates(model, x, y, a.reps) if a.tesla else before
    ref = [(p + q) / 2 for p, q in zip(before, after)]
    torch_rows = {f"pytorch {torch.__version__}": ref}
    if a.tesla:
        torch_rows = {"pytorch, before tesla": before, "pytorch, after tesla": after,
                      f"pytorch {torch.__version__}, mean": ref}
    rates = {**torch_rows, **rates}
    print(machine())
    print(f"{a.model}, input {a.input}, batch {a.batch}, {a.threads} threads, median of {a.reps} (img/s)")
    width = max(22, *(len(name) for name in rates))
    print(f"{'':<{width}} {'step':>16} {'pass 2':>16} {'logits':>16} {'pass 2, dx':>16}")
    for name, r in rates.items():
        cells = [f"{v:9.1f} (×{v / ref[i]:.2f})" for i, v in enumerate(r)]
        print(f"{name:<{width}} " + " ".join(f"{c:>16}" for c in cells))


if __name__ == "__main__":
    main()
