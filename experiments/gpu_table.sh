#!/usr/bin/env bash
# Every method side by side at paper width on a GPU: ResNet18 (width 64) trained on the CIFAR-10
# subset with a 10% validation hold-out, RTRN without "airplane", JiT's sigma and lr chosen on the
# hold-out (tune_jit.py, lowest retrain distance among the settings whose mean D_r drop is at most
# 5 points), then the test-set table: BSLN, RTRN, JiT (3 seeds) and the comparison methods (seed 0,
# each with the settings the authors' code uses).
#   bash experiments/gpu_table.sh PATH/cifar10_subset_10k_2k.npz OUTDIR
# Writes env.txt, train.txt, rtrn.txt, tune.txt, tune.json, table.txt and table.json to OUTDIR.
# WIDTH, EPOCHS, SIGMAS, LRS and PEERS (environment) override the defaults, for a quick CPU check:
#   WIDTH=4 EPOCHS=1 PEERS=ssd bash experiments/gpu_table.sh ../shared/data/cifar10_subset_10k_2k.npz /tmp/t
set -u
NPZ=$1
DEST=${2:-/tmp/gpu-table}
R=${RUNS:-/tmp/gpu-runs}
mkdir -p "$DEST" "$R"
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
PY=${PYTHON:-python3}
JJ=("$PY" -c 'import sys; from jit_jax.cli import main; sys.exit(main(sys.argv[1:]))')
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null
  "$PY" -c "import jax, flax, optax; print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'optax', optax.__version__)"
} 2>&1 | tee "$DEST/env.txt"
( time timeout 150 "${JJ[@]}" train --dataset "npz:$NPZ" --model resnet18 --width "${WIDTH:-64}" \
    --holdout 0.1 --epochs "${EPOCHS:-15}" --out $R/r18 --no-progress ) 2>&1 | tee "$DEST/train.txt"
( time timeout 120 "${JJ[@]}" unlearn --checkpoint $R/r18 --method rtrn --forget class:airplane \
    --out $R/r18-rtrn ) 2>&1 | tee "$DEST/rtrn.txt"
# shellcheck disable=SC2086
timeout 150 "$PY" experiments/tune_jit.py --checkpoint $R/r18 --rtrn $R/r18-rtrn \
  --forget class:airplane --sigma ${SIGMAS:-0.25 0.5} --lr ${LRS:-1.9e-5 3.75e-5 7.5e-5} \
  --batch-size 32 --max-dr-drop 5 --out "$DEST/tune.json" 2>&1 | grep -v "^WARNING" | tee "$DEST/tune.txt"
SETS=$("$PY" -c "import json, sys; b = json.load(open(sys.argv[1]))['best']; \
print(f'--set sigma={b[\"sigma\"]} --set lr={b[\"lr\"]} --set batch_size={b[\"batch_size\"]}' if b else '')" \
  "$DEST/tune.json")
echo "JiT settings from the validation search: ${SETS:-none kept (defaults)}" | tee "$DEST/table.txt"
# shellcheck disable=SC2086
timeout 330 "$PY" experiments/cifar_forget.py --checkpoint $R/r18 --rtrn $R/r18-rtrn \
  --forget class:airplane --seeds 0 1 2 $SETS --peers ${PEERS:-fntn amn ssd bt unsir emmn scrub bdsh} \
  --peer-seeds 0 --out "$DEST/table.json" 2>&1 | grep -v "^WARNING" | tee -a "$DEST/table.txt"
