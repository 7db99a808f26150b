#!/usr/bin/env python3
"""Exports the PyTorch ConvNet fixture for the ONNX importer tests, with PyTorch's own reference
numbers for fixed inputs.

Writes into tests/fixtures/ (or the directory given as the first argument):

  convnet_keep.onnx            TorchScript exporter, the recommended keep-every-parameter call
                               (dynamo=False, training=TRAINING, do_constant_folding=False).
  convnet_dynamo_keep.onnx     dynamo exporter with optimize=False; weights in the external data
  (+ .onnx.data)               file beside it (what the default exporter does).
  convnet_dynamo_default.onnx  dynamo exporter with its defaults (optimizer on): GroupNorm affine
  (+ .onnx.data)               parameters are folded and deduplicated, which the importer must
                               detect and warn about.
  convnet_noparams.onnx        TorchScript exporter with export_params=False (parameters become
                               graph inputs without values).
  convnet_torch_ref.safetensors  f32 tensors: `x` [4,1,28,28], `y` [4,10] (soft labels), `loss` [],
                               `logits` [4,10], and, under each parameter's name, PyTorch's
                               gradient of the soft-label cross-entropy (mean over the batch)
                               with respect to that parameter.

  zoo_*.onnx                   more architectures for the importer (a tiny ViT with attention,
                               LayerNorm and GELU; a BatchNorm/InstanceNorm/MaxPool net; a
                               ConvTranspose decoder), each in keep mode from both exporters, the
                               ViT also with the default (optimised) call; zoo_params.json lists
                               every file's PyTorch parameter names in `named_parameters()` order.

Run: python3 tools/export_torch.py [OUT_DIR]   (needs torch, onnx, onnxscript, numpy)
"""
import json
import os
import struct
import sys

import numpy as np
import torch
import torch.nn as nn


class ConvNet(nn.Module):
    """The project's ConvNet (MTT): [conv3x3 → GroupNorm(C, C) → ReLU → AvgPool2d(2)] × depth →
    Linear. The first layer pads by 3 for 1-channel 28×28 input, as MTT does."""

    def __init__(self, channels=1, width=16, depth=2, classes=10, res=28):
        super().__init__()
        layers = []
        c, r = channels, res
        for d in range(depth):
            pad = 3 if (d == 0 and channels == 1 and res == 28) else 1
            layers += [
                nn.Conv2d(c, width, kernel_size=3, padding=pad),
                nn.GroupNorm(width, width, affine=True),
                nn.ReLU(inplace=True),
                nn.AvgPool2d(kernel_size=2, stride=2),
            ]
            c = width
            r = (r + 2 * pad - 2) // 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width * r * r, classes)

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


class Block(nn.Module):
    """Pre-norm transformer block: attention and a GELU MLP, both residual."""

    def __init__(self, d=16):
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, 2, batch_first=True)
        self.ln2 = nn.LayerNorm(d)
        self.fc1 = nn.Linear(d, 32)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(32, d)

    def forward(self, x):
        h = self.ln(x)
        a, _ = self.attn(h, h, h, need_weights=False)
        x = x + a
        return x + self.fc2(self.act(self.fc1(self.ln2(x))))


class TinyViT(nn.Module):
    """Patch embedding, class token, positional embedding, one block, head (3×16×16 input)."""

    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(3, 16, 4, 4)
        self.cls = nn.Parameter(torch.zeros(1, 1, 16))
        self.pos = nn.Parameter(torch.randn(1, 17, 16) * 0.02)
        self.blk = Block()
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
        return self.head(self.norm(self.blk(x))[:, 0])


def bn_net():
    """BatchNorm, MaxPool, InstanceNorm(affine), LeakyReLU, adaptive average pooling (3×16×16)."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False), nn.InstanceNorm2d(8, affine=True),
        nn.LeakyReLU(0.1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 10),
    )


class Decoder(nn.Module):
    """Strided Conv, then ConvTranspose with output_padding back to 16×16 (3×16×16 input)."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.t = nn.ConvTranspose2d(4, 3, 3, stride=2, padding=1, output_padding=1)
        self.l = nn.Linear(3 * 16 * 16, 10)

    def forward(self, x):
        return self.l(torch.sigmoid(self.t(torch.tanh(self.c(x)))).flatten(1))


