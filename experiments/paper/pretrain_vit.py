"""A pretrained start for a CPU ViT twin: the paper fine-tunes ViT-B/16 from ImageNet-21k weights,
which cannot be downloaded here, so this trains the twin's own ViT (its model and recipe) on the
images of the same dataset that the twin does not hold, and writes it as a ViT ``.npz`` for
``run.py CONFIG --vit-weights``:

    python experiments/paper/pretrain_vit.py table2_vit --data runs/data/cifar100.npz --out runs/pre
    python experiments/paper/run.py table2_vit --scale cpu --data runs/data/cifar100.npz \\
        --vit-weights runs/pre/table2_vit.npz --seeds 0 --out runs/paper/table2-vit-pre

The pretraining set is every training image outside the twin's class-balanced subset (for the
CIFAR-100 twins, 400 a class, the forgotten class included, as ImageNet-21k holds rocket-like
classes) with the fine labels; its test set is the test images outside the twin's. Then the
twin's original is fine-tuned from it, RTRN too (it starts from the weights the original
started from) and BT's incompetent teacher is that backbone with a random head, as in the
authors' ViT runs. Used on the Table 2 and 3 ViT pages (section "A pretrained start").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import subset_indices, take  # noqa: E402
from run import _cli, _opts, load_config  # noqa: E402


def complement(arrays: dict, per_class: int | None, test_per_class: int | None) -> dict:
    """``arrays`` without the images the twin's subset holds (the fine labels kept)."""
    out = dict(arrays)
    for split, idx in subset_indices(arrays, per_class, test_per_class).items():
        n = len(arrays[f"y_{split}"])
        if idx is None or len(idx) == n:
            raise ValueError(f"the twin holds every {split} image: nothing is left to pretrain on")
        out = take(out, split, np.setdiff1d(np.arange(n), idx))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="a ViT config of experiments/paper (table2_vit, table3_vit, ...)")
    p.add_argument("--data", required=True, help="the full dataset .npz the config reads")
    p.add_argument("--out", required=True, help="folder for the pretraining set, run and .npz")
    args = p.parse_args(argv)
    cfg = load_config(args.config, "cpu")
    if not cfg.model.startswith("vit"):
        p.error(f"{args.config} trains {cfg.model} at the cpu scale; accepted: a ViT config")
    out = Path(args.out)
    weights = out / f"{args.config}.npz"
    if weights.exists():
        p.error(f"{weights} already exists; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    with np.load(args.data, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files if not k.startswith(("src_", "idx_"))}
    data = out / f"{args.config}-complement.npz"
    np.savez(data, **complement(arrays, cfg.per_class, cfg.test_per_class))
    run_dir = out / f"{args.config}-pretrain"
    # the fine labels: the pretraining task is not the twin's (CIFAR-20 twins score super-classes)
    _cli(["train", "--dataset", f"npz:{data}", "--model", cfg.model, "--out", str(run_dir),
          "--no-progress", *_opts("--model-opt", cfg.model_opts),
          *[a for k, v in cfg.train.items() for a in (f"--{k.replace('_', '-')}", str(v))]])
    from jit_jax import checkpoint
    from jit_jax.models import export_vit_npz

    model, meta = checkpoint.restore(run_dir)
    export_vit_npz(model, weights)
    print(f"pretrained {cfg.model} {cfg.model_opts}: test accuracy "
          f"{meta['metrics']['test_accuracy']:.1f}% on the images outside the twin; {weights}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
