#!/usr/bin/env python3
"""Direct ONNX forms of ConvNet's average pooling, its adjoint and instance normalisation, each
against the equivalent form the artifacts (or, for the norm, tract's loader) use instead, on
tract and on ONNX Runtime, side by side.

    python3 tools/bench_tract_forms.py --tesla target/release/tesla [--batch 256] [--reps 5]

Each pair is a small graph on the first ConvNet-D3 layer's activation (batch × 128 × 32 × 32):
- `AveragePool` 2×2, stride 2, against a depthwise `Conv` with a constant kernel of 1/4;
- its adjoint, the depthwise `ConvTranspose` with that kernel, against a scaling by 1/4 and a
  nearest-neighbour `Resize` by 2;
- `InstanceNormalization`, against the same statistics written out with the scale folded into
  one factor per image and channel, so the large tensor sees one product and one sum. The
  artifacts keep `InstanceNormalization` (ONNX Runtime's fused kernel is the fastest form); tract
  loads it as its own folded form, so on tract the left column is that form.
The two forms of each pair are checked to agree on ONNX Runtime, then timed: ONNX Runtime in this
process, alternating between the forms; tract through `tesla bench profile`, alternating too.
Prints ms per run (median) and the ratio of the equivalent form to the direct one.
"""
import argparse
import os
import re
import statistics
import subprocess
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto as T
from onnx import helper as h
from onnx import numpy_helper as nh


def model(path, nodes, inits, ins, outs):
    g = h.make_graph(nodes, os.path.basename(path), ins, outs, initializer=inits)
    onnx.save(h.make_model(g, opset_imports=[h.make_opsetid("", 17)]), path)


def f(name, shape):
    """An f32 graph input or output of a static shape."""
    return h.make_tensor_value_info(name, T.FLOAT, shape)


def pairs(d, n, c, s):
    big, small = [n, c, s, s], [n, c, s // 2, s // 2]
    quarter = nh.from_array(np.full((c, 1, 2, 2), 0.25, np.float32), "k")
    q = nh.from_array(np.array(0.25, np.float32), "q")
    scales = nh.from_array(np.array([1, 1, 2, 2], np.float32), "scales")
    out = []
    p = [os.path.join(d, f"pool_{x}.onnx") for x in ("direct", "equivalent")]
    model(p[0], [h.make_node("AveragePool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2])],
          [], [f("x", big)], [f("y", small)])
    model(p[1], [h.make_node("Conv", ["x", "k"], ["y"], group=c, kernel_shape=[2, 2], strides=[2, 2])],
          [quarter], [f("x", big)], [f("y", small)])
    out.append(("average pool 2×2 / depthwise Conv", p))
    p = [os.path.join(d, f"spread_{x}.onnx") for x in ("direct", "equivalent")]
    model(p[0], [h.make_node("ConvTranspose", ["x", "k"], ["y"], group=c, kernel_shape=[2, 2], strides=[2, 2])],
          [quarter], [f("x", small)], [f("y", big)])
    model(p[1], [h.make_node("Mul", ["x", "q"], ["xq"]),
                 h.make_node("Resize", ["xq", "", "scales"], ["y"], mode="nearest",
                             coordinate_transformation_mode="asymmetric", nearest_mode="floor")],
          [q, scales], [f("x", small)], [f("y", big)])
    out.append(("its adjoint: ConvTranspose / Resize", p))
    p = [os.path.join(d, f"norm_{x}.onnx") for x in ("direct", "equivalent")]
    ins = [f("x", big), f("g", [c]), f("b", [c])]
    model(p[0], [h.make_node("InstanceNormalization", ["x", "g", "b"], ["y"], epsilon=1e-5)], [], ins, [f("y", big)])
    eps = nh.from_array(np.array(1e-5, np.float32), "eps")
    cs = nh.from_array(np.array([1, c, 1, 1], np.int64), "cs")
    model(p[1], [
        h.make_node("ReduceMean", ["x"], ["mu"], axes=[2, 3], keepdims=1),
        h.make_node("Sub", ["x", "mu"], ["d"]),
        h.make_node("Mul", ["d", "d"], ["d2"]),
        h.make_node("ReduceMean", ["d2"], ["var"], axes=[2, 3], keepdims=1),
        h.make_node("Add", ["var", "eps"], ["ve"]),
        h.make_node("Sqrt", ["ve"], ["sd"]),
        h.make_node("Reshape", ["g", "cs"], ["g4"]),
        h.make_node("Div", ["g4", "sd"], ["a"]),
        h.make_node("Reshape", ["b", "cs"], ["b4"]),
        h.make_node("Mul", ["mu", "a"], ["mua"]),
        h.make_node("Sub", ["b4", "mua"], ["shift"]),
        h.make_node("Mul", ["x", "a"], ["xa"]),
        h.make_node("Add", ["xa", "shift"], ["y"]),
    ], [eps, cs], ins, [f("y", big)])
    out.append(("instance norm: ONNX op / folded factor", p))
    return out


def ort_times(paths, reps):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 2
    so.log_severity_level = 3
    sessions = [ort.InferenceSession(p, so, providers=["CPUExecutionProvider"]) for p in paths]
    rng = np.random.default_rng(0)
    feeds = {i.name: rng.standard_normal(i.shape).astype(np.float32) for i in sessions[0].get_inputs()}
    outs = [s.run(None, feeds)[0] for s in sessions]
    err = float(np.abs(outs[0] - outs[1]).max() / max(np.abs(outs[0]).max(), 1e-30))
    if err > 1e-5:
        raise SystemExit(f"{paths[1]} disagrees with {paths[0]}: relative error {err:.2e}")
    ts = [[], []]
    for _ in range(reps):
        for k, s in enumerate(sessions):
            t = time.perf_counter()
            s.run(None, feeds)
            ts[k].append(time.perf_counter() - t)
    return [1e3 * statistics.median(t) for t in ts]


def tract_times(tesla, paths, reps, rounds=2):
    ts = [[], []]
    for _ in range(rounds):
        for k, p in enumerate(paths):
            r = subprocess.run([tesla, "bench", "profile", "--graph", p, "--reps", str(reps), "--nodes", "0"],
                               capture_output=True, text=True)
            found = re.search(r"([0-9.]+) ms per run", r.stdout)
            if r.returncode != 0 or not found:
                raise SystemExit(f"{tesla} bench profile --graph {p} failed: {r.stderr.strip() or r.stdout.strip()}")
            ts[k].append(float(found.group(1)))
    return [statistics.median(t) for t in ts]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tesla", default="target/release/tesla")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--width", type=int, default=128)
    ap.add_argument("--side", type=int, default=32)
    ap.add_argument("--reps", type=int, default=5)
    a = ap.parse_args()
    if not os.access(a.tesla, os.X_OK):
        raise SystemExit(f"no tesla binary at {a.tesla} (build it with `cargo build --release`)")
    with tempfile.TemporaryDirectory() as d:
        print(f"batch {a.batch}, {a.width} channels, {a.side}×{a.side}; ms per run, median")
        print(f"{'direct form / equivalent form':<42} {'tract':>17} {'ratio':>7} {'ONNX Runtime':>17} {'ratio':>7}")
        for name, paths in pairs(d, a.batch, a.width, a.side):
            o = ort_times(paths, 2 * a.reps + 1)
            t = tract_times(a.tesla, paths, a.reps)
            print(f"{name:<42} {t[0]:7.1f} / {t[1]:7.1f} ×{t[1] / t[0]:5.2f} {o[0]:7.1f} / {o[1]:7.1f} ×{o[1] / o[0]:5.2f}")


if __name__ == "__main__":
    main()
