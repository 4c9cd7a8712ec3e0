#!/usr/bin/env bash
# The warm-start experiment (issue 24): fine-tune the CIFAR-10-pretrained ResNet-18 on FER2013.
set -e
COMMON="--model torchvision:resnet18 --dataset npz:../shared/data/fer2013.npz --image-size 32 --max-train-samples 6000 --epochs 3 --seeds 0 1 2 --init-from runs/pretrain-c10/best.pt --jobs 2"
.venv/bin/adact search $COMMON --out runs/ft-fer-cold
mkdir -p runs/ft-fer-warm/npz-fer2013
for s in 0 1 2; do mkdir -p runs/ft-fer-warm/npz-fer2013/seed$s && cp -r runs/ft-fer-cold/npz-fer2013/seed$s/baseline runs/ft-fer-warm/npz-fer2013/seed$s/; done
.venv/bin/adact search $COMMON --warm-start --out runs/ft-fer-warm
