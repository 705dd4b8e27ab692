#!/usr/bin/env bash
# The paper's tables at the gpu scale (the paper's data and models, fewer training epochs:
# experiments/paper/common.py GPU_EPOCHS), in priority order, within one H200-class GPU's
# 12 minutes:
#
#   bash experiments/paper/gpu.sh OUT CIFAR100_NPZ CIFAR10_NPZ
#
#   CIFAR100_NPZ   python ../shared/data/decode_cifar100.py runs/data/cifar100.npz (30 s)
#   CIFAR10_NPZ    the full CIFAR-10 as an npz, or ../shared/data/cifar10_subset_10k_2k.npz
#   VIT_WEIGHTS    (env) the published ViT-B/16 .npz; the ViT tables run only with it
#   FACES          (env) a Pins-faces folder; Table 1 runs only with it
#   BUDGET         (env) seconds for everything (default 720); each config gets what is left
#   SCALE          (env) default gpu; SCALE=tiny checks the script anywhere in a minute or two
#
# Order: Table 2 VGG11 (also Figures 5, 7, 8), Table 4 VGG11, Table 2 ViT, Table 3 VGG, Table 4
# ViT, Table 3 ViT, Table 1. Every config writes OUT/<config>/results.md and results.json when it
# finishes; the runner is resumable (a finished step is never recomputed), so a run cut short
# keeps every finished table, and the same command continues it.
set -u
OUT=${1:?usage: gpu.sh OUT CIFAR100_NPZ CIFAR10_NPZ}
C100=${2:-}
C10=${3:-}
SCALE=${SCALE:-gpu}
BUDGET=${BUDGET:-720}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
mkdir -p "$OUT"
start=$(date +%s)
left() { echo $((BUDGET - ($(date +%s) - start))); }

run() {  # run CONFIG DATA [extra runner args...]
  local name=$1 data=$2
  shift 2
  local t
  t=$(left)
  if [ "$t" -le 30 ]; then
    echo "[gpu.sh] $name skipped: budget spent" | tee -a "$OUT/gpu.log"
    return 1
  fi
  local data_arg=()
  [ -n "$data" ] && data_arg=(--data "$data")
  echo "[gpu.sh] $name ($SCALE) with ${t}s left" | tee -a "$OUT/gpu.log"
  timeout "$t" $PY experiments/paper/run.py "$name" --scale "$SCALE" --out "$OUT/$name" \
    "${data_arg[@]}" "$@" > "$OUT/$name.log" 2>&1
  local rc=$?
  echo "[gpu.sh] $name rc=$rc after $(($(date +%s) - start))s" | tee -a "$OUT/gpu.log"
  return $rc
}

vit=()
[ -n "${VIT_WEIGHTS:-}" ] && vit=(--vit-weights "$VIT_WEIGHTS")
have_vit() { [ -n "${VIT_WEIGHTS:-}" ] || [ "$SCALE" = tiny ]; }

if run table2_vgg "$C100"; then
  $PY experiments/paper/figures.py fig5 --runs "$OUT/table2_vgg" --out "$OUT/figures" \
    >> "$OUT/gpu.log" 2>&1
fi
run table4_vgg "$C10"
have_vit && run table2_vit "$C100" "${vit[@]}" &&
  $PY experiments/paper/figures.py fig5 --runs "$OUT/table2_vit" --out "$OUT/figures" \
    >> "$OUT/gpu.log" 2>&1
run table3_vgg "$C100"
have_vit && run table4_vit "$C10" "${vit[@]}"
have_vit && run table3_vit "$C100" "${vit[@]}"
if [ -n "${FACES:-}" ] || [ "$SCALE" = tiny ]; then
  run table1_faces "${FACES:-}"
fi
t=$(left)
if [ "$t" -gt 60 ] && [ -f "$OUT/table2_vgg/results.json" ]; then  # Figures 7 and 8
  timeout "$t" $PY experiments/paper/figures.py sweep table2_vgg --scale "$SCALE" \
    --runs "$OUT/table2_vgg" --out "$OUT/figures" >> "$OUT/gpu.log" 2>&1
fi
echo "[gpu.sh] done after $(($(date +%s) - start))s; pages: $OUT/*/results.md" | tee -a "$OUT/gpu.log"
