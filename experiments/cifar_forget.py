"""Score BSLN, RTRN and JiT on the test set for one forget request, from checkpoints.

The checkpoints come from the CLI (CPU recipe in the README)::

    jit-jax train --dataset npz:../shared/data/cifar10_subset_10k_2k.npz --model resnet18 \
        --width 16 --holdout 0.1 --epochs 30 --out runs/cifar-r18w16
    for s in 0 1 2; do jit-jax unlearn --checkpoint runs/cifar-r18w16 --method rtrn \
        --forget class:airplane --seed $s --out runs/cifar-r18w16-rtrn-airplane-s$s; done
    python experiments/tune_jit.py --checkpoint runs/cifar-r18w16 \
        --rtrn runs/cifar-r18w16-rtrn-airplane-s0 --forget class:airplane --sigma ... --lr ...
    python experiments/cifar_forget.py --checkpoint runs/cifar-r18w16 \
        --rtrn runs/cifar-r18w16-rtrn-airplane-s0 runs/cifar-r18w16-rtrn-airplane-s1 \
        runs/cifar-r18w16-rtrn-airplane-s2 --forget class:airplane --seeds 0 1 2 \
        --set sigma=... --set lr=... --set batch_size=... --out docs/results/cifar-r18w16.json

JiT's settings must come from the validation search (``tune_jit.py``), not from this test-set run.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jit_jax import recipes, unlearn  # noqa: E402
from jit_jax.cli import load_run, parse_options  # noqa: E402
from jit_jax.data import parse_forget  # noqa: E402
from jit_jax.metrics import (  # noqa: E402
    evaluate_unlearning,
    markdown_table,
    retrain_distance,
    write_results,
)
from jit_jax.models import ModelSpec  # noqa: E402
from jit_jax.train import TrainConfig  # noqa: E402


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--rtrn", required=True, nargs="+",
                   help="retrained checkpoint(s): one per --seeds value (matched by the seed each "
                        "was retrained with), as the protocol compares each seed with the RTRN of "
                        "the same seed; a single one is used for every seed, with a warning")
    p.add_argument("--forget", required=True)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="JiT options")
    p.add_argument("--peers", nargs="*", metavar="METHOD", default=[],
                   help="also run these comparison methods (e.g. fntn amn ssd bt unsir emmn scrub "
                        "bdsh), each with its default settings (default: none)")
    p.add_argument("--peer-seeds", type=int, nargs="+", default=None,
                   help="the seeds at which the --peers run (default: every --seeds value)")
    p.add_argument("--out")
    args = p.parse_args(argv)
    opts = parse_options(args.set, "JiT")
    unknown = [m for m in args.peers if m not in unlearn.METHODS or m in ("jit", "bsln", "rtrn")]
    if unknown:
        p.error(f"--peers {unknown}: not comparison methods; choose from "
                f"{[m for m in unlearn.METHODS if m not in ('jit', 'bsln', 'rtrn')]}")
    model, meta, ds = load_run(args.checkpoint)
    spec = ModelSpec.from_dict(meta["model"])
    tcfg = TrainConfig.from_dict(meta["train_config"]) if "train_config" in meta else None
    prep = recipes.preprocess_fn(ds)
    split = parse_forget(ds, args.forget)
    rtrn_by_seed = {}
    for path in args.rtrn:
        rmodel, rmeta, _ = load_run(path)
        info = rmeta.get("result", {})
        rres = evaluate_unlearning(rmodel, ds, split, method="rtrn", runtime=info.get("runtime"),
                                   compile_time=info.get("compile_time"), preprocess=prep,
                                   seed=info.get("seed"))
        rtrn_by_seed[info.get("seed")] = (path, rres)
    if len(args.rtrn) == 1:
        (only,) = rtrn_by_seed.values()
        print(f"warning: one RTRN ({only[0]}) for every seed; the protocol compares each seed "
              "with the RTRN of the same seed (pass one --rtrn per seed)", file=sys.stderr)
        rtrn_by_seed = {seed: only for seed in args.seeds}
    missing = [s for s in args.seeds if s not in rtrn_by_seed]
    if missing:
        p.error(f"--seeds {missing} have no RTRN of the same seed among --rtrn (retrained with "
                f"seeds {sorted(k for k in rtrn_by_seed if k is not None)})")
    bres = evaluate_unlearning(model, ds, split, method="bsln", runtime=0.0, preprocess=prep)
    results = []
    for seed in args.seeds:
        rres = rtrn_by_seed[seed][1]
        results += [dataclasses.replace(bres, seed=seed), dataclasses.replace(rres, seed=seed)]
        req = unlearn.Request(model, ds, split, spec, None, seed=seed, preprocess=prep)
        out = unlearn.run("jit", req, **opts)
        r = evaluate_unlearning(out.model, ds, split, method="jit", runtime=out.runtime,
                                compile_time=out.compile_time, zero_shot=True, seed=seed,
                                preprocess=prep, extra={"options": opts,
                                                        "config": out.log["config"]})
        results.append(r)
        print(f"seed {seed}: D_r {r.retain_acc:.1f} D_f {r.forget_acc:.1f} MIA {r.mia:.1f} "
              f"runtime {out.runtime:.1f}s (compile {out.compile_time:.1f}s)", flush=True)
        for m in args.peers if args.peer_seeds is None or seed in args.peer_seeds else ():
            preq = unlearn.Request(model, ds, split, spec, tcfg, seed=seed, preprocess=prep)
            out = unlearn.run(m, preq)
            r = evaluate_unlearning(out.model, ds, split, method=m, runtime=out.runtime,
                                    compile_time=out.compile_time, zero_shot=out.zero_shot,
                                    seed=seed, preprocess=prep)
            r.retrain_distance = retrain_distance(r, rres)
            results.append(r)
            print(f"seed {seed} {m}: D_r {r.retain_acc:.1f} D_f {r.forget_acc:.1f} "
                  f"MIA {r.mia:.1f} dist {r.retrain_distance:.1f} runtime {out.runtime:.1f}s "
                  f"(compile {out.compile_time:.1f}s)", flush=True)
    for r in results:  # each against the RTRN of its own seed
        r.retrain_distance = retrain_distance(r, rtrn_by_seed[r.seed][1])
    table = markdown_table(results)
    print(f"{ds.name}, {spec.name} {spec.kwargs}, forget {split.description} "
          f"({split.n_forget} samples), JiT {opts}\n{table}")
    if args.out:
        write_results(args.out, results, context={
            "checkpoint": args.checkpoint, "forget": split.description,
            "rtrn": {str(seed): rtrn_by_seed[seed][0] for seed in args.seeds},
            "model": spec.to_dict(), "jit_options": opts, "argv": sys.argv[1:]})


if __name__ == "__main__":
    main()
