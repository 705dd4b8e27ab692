"""Figure 3 of Foster et al. (TMLR 2025): JiT on a sigmoid, forgetting points in its flat and steep
region.

    .venv/bin/python experiments/toy_sigmoid.py            # writes docs/figures/toy_sigmoid.png
    .venv/bin/python experiments/toy_sigmoid.py --small    # quick run (fewer steps and seeds)

Runs the authors' loss (stop-gradient, p = 1) and the slides' loss without the stop-gradient, prints
how far the curve moves (max / mean |sigmoid_after - sigmoid_before| on a grid, change at the forget
points; medians over the JiT seeds) and saves a 2 x 2 figure. Settings:
``jit_jax.toys.SigmoidConfig``; results: ``docs/toys.md``.
"""

from __future__ import annotations

import argparse
import os
import sys

import matplotlib

matplotlib.use("Agg")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from jit_jax import toys  # noqa: E402
from jit_jax.toy_plots import plot_sigmoid  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/figures", help="output folder (default: docs/figures)")
    ap.add_argument("--small", action="store_true", help="quick run: fewer steps and seeds")
    args = ap.parse_args(argv)

    base = toys.SigmoidConfig()
    if args.small:
        base = base.replace(train_steps=500, jit_seeds=(0, 1))
    variants = {"authors' loss (stop-gradient)": base.replace(stop_gradient=True),
                "slides' loss (no stop-gradient)": base.replace(stop_gradient=False)}
    results = {}
    print(f"settings: {base}")
    print(f"{'variant':34s} {'region':6s} {'slope':>7s} {'max|d|':>9s} {'mean|d|':>9s} "
          f"{'|d| at x_f':>10s}  (medians over {len(base.jit_seeds)} JiT seeds)")
    for title, cfg in variants.items():
        res = toys.sigmoid_experiment(cfg)
        results[title] = res
        for region in ("flat", "steep"):
            d = res[region]
            print(f"{title:34s} {region:6s} {d['slope']:7.4f} {d['max_change_median']:9.2e} "
                  f"{d['mean_change_median']:9.2e} {d['forget_change_median']:10.2e}")
        w = [round(float(p["w"]), 2) for p in res["steep"]["params"]]
        print(f"{'':34s} fitted w = {float(res['params']['w']):.2f}, after JiT on the steep "
              f"points w = {w}")
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, "toy_sigmoid.png")
    plot_sigmoid(results).savefig(path, dpi=110)
    print(f"wrote {path}")
    return results


if __name__ == "__main__":
    main()
