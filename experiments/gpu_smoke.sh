#!/usr/bin/env bash
# A paper-width smoke run on a GPU: ResNet18 (width 64) trained on the CIFAR-10 subset with a 10%
# validation hold-out, retrained without "airplane" (RTRN), then JiT's validation grid:
#   bash experiments/gpu_smoke.sh PATH/cifar10_subset_10k_2k.npz OUTDIR
# Writes train.txt, rtrn.txt, tune.txt and tune.json to OUTDIR (checkpoints go to /tmp/gpu-runs).
# SIGMAS and LRS (environment) override JiT's grid.
set -u
NPZ=$1
DEST=${2:-/tmp/gpu-smoke}
R=/tmp/gpu-runs
mkdir -p "$DEST" "$R"
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
JJ=(python3 -c 'import sys; from jit_jax.cli import main; sys.exit(main(sys.argv[1:]))')
( time timeout 110 "${JJ[@]}" train --dataset "npz:$NPZ" --model resnet18 --holdout 0.1 --epochs 15 \
    --out $R/r18 --no-progress ) 2>&1 | tee "$DEST/train.txt"
( time timeout 110 "${JJ[@]}" unlearn --checkpoint $R/r18 --method rtrn --forget class:airplane \
    --out $R/r18-rtrn ) 2>&1 | tee "$DEST/rtrn.txt"
timeout 100 python3 experiments/tune_jit.py --checkpoint $R/r18 --rtrn $R/r18-rtrn \
  --forget class:airplane --sigma ${SIGMAS:-0.25 0.5 1} --lr ${LRS:-3.75e-5 7.5e-5 1.5e-4 3e-4 6e-4} \
  --batch-size 32 --out "$DEST/tune.json" 2>&1 | tee "$DEST/tune.txt"
