#!/usr/bin/env python3
"""Exports torchvision's classification architectures (narrowed so the files stay small) with
both PyTorch exporters, and writes PyTorch autograd's float64 reference for each: the step loss,
the gradient with respect to every parameter, and the pass-2 image VJP d<v, grad>/dx.

    python3 tools/export_torchvision.py [OUT_DIR]      # default: tests/fixtures/torchvision

Every network is torchvision's own module code (ResNet's BasicBlock and _make_layer, the
MobileNet, EfficientNet, ShuffleNet, RegNet, VGG, ViT and ConvNeXt classes) built with narrow
widths. Networks are in train() mode (BatchNorm with batch statistics), with dropout and
stochastic depth off so that the reference is deterministic. One more network, ResNet with
trained running statistics in eval() mode, is exported for inference: its reference uses the
running statistics.

Per model NAME the folder gets NAME_ts.onnx (TorchScript exporter, training mode, nothing
folded), NAME_dynamo.onnx (dynamo exporter, optimizer off) and NAME_ref.safetensors:
  x [B,3,32,32] and y [B,10] (soft labels) as float32 (the exact values both sides use);
  loss, dx and one tensor per parameter (named like it: d loss / d parameter) as float64;
  loss_f32, grad_err_f32, dx_err_f32: PyTorch's own float32 error against its float64 result
  (max absolute error over max absolute value), the scale of a fair tolerance.
v is not stored: v[i] = sin(0.7 i + 0.3) over the flat parameter vector in parameter order.
The metadata records the torch and torchvision versions and the parameter names in order.
"""
import copy
import json
import os
import struct
import sys

import numpy as np
import torch
import torchvision
from torch import nn
from torch.nn import functional as F
from torch.func import functional_call
from torch.nn.attention import SDPBackend, sdpa_kernel
from torchvision.ops.misc import Conv2dNormActivation
from torchvision.models import (convnext, efficientnet, mobilenetv2, regnet, resnet, shufflenetv2,
                                vgg, vision_transformer)

BATCH = 8
CLASSES = 10


def narrow_resnet18(w):
    """ResNet-18 (BasicBlock, [2, 2, 2, 2]) at width w instead of 64, torchvision's layers."""
    net = resnet.ResNet(resnet.BasicBlock, [2, 2, 2, 2], num_classes=CLASSES)
    net.inplanes = w
    net.conv1 = nn.Conv2d(3, w, 7, 2, 3, bias=False)
    net.bn1 = nn.BatchNorm2d(w)
    net.layer1 = net._make_layer(resnet.BasicBlock, w, 2)
    net.layer2 = net._make_layer(resnet.BasicBlock, 2 * w, 2, stride=2)
    net.layer3 = net._make_layer(resnet.BasicBlock, 4 * w, 2, stride=2)
    net.layer4 = net._make_layer(resnet.BasicBlock, 8 * w, 2, stride=2)
    net.fc = nn.Linear(8 * w, CLASSES)
    return net


def narrow_mobilenet_v2():
    """MobileNet-V2 at width 0.1, its last 1x1 convolution at 128 channels instead of 1280."""
    net = mobilenetv2.MobileNetV2(num_classes=CLASSES, width_mult=0.1, dropout=0.0)
    last = net.features[-1][0].in_channels
    net.features[-1] = Conv2dNormActivation(last, 128, kernel_size=1, norm_layer=nn.BatchNorm2d,
                                            activation_layer=nn.ReLU6)
    net.classifier[-1] = nn.Linear(128, CLASSES)
    return net


def twice_differentiable(model):
    """A copy of `model` whose Hardswish/Hardsigmoid modules compute the same function through
    relu6, whose double backward PyTorch implements (hardsigmoid_backward has none)."""
    m = copy.deepcopy(model)

    class HardSigmoid(nn.Module):
        def forward(self, x):
            return F.relu6(x + 3.0) / 6.0

    class HardSwish(nn.Module):
        def forward(self, x):
            return x * F.relu6(x + 3.0) / 6.0

    for name, mod in list(m.named_modules()):
        for child_name, child in list(mod.named_children()):
            if isinstance(child, nn.Hardsigmoid):
                setattr(mod, child_name, HardSigmoid())
            elif isinstance(child, nn.Hardswish):
                setattr(mod, child_name, HardSwish())
    return m


