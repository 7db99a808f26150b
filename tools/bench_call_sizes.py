#!/usr/bin/env python3
"""One batch's graphs as calls of different sizes, timed interleaved in one process on ONNX
Runtime's CPU provider: which call size runs a model fastest.

    python3 tools/bench_call_sizes.py --tesla target/release/tesla --model convnet-d3 \\
        --input 1x28x28 --batch 100 --sizes 10,5 [--graphs step,pass2,pass2_dx] [--lanes 2]

`tesla compile` writes the artifacts for each call size under --work. The batch runs as
batch/size calls spread over --lanes sessions of one thread each, side by side on threads of their
own, as tesla runs a split batch. The sizes take turns within every repetition (their order
rotating), so a machine whose speed drifts over minutes moves them alike; the ratios are to the
first size's median. Inputs are deterministic small values.
"""
import argparse
import os
import subprocess
import sys
import threading
import time

import numpy as np
import onnxruntime as ort

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_torch import cpu  # noqa: E402  (the CPU line every benchmark table names)
from profile_ort import deterministic_feeds  # noqa: E402


def session(path):
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.add_session_config_entry("session.set_denormal_as_zero", "1")
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    return s, deterministic_feeds(s)


def batch_seconds(lanes, calls):
    """Wall time of `calls` calls spread over `lanes` (session, feeds) pairs at once."""
    def lane(k):
        s, f = lanes[k]
        for _ in range(k, calls, len(lanes)):
            s.run(None, f)

    t = time.perf_counter()
    threads = [threading.Thread(target=lane, args=(k,)) for k in range(min(len(lanes), calls))]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return time.perf_counter() - t


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tesla", required=True, help="the tesla binary")
    ap.add_argument("--model", default="convnet-d3")
    ap.add_argument("--input", default="1x28x28")
    ap.add_argument("--classes", type=int, default=10)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--sizes", default="10,5", help="images per call, comma-separated")
    ap.add_argument("--graphs", default="step,pass2,pass2_dx")
    ap.add_argument("--lanes", type=int, default=2)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--work", default="runs/bench-call-sizes")
    a = ap.parse_args()
    sizes = [int(s) for s in a.sizes.split(",")]
    for s in sizes:
        if s <= 0 or a.batch % s:
            sys.exit(f"error: a call size of {s} does not divide the batch of {a.batch}")
    graphs = a.graphs.split(",")
    dirs = {}
    for s in sizes:
        d = os.path.join(a.work, f"{a.model}-{a.input}-{a.classes}", f"b{s}")
        if not all(os.path.exists(os.path.join(d, f"{g}.onnx")) for g in graphs):
            cmd = [a.tesla, "compile", "--model", a.model, "--input", a.input, "--classes",
                   str(a.classes), "--batch", str(s), "--out", d]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                sys.exit(f"error: {' '.join(cmd)} failed: {out.stderr.strip().splitlines()[-1:]}")
        dirs[s] = d
    print(f"cpu: {cpu()}; onnxruntime {ort.__version__}")
    print(f"{a.model}, input {a.input}, batch {a.batch}, {a.lanes} lanes of 1 thread, "
          f"median of {a.reps} (img/s, interleaved)")
    print(f"{'images per call':<16}" + "".join(f"{g:>22}" for g in graphs))
    rates = {(s, g): [] for s in sizes for g in graphs}
    for g in graphs:
        lanes = {s: [session(os.path.join(dirs[s], f"{g}.onnx")) for _ in range(a.lanes)]
                 for s in sizes}
        for s in sizes:
            batch_seconds(lanes[s], a.batch // s)
        for r in range(a.reps):
            for k in range(len(sizes)):
                s = sizes[(k + r) % len(sizes)]
                rates[(s, g)].append(a.batch / batch_seconds(lanes[s], a.batch // s))
    first = sizes[0]
    for s in sizes:
        cells = ""
        for g in graphs:
            m = float(np.median(rates[(s, g)]))
            ratio = m / float(np.median(rates[(first, g)]))
            cells += f"{m:>14.1f} (×{ratio:.2f})"
        print(f"{s:<16}{cells}")


if __name__ == "__main__":
    main()
