"""Every method with the full metrics: stronger membership attacks, U-LiRA, output distances to
RTRN and relearn time, and what they change in the ranking of the methods.

    python experiments/privacy_table.py --forget class:0 class:1 class:2 class:3 class:4 \\
        class:5 class:6 class:7 class:8 class:9 --shadows 16 \\
        --out docs/results/privacy/digits-classes.json
    python experiments/privacy_table.py --dataset npz:../shared/data/cifar10_subset_10k_2k.npz \\
        --forget random:100 --memorise --shadows 16 \\
        --out docs/results/privacy/cifar10-mlp-random100-memorise.json

For each seed an original model is trained (``--model``, default the MLP, with the dataset's
recipe and that seed; ``--memorise``: no weight decay, no augmentation and twice the epochs, so
that it fits every training sample) and every method runs
on the request (a ``random:N`` request is drawn with the seed), scored against the RTRN of the
same seed. U-LiRA's shadow models use the same recipe (seeds 1000 + k) and are cached per
(recipe, request) under ``--shadow-cache``; their training time is reported apart.

The ranking section orders the methods (RTRN and BSLN excluded) by their distance to RTRN under
each measure: the paper's retrain distance, |MIA - MIA_RTRN| (the paper's attack), the same for
each further attack's AUC, and the JS divergence to RTRN on the forget set; and gives each
ranking's Kendall tau against the paper's retrain distance.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jit_jax import recipes  # noqa: E402
from jit_jax.data import load_dataset, parse_forget  # noqa: E402
from jit_jax.demo import compare, train_original  # noqa: E402
from jit_jax.metrics import markdown_table, summarize, train_ulira_shadows  # noqa: E402
from jit_jax.models import ModelSpec  # noqa: E402
from jit_jax.train import evaluate  # noqa: E402

CLASS_METHODS = ("bsln", "rtrn", "jit", "fntn", "amn", "ssd", "bt", "unsir", "emmn", "scrub",
                 "bdsh", "gkt")
RANDOM_METHODS = ("bsln", "rtrn", "jit", "fntn", "amn", "ssd", "bt", "scrub", "bdsh")
#: measure -> (column, how a method's distance to RTRN is read from the per-method means)
MEASURES = {
    "retrain distance (paper)": "retrain_distance",
    "|MIA - RTRN| (entropy LR, paper)": "mia",
    "|AUC - RTRN| LR on 3 features": "mia_lr3_auc",
    "|AUC - RTRN| SVC on 3 features": "mia_svc3_auc",
    "|AUC - RTRN| loss threshold": "mia_threshold_auc",
    "|AUC - RTRN| U-LiRA": "ulira_auc",
    "JS to RTRN, forget set": "js_forget",
}


def rankings(rows: list[dict]) -> dict:
    """Per measure: the methods ordered by their distance to RTRN (closest first), and Kendall's
    tau of that order against the retrain distance's."""
    from scipy.stats import kendalltau

    by = {r["method"]: r for r in rows}
    rtrn = by["rtrn"]
    methods = [m for m in by if m not in ("rtrn", "bsln")]
    out = {}
    for name, col in MEASURES.items():
        if any(col not in by[m] for m in methods):
            continue
        if col in ("retrain_distance", "js_forget"):
            dist = {m: by[m][col] for m in methods}
        else:
            dist = {m: abs(by[m][col] - rtrn[col]) for m in methods}
        out[name] = {"order": sorted(methods, key=lambda m: dist[m]), "distance": dist}
    base = out["retrain distance (paper)"]["distance"]
    for rec in out.values():
        tau = kendalltau([base[m] for m in methods], [rec["distance"][m] for m in methods])
        rec["kendall_tau_vs_retrain_distance"] = float(tau.statistic)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="digits", help="a dataset spec (default: digits)")
    p.add_argument("--model", default="mlp")
    p.add_argument("--forget", nargs="+", default=["class:3"],
                   help="one or more requests (the table averages over requests and seeds)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+")
    p.add_argument("--memorise", action="store_true",
                   help="train without weight decay or augmentation, twice the recipe's epochs")
    p.add_argument("--shadows", type=int, default=16)
    p.add_argument("--shadow-cache", default="runs/shadows")
    p.add_argument("--out")
    args = p.parse_args(argv)
    ds = load_dataset(args.dataset)
    spec = ModelSpec(args.model, ds.num_classes, ds.image_shape, {})
    kind = args.forget[0].split(":")[0]
    methods = args.methods or list(CLASS_METHODS if kind != "random" else RANDOM_METHODS)
    if args.model == "mlp" and "gkt" in methods:  # GKT re-draws convolution kernels: none here
        print("gkt is not run: it needs a model with convolutions, and the MLP has none")
        methods.remove("gkt")
    results, seeds_info, shadow_s, t0 = [], [], 0.0, time.perf_counter()
    prep = recipes.preprocess_fn(ds)
    for seed in args.seeds:
        cfg = recipes.train_recipe(ds.name, spec.name).replace(seed=seed)
        if args.memorise:
            cfg = cfg.replace(weight_decay=0.0, augment="none", epochs=2 * cfg.epochs)
        model, _ = train_original(ds, spec, cfg)
        train_acc = evaluate(model, prep(ds.x_train), ds.train_targets)["accuracy"]
        test_acc = evaluate(model, prep(ds.x_test), ds.test_targets)["accuracy"]
        seeds_info.append({"seed": seed, "train_acc": train_acc, "test_acc": test_acc})
        for request in args.forget:
            split = parse_forget(ds, request, seed=seed)
            shadows = None
            if args.shadows:
                shadows = train_ulira_shadows(ds, split, spec, cfg.replace(seed=0),
                                              n_shadows=args.shadows, cache_dir=args.shadow_cache,
                                              preprocess=prep, log=lambda s: None)
                shadow_s += shadows.train_seconds
            print(f"seed {seed}: {split.description}; original train {train_acc:.1f}% test "
                  f"{test_acc:.1f}%", flush=True)
            results += compare(model, ds, split, spec, cfg, seeds=[seed], methods=methods,
                               log=lambda s: None, metrics="full", shadows=shadows)
    wall = time.perf_counter() - t0
    table = markdown_table(results)
    rows = summarize(results)
    ranks = rankings(rows)
    print(table)
    for name, rec in ranks.items():
        print(f"{name}: {' < '.join(rec['order'])} (tau vs retrain distance "
              f"{rec['kendall_tau_vs_retrain_distance']:+.2f})")
    aucs = {m: [r.metrics.get("ulira_auc") for r in results if r.method == m]
            for m in ("rtrn", "bsln")}
    print(f"U-LiRA AUC per run (seed-major, then request): RTRN {aucs['rtrn']}, BSLN {aucs['bsln']}")
    print(f"wall {wall:.0f}s, of which shadow training {shadow_s:.0f}s")
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({
            "argv": sys.argv[1:], "originals": seeds_info, "table": table, "rankings": ranks,
            "ulira_auc": aucs, "wall_s": wall, "shadow_train_s": shadow_s,
            "summary": rows, "runs": [r.to_dict() for r in results]}, indent=2))
        out.with_suffix(".md").write_text(table + "\n")
    return results, ranks


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
