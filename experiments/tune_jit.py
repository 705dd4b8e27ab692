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
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jit_jax import recipes, unlearn  # noqa: E402
from jit_jax.data import holdout, load_dataset, parse_forget  # noqa: E402
from jit_jax.demo import train_original  # noqa: E402
from jit_jax.metrics import evaluate_unlearning, retrain_distance  # noqa: E402
from jit_jax.models import ModelSpec  # noqa: E402


def references_in_process(args):
    """[(seed, split, dataset, original, rtrn_result, spec)] trained here on the fit part."""
    full = load_dataset(args.dataset)
    _, val = holdout(full, args.holdout, seed=0)
    from jit_jax.cli import parse_options

    spec = ModelSpec(args.model, val.num_classes, val.image_shape,
                     parse_options(args.model_opt, "model"))
    out = []
    for seed in args.seeds:
        cfg = recipes.train_recipe(val.name, spec.name).replace(
            seed=seed, **parse_options(args.train_set, "training"))
        model, _ = train_original(val, spec, cfg)
        for f in args.forget:
            split = parse_forget(val, f, seed=seed)
            req = unlearn.Request(model, val, split, spec, cfg, seed=seed,
                                  preprocess=recipes.preprocess_fn(val))
            r = unlearn.run("rtrn", req)
            rres = evaluate_unlearning(r.model, val, split, method="rtrn",
                                       preprocess=recipes.preprocess_fn(val))
            bres = evaluate_unlearning(model, val, split, method="bsln",
                                       preprocess=recipes.preprocess_fn(val))
            print(f"seed {seed} {split.description}: BSLN test {bres.test_acc:.1f} D_r {bres.retain_acc:.1f} D_f "
                  f"{bres.forget_acc:.1f} MIA {bres.mia:.1f} | RTRN D_r {rres.retain_acc:.1f} "
                  f"D_f {rres.forget_acc:.1f} MIA {rres.mia:.1f}", flush=True)
            out.append((seed, split, val, model, rres, bres, spec))
    return out


def references_from_checkpoints(args):
    from jit_jax.cli import load_run

    model, meta, val = load_run(args.checkpoint, validation=True)
    rmodel, _, _ = load_run(args.rtrn, validation=True)
    spec = ModelSpec.from_dict(meta["model"])
    prep = recipes.preprocess_fn(val)
    out = []
    for f in args.forget:
        split = parse_forget(val, f, seed=0)
        rres = evaluate_unlearning(rmodel, val, split, method="rtrn", preprocess=prep)
        bres = evaluate_unlearning(model, val, split, method="bsln", preprocess=prep)
        print(f"{split.description}: BSLN D_r {bres.retain_acc:.1f} D_f {bres.forget_acc:.1f} "
              f"MIA {bres.mia:.1f} | RTRN D_r {rres.retain_acc:.1f} D_f {rres.forget_acc:.1f} "
              f"MIA {rres.mia:.1f}", flush=True)
        for seed in args.seeds:
            out.append((seed, split, val, model, rres, bres, spec))
    return out


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
    from jit_jax.cli import parse_options

    extra = parse_options(args.set, "JiT")
    t0 = time.perf_counter()
    refs = references_from_checkpoints(args) if args.checkpoint else references_in_process(args)
    rows = []
    for sigma, lr, b in itertools.product(args.sigma, args.lr, args.batch_size):
        runs = []
        for seed, split, ds, model, rres, bres, spec in refs:
            req = unlearn.Request(model, ds, split, spec, None, seed=seed,
                                  preprocess=recipes.preprocess_fn(ds))
            try:
                out = unlearn.run("jit", req, sigma=sigma, lr=lr, batch_size=b,
                                  num_samples=args.num_samples, **extra)
                r = evaluate_unlearning(out.model, ds, split, method="jit",
                                        runtime=out.runtime,
                                        preprocess=recipes.preprocess_fn(ds))
            except FloatingPointError as e:
                print(f"sigma {sigma} lr {lr} B {b}: diverged ({e})")
                runs = None
                break
            runs.append({"seed": seed, "forget": split.description, "retain_acc": r.retain_acc,
                         "forget_acc": r.forget_acc, "mia": r.mia,
                         "retrain_distance": retrain_distance(r, rres),
                         "dr_drop": bres.retain_acc - r.retain_acc, "runtime": out.runtime})
        if runs is None:
            rows.append({"sigma": sigma, "lr": lr, "batch_size": b, "diverged": True})
            continue
        row = {"sigma": sigma, "lr": lr, "batch_size": b,
               **{k: float(np.mean([r[k] for r in runs])) for k in
                  ("retrain_distance", "retain_acc", "forget_acc", "mia", "dr_drop", "runtime")},
               "max_dr_drop": float(max(r["dr_drop"] for r in runs)),
               "max_forget_acc": float(max(r["forget_acc"] for r in runs)), "runs": runs}
        rows.append(row)
        print(f"sigma {sigma:<5} lr {lr:<8.2e} B {b:<4} dist {row['retrain_distance']:6.2f}  "
              f"D_r {row['retain_acc']:5.1f} (drop {row['dr_drop']:4.1f}, max {row['max_dr_drop']:4.1f})"
              f"  D_f {row['forget_acc']:5.1f} (max {row['max_forget_acc']:5.1f})  "
              f"MIA {row['mia']:5.1f}", flush=True)
    ok = [r for r in rows if not r.get("diverged")]
    if args.max_dr_drop is not None:
        ok = [r for r in ok if r["dr_drop"] <= args.max_dr_drop]
        if not ok:
            print(f"no setting kept its mean D_r drop within {args.max_dr_drop} points")
    best = min(ok, key=lambda r: r["retrain_distance"]) if ok else None
    if best:
        print(f"best on validation: sigma {best['sigma']} lr {best['lr']} B {best['batch_size']} "
              f"(mean retrain distance {best['retrain_distance']:.2f})")
    print(f"total {time.perf_counter() - t0:.0f}s")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        refs_info = [{"seed": s, "forget": sp.description, "rtrn": rr.to_dict(),
                      "bsln": br.to_dict()} for s, sp, _, _, rr, br, _ in refs]
        Path(args.out).write_text(json.dumps({"argv": sys.argv[1:], "references": refs_info,
                                              "max_dr_drop": args.max_dr_drop,
                                              "grid": rows, "best": best}, indent=2))
    return best


if __name__ == "__main__":
    main()
