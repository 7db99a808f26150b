#!/usr/bin/env python3
"""ONNX Runtime's convolution kernels against PyTorch's on the same convolution, side by side in
one run: the three 3×3 layers of ConvNet-D3 (width 128, 1×28×28 images, batch 256 by default),
each as its forward convolution, its input gradient (a transposed convolution) and, as a yardstick,
one matrix product with the same multiply-adds.

    python3 tools/bench_conv_kernels.py [--batch 256] [--width 128] [--reps 7] [--threads 2]

ONNX Runtime runs each as a one-node graph whose weight is a graph input, as in the training
artifacts (the parameters change at every step, so nothing can be prepacked); PyTorch runs
`conv2d`, `conv_transpose2d` and `matmul` on tensors made once. Prints the median time of each, in
ms, and how many times slower ONNX Runtime is. Rows alternate between the two at every repetition,
so a noisy machine slows both alike.
"""
import argparse
import statistics
import time

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto as T
from onnx import helper as h


def session(node, inputs, threads):
    ins = [h.make_tensor_value_info(n, T.FLOAT, list(s)) for n, s in inputs]
    out = h.make_tensor_value_info("y", T.FLOAT, None)
    m = h.make_model(h.make_graph([node], "one_op", ins, [out]), opset_imports=[h.make_opsetid("", 17)])
    m.graph.output[0].type.tensor_type.ClearField("shape")
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    return ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    rng = np.random.default_rng(0)
    n, w = a.batch, a.width
    rows = []
    for cin, hw in [(1, 28), (w, 14), (w, 7)]:
        x = rng.standard_normal((n, cin, hw, hw), dtype=np.float32)
        wt = rng.standard_normal((w, cin, 3, 3), dtype=np.float32) * 0.1
        dy = rng.standard_normal((n, w, hw, hw), dtype=np.float32)
        k = cin * 9
        lhs = rng.standard_normal((n * hw * hw, k), dtype=np.float32)
        rhs = rng.standard_normal((k, w), dtype=np.float32)
        xt, wtt, dyt, lt, rt = map(torch.from_numpy, (x, wt, dy, lhs, rhs))
        pads = [1, 1, 1, 1]
        shape = f"{cin}→{w}, {hw}×{hw}"
        cases = [
            (
                f"Conv {shape}",
                session(h.make_node("Conv", ["x", "w"], ["y"], pads=pads), [("x", x.shape), ("w", wt.shape)], a.threads),
                {"x": x, "w": wt},
                lambda: torch.nn.functional.conv2d(xt, wtt, padding=1),
            ),
            (
                f"matmul, same multiply-adds ({n * hw * hw}×{k} by {k}×{w})",
                session(h.make_node("MatMul", ["a", "b"], ["y"]), [("a", lhs.shape), ("b", rhs.shape)], a.threads),
                {"a": lhs, "b": rhs},
                lambda: lt @ rt,
            ),
        ]
        if cin > 1:
            cases.insert(
                1,
                (
                    f"ConvTranspose (input gradient) {shape}",
                    session(
                        h.make_node("ConvTranspose", ["dy", "w"], ["y"], pads=pads),
                        [("dy", dy.shape), ("w", wt.shape)],
                        a.threads,
                    ),
                    {"dy": dy, "w": wt},
                    lambda: torch.nn.functional.conv_transpose2d(dyt, wtt, padding=1),
                ),
            )
        for name, s, feeds, torch_fn in cases:
            ours = np.asarray(s.run(None, feeds)[0])
            want = torch_fn().numpy()
            err = float(np.abs(ours - want).max() / max(np.abs(want).max(), 1e-30))
            if err > 1e-4:
                raise SystemExit(f"{name}: ONNX Runtime and PyTorch disagree (relative error {err:.1e})")
            t_ort, t_torch = [], []
            for _ in range(a.reps):
                t = time.perf_counter()
                s.run(None, feeds)
                t_ort.append(time.perf_counter() - t)
                t = time.perf_counter()
                torch_fn()
                t_torch.append(time.perf_counter() - t)
            rows.append((name, statistics.median(t_ort) * 1e3, statistics.median(t_torch) * 1e3))
    print(f"batch {n}, width {w}, {a.threads} threads, median of {a.reps} (ms)")
    print(f"{'':58s} {'ORT':>8s} {'PyTorch':>8s}  ORT slower by")
    for name, o, p in rows:
        print(f"{name:58s} {o:8.1f} {p:8.1f}  ×{o / p:.2f}")


if __name__ == "__main__":
    main()
