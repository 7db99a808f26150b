#!/usr/bin/env bash
# The Fashion-MNIST cross-architecture table: an IPC-10 set distilled on ConvNet-D3 (width 32),
# and a random real subset of the same size, each trained from scratch on five architectures.
# Needs PyTorch for the three exported models. Usage: tools/transfer_table.sh [OUT] (about
# 90 minutes on 2 cores with ONNX Runtime). TESLA names the binary (default: target/release/tesla).
set -euo pipefail
OUT=${1:-runs/transfer}
TESLA=${TESLA:-target/release/tesla}
mkdir -p "$OUT"
for m in resnet18 vgg11 alexnet; do
  kw='{"num_classes":10}'
  [ "$m" = resnet18 ] || kw='{"num_classes":10,"width":32}'
  [ -f "$OUT/$m.onnx" ] || python3 tools/export_model.py "transfer_models:$m" --input 1x28x28 --kwargs "$kw" --out "$OUT/$m.onnx" 2>/dev/null
done
"$TESLA" experts --dataset fashion-mnist --limit 20000 --model convnet-d3-w32 --experts 3 --epochs 8 --out "$OUT/experts"
"$TESLA" distill --dataset fashion-mnist --model convnet-d3-w32 --experts "$OUT/experts" --ipc 10 \
  --syn-steps 20 --expert-epochs 2 --max-start-epoch 5 --batch-syn 20 --iterations 300 --lr-img 50 \
  --lr-lr 1e-5 --lr-init 0.1 --labels hard --out "$OUT/ipc10"
MODELS="convnet-d3-w32,$OUT/resnet18.onnx,$OUT/vgg11.onnx,$OUT/alexnet.onnx,vit-p4-d128-l4-h4-m256"
"$TESLA" eval --distilled "$OUT/ipc10/distilled.safetensors" --dataset fashion-mnist --models "$MODELS" --epochs 300 --runs 3 --out "$OUT/distilled.json"
"$TESLA" eval --random 10 --dataset fashion-mnist --models "$MODELS" --epochs 300 --runs 2 --out "$OUT/random.json"