def strip_metadata(path):
    """Drops the dynamo exporter's per-node stack traces and doc strings (most of the file's
    bytes; the importer ignores them)."""
    import onnx
    m = onnx.load(path)
    for n in m.graph.node:
        n.doc_string = ""
        del n.metadata_props[:]
    m.graph.doc_string = ""
    onnx.save(m, path)


def vgg11_bn(w):
    """VGG-11 with BatchNorm at width w/64 of the original, pooled to 1x1 (32x32 inputs) with a
    small classifier, as the dataset-distillation literature sizes it."""
    cfg = [w, "M", 2 * w, "M", 4 * w, 4 * w, "M", 8 * w, 8 * w, "M", 8 * w, 8 * w, "M"]
    net = vgg.VGG(vgg.make_layers(cfg, batch_norm=True), num_classes=CLASSES, dropout=0.0)
    net.avgpool = nn.AdaptiveAvgPool2d(1)
    net.classifier = nn.Sequential(nn.Linear(8 * w, 32), nn.ReLU(True), nn.Linear(32, CLASSES))
    return net


def models():
    """Constructors by name (called after seeding, so every file is reproducible on its own)."""
    s, _ = efficientnet._efficientnet_conf("efficientnet_b0", width_mult=0.1, depth_mult=0.34)
    bp = regnet.BlockParams.from_init_params(depth=4, w_0=8, w_a=8.0, w_m=2.0, group_width=8,
                                             se_ratio=0.25)
    return {
        "resnet18": lambda: narrow_resnet18(4),
        "mobilenet_v2": lambda: narrow_mobilenet_v2(),
        "mobilenet_v3_small": lambda: torchvision.models.mobilenet_v3_small(
            width_mult=0.1, num_classes=CLASSES, dropout=0.0),
        "efficientnet_b0": lambda: efficientnet.EfficientNet(
            s, dropout=0.0, stochastic_depth_prob=0.0, num_classes=CLASSES),
        "shufflenet_v2": lambda: shufflenetv2.ShuffleNetV2(
            [1, 1, 1], [8, 16, 32, 64, 64], num_classes=CLASSES),
        "regnet_y": lambda: regnet.RegNet(bp, num_classes=CLASSES, stem_width=8),
        "vgg11_bn": lambda: vgg11_bn(4),
        "vit": lambda: vision_transformer.VisionTransformer(
            image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=16, mlp_dim=32,
            num_classes=CLASSES),
        "convnext": lambda: convnext.ConvNeXt(
            [convnext.CNBlockConfig(8, 16, 1), convnext.CNBlockConfig(16, 32, 1),
             convnext.CNBlockConfig(32, None, 1)],
            stochastic_depth_prob=0.0, num_classes=CLASSES),
    }


def v_vector(n, dtype):
    return torch.sin(torch.arange(n, dtype=torch.float64) * 0.7 + 0.3).to(dtype)


def reference(model, x, y, dtype):
    """Loss, per-parameter gradients and d<v, grad>/dx in `dtype` (PyTorch autograd)."""
    m = twice_differentiable(model).to(dtype)
    params = {n: p.detach().clone().requires_grad_(True) for n, p in m.named_parameters()}
    buffers = {n: b.detach().clone() for n, b in m.named_buffers()}
    xx = x.to(dtype).requires_grad_(True)
    # The math kernel: the fused CPU attention kernels have no double backward.
    with sdpa_kernel([SDPBackend.MATH]):
        logits = functional_call(m, {**params, **buffers}, (xx,))
    loss = -(y.to(dtype) * torch.log_softmax(logits, dim=1)).sum(dim=1).mean()
    grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
    flat = torch.cat([g.reshape(-1) for g in grads])
    (dx,) = torch.autograd.grad((v_vector(flat.numel(), dtype) * flat).sum(), xx)
    named = {n: g.detach() for n, g in zip(params, grads)}
    return loss.detach(), named, dx.detach()


def rel_err(a, b):
    a, b = a.double(), b.double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


