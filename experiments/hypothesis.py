"""The paper's hypothesis, tested on the Figure-2 toy: do information content alpha(x), the
input-gradient norm and the curvature kappa(x) predict how much removing a training point changes
the model?

    .venv/bin/python experiments/hypothesis.py           # writes docs/figures/hypothesis.png
    .venv/bin/python experiments/hypothesis.py --small   # quick run (20 points, N = 200)

For ``--num-points`` training points drawn at random, computes alpha(x)
(jit_jax.analysis.information), ||grad_x log p(y|x)|| and kappa(x) (jit_jax.analysis.curvature) on
the original model, retrains one model per point without it (vmapped leave-one-out, full-batch
training from the same init) and runs JiT on each point from the original model; prints Spearman
correlations and saves scatter plots. Settings: ``jit_jax.toys.HypothesisConfig``; results:
``docs/toys.md``.
"""

from __future__ import annotations

import argparse
import os
import sys

import matplotlib

matplotlib.use("Agg")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

from jit_jax import toys  # noqa: E402
from jit_jax.toy_plots import plot_hypothesis  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/figures", help="output folder (default: docs/figures)")
    ap.add_argument("--small", action="store_true", help="quick run: 20 points, N = 200")
    ap.add_argument("--num-points", type=int, default=None, help="forget points (default 100)")
    args = ap.parse_args(argv)

    cfg = toys.HypothesisConfig()
    if args.small:
        cfg = cfg.replace(num_points=20, boundary=cfg.boundary.replace(num_samples=200))
    if args.num_points is not None:
        cfg = cfg.replace(num_points=args.num_points)
    print(f"settings: {cfg}")
    res = toys.hypothesis_experiment(cfg)
    n_low = int(np.sum(res["alpha"] >= 0.9))
    print(f"{len(res['idx'])} forget points; information radius r = {res['radius']:.3f}; "
          f"{n_low} with alpha >= 0.9")
    for key in ("alpha", "grad_norm", "kappa", "loo_effect", "loo_moved", "jit_effect",
                "jit_moved"):
        q = np.nanquantile(res[key], [0, 0.5, 0.9, 1])
        print(f"  {key:10s} min {q[0]:9.3g}  median {q[1]:9.3g}  90% {q[2]:9.3g}  max {q[3]:9.3g}")
    print(f"{'feature':>11s} {'target':>11s} {'Spearman rho':>13s} {'p-value':>9s}")
    for (feat, target), (rho, pval) in res["correlations"].items():
        print(f"{feat:>11s} {target:>11s} {rho:13.3f} {pval:9.2g}")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "hypothesis.png")
    plot_hypothesis(res).savefig(path, dpi=90)
    print(f"wrote {path}")
    return res


if __name__ == "__main__":
    main()
