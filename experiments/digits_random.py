"""Random forgetting on digits: every method on ``random:N`` requests, over seeds.

    python experiments/digits_random.py --n 100 --seeds 0 1 2 --out docs/results/digits-random.json

For every seed an original MLP is trained (the digits recipe, that seed) and ``N`` training samples
drawn with that seed are forgotten by each method; RTRN is retrained on the rest. D_r accuracy is on
the full test set and D_f accuracy on the forgotten samples (the protocol's random-task rule).
JiT uses the digits defaults of ``jit_jax.recipes``, which were tuned for full-class forgetting, and
the comparison methods their authors' random-task settings; nothing here is tuned for this task.
UNSIR and EMMN are full-class methods and are not run.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jit_jax import recipes  # noqa: E402
from jit_jax.data import load_dataset, parse_forget  # noqa: E402
from jit_jax.demo import compare, train_original  # noqa: E402
from jit_jax.metrics import markdown_table  # noqa: E402
from jit_jax.models import ModelSpec  # noqa: E402

METHODS = ("bsln", "rtrn", "jit", "fntn", "amn", "ssd", "bt", "scrub", "bdsh")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=100, help="forget set size (default 100)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--methods", nargs="+", default=list(METHODS))
    p.add_argument("--out")
    args = p.parse_args(argv)
    ds = load_dataset("digits")
    spec = ModelSpec("mlp", ds.num_classes, ds.image_shape, {})
    results = []
    for seed in args.seeds:
        cfg = recipes.train_recipe(ds.name, spec.name).replace(seed=seed)
        model, _ = train_original(ds, spec, cfg)
        split = parse_forget(ds, f"random:{args.n}", seed=seed)
        print(f"seed {seed}: {split.description}", flush=True)
        results += compare(model, ds, split, spec, cfg, seeds=[seed], methods=args.methods,
                           log=lambda s: None)
    table = markdown_table(results)
    print(table)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"argv": sys.argv[1:], "table": table,
                                              "runs": [r.to_dict() for r in results]}, indent=2))
        Path(args.out).with_suffix(".md").write_text(table + "\n")


if __name__ == "__main__":
    main()
