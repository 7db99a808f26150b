#!/usr/bin/env bash
# Distillation with an exported PyTorch model as the surrogate: VGG-11 with BatchNorm (width 16),
# exported by PyTorch's default (dynamo) exporter, whose BatchNorm nodes come out in inference form
# and are run with batch statistics. Experts, distillation and evaluation all take the ONNX file;
# the IPC-10 set is evaluated on that network and on ConvNet-D3 against 10 random real images per
# class. Needs PyTorch for the export. Usage: tools/exported_surrogate.sh [OUT] (about 40 minutes
# on 2 cores with ONNX Runtime). TESLA names the binary (default: target/release/tesla).
set -euo pipefail
OUT=${1:-runs/exported-surrogate}
TESLA=${TESLA:-target/release/tesla}
mkdir -p "$OUT"
MODEL="$OUT/vgg11_bn_w16.onnx"
[ -f "$MODEL" ] || PYTHONPATH=tools python3 tools/export_model.py transfer_models:vgg11 --input 1x28x28 \
  --kwargs '{"num_classes":10,"width":16}' --exporter dynamo --out "$MODEL"
"$TESLA" experts --dataset fashion-mnist --limit 10000 --model "$MODEL" --experts 3 --epochs 6 --out "$OUT/experts"
"$TESLA" distill --experts "$OUT/experts" --ipc 10 --syn-steps 20 --expert-epochs 2 --max-start-epoch 4 \
  --batch-syn 20 --iterations 150 --lr-img 50 --lr-lr 1e-5 --lr-init 0.05 --labels hard --out "$OUT/ipc10"
MODELS="$MODEL,convnet-d3-w32"
"$TESLA" eval --distilled "$OUT/ipc10/distilled.safetensors" --dataset fashion-mnist --models "$MODELS" --epochs 300 --runs 3 --out "$OUT/distilled.json"
"$TESLA" eval --random 10 --dataset fashion-mnist --models "$MODELS" --epochs 300 --runs 3 --out "$OUT/random.json"
