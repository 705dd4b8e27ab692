#!/usr/bin/env bash
# The GPU checks, one short run (a lent GPU machine with jax[cuda] and torch installed):
#   bash experiments/gpu_bench.sh AUTHORS_SRC OUTDIR
# AUTHORS_SRC: the 'src' folder of a checkout of jwf40/Information-Theoretic-Unlearning (kept out
# of this repository). Writes env.txt, tests.txt, vs_authors.txt, vgg.txt and vit.txt to OUTDIR.
#  1. tests/test_jit.py on the GPU backend (float32 matmuls at full precision);
#  2. the authors' JiT step (torch, cuda) beside ours, ResNet18, B = 32 and 128;
#  3. our step at paper scale: torchvision-style VGG11 at 32x32 (B = 128) and ViT-B/16 at 224x224
#     (B = 32 and 128), chunked noisy forwards against one forward of all B*N images.
set -u
SRC=${1:-.authors/src}
DEST=${2:-/tmp/gpu-bench}
mkdir -p "$DEST"
export PYTHONPATH=$PWD:${PYTHONPATH:-} PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
PY=${PYTHON:-python3}
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  $PY -c "import jax, flax, optax, torch; print('jax', jax.__version__, jax.devices(), 'flax', flax.__version__, 'optax', optax.__version__, 'torch', torch.__version__)"
} 2>&1 | tee "$DEST/env.txt"
JAX_DEFAULT_MATMUL_PRECISION=highest timeout 100 $PY -m pytest -q -p no:cacheprovider \
  tests/test_jit.py 2>&1 | tail -15 | tee "$DEST/tests.txt"
timeout 120 $PY experiments/bench_vs_authors.py --authors-src "$SRC" --device cuda \
  --batch 32 128 --rounds 5 2>&1 | grep -v "^WARNING" | tee "$DEST/vs_authors.txt"
timeout 90 $PY experiments/bench_jit_step.py --model vgg11_torchvision --classes 100 \
  --batch 128 --rounds 3 --variants chunked one_forward 2>&1 | tee "$DEST/vgg.txt"
timeout 150 $PY experiments/bench_jit_step.py --model vit_b16 --image-size 224 --classes 100 \
  --batch 32 128 --rounds 3 --variants chunked one_forward 2>&1 | tee "$DEST/vit.txt"
