#!/usr/bin/env bash
# Mutation fuzzing of every reader of outside bytes (examples/fuzz.rs): SECONDS in all (default
# 600), split evenly across the targets. Failing inputs go to fuzz/crashes/, new kinds of error to
# fuzz/corpus/; exits non-zero when anything failed. Extra arguments go to the fuzzer
# (e.g. --target onnx,idx, --seed 7; --list shows the targets).
set -euo pipefail
cd "$(dirname "$0")/.."
SECONDS_TOTAL="${1:-600}"
shift || true
cargo run --release --example fuzz -- --seconds "$SECONDS_TOTAL" "$@"
