#!/usr/bin/env python3
"""Per-op time of one ONNX graph on ONNX Runtime's CPU provider: which ops an artifact spends its
time in (for `tesla compile` output, or a `tesla bench step` work directory).

    python3 tools/profile_ort.py DIR/pass2.onnx [--threads 2] [--runs 3] [--top 12] [--nodes 8]

Inputs are deterministic small values of each input's static shape. The first runs are left out of
every figure (`--warmup`, 2 by default): ONNX Runtime's memory arena grows over the first two runs
of a large graph, and their page faults can make one node look ten times slower than it is.
Prints the mean wall time per run, then the kernel time per op type (ms per run and share) and the
slowest single nodes.
"""
import argparse
import collections
import json
import os
import tempfile
import time

import numpy as np
import onnxruntime as ort


def deterministic_feeds(session):
    """Small deterministic values (within ±0.05) of each input's static shape."""
    feeds = {}
    for i in session.get_inputs():
        n = int(np.prod(i.shape))
        feeds[i.name] = (((np.arange(n) * 7919) % 101) / 101.0 - 0.5).astype(np.float32).reshape(i.shape) * 0.1
    return feeds


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("graph")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--top", type=int, default=12)
    ap.add_argument("--nodes", type=int, default=8, help="slowest nodes to list")
    ap.add_argument("--warmup", type=int, default=2, help="first runs left out of the figures")
    a = ap.parse_args()
    so = ort.SessionOptions()
    so.intra_op_num_threads = a.threads
    so.enable_profiling = True
    so.profile_file_prefix = os.path.join(tempfile.mkdtemp(), "profile")
    s = ort.InferenceSession(a.graph, so, providers=["CPUExecutionProvider"])
    feeds = deterministic_feeds(s)
    for _ in range(a.warmup):
        s.run(None, feeds)
    t = time.time()
    for _ in range(a.runs):
        s.run(None, feeds)
    wall = (time.time() - t) / a.runs
    events = json.load(open(s.end_profiling()))
    # Each node's events come in run order; the warm-up runs are its first ones.
    seen, by_op, by_node = collections.Counter(), collections.Counter(), collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            key = (e["args"]["op_name"], e["name"][: -len("_kernel_time")])
            seen[key] += 1
            if seen[key] > a.warmup:
                by_op[key[0]] += e["dur"]
                by_node[key] += e["dur"]
    runs = a.runs
    total = sum(by_op.values())
    print(f"{a.graph}: {wall * 1e3:.1f} ms per run ({a.threads} threads), kernel time by op type:")
    for op, us in by_op.most_common(a.top):
        print(f"  {op:<18} {us / runs / 1e3:9.1f} ms  {100 * us / total:5.1f} %")
    print("slowest nodes:")
    for (op, node), us in by_node.most_common(a.nodes):
        print(f"  {op:<18} {us / runs / 1e3:9.1f} ms  {node}")


if __name__ == "__main__":
    main()
