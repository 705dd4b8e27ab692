"""Figures of the toy experiments (:mod:`jit_jax.toys`), shared by ``experiments/`` and
``notebooks/``.

Each function takes the result dict of the matching experiment and returns a matplotlib Figure; the
caller saves or shows it (scripts select the Agg backend before importing this module).
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from jit_jax import toys

_METHOD_TITLES = {"original": "original", "retrained": "retrained without x",
                  "jit": "JiT", "mislabel": "train to mislabel x (naive)",
                  "mislabel_gentle": "mislabel x, stop when flipped"}


def plot_sigmoid(results: dict[str, dict[str, Any]]):
    """Figure 3: one row per variant (``results`` maps a row title to a
    :func:`toys.sigmoid_experiment` result), columns flat / steep region. The black curve is the
    fitted sigmoid, the coloured ones the sigmoid after JiT (one per seed); red dots are the forget
    points on the original curve, black dots the same points on the curves after JiT."""
    import matplotlib.pyplot as plt

    rows = list(results)
    fig, axes = plt.subplots(len(rows), 2, figsize=(10, 3.4 * len(rows)), squeeze=False,
                             sharex=True, sharey=True)
    for r, title in enumerate(rows):
        res = results[title]
        for col, region in enumerate(("flat", "steep")):
            ax, d = axes[r, col], res[region]
            jitter = (np.asarray(res["y"]) - 0.5) * 1.06 + 0.5
            ax.scatter(res["x"][:, 0], jitter, s=6, c="0.6", label="training data")
            for k, cur in enumerate(d["curves"]):
                ax.plot(res["grid"], cur, lw=1, alpha=0.8, label="after JiT" if k == 0 else None)
            ax.plot(res["grid"], res["curve"], "k", lw=2, label="original")
            for k, after in enumerate(d["after"]):
                ax.scatter(d["x_forget"], after, s=18, c="k", zorder=5,
                           label="forget points after JiT" if k == 0 else None)
            ax.scatter(d["x_forget"], d["before"], s=40, c="red", zorder=6, label="forget points")
            ax.set_title(f"{title}: {region} region\nmax |change| (median over seeds) = "
                         f"{d['max_change_median']:.2g}", fontsize=9)
            ax.set_xlabel("x")
            ax.set_ylabel("sigmoid(w x + b)")
    axes[0, 0].legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    return fig


def _probs(apply_fn, params, pts, shape):
    return np.asarray(jax.nn.softmax(apply_fn(params, pts))[:, 1]).reshape(shape)


def plot_boundary(result: dict[str, Any]):
    """Figure 2: a 2 x 5 grid, rows the low- and high-gradient forget point, columns the original,
    retrained, JiT and the two mislabel models (naive, gentle). Colour: p(class 1); solid line: the model's boundary;
    dashed: the original's; star: the forget point."""
    import matplotlib.pyplot as plt

    xx, yy = result["grid"]
    x, y, f, pts = result["x"], result["y"], result["apply_fn"], result["grid_points"]
    fig, axes = plt.subplots(2, len(toys.METHODS), figsize=(4 * len(toys.METHODS), 8.4),
                             sharex=True, sharey=True)
    p0 = _probs(f, result["params"], pts, xx.shape)
    for r, name in enumerate(("low", "high")):
        pt = result["points"][name]
        for col, m in enumerate(toys.METHODS):
            ax = axes[r, col]
            pm = _probs(f, pt["params"][m], pts, xx.shape)
            ax.contourf(xx, yy, pm, levels=np.linspace(0, 1, 11), cmap="RdBu_r", alpha=0.75)
            if m != "original":
                ax.contour(xx, yy, p0, levels=[0.5], colors="k", linestyles="--", linewidths=1)
            ax.contour(xx, yy, pm, levels=[0.5], colors="k", linewidths=1.6)
            ax.scatter(x[:, 0], x[:, 1], c=y, cmap="bwr", s=9, edgecolors="k", linewidths=0.3)
            i = pt["idx"]
            ax.scatter(x[i, 0], x[i, 1], marker="*", s=380, c="yellow", edgecolors="k", zorder=5)
            title = _METHOD_TITLES[m]
            if m == "jit" and "config" in result:
                c = result["config"]
                title += (f" (p = {c.p}, "
                          f"{'stop-gradient' if c.stop_gradient else 'no stop-gradient'})")
            ax.set_title(f"{name}-gradient point: {title}\n"
                         f"agreement with retrained {pt['agreement'][m]:.2f}%, "
                         f"moved {pt['moved'][m]:.2f}%", fontsize=9)
    fig.tight_layout()
    return fig


_FEATURES = (("alpha", "alpha(x) (information content)", False),
             ("grad_norm", "||grad_x log p(y|x)||", True),
             ("kappa", "kappa(x)", True))


def plot_hypothesis(result: dict[str, Any]):
    """The hypothesis test: rows the leave-one-out effect at the point (|p_orig - p_loo|) and on the
    grid (% cells changed); columns alpha, gradient norm, kappa, and JiT's effect. Spearman rho in
    each title."""
    import matplotlib.pyplot as plt

    corr = result["correlations"]
    fig, axes = plt.subplots(2, 4, figsize=(17, 7.5))
    for r, (target, label) in enumerate((("loo_effect", "LOO |p_orig(y|x) - p_loo(y|x)|"),
                                         ("loo_moved", "LOO: grid cells changed (%)"))):
        for col, (feat, flabel, logx) in enumerate(_FEATURES):
            ax = axes[r, col]
            ax.scatter(result[feat], result[target], s=14, c=result["alpha"], cmap="viridis",
                       vmin=0, vmax=1)
            if logx:
                ax.set_xscale("log")
            if target == "loo_effect":  # many points change by ~0: linear below 1e-4
                ax.set_yscale("symlog", linthresh=1e-4)
                ax.set_ylim(bottom=0, top=1.5)
            rho, pval = corr[(feat, target)]
            ax.set_title(f"Spearman rho = {rho:.2f} (p = {pval:.1g})", fontsize=9)
            ax.set_xlabel(flabel)
            ax.set_ylabel(label)
        ax = axes[r, 3]
        jt = target.replace("loo", "jit")
        ax.scatter(result[jt], result[target], s=14, c=result["alpha"], cmap="viridis", vmin=0,
                   vmax=1)
        if target == "loo_effect":
            ax.set_xscale("symlog", linthresh=1e-4)
            ax.set_yscale("symlog", linthresh=1e-4)
            ax.set_xlim(left=0, right=1.5)
            ax.set_ylim(bottom=0, top=1.5)
        rho, pval = corr[(target, jt)]
        ax.set_title(f"JiT vs retraining: Spearman rho = {rho:.2f} (p = {pval:.1g})", fontsize=9)
        ax.set_xlabel(label.replace("LOO", "JiT").replace("p_loo", "p_jit"))
        ax.set_ylabel(label)
    fig.suptitle("colour: alpha(x)", fontsize=9)
    fig.tight_layout()
    return fig
