#!/usr/bin/env python3
"""One whole distillation iteration, timed in plain PyTorch and in `tesla distill` in the same run,
with the ratios.

    python3 tools/bench_iteration.py --tesla target/release/tesla --work runs/bench-iteration

The PyTorch reference is the official algorithm written plainly, over one flat parameter vector
(`torch.split` views, as the reference code's ReparamModule), ConvNet with instance norm:
- tesla: pass 1 runs the T student steps and keeps θ_0 … θ_T; pass 2 recomputes each step's
  gradient at the stored θ_i and takes d⟨v, g_i⟩/dX̃ with the one fixed v = −β·∂L/∂θ_T;
- unrolled (MTT): the T steps as one graph (`create_graph=True`), one backward from L.
No augmentation in the reference (it would add PyTorch's own DSA cost); `tesla` is timed with
its DSA (the default) and without (`--dsa-strategy none`). Labels are one-hot, every synthetic
image is in every step's batch (batch = all), and the expert segment is two snapshots of a short
`tesla experts` run. Both sides take image steps of 100 and hold β. Times are medians over
`--iterations` iterations after `--warmup` (2) left out on both sides. PyTorch is timed before
and after tesla, and the ratios are to the mean of the two.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
from torch import nn
from torch.func import functional_call

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_torch import build, machine  # noqa: E402  (the same ConvNet as the graph benchmark)


# Both sides take the same steps, so that they do the same work on the same values. β's gradient
# is computed on both sides but β is held (step size 0): on a small network whose teacher moves
# less than the student, a learned β can diverge within the timed iterations.
REFERENCE_LR_IMG = 100.0
REFERENCE_LR_LR = 0.0


def reference(model, ipc, classes, shape, steps, iterations, mode, warmup):
    params = dict(model.named_parameters())
    shapes = [(n, p.shape) for n, p in params.items()]
    numels = [s.numel() for _, s in shapes]
    theta0 = torch.cat([p.detach().reshape(-1) for p in params.values()])
    target = theta0 + 1e-2 * torch.randn_like(theta0)

    def loss_of(th, x, y):
        parts = torch.split(th, numels)
        logits = functional_call(model, {n: p.view(s) for (n, s), p in zip(shapes, parts)}, (x,))
        return -(y * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()

    n = ipc * classes
    x_syn = torch.randn(n, *shape, requires_grad=True)
    y = torch.zeros(n, classes)
    y[torch.arange(n), torch.arange(n) % classes] = 1.0
    beta = torch.tensor(0.01, requires_grad=True)
    opt = torch.optim.SGD([x_syn], lr=REFERENCE_LR_IMG, momentum=0.5)
    opt_lr = torch.optim.SGD([beta], lr=REFERENCE_LR_LR, momentum=0.5)
    denom = (theta0 - target).pow(2).sum()

    def tesla_iteration():
        thetas, th = [theta0], theta0
        for _ in range(steps):
            t = th.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(loss_of(t, x_syn.detach(), y), t)
            th = th - beta.detach() * g
            thetas.append(th)
        resid = thetas[-1] - target
        loss = resid.pow(2).sum() / denom
        v = -beta.detach() * 2 * resid / denom
        gx = torch.zeros_like(x_syn)
        for i in range(steps):
            t = thetas[i].detach().requires_grad_(True)
            xx = x_syn.detach().requires_grad_(True)
            (g,) = torch.autograd.grad(loss_of(t, xx, y), t, create_graph=True)
            (d,) = torch.autograd.grad((g * v).sum(), xx)
            gx += d
        opt.zero_grad()
        x_syn.grad = gx
        opt.step()
        return loss.item()

    def unrolled_iteration():
        th = theta0.clone().requires_grad_(True)
        cur = th
        for _ in range(steps):
            (g,) = torch.autograd.grad(loss_of(cur, x_syn, y), cur, create_graph=True)
            cur = cur - beta * g
        loss = (cur - target).pow(2).sum() / denom
        opt.zero_grad()
        opt_lr.zero_grad()
        loss.backward()
        opt.step()
        opt_lr.step()
        return loss.item()

    fn = tesla_iteration if mode == "tesla" else unrolled_iteration
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(iterations):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts)


def tesla_seconds(tesla, work, experts, mode, dsa, a):
    out = os.path.join(work, f"{mode}-{dsa}")
    cmd = [tesla, "distill", "--experts", experts, "--dataset", a.dataset, "--model", a.model,
           "--ipc", str(a.ipc), "--syn-steps", str(a.steps), "--expert-epochs", "1",
           "--max-start-epoch", "1", "--labels", "hard", "--gradient", mode, "--dsa-strategy", dsa,
           "--lr-img", str(REFERENCE_LR_IMG), "--lr-lr", str(REFERENCE_LR_LR),
           "--iterations", str(a.iterations + a.warmup), "--backend", a.backend, "--out", out]
    subprocess.run(["rm", "-rf", out], check=True)
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"error: {' '.join(cmd)}: {r.stderr.strip().splitlines()[-1:]}")
    with open(os.path.join(out, "metrics.jsonl")) as f:
        secs = [json.loads(line)["seconds"] for line in f if line.strip()]
    return statistics.median(secs[a.warmup:])


def expert_parameters(path):
    # The safetensors header (a little-endian length, then JSON): `trajectory` is
    # [snapshots, parameters].
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
    return header["trajectory"]["shape"][1]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="convnet-d3")
    ap.add_argument("--dataset", default="fashion-mnist")
    ap.add_argument("--ipc", type=int, default=10)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--iterations", type=int, default=2)
    # ONNX Runtime's arena grows over the first two runs of a large graph: the unrolled graph's
    # second iteration took 19.6 s and its third 7.9 s (T = 10), so one warm-up is not enough.
    ap.add_argument("--warmup", type=int, default=2, help="iterations left out of the median, both sides")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--backend", default="ort")
    ap.add_argument("--modes", default="tesla,unrolled")
    ap.add_argument("--tesla", required=True, help="the tesla binary")
    ap.add_argument("--work", default="runs/bench-iteration")
    a = ap.parse_args()
    if a.iterations < 1 or a.warmup < 0:
        sys.exit(f"error: --iterations must be at least 1 and --warmup at least 0 "
                 f"(given {a.iterations} and {a.warmup})")
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    os.makedirs(a.work, exist_ok=True)
    experts = os.path.join(a.work, "experts")
    if not os.path.exists(os.path.join(experts, "expert_0000.safetensors")):
        cmd = [a.tesla, "experts", "--dataset", a.dataset, "--model", a.model, "--experts", "1",
               "--epochs", "2", "--limit", "1000", "--backend", a.backend, "--out", experts]
        if subprocess.run(cmd, capture_output=True).returncode != 0:
            sys.exit(f"error: {' '.join(cmd)} failed")
    shape, classes = (1, 28, 28), 10
    model = build(a.model, shape[0], shape[1], classes).train()
    torch_params = sum(p.numel() for p in model.parameters())
    tesla_params = expert_parameters(os.path.join(experts, "expert_0000.safetensors"))
    if tesla_params != torch_params:
        sys.exit(f"error: tesla's {a.model} has {tesla_params} parameters, the PyTorch reference "
                 f"{torch_params}: the two would not do the same work")
    print(machine())
    print(f"one iteration, {a.model}, {a.dataset} shape, IPC {a.ipc}, T {a.steps}, batch = all, "
          f"hard labels, {a.threads} threads (s/iter, median of {a.iterations})")
    print(f"{'mode':<10} {'PyTorch':>22} {'tesla, DSA':>20} {'tesla, no DSA':>20}")
    for mode in a.modes.split(","):
        # PyTorch is timed before and after tesla, and the ratios are to the mean of the two: on
        # a shared machine the speed of both drifts within minutes.
        before = reference(model, a.ipc, classes, shape, a.steps, a.iterations, mode, a.warmup)
        with_dsa = tesla_seconds(a.tesla, a.work, experts, mode,
                                 "color_crop_cutout_flip_scale_rotate", a)
        plain = tesla_seconds(a.tesla, a.work, experts, mode, "none", a)
        after = reference(model, a.ipc, classes, shape, a.steps, a.iterations, mode, a.warmup)
        ref = (before + after) / 2
        pytorch = f"{before:.2f}, {after:.2f}"
        print(f"{mode:<10} {pytorch:>22} {with_dsa:>11.2f} (×{ref / with_dsa:.2f}) "
              f"{plain:>11.2f} (×{ref / plain:.2f})")


if __name__ == "__main__":
    main()
