"""The paper's Figures 5, 7 and 8 from the runner's outputs, as PNG beside their JSON.

    python experiments/paper/figures.py fig5 --runs runs/paper/table2-vit --out docs/results/paper
    python experiments/paper/figures.py sweep table2_vgg --scale cpu --runs runs/paper/table2-vgg \
        --out docs/results/paper

- ``fig5``: the median runtime of every method over the seeds of one runner output folder (the
  paper's Figure 5 uses its Table 2 ViT runs: full-class forgetting of "rocket"), log scale; a
  method that failed on every seed is named in the title and the JSON.
- ``sweep``: JiT's sensitivity to its two settings (the paper's Figures 7 and 8, VGG11 full-class):
  JiT with the config's paper setting (``jit-jax unlearn --paper``) on the runner's original, over
  a grid of lr and sigma around the authors' values (x 1/9, 1/3, 1, 3, 9 for lr; x 1/4, 1/2, 1, 2,
  4 for sigma), one seed, scored against that seed's RTRN. Figure 7: D_r over the grid; Figure 8:
  MIA. Each grid point is a checkpoint folder ``sweep/lr<lr>-sigma<sigma>-s<seed>`` under the
  runs folder, and a finished point is never recomputed.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))
sys.path.insert(0, str(HERE))

from run import failed_path, load_config, run_step  # noqa: E402

LR_FACTORS = (1 / 9, 1 / 3, 1.0, 3.0, 9.0)
SIGMA_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def fig5(runs: Path, out: Path, name: str | None = None) -> dict:
    """Median runtime per method (over the seeds) from ``runs/results.json``; RTRN included
    (its runtime is the retraining), BSLN left out (it does nothing)."""
    summary = json.loads((Path(runs) / "results.json").read_text())
    cfg = summary["config"]
    rows = [r for r in summary["rows"] if r["method"] != "bsln"]
    failed = sorted(r["method"] for r in rows if r.get("runtime_median") is None)
    rows = sorted((r for r in rows if r.get("runtime_median") is not None),
                  key=lambda r: r["runtime_median"])
    data = {"figure": 5, "config": cfg["name"], "scale": cfg["scale"], "model": cfg["model"],
            "forget": cfg["forget"], "seeds": summary["seeds"],
            "median_runtime_s": {r["method"]: r["runtime_median"] for r in rows},
            "failed_on_every_seed": failed}
    name = name or f"figure5-{cfg['name']}-{cfg['scale']}"
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(data, indent=1) + "\n")
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.2))
    methods = [r["method"].upper() if r["method"] != "jit" else "JiT" for r in rows]
    times = [max(r["runtime_median"], 1e-3) for r in rows]
    colours = ["tab:red" if r["method"] == "jit" else "tab:blue" for r in rows]
    ax.barh(methods, times, color=colours)
    ax.set_xscale("log")
    ax.set_xlabel("median runtime (s, log scale)")
    ax.set_title(f"{cfg['name']} ({cfg['scale']}): {cfg['model']}, {cfg['forget']}"
                 + (f"; failed: {', '.join(failed)}" if failed else ""), fontsize=9)
    fig.tight_layout()
    fig.savefig(out / f"{name}.png", dpi=120)
    plt.close(fig)
    return data


METRICS = ("retain_acc", "forget_acc", "mia", "retrain_distance", "test_acc")


def sweep(config: str, scale: str, runs: Path, out: Path, seed: int = 0, log=print,
          lr_factors=LR_FACTORS, sigma_factors=SIGMA_FACTORS) -> dict:
    """JiT over the lr x sigma grid on the runner's original (``runs/original``), scored against
    ``runs/rtrn-s<seed>``; writes Figures 7 (D_r) and 8 (MIA) with their JSON. A grid point whose
    run fails (e.g. diverges) is recorded beside its folder (``.failed.json``), kept in the JSON
    with its error and drawn as a "failed" cell; it is not retried."""
    from jit_jax.unlearn import paper

    cfg = load_config(config, scale)
    runs = Path(runs).absolute()
    orig, rtrn = runs / "original", runs / f"rtrn-s{seed}"
    for need in (orig / "metadata.json", rtrn / "result.json"):
        if not need.exists():
            raise FileNotFoundError(f"{need} is missing: run experiments/paper/run.py {config} "
                                    f"--scale {scale} --out {runs} first")
    base = paper.jit_config(cfg.task, cfg.model)
    grid = []
    for lf in lr_factors:
        for sf in sigma_factors:
            lr, sigma = base.lr * lf, base.sigma * sf
            d = runs / "sweep" / f"lr{lr:.3g}-sigma{sigma:.3g}-s{seed}"
            failed = failed_path(d)
            if not (d / "result.json").exists() and not failed.exists():
                log(f"[{config} sweep] lr {lr:.3g} sigma {sigma:.3g}")
                run_step(["unlearn", "--checkpoint", str(orig), "--method", "jit", "--forget",
                          cfg.forget, "--seed", str(seed), "--rtrn", str(rtrn), "--out", str(d),
                          "--no-progress", "--paper", "--set", f"lr={lr!r}", "--set",
                          f"sigma={sigma!r}"], failed, {"lr": lr, "sigma": sigma, "seed": seed},
                         log=lambda msg: log(f"[{config} sweep] {msg}"))
            point = {"lr": lr, "sigma": sigma, "lr_factor": lf, "sigma_factor": sf}
            if failed.exists():  # e.g. diverged: shown as failed in the figures
                error = json.loads(failed.read_text())["error"]
                point.update({k: None for k in METRICS}, failed=error)
            else:
                res = json.loads((d / "result.json").read_text())
                point.update({k: res.get(k) for k in METRICS})
            grid.append(point)
    rtrn_res = json.loads((rtrn / "result.json").read_text())
    data = {"config": cfg.name, "scale": scale, "model": cfg.model, "forget": cfg.forget,
            "seed": seed, "paper_setting": {"lr": base.lr, "sigma": base.sigma,
                                            "batch_size": base.batch_size},
            "rtrn": {k: rtrn_res.get(k) for k in ("retain_acc", "forget_acc", "mia")},
            "grid": grid}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plt = _plt()
    lrs = sorted({g["lr"] for g in grid})
    sigmas = sorted({g["sigma"] for g in grid})
    for number, key, label in ((7, "retain_acc", "D_r accuracy"), (8, "mia", "MIA")):
        name = f"figure{number}-{cfg.name}-{scale}"
        (out / f"{name}.json").write_text(json.dumps({"figure": number, "value": key, **data},
                                                     indent=1) + "\n")
        table = [[next(g[key] for g in grid if g["lr"] == lr and g["sigma"] == s)
                  for lr in lrs] for s in sigmas]
        values = [v for r in table for v in r if v is not None]
        fig, ax = plt.subplots(figsize=(5.2, 4))
        im = ax.imshow([[float("nan") if v is None else v for v in r] for r in table],
                       origin="lower", cmap="viridis", aspect="auto")
        ax.set_xticks(range(len(lrs)), [f"{v:.2g}" for v in lrs], fontsize=8)
        ax.set_yticks(range(len(sigmas)), [f"{v:.2g}" for v in sigmas], fontsize=8)
        ax.set_xlabel("lr")
        ax.set_ylabel("sigma")
        lo, hi = (min(values), max(values)) if values else (0.0, 0.0)
        for i, row in enumerate(table):
            for j, v in enumerate(row):  # dark text on the light (high) end of viridis
                if v is None:  # a failed grid point: a blank (NaN) cell marked as such
                    ax.text(j, i, "failed", ha="center", va="center", fontsize=7, color="k")
                    continue
                light = hi > lo and (v - lo) / (hi - lo) > 0.6
                ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=7,
                        color="k" if light else "w")
        ax.set_title(f"Figure {number}: {label}, JiT, {cfg.name} ({scale}); "
                     f"RTRN {data['rtrn'][key]:.1f}", fontsize=9)
        fig.colorbar(im, ax=ax)
        fig.tight_layout()
        fig.savefig(out / f"{name}.png", dpi=120)
        plt.close(fig)
    return data


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fig5", help="median runtime per method from a runner output folder")
    f.add_argument("--runs", type=Path, required=True)
    f.add_argument("--out", type=Path, required=True)
    s = sub.add_parser("sweep", help="JiT over lr x sigma (Figures 7 and 8)")
    s.add_argument("config")
    s.add_argument("--scale", default="cpu")
    s.add_argument("--runs", type=Path, required=True)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.cmd == "fig5":
        data = fig5(args.runs, args.out)
        print(json.dumps(data["median_runtime_s"], indent=1))
    else:
        data = sweep(args.config, args.scale, args.runs, args.out, seed=args.seed)
        best = min(data["grid"], key=lambda g: g["retrain_distance"])
        print(f"{len(data['grid'])} grid points; nearest to RTRN: lr {best['lr']:.3g} sigma "
              f"{best['sigma']:.3g} (distance {best['retrain_distance']:.1f}); median D_r "
              f"{statistics.median(g['retain_acc'] for g in data['grid']):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