def export_zoo(out, path):
    """The extra architectures; returns {file: parameter names}."""
    names = {}
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))
    for tag, m in [("vit", TinyViT()), ("bnnet", bn_net()), ("deconv", Decoder())]:
        params = [n for n, _ in m.named_parameters()]
        f = path(f"zoo_{tag}_ts_keep.onnx")
        torch.onnx.export(m, (x,), f, dynamo=False, training=torch.onnx.TrainingMode.TRAINING,
                          do_constant_folding=False, input_names=["x"], output_names=["logits"])
        names[os.path.basename(f)] = params
        f = path(f"zoo_{tag}_dynamo_keep.onnx")
        torch.onnx.export(m, (x,), f, dynamo=True, optimize=False, external_data=True,
                          input_names=["x"], output_names=["logits"])
        names[os.path.basename(f)] = params
    f = path("zoo_vit_ts_default.onnx")
    torch.onnx.export(TinyViT(), (x,), f, dynamo=False, input_names=["x"], output_names=["logits"])
    with open(os.path.join(out, "zoo_params.json"), "w") as fh:
        json.dump(names, fh, indent=1)


def write_safetensors(path, tensors, metadata):
    """Minimal safetensors writer (f32 only), so the script needs no extra package."""
    header, blobs, off = {}, [], 0
    for name, t in tensors.items():
        a = np.ascontiguousarray(t.detach().cpu().numpy().astype("<f4"))
        b = a.tobytes()
        header[name] = {"dtype": "F32", "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    header["__metadata__"] = metadata
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures")
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    model = ConvNet()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(4, 1, 28, 28, generator=g)
    y = torch.softmax(torch.randn(4, 10, generator=g) * 2.0, dim=1)

    # Reference numbers first, from the untouched model.
    model.zero_grad()
    logits = model(x)
    loss = nn.CrossEntropyLoss()(logits, y)  # probability targets, mean over the batch
    loss.backward()
    ref = {"x": x, "y": y, "loss": loss.detach(), "logits": logits.detach()}
    for name, p in model.named_parameters():
        ref[name] = p.grad
    write_safetensors(
        os.path.join(out, "convnet_torch_ref.safetensors"),
        ref,
        {
            "about": "tensors named like parameters hold d loss / d parameter",
            "loss": "soft-label cross-entropy, mean over the batch (nn.CrossEntropyLoss with probability targets)",
            "params": json.dumps([n for n, _ in model.named_parameters()]),
            "torch": torch.__version__,
        },
    )

    def path(name):
        p = os.path.join(out, name)
        for q in (p, p + ".data"):
            if os.path.exists(q):
                os.remove(q)
        return p

    # The recommended call: every parameter kept under its PyTorch name, nothing folded.
    torch.onnx.export(
        model, (x,), path("convnet_keep.onnx"), dynamo=False,
        training=torch.onnx.TrainingMode.TRAINING, do_constant_folding=False,
        input_names=["x"], output_names=["logits"],
    )
    torch.onnx.export(
        model, (x,), path("convnet_noparams.onnx"), dynamo=False, export_params=False,
        training=torch.onnx.TrainingMode.TRAINING, do_constant_folding=False,
        input_names=["x"], output_names=["logits"],
    )
    # The dynamo exporter, optimizer off: names kept, shape sub-graphs left to fold.
    torch.onnx.export(
        model, (x,), path("convnet_dynamo_keep.onnx"), dynamo=True, optimize=False,
        external_data=True, input_names=["x"], output_names=["logits"],
    )
    # The default call: the optimizer folds and deduplicates the norm parameters.
    torch.onnx.export(model, (x,), path("convnet_dynamo_default.onnx"), input_names=["x"], output_names=["logits"])
    torch.manual_seed(3)
    export_zoo(out, path)


if __name__ == "__main__":
    main()
