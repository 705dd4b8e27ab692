"""Why JiT's MIA differs from RTRN's on digits: where the forget samples go, and how sure the model is.

    python experiments/digits_diagnose.py --classes 0 3 9 --seed 0

For each forgotten class, RTRN and JiT (shipped defaults; ``--set KEY=VALUE`` overrides) are run on
the test protocol, and for each model the script prints:

* the entropy threshold of the membership attack (the logistic regression's decision point: a
  forget sample below it is called "member") and the resulting MIA;
* quantiles (10/25/50/75/90%) of the softmax entropy of the members (retained training samples),
  the non-members (test set) and the forget training samples;
* the histogram of the classes the forget training samples are predicted as.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jit_jax import recipes, unlearn  # noqa: E402
from jit_jax.data import load_dataset, parse_forget  # noqa: E402
from jit_jax.data.splits import evaluation_sets  # noqa: E402
from jit_jax.demo import train_original  # noqa: E402
from jit_jax.metrics import entropy, fit_mia_attack, mia_score  # noqa: E402
from jit_jax.models import ModelSpec  # noqa: E402
from jit_jax.train import predict  # noqa: E402

QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def describe(model, sets, prep) -> dict:
    lg = {k: predict(model, prep(sets[k].x)) for k in ("retain_train", "test", "forget_train")}
    ent = {k: entropy(v) for k, v in lg.items()}
    clf = fit_mia_attack(lg["retain_train"], lg["test"])
    return {
        "threshold": float(-clf.intercept_[0] / clf.coef_[0, 0]),
        "mia": mia_score(lg["retain_train"], lg["test"], lg["forget_train"]),
        "quantiles": {k: np.quantile(v, QUANTILES) for k, v in ent.items()},
        "predicted": np.bincount(lg["forget_train"].argmax(1), minlength=lg["test"].shape[1]),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mlp")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--classes", type=int, nargs="+", default=[0, 3, 9])
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="JiT option overrides")
    p.add_argument("--train-set", action="append", metavar="KEY=VALUE",
                   help="training-recipe overrides (original and RTRN), e.g. weight_decay=0")
    args = p.parse_args(argv)
    from jit_jax.cli import parse_options

    jit_opts = parse_options(args.set, "JiT")
    ds = load_dataset("digits")
    spec = ModelSpec(args.model, ds.num_classes, ds.image_shape, {})
    prep = recipes.preprocess_fn(ds)
    cfg = recipes.train_recipe(ds.name, spec.name).replace(
        seed=args.seed, **parse_options(args.train_set, "training"))
    model, _ = train_original(ds, spec, cfg)
    np.set_printoptions(precision=3, suppress=True)
    for c in args.classes:
        split = parse_forget(ds, f"class:{c}")
        sets = evaluation_sets(ds, split)
        req = unlearn.Request(model, ds, split, spec, cfg, seed=args.seed, preprocess=prep)
        for name, opts in (("rtrn", {}), ("jit", jit_opts)):
            d = describe(unlearn.run(name, req, **opts).model, sets, prep)
            q = d["quantiles"]
            print(f"class {c} {name:4s}: attack threshold {d['threshold']:.3g} nats, "
                  f"MIA {d['mia']:.1f}")
            print(f"    entropy quantiles {QUANTILES}: members {q['retain_train']}, "
                  f"test {q['test']}, forget {q['forget_train']}")
            print(f"    forget samples predicted as class 0..9: {d['predicted']}")


if __name__ == "__main__":
    main()
