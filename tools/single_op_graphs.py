#!/usr/bin/env python3
"""One-op ONNX graphs at the shapes where tract's per-op profile of ConvNet-D3's step graph (width
128, batch 256) spends the most time beside ONNX Runtime's: each reproduces one kernel's gap alone.

    python3 tools/single_op_graphs.py DIR
    tesla bench profile --graph DIR/avgpool.onnx            # tract, per op
    python3 tools/profile_ort.py DIR/avgpool.onnx           # ONNX Runtime, per op

Graphs: `avgpool` (2×2 AveragePool of the first layer's activation), `instancenorm` (its
InstanceNormalization), `reducesum` (a sum over the spatial axes, keeping them), `matmul` (the
second layer's weight-gradient product per kernel tap) and `conv` (the second layer's 3×3
convolution). Every input is an f32 graph input of a static shape.
"""
import os
import sys

import numpy as np
import onnx
from onnx import TensorProto as T
from onnx import helper as h


def graph(name, nodes, inputs, output, inits=()):
    ins = [h.make_tensor_value_info(n, T.FLOAT, s) for n, s in inputs]
    out = h.make_tensor_value_info(output[0], T.FLOAT, output[1])
    g = h.make_graph(nodes, name, ins, [out], list(inits))
    m = h.make_model(g, opset_imports=[h.make_opsetid("", 17)])
    onnx.checker.check_model(m, full_check=True)
    return m


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "single-op"
    os.makedirs(out, exist_ok=True)
    act = [256, 128, 28, 28]
    axes = h.make_tensor("axes", T.INT64, [2], np.array([2, 3], np.int64))
    graphs = {
        "avgpool": graph("avgpool", [h.make_node("AveragePool", ["x"], ["y"], kernel_shape=[2, 2], strides=[2, 2])],
                         [("x", act)], ("y", [256, 128, 14, 14])),
        "instancenorm": graph("instancenorm", [h.make_node("InstanceNormalization", ["x", "s", "b"], ["y"], epsilon=1e-5)],
                              [("x", act), ("s", [128]), ("b", [128])], ("y", act)),
        "reducesum": graph("reducesum", [h.make_node("ReduceSum", ["x", "axes"], ["y"], keepdims=1)],
                           [("x", act)], ("y", [256, 128, 1, 1]), [axes]),
        "matmul": graph("matmul", [h.make_node("MatMul", ["a", "b"], ["y"])],
                        [("a", [128, 256 * 14 * 14]), ("b", [256 * 14 * 14, 128])], ("y", [128, 128])),
        "conv": graph("conv", [h.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
                      [("x", [256, 128, 14, 14]), ("w", [128, 128, 3, 3])], ("y", [256, 128, 14, 14])),
    }
    for name, m in graphs.items():
        onnx.save(m, os.path.join(out, f"{name}.onnx"))
        print(os.path.join(out, f"{name}.onnx"))


if __name__ == "__main__":
    main()
