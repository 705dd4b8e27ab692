"""Choose JiT's sigma and lr on a validation split carved from the training data.

The test set never informs the choice: models are trained on the training set minus a stratified
hold-out, and every metric of the search (D_r, D_f, MIA, retrain distance) is computed with the
hold-out standing in for the test set. The score of a setting is its mean retrain distance over the
forget requests and seeds. ``--max-dr-drop D`` only admits settings whose mean D_r accuracy stays
within D points of the untouched model's (a retrain distance can be low for a model that lost D_r).

Two modes:

1. In-process (small data): trains the original and, per forget request, the retrained model::

       python experiments/tune_jit.py --dataset digits --model cnn --forget class:0 class:5 \
           --sigma 0.5 1 2 --lr 1e-3 2e-3 4e-3 8e-3 --batch-size 32 --out docs/tuning/digits.json

2. From checkpoints (CIFAR scale): the original trained with ``jit-jax train --holdout F`` and the
   retrained model from ``jit-jax unlearn --method rtrn``::

       python experiments/tune_jit.py --checkpoint runs/cifar-r18w16 \
           --rtrn runs/cifar-r18w16-rtrn-airplane --forget class:airplane \
           --sigma 0.5 1 --lr 1e-4 2e-4 4e-4 --batch-size 32 --out docs/tuning/cifar-r18.json

The search itself is :mod:`jit_jax.tune`; ``jit-jax tune`` is the same search as a command (its
grid has defaults, and it writes ``grid.json`` with this script's JSON and a heat map).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jit_jax import tune  # noqa: E402
from jit_jax.cli import load_run, parse_options  # noqa: E402
from jit_jax.data import load_dataset  # noqa: E402
from jit_jax.models import ModelSpec  # noqa: E402


def references_in_process(args) -> list[tune.Reference]:
    """Originals and RTRN trained here on the fit part of the hold-out."""
    return tune.references_in_process(
        load_dataset(args.dataset), args.model, args.forget, args.seeds,
        holdout_fraction=args.holdout, model_options=parse_options(args.model_opt, "model"),
        train_options=parse_options(args.train_set, "training"))


def references_from_checkpoints(args) -> list[tune.Reference]:
    model, meta, val = load_run(args.checkpoint, validation=True)
    rmodel, _, _ = load_run(args.rtrn, validation=True)
    return tune.references_from_models(model, rmodel, val, ModelSpec.from_dict(meta["model"]),
                                       args.forget, args.seeds)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="digits")
    p.add_argument("--model", default="cnn")
    p.add_argument("--model-opt", action="append", metavar="KEY=VALUE")
    p.add_argument("--checkpoint")
    p.add_argument("--rtrn")
    p.add_argument("--holdout", type=float, default=0.1)
    p.add_argument("--forget", nargs="+", default=["class:0"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--sigma", type=float, nargs="+", required=True)
    p.add_argument("--lr", type=float, nargs="+", required=True)
    p.add_argument("--batch-size", type=int, nargs="+", default=[32])
    p.add_argument("--num-samples", type=int, default=25)
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="other JiT options")
    p.add_argument("--train-set", action="append", metavar="KEY=VALUE",
                   help="in-process mode: override the training recipe of the original and RTRN "
                        "models (e.g. optimizer=sgd weight_decay=5e-4)")
    p.add_argument("--max-dr-drop", type=float, default=None,
                   help="choose only among settings whose mean D_r drop from BSLN is at most this "
                        "many points (default: no limit)")
    p.add_argument("--out")
    args = p.parse_args(argv)
    if args.max_dr_drop is not None and not args.max_dr_drop >= 0:
        p.error(f"--max-dr-drop {args.max_dr_drop}: accepted: a number >= 0")
    extra = parse_options(args.set, "JiT")
    try:
        tune.check_search(args.sigma, args.lr, args.batch_size, num_samples=args.num_samples,
                          jit_options=extra, holdout_fraction=args.holdout, seeds=args.seeds,
                          train_options=parse_options(args.train_set, "training"))
    except ValueError as e:
        p.error(str(e))
    t0 = time.perf_counter()
    refs = references_from_checkpoints(args) if args.checkpoint else references_in_process(args)
    rows = tune.run_grid(refs, args.sigma, args.lr, args.batch_size,
                         num_samples=args.num_samples, jit_options=extra)
    best = tune.choose(rows, args.max_dr_drop)
    if best is None and args.max_dr_drop is not None:
        print(f"no setting kept its mean D_r drop within {args.max_dr_drop} points")
    if best:
        print(f"best on validation: sigma {best['sigma']} lr {best['lr']} B {best['batch_size']} "
              f"(mean retrain distance {best['retrain_distance']:.2f})")
    print(f"total {time.perf_counter() - t0:.0f}s")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        found = tune.Search(refs, rows, best, args.max_dr_drop)
        Path(args.out).write_text(json.dumps(found.to_dict(sys.argv[1:]), indent=2))
    return best


if __name__ == "__main__":
    main()