def write_safetensors(path, tensors, metadata):
    """Minimal safetensors writer (float32 and float64), so the script needs no extra package."""
    header, blobs, off = {}, [], 0
    for name, t in tensors.items():
        a = t.detach().cpu().numpy()
        code, a = ("F64", a.astype("<f8")) if a.dtype == np.float64 else ("F32", a.astype("<f4"))
        b = np.ascontiguousarray(a).tobytes()
        header[name] = {"dtype": code, "shape": list(a.shape), "data_offsets": [off, off + len(b)]}
        blobs.append(b)
        off += len(b)
    header["__metadata__"] = metadata
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
    os.replace(tmp, path)


def export_both(model, x, out, name, training):
    mode = torch.onnx.TrainingMode.TRAINING if training else torch.onnx.TrainingMode.EVAL
    for f in (f"{name}_ts.onnx", f"{name}_dynamo.onnx", f"{name}_dynamo.onnx.data"):
        if os.path.exists(os.path.join(out, f)):
            os.remove(os.path.join(out, f))
    torch.onnx.export(model, (x,), os.path.join(out, f"{name}_ts.onnx"), dynamo=False,
                      training=mode, do_constant_folding=False, input_names=["x"],
                      output_names=["logits"])
    torch.onnx.export(model, (x,), os.path.join(out, f"{name}_dynamo.onnx"), dynamo=True,
                      optimize=False, external_data=False, input_names=["x"],
                      output_names=["logits"])
    strip_metadata(os.path.join(out, f"{name}_dynamo.onnx"))


def write_case(model, x, y, out, name, training):
    model.train(training)
    export_both(model, x, out, name, training)
    loss64, g64, dx64 = reference(model, x, y, torch.float64)
    loss32, g32, dx32 = reference(model, x, y, torch.float32)
    flat64 = torch.cat([g.reshape(-1) for g in g64.values()])
    flat32 = torch.cat([g.reshape(-1) for g in g32.values()])
    tensors = {"x": x, "y": y, "loss": loss64.reshape(1), "dx": dx64}
    tensors.update(g64)
    tensors["loss_f32"] = loss32.reshape(1)
    tensors["grad_err_f32"] = torch.tensor([rel_err(flat32, flat64)], dtype=torch.float64)
    tensors["dx_err_f32"] = torch.tensor([rel_err(dx32, dx64)], dtype=torch.float64)
    meta = {
        "params": json.dumps([n for n, _ in model.named_parameters()]),
        "batchnorm": "batch statistics (train())" if training else "running statistics (eval())",
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "v": "v[i] = sin(0.7 i + 0.3) over the flat parameters in this order",
    }
    write_safetensors(os.path.join(out, f"{name}_ref.safetensors"), tensors, meta)
    n = sum(p.numel() for p in model.parameters())
    print(f"{name}: {n} parameters, f32 error grad {tensors['grad_err_f32'].item():.1e} "
          f"dx {tensors['dx_err_f32'].item():.1e}")


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "torchvision")
    os.makedirs(out, exist_ok=True)
    g = torch.Generator().manual_seed(11)
    x = torch.randn(BATCH, 3, 32, 32, generator=g)
    y = torch.softmax(torch.randn(BATCH, CLASSES, generator=g) * 2.0, dim=1)
    only = set(sys.argv[2:])
    for k, (name, make) in enumerate(models().items()):
        if only and name not in only:
            continue
        torch.manual_seed(100 + k)
        write_case(make(), x, y, out, name, training=True)
    # A network exported for inference: running statistics moved away from their defaults by
    # a few training-mode passes and affine parameters away from ones and zeros (as training
    # leaves them; equal initializers would also be merged by the TorchScript exporter in eval
    # mode), then eval().
    if not only or "resnet18_eval" in only:
        torch.manual_seed(200)
        net = narrow_resnet18(4)
        net.train()
        with torch.no_grad():
            for _ in range(3):
                net(torch.randn(BATCH, 3, 32, 32, generator=g) * 1.5 + 0.5)
            for mod in net.modules():
                if isinstance(mod, nn.BatchNorm2d):
                    mod.weight.add_(torch.randn(mod.weight.shape, generator=g) * 0.1)
                    mod.bias.add_(torch.randn(mod.bias.shape, generator=g) * 0.1)
        write_case(net, x, y, out, "resnet18_eval", training=False)


if __name__ == "__main__":
    main()
