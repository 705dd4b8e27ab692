"""Choosing JiT's sigma, lr and batch size on a validation split (``jit-jax tune``).

The test set never informs the choice. The references (the original model, and per forget request
the retrained model RTRN) are trained on the training set minus a stratified hold-out, or read from
checkpoints trained that way (``jit-jax train --holdout``), and every metric of the search (D_r,
D_f, MIA, retrain distance) is computed with the hold-out standing in for the test set. A setting
scores its mean retrain distance over the forget requests and seeds; the chosen setting is the
lowest mean among those that did not diverge and, with ``max_dr_drop``, whose mean D_r accuracy
stayed within that many points of the untouched model's.

The steps are separate functions so that a caller can keep its own I/O::

    refs = references_in_process(load_dataset("digits"), "mlp", ["class:0"], seeds=[0])
    rows = run_grid(refs, sigmas=[0.5, 1, 2], lrs=[4e-3, 8e-3], batch_sizes=[32])
    best = choose(rows, max_dr_drop=5)
    print(set_line(best))        # --set sigma=1.0 --set lr=0.008 --set batch_size=32

``jit-jax tune`` (``jit_jax/cli.py``) and ``experiments/tune_jit.py`` are the two callers.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np
from flax import nnx

from jit_jax import recipes, unlearn
from jit_jax.data import Dataset, holdout, parse_forget
from jit_jax.data.splits import ForgetSplit
from jit_jax.metrics import UnlearnResult, evaluate_unlearning, retrain_distance
from jit_jax.models import ModelSpec
from jit_jax.unlearn.jit import JiTConfig

#: The default grid, as factors of JiT's default setting for the task (the authors' preset, then
#: ``recipes.JIT_DEFAULTS``): sigma x {1/2, 1, 2}, lr x {1/4, 1/2, 1, 2, 4} (2x steps: JiT's good
#: lr window is about one 2x step wide, docs/jit-tuning.md), the default batch size alone.
SIGMA_FACTORS = (0.5, 1.0, 2.0)
LR_FACTORS = (0.25, 0.5, 1.0, 2.0, 4.0)

#: JiT options the grid or the search itself sets; ``--set`` may not name them.
GRID_KEYS = {"sigma": "--sigma", "lr": "--lr", "batch_size": "--batch-size",
             "num_samples": "--num-samples", "seed": "--seeds"}

#: The columns averaged over the runs of one setting (and printed).
MEAN_KEYS = ("retrain_distance", "retain_acc", "forget_acc", "mia", "dr_drop", "runtime")

Log = Callable[[str], None]


def _print(msg: str) -> None:
    print(msg, flush=True)


class Reference(NamedTuple):
    """One forget request for one seed: the model JiT starts from and what it is scored against
    (the retrained model's and the untouched model's results on the validation split)."""

    seed: int
    split: ForgetSplit
    dataset: Dataset  # the validation view: its "test" set is the hold-out
    model: nnx.Module
    rtrn: UnlearnResult
    bsln: UnlearnResult
    spec: ModelSpec


# ------------------------------------------------------------------------------------------------
# checks
# ------------------------------------------------------------------------------------------------
def check_search(sigmas: Sequence[float] | None = None, lrs: Sequence[float] | None = None,
                 batch_sizes: Sequence[int] | None = None, *, num_samples: int = 25,
                 jit_options: dict | None = None, max_dr_drop: float | None = None,
                 holdout_fraction: float | None = None, seeds: Sequence[int] = (0,),
                 train_options: dict | None = None) -> None:
    """Raise ValueError, naming the value and what is accepted, for anything the search would
    reject only after training its references. ``None`` grid axes are not checked (defaults)."""
    jit_options = dict(jit_options or {})
    taken = sorted(k for k in jit_options if k in GRID_KEYS)
    if taken:
        raise ValueError(f"JiT option(s) {taken} are set by the search; use "
                         f"{', '.join(GRID_KEYS[k] for k in taken)} instead of --set")
    for name, values in (("sigma", sigmas), ("lr", lrs), ("batch_size", batch_sizes)):
        if values is not None and len(values) == 0:
            raise ValueError(f"empty {GRID_KEYS[name]} grid; accepted: one or more values")
    for b in batch_sizes or []:
        try:
            whole = not isinstance(b, bool) and int(b) == b
        except (TypeError, ValueError):
            whole = False
        if not whole:
            raise ValueError(f"--batch-size {b!r}; accepted: an integer >= 1")
    # JiTConfig checks every value (and the --set names) with its own messages.
    base = JiTConfig(num_samples=num_samples).replace(**jit_options)
    for s in sigmas or [base.sigma]:
        base.replace(sigma=float(s))
    for lr in lrs or [base.lr]:
        base.replace(lr=float(lr))
    for b in batch_sizes or [base.batch_size]:
        base.replace(batch_size=int(b))
    if max_dr_drop is not None and not max_dr_drop >= 0:
        raise ValueError(f"--max-dr-drop {max_dr_drop}: accepted: a number >= 0")
    if holdout_fraction is not None and not 0.0 < holdout_fraction < 1.0:
        raise ValueError(f"--holdout {holdout_fraction}: accepted: a fraction in (0, 1)")
    if len(seeds) == 0:
        raise ValueError("empty --seeds; accepted: one or more integers")
    if train_options and "seed" in train_options:
        raise ValueError("--train-set seed=...: the seeds are set by --seeds")


# ------------------------------------------------------------------------------------------------
# references
# ------------------------------------------------------------------------------------------------
def _pair(model, val, split, rmodel, prep) -> tuple[UnlearnResult, UnlearnResult]:
    rres = evaluate_unlearning(rmodel, val, split, method="rtrn", preprocess=prep)
    bres = evaluate_unlearning(model, val, split, method="bsln", preprocess=prep)
    return rres, bres


def references_in_process(dataset: Dataset, model: str, forget: Sequence[str],
                          seeds: Sequence[int] = (0,), *, holdout_fraction: float = 0.1,
                          model_options: dict | None = None, train_options: dict | None = None,
                          log: Log = _print) -> list[Reference]:
    """Train, per seed, the original on the fit part of a stratified hold-out of ``dataset``'s
    training set and, per forget request, RTRN on its retain part (the dataset's recipe, with
    ``train_options`` overriding it). Every reference scores on the hold-out."""
    from jit_jax.demo import train_original

    _, val = holdout(dataset, holdout_fraction, seed=0)
    spec = ModelSpec(model, val.num_classes, val.image_shape, dict(model_options or {}))
    train_options = dict(train_options or {})
    if "seed" in train_options:
        raise ValueError("--train-set seed=...: the seeds are set by --seeds")
    recipe = recipes.train_recipe(val.name, spec.name).replace(**train_options)
    for f in forget:  # fail on a bad request before any training
        parse_forget(val, f, seed=seeds[0] if seeds else 0)
    prep = recipes.preprocess_fn(val)
    out = []
    for seed in seeds:
        cfg = recipe.replace(seed=seed)
        original, _ = train_original(val, spec, cfg)
        for f in forget:
            split = parse_forget(val, f, seed=seed)
            req = unlearn.Request(original, val, split, spec, cfg, seed=seed, preprocess=prep)
            r = unlearn.run("rtrn", req)
            rres, bres = _pair(original, val, split, r.model, prep)
            log(f"seed {seed} {split.description}: BSLN test {bres.test_acc:.1f} D_r "
                f"{bres.retain_acc:.1f} D_f {bres.forget_acc:.1f} MIA {bres.mia:.1f} | RTRN D_r "
                f"{rres.retain_acc:.1f} D_f {rres.forget_acc:.1f} MIA {rres.mia:.1f}")
            out.append(Reference(seed, split, val, original, rres, bres, spec))
    return out


def references_from_models(model: nnx.Module, rtrn_model: nnx.Module, val: Dataset,
                           spec: ModelSpec, forget: Sequence[str], seeds: Sequence[int] = (0,),
                           *, log: Log = _print) -> list[Reference]:
    """References from models trained elsewhere (``jit-jax train --holdout``, ``jit-jax unlearn
    --method rtrn``): ``val`` is the validation view of their dataset. The forget requests are
    drawn with seed 0; ``seeds`` only seed JiT."""
    prep = recipes.preprocess_fn(val)
    out = []
    for f in forget:
        split = parse_forget(val, f, seed=0)
        rres, bres = _pair(model, val, split, rtrn_model, prep)
        log(f"{split.description}: BSLN D_r {bres.retain_acc:.1f} D_f {bres.forget_acc:.1f} "
            f"MIA {bres.mia:.1f} | RTRN D_r {rres.retain_acc:.1f} D_f {rres.forget_acc:.1f} "
            f"MIA {rres.mia:.1f}")
        for seed in seeds:
            out.append(Reference(seed, split, val, model, rres, bres, spec))
    return out


def references_info(refs: Sequence[Reference]) -> list[dict]:
    """The JSON form of the references (seed, request, RTRN and BSLN results)."""
    return [{"seed": r.seed, "forget": r.split.description, "rtrn": r.rtrn.to_dict(),
             "bsln": r.bsln.to_dict()} for r in refs]


# ------------------------------------------------------------------------------------------------
# the grid
# ------------------------------------------------------------------------------------------------
def _request(ref: Reference) -> unlearn.Request:
    return unlearn.Request(ref.model, ref.dataset, ref.split, ref.spec, None, seed=ref.seed,
                           preprocess=recipes.preprocess_fn(ref.dataset))


def default_grid(refs: Sequence[Reference], jit_options: dict | None = None) -> dict[str, list]:
    """``{"sigma": [...], "lr": [...], "batch_size": [...]}``: JiT's default setting for the
    references' task and model (``unlearn.default_jit_config`` with ``jit_options``) scaled by
    :data:`SIGMA_FACTORS` and :data:`LR_FACTORS`; the default batch size alone."""
    if not refs:
        raise ValueError("no references: give at least one --forget request and seed")
    cfgs = {(c.sigma, c.lr, c.batch_size) for c in
            (unlearn.default_jit_config(_request(r)).replace(**(jit_options or {}))
             for r in refs)}
    if len(cfgs) > 1:
        raise ValueError(f"the forget requests have different JiT defaults {sorted(cfgs)}; give "
                         f"--sigma, --lr and --batch-size")
    (sigma, lr, b), = cfgs
    return {"sigma": [sigma * f for f in SIGMA_FACTORS], "lr": [lr * f for f in LR_FACTORS],
            "batch_size": [b]}


def evaluate_setting(refs: Sequence[Reference], sigma: float, lr: float, batch_size: int, *,
                     num_samples: int = 25, jit_options: dict | None = None,
                     log: Log = _print) -> dict:
    """Run JiT with one setting on every reference; the row of the grid (means over the runs,
    worst D_r drop and D_f, and the runs), or ``{..., "diverged": True}`` when a run diverged."""
    runs = []
    for ref in refs:
        try:
            out = unlearn.run("jit", _request(ref), sigma=sigma, lr=lr, batch_size=batch_size,
                              num_samples=num_samples, **(jit_options or {}))
            r = evaluate_unlearning(out.model, ref.dataset, ref.split, method="jit",
                                    runtime=out.runtime,
                                    preprocess=recipes.preprocess_fn(ref.dataset))
        except FloatingPointError as e:
            log(f"sigma {sigma} lr {lr} B {batch_size}: diverged ({e})")
            return {"sigma": sigma, "lr": lr, "batch_size": batch_size, "diverged": True}
        runs.append({"seed": ref.seed, "forget": ref.split.description,
                     "retain_acc": r.retain_acc, "forget_acc": r.forget_acc, "mia": r.mia,
                     "retrain_distance": retrain_distance(r, ref.rtrn),
                     "dr_drop": ref.bsln.retain_acc - r.retain_acc, "runtime": out.runtime})
    row = {"sigma": sigma, "lr": lr, "batch_size": batch_size,
           **{k: float(np.mean([r[k] for r in runs])) for k in MEAN_KEYS},
           "max_dr_drop": float(max(r["dr_drop"] for r in runs)),
           "max_forget_acc": float(max(r["forget_acc"] for r in runs)), "runs": runs}
    log(f"sigma {sigma:<5} lr {lr:<8.2e} B {batch_size:<4} dist {row['retrain_distance']:6.2f}  "
        f"D_r {row['retain_acc']:5.1f} (drop {row['dr_drop']:4.1f}, max {row['max_dr_drop']:4.1f})"
        f"  D_f {row['forget_acc']:5.1f} (max {row['max_forget_acc']:5.1f})  "
        f"MIA {row['mia']:5.1f}")
    return row


def run_grid(refs: Sequence[Reference], sigmas: Sequence[float], lrs: Sequence[float],
             batch_sizes: Sequence[int], *, num_samples: int = 25,
             jit_options: dict | None = None, log: Log = _print) -> list[dict]:
    """One row per (sigma, lr, batch size), sigma slowest, batch size fastest."""
    return [evaluate_setting(refs, s, lr, b, num_samples=num_samples, jit_options=jit_options,
                             log=log)
            for s, lr, b in itertools.product(sigmas, lrs, batch_sizes)]


def eligible(rows: Sequence[dict], max_dr_drop: float | None = None) -> list[dict]:
    """The rows a choice may fall on: not diverged and, with ``max_dr_drop``, a mean D_r drop of
    at most that many points."""
    ok = [r for r in rows if not r.get("diverged")]
    if max_dr_drop is not None:
        ok = [r for r in ok if r["dr_drop"] <= max_dr_drop]
    return ok


def choose(rows: Sequence[dict], max_dr_drop: float | None = None) -> dict | None:
    """The eligible row with the lowest mean retrain distance (the first of a tie), or None."""
    ok = eligible(rows, max_dr_drop)
    return min(ok, key=lambda r: r["retrain_distance"]) if ok else None


def set_line(best: dict) -> str:
    """The ``--set`` options of a chosen row, for ``jit-jax unlearn``."""
    return " ".join(f"--set {k}={best[k]!r}" for k in ("sigma", "lr", "batch_size"))


@dataclasses.dataclass
class Search:
    """The whole search: references, grid rows and the choice (what ``grid.json`` holds)."""

    references: list[Reference]
    rows: list[dict]
    best: dict | None
    max_dr_drop: float | None = None
    #: the grid's axes as searched: {"sigma": [...], "lr": [...], "batch_size": [...]}
    axes: dict[str, list] = dataclasses.field(default_factory=dict)

    def to_dict(self, argv: Sequence[str] = ()) -> dict:
        return {"argv": list(argv), "references": references_info(self.references),
                "max_dr_drop": self.max_dr_drop, "grid": self.rows, "best": self.best}


def search(refs: Sequence[Reference], sigmas: Sequence[float] | None = None,
           lrs: Sequence[float] | None = None, batch_sizes: Sequence[int] | None = None, *,
           num_samples: int = 25, jit_options: dict | None = None,
           max_dr_drop: float | None = None, log: Log = _print) -> Search:
    """Run the grid (axes left ``None`` take :func:`default_grid`'s values) and choose."""
    check_search(sigmas, lrs, batch_sizes, num_samples=num_samples, jit_options=jit_options,
                 max_dr_drop=max_dr_drop)
    if sigmas is None or lrs is None or batch_sizes is None:
        d = default_grid(refs, jit_options)
        sigmas = d["sigma"] if sigmas is None else sigmas
        lrs = d["lr"] if lrs is None else lrs
        batch_sizes = d["batch_size"] if batch_sizes is None else batch_sizes
    axes = {"sigma": [float(s) for s in sigmas], "lr": [float(x) for x in lrs],
            "batch_size": [int(b) for b in batch_sizes]}
    rows = run_grid(refs, axes["sigma"], axes["lr"], axes["batch_size"], num_samples=num_samples,
                    jit_options=jit_options, log=log)
    return Search(list(refs), rows, choose(rows, max_dr_drop), max_dr_drop, axes)


# ------------------------------------------------------------------------------------------------
# the heat map
# ------------------------------------------------------------------------------------------------
def plot_grid(rows: Sequence[dict], best: dict | None = None, max_dr_drop: float | None = None):
    """A heat map of the mean retrain distance, sigma (rows) x lr (columns), one panel per batch
    size, on one colour scale. Diverged cells are grey and marked "diverged", cells excluded by
    ``max_dr_drop`` hatched, the chosen cell outlined in red. Returns a matplotlib Figure that
    needs no pyplot (``fig.savefig`` renders PNG with Agg)."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    sigmas = sorted({r["sigma"] for r in rows})
    lrs = sorted({r["lr"] for r in rows})
    bss = sorted({r["batch_size"] for r in rows})
    done = [r["retrain_distance"] for r in rows if not r.get("diverged")]
    vmin, vmax = (min(done), max(done)) if done else (0.0, 1.0)
    if vmax <= vmin:
        vmax = vmin + 1.0
    ok = {id(r) for r in eligible(rows, max_dr_drop)}
    fig = Figure(figsize=(1.2 + 1.3 * len(lrs) * len(bss), 1.4 + 0.75 * len(sigmas)),
                 layout="constrained")
    axes = fig.subplots(1, len(bss), squeeze=False)[0]
    image = None
    for ax, b in zip(axes, bss, strict=True):
        grid = np.full((len(sigmas), len(lrs)), np.nan)
        for r in rows:
            if r["batch_size"] != b:
                continue
            i, j = sigmas.index(r["sigma"]), lrs.index(r["lr"])
            if r.get("diverged"):
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, facecolor="0.8", zorder=1))
                ax.text(j, i, "diverged", ha="center", va="center", fontsize=8, color="0.3",
                        zorder=3)
                continue
            grid[i, j] = r["retrain_distance"]
            ax.text(j, i, f"{r['retrain_distance']:.1f}", ha="center", va="center", fontsize=8,
                    color="white" if r["retrain_distance"] < (vmin + vmax) / 2 else "black",
                    zorder=3)
            if id(r) not in ok:
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, hatch="//",
                                       edgecolor="0.5", lw=0, zorder=2))
        image = ax.imshow(grid, cmap="viridis", vmin=vmin, vmax=vmax, origin="lower",
                          aspect="auto", zorder=0)
        if best is not None and best["batch_size"] == b:
            i, j = sigmas.index(best["sigma"]), lrs.index(best["lr"])
            ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", lw=3,
                                   zorder=4))
        ax.set_xticks(range(len(lrs)), [f"{v:g}" for v in lrs])
        ax.set_yticks(range(len(sigmas)), [f"{v:g}" for v in sigmas])
        ax.set_xlim(-0.5, len(lrs) - 0.5)
        ax.set_ylim(-0.5, len(sigmas) - 0.5)
        ax.set_xlabel("lr")
        ax.set_ylabel("sigma")
        ax.set_title(f"batch size {b}", fontsize=10)
    fig.colorbar(image, ax=list(axes), label="mean retrain distance")
    note = "red: chosen" if best is not None else "no setting chosen"
    if max_dr_drop is not None:
        note += f"; hatched: mean D_r drop > {max_dr_drop:g}"
    fig.suptitle(f"JiT on the validation split ({note})", fontsize=10)
    return fig
