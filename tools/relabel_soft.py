#!/usr/bin/env python3
"""Gives a distilled set's images the soft labels TESLA's teachers assign, for label ablations.

Reads RUN/distilled.safetensors and the run's compiled logits graph, passes the images through
every expert of EXPERTS at each epoch FIRST..LAST (the target-step teachers of a run with
--expert-epochs M and --max-start-epoch S are epochs M..S-1+M), and writes a copy of the set
whose label rows are the mean of those teachers' softmax rows (what `tesla distill
--final-labels mean` saves). `tesla eval --distilled OUT` then trains on the same images with
these labels, so hard-label images can be compared with hard and with soft labels.

Usage: python3 tools/relabel_soft.py RUN OUT.safetensors EXPERTS FIRST LAST
Needs: pip install onnxruntime numpy safetensors
"""
import glob
import os
import sys

import numpy as np
import onnxruntime as ort
from safetensors import safe_open
from safetensors.numpy import load_file, save_file


def main(run, out, experts, first, last):
    src = os.path.join(run, "distilled.safetensors")
    d = load_file(src)
    with safe_open(src, "numpy") as f:
        meta = f.metadata()
    x = d["images"].astype(np.float32)
    graphs = glob.glob(os.path.join(run, "artifacts", f"b{x.shape[0]}", "logits.onnx"))
    if not graphs:
        sys.exit(f"{run}: no artifacts/b{x.shape[0]}/logits.onnx (was the run made by tesla distill?)")
    session = ort.InferenceSession(graphs[0])
    files = sorted(glob.glob(os.path.join(experts, "expert_*.safetensors")))
    files = [f for f in files if ".partial." not in f]
    if not files:
        sys.exit(f"{experts}: no expert_*.safetensors")
    rows = []
    for f in files:
        trajectory = load_file(f)["trajectory"]
        if last >= trajectory.shape[0]:
            sys.exit(f"{f}: has epochs 0..{trajectory.shape[0] - 1}, asked for {last}")
        for e in range(first, last + 1):
            z = session.run(None, {"theta": trajectory[e].astype(np.float32), "x": x})[0]
            z = z - z.max(axis=1, keepdims=True)
            p = np.exp(z)
            rows.append(p / p.sum(axis=1, keepdims=True))
    y = np.mean(rows, axis=0).astype(np.float32)
    d["labels"] = y
    tmp = out + ".tmp"
    save_file(d, tmp, metadata=meta)
    os.replace(tmp, out)
    print(f"{len(rows)} teachers; label of its own class per image:",
          np.round(y[np.arange(len(y)), d["classes"].astype(int)], 2))


if __name__ == "__main__":
    if len(sys.argv) != 6:
        sys.exit(__doc__)
    main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
