"""A probe for a sub-class twin's method row: can the original tell the forgotten sub-class from the
rest of its super-class, and are the forget images a method leaves in the super-class the ones it
cannot?

    python experiments/paper/probe_subclass_separability.py runs/paper/table3-vit-pre --method bt

For a runner folder of a sub-class table (its ``data.npz`` holds the fine and coarse labels), the
original's representation before its head (the class token after the encoder's last LayerNorm;
ViT twins only) of every training image of the forget sub-class's super-class is fitted
with a logistic regression, forget sub-class against the other members, and scored out of fold
(5 folds). Then for each seed's run of ``--method``: the share of the forget images its model
still puts in the super-class, among those the probe tells apart (out-of-fold probability > 0.5)
and among those it confuses. If the method leaves exactly the confusable images in the
super-class, the original's representation limits what the method can separate.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def representation(model, x: np.ndarray, batch: int = 256) -> np.ndarray:
    """The model's representation before its classification head (``ViT.features``), in eval
    mode."""
    from jit_jax.models.vit import ViT

    if not isinstance(model, ViT):
        raise ValueError(f"representation: {type(model).__name__} is not supported (ViT only)")
    model.eval()
    step = nnx.jit(lambda m, x: m.features(x))
    return np.concatenate([np.asarray(step(model, jnp.asarray(x[i:i + batch])))
                           for i in range(0, len(x), batch)])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", type=Path, help="a sub-class runner folder (original/, data.npz)")
    ap.add_argument("--method", required=True)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = ap.parse_args(argv)
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_predict

    from jit_jax import checkpoint, recipes
    from jit_jax.cli import load_run
    from jit_jax.data import parse_forget
    from jit_jax.train import predict

    forget = json.loads((args.runs / "results.json").read_text())["config"]["forget"]
    if not forget.startswith("subclass:"):
        ap.error(f"{args.runs} forgets {forget!r}; this probe is for sub-class requests")
    model, _, ds = load_run(args.runs / "original")
    with np.load(args.runs / "data.npz") as z:
        fine, coarse = z["y_train"], z["y_train_coarse"]
        fine_names = [str(n) for n in z["class_names"]]
    sub = fine_names.index(forget.split(":", 1)[1])
    sup = int(coarse[fine == sub][0])
    idx = np.flatnonzero(coarse == sup)
    prep = recipes.preprocess_fn(ds)
    feats = representation(model, prep(ds.x_train[idx]).astype(np.float32))
    is_sub = (fine[idx] == sub).astype(int)
    p = cross_val_predict(LogisticRegression(max_iter=5000), feats, is_sub, cv=5,
                          method="predict_proba")[:, 1]
    p_sub = dict(zip(idx[is_sub == 1], p[is_sub == 1], strict=True))
    print(f"{forget} in {ds.target_names[sup]!r} ({len(idx)} training images): the probe on the "
          f"original's representation, out of fold: accuracy {100 * np.mean((p > 0.5) == is_sub):.1f}%, "
          f"forget images told apart {100 * np.mean(p[is_sub == 1] > 0.5):.1f}%")
    for seed in args.seeds:
        fidx = parse_forget(ds, forget, seed=seed).forget_idx
        if set(fidx) != set(p_sub):
            raise ValueError(f"seed {seed}: the forget set is not the sub-class's training images")
        x = prep(ds.x_train[fidx]).astype(np.float32)
        kept = predict(checkpoint.restore(args.runs / f"{args.method}-s{seed}")[0], x
                       ).argmax(-1) == sup
        was = predict(model, x).argmax(-1) == sup
        apart = np.array([p_sub[i] > 0.5 for i in fidx])
        print(f"seed {seed}: {args.method} leaves {100 * kept.mean():.0f}% in the super-class "
              f"(the original {100 * was.mean():.0f}%); of the images the probe tells apart "
              f"({apart.sum()}) {100 * kept[apart].mean():.0f}%, of those it confuses "
              f"({(~apart).sum()}) {100 * kept[~apart].mean():.0f}%; of those the original put "
              f"in the super-class {100 * kept[was].mean():.0f}%")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
