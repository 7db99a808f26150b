#!/usr/bin/env python3
"""Exports a PyTorch classifier to ONNX the way tesla-distill imports it best: every parameter
kept under its `named_parameters()` name, nothing folded or merged.

    python3 tools/export_model.py resnet18 --input 3x32x32 --classes 10 --out resnet18.onnx
    python3 tools/export_model.py mypkg.models:MyNet --kwargs '{"width": 32}' --out mynet.onnx
    python3 tools/export_model.py vgg11_bn --exporter dynamo --out vgg.onnx

NAME is a `torchvision.models` builder (`resnet18`, `mobilenet_v2`, `vit_b_16`, ...) or a
`module:Class` (or `module:function`) path on PYTHONPATH. The model is built with `--kwargs`
(plus `num_classes` for torchvision builders) and random weights, unless `--weights FILE` loads a
state dict. `--mode train` (default) exports it in train() mode, for distillation and
evaluation: BatchNorm with batch statistics (the TorchScript exporter writes the training form;
the dynamo exporter's inference form is recognised by the importer), dropout exported as
identity. `--mode eval` exports a network for inference (running statistics kept).

The batch axis is exported as symbolic, so one file serves every batch size tesla compiles for. Stochastic layers (dropout, stochastic depth) are set to zero
probability so that the exported graph is the deterministic network the artifacts describe.
"""
import argparse
import importlib
import json
import os
import sys

import torch
from torch import nn


def build(name, kwargs, classes):
    if ":" in name:
        module, attr = name.split(":", 1)
        return getattr(importlib.import_module(module), attr)(**kwargs)
    import torchvision

    builder = getattr(torchvision.models, name, None)
    if builder is None or not callable(builder):
        sys.exit(f"error: '{name}' is neither a torchvision.models builder nor a module:Class path")
    kwargs.setdefault("num_classes", classes)
    return builder(weights=None, **kwargs)


def deterministic(model):
    """Zero every dropout and stochastic-depth probability (the artifacts have no random masks)."""
    for m in model.modules():
        if isinstance(m, (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)):
            m.p = 0.0
        if type(m).__name__ == "StochasticDepth":
            m.p = 0.0
        if isinstance(m, nn.MultiheadAttention):
            m.dropout = 0.0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("name")
    ap.add_argument("--input", default="3x32x32", help="image shape CxHxW")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--kwargs", default="{}", help="JSON keyword arguments of the constructor")
    ap.add_argument("--weights", help="a state dict (torch.save) to load")
    ap.add_argument("--exporter", choices=["ts", "dynamo"], default="ts",
                    help="ts: the TorchScript exporter in training mode (recommended); dynamo: "
                         "PyTorch's default exporter with its optimizer off")
    ap.add_argument("--mode", choices=["train", "eval"], default="train")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    try:
        c, h, w = (int(v) for v in a.input.lower().split("x"))
    except ValueError:
        sys.exit(f"error: --input '{a.input}' must look like 3x32x32")
    model = build(a.name, json.loads(a.kwargs), a.classes)
    if a.weights:
        model.load_state_dict(torch.load(a.weights, map_location="cpu"))
    deterministic(model)
    model.train(a.mode == "train")
    x = torch.randn(a.batch, c, h, w)
    # A forward in train() moves BatchNorm's running statistics: check the output shape on a
    # copy of the state, then put it back.
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        out = model(x)
    model.load_state_dict(state)
    if out.shape != (a.batch, a.classes):
        sys.exit(f"error: the model gives {tuple(out.shape)} for a batch of {a.batch}; "
                 f"expected logits [{a.batch}, {a.classes}]")
    if os.path.exists(a.out + ".data"):
        os.remove(a.out + ".data")
    # The batch axis is symbolic, so one file serves every batch size tesla compiles for.
    if a.exporter == "ts":
        mode = torch.onnx.TrainingMode.TRAINING if a.mode == "train" else torch.onnx.TrainingMode.EVAL
        torch.onnx.export(model, (x,), a.out, dynamo=False, training=mode,
                          do_constant_folding=False, input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
    else:
        batch = torch.export.Dim("batch", min=2)
        torch.onnx.export(model, (x,), a.out, dynamo=True, optimize=False, external_data=False,
                          input_names=["x"], output_names=["logits"],
                          dynamic_shapes=({0: batch},))
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {a.out}: {a.name}, {n} parameters, {a.mode} mode, {a.exporter} exporter "
          f"(torch {torch.__version__})")


if __name__ == "__main__":
    main()
