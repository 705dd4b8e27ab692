"""Choosing ``--method auto``'s constants on validation tasks, then testing them (issue 12).

Three steps, each a subcommand:

``trace``: for each validation task (dataset, model, forget request, seed) train the original and
RTRN on the fit part of a stratified hold-out (``jit_jax.tune.references_in_process``: the
hold-out stands in for the test set), then run auto's loop for ``--passes`` passes for each
(``--scales`` x ``--steps``) with no stopping, and record after every pass the validation metrics
(D_r, D_f, MIA, the retrain distance to the same seed's RTRN) and the statistics the stopping rule
can watch (``jit_jax.unlearn.auto.STOP_STATS``; ``--probes`` adds the candidate damage statistics
of :func:`probe_stats_fn`; ``--updates`` moves only some parameters, :func:`update_labels`;
``--objectives`` runs other zero-shot objectives in the same loop and steps)::

    python experiments/auto_rules.py trace --dataset digits --model mlp \\
        --forget class:0 class:5 random:100 --seeds 0 1 --out runs/auto/trace-digits.json

``choose``: from one or more traces, every candidate rule (norm, scale, step, lip ratio, gap peak
on or off, pass budget, the damage test's ``--rises`` and ``--retries``) is replayed, each run
stopping where ``auto.should_stop`` says, keeping the pass before one that ``auto.has_risen``
undoes (a retry after an undone first pass is replayed from the trace at the smaller step), or at
the budget; the rule with the lowest mean retrain distance among those whose mean D_r drop is at
most ``--max-dr-drop`` wins (with ``--balance-models``: means per model family, averaged)::

    python experiments/auto_rules.py choose runs/auto/trace-digits.json

``test``: ``--method auto`` with the frozen defaults (``AUTO_DEFAULTS``, or ``--set``) on test tasks,
scored on the real test split against the same seed's RTRN trained on the full training set::

    python experiments/auto_rules.py test --dataset digits --model mlp --forget class:3 \\
        --seeds 3 4 5 --rule default "lodo:step=0.004,lip_ratio=0.8" --out runs/auto/test.json

Datasets: anything ``load_dataset`` takes, plus ``identities`` (``jit_jax.data.synthetic``, the
40-class 64x64 generated set) which is written to a temporary ``.npz``. Recipes: the dataset's
(``recipes.train_recipe`` adapted to its size, as ``jit-jax train`` does).
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import os
import tempfile
import time

import numpy as np

from jit_jax import recipes, unlearn
from jit_jax.data import load_dataset, parse_forget
from jit_jax.functional import functionalize, rebuild
from jit_jax.metrics import evaluate_unlearning, retrain_distance
from jit_jax.models import option_types as model_option_types
from jit_jax.options import parse_options
from jit_jax.train import TrainConfig, predict
from jit_jax.unlearn import auto
from jit_jax.unlearn.jit import jit_unlearn


def dataset(spec: str, seed: int = 0, options=None):
    """A dataset by spec (``identities``: the generated set); ``options``: KEY=VALUE strings
    for the loader, parsed as ``jit-jax --data-opt`` parses them (e.g. ``target=coarse`` for
    CIFAR-20 labels of a CIFAR-100 npz)."""
    opts = parse_options(options, "dataset")
    if spec == "identities":
        from jit_jax.data.synthetic import identities

        path = os.path.join(tempfile.gettempdir(), f"jit-jax-identities-{seed}.npz")
        if not os.path.exists(path):
            np.savez(path, **identities(seed=seed))
        ds = load_dataset(f"npz:{path}", **opts)
        return dataclasses.replace(ds, name="identities") if dataclasses.is_dataclass(ds) else ds
    return load_dataset(spec, **opts)


def recipe_options(ds) -> dict:
    cfg = recipes.train_recipe(ds.name, "*", num_train=len(ds.x_train))
    return {k: v for k, v in cfg.to_dict().items() if k != "seed"}


def _result_row(r, ref) -> dict:
    return {"retain_acc": r.retain_acc, "forget_acc": r.forget_acc, "mia": r.mia,
            "retrain_distance": retrain_distance(r, ref.rtrn),
            "dr_drop": ref.bsln.retain_acc - r.retain_acc}


def shuffled_patches(x: np.ndarray, grid: int = 4, seed: int = 0) -> np.ndarray:
    """Each image cut into ``grid`` x ``grid`` patches put back in a random order (one permutation
    per image, seeded): the forget set's local textures and colours without its objects' shapes.
    Images whose sides ``grid`` does not divide are cropped to a multiple first."""
    n, h, w = x.shape[:3]
    ph, pw = h // grid, w // grid
    x = x[:, :ph * grid, :pw * grid]
    tiles = x.reshape(n, grid, ph, grid, pw, *x.shape[3:]).swapaxes(2, 3)
    tiles = tiles.reshape(n, grid * grid, ph, pw, *x.shape[3:])
    rng = np.random.default_rng(seed)
    order = np.stack([rng.permutation(grid * grid) for _ in range(n)])
    tiles = np.take_along_axis(tiles, order.reshape(n, -1, *([1] * (tiles.ndim - 2))), 1)
    tiles = tiles.reshape(n, grid, grid, ph, pw, *x.shape[3:]).swapaxes(2, 3)
    return tiles.reshape(n, grid * ph, grid * pw, *x.shape[3:])


def probe_stats_fn(fn, x_forget: np.ndarray, labels: np.ndarray, seed: int):
    """Candidate damage statistics that read only the model and the forget set (``--probes``):
    how far the current model's outputs have moved from the original's
    - ``cond_kl``: on the forget samples, the KL divergence (original || now) of the softmax over
      the classes other than the sample's original prediction (what a forgotten sample is taken
      for instead: retraining leaves that to the rest of the model);
    - ``shuf_kl`` / ``shuf_flip``: on the forget samples with shuffled patches
      (:func:`shuffled_patches`), the KL divergence of the whole softmax and the share of changed
      predictions.

    ``fn``: the original model as a :class:`~jit_jax.functional.Functional`; ``stats(params)``
    scores the model ``rebuild(fn, params)`` through ``train.predict``."""
    import jax
    import jax.numpy as jnp

    shuf = shuffled_patches(x_forget, seed=seed) if x_forget.ndim == 4 else x_forget[
        np.random.default_rng(seed).permutation(len(x_forget))]

    def cond(lp, excl):  # log-softmax renormalised over the classes not in ``excl``
        lp = jnp.where(excl, -jnp.inf, lp)
        return lp - jax.nn.logsumexp(lp, -1, keepdims=True)

    def kl(lp0, lp1):
        return jnp.sum(jnp.where(jnp.isfinite(lp0), jnp.exp(lp0) * (lp0 - lp1), 0.0), -1)

    def all_logp(params, x):
        return jax.nn.log_softmax(jnp.asarray(predict(rebuild(fn, params), x), jnp.float32), -1)

    lp0_f, lp0_s = all_logp(fn.params, x_forget), all_logp(fn.params, shuf)
    own = jax.nn.one_hot(labels, lp0_f.shape[-1], dtype=bool)

    def stats(params) -> dict:
        lp_f, lp_s = all_logp(params, x_forget), all_logp(params, shuf)
        return {"cond_kl": float(jnp.mean(kl(cond(lp0_f, own), cond(lp_f, own)))),
                "shuf_kl": float(jnp.mean(kl(lp0_s, lp_s))),
                "shuf_flip": float(100 * jnp.mean(jnp.argmax(lp0_s, -1) != jnp.argmax(lp_s, -1)))}

    return stats


#: ``--updates``: which parameters auto's loop moves in a trace (a diagnostic of BatchNorm models)
UPDATES = ("all", "no_norm", "norm_only")


def update_labels(model, params, which: str):
    """Per parameter leaf, "move" or "freeze": ``no_norm`` freezes every BatchNorm scale and bias,
    ``norm_only`` everything else."""
    import jax
    from flax import nnx

    norm_paths = [tuple(str(k) for k in path) for path, m in nnx.iter_graph(model)
                  if isinstance(m, nnx.BatchNorm)]

    def label(path, _):
        keys = tuple(str(getattr(k, "key", getattr(k, "idx", k))) for k in path)
        in_norm = any(keys[:len(q)] == q for q in norm_paths)
        return "move" if which == "all" or (in_norm == (which == "norm_only")) else "freeze"

    return jax.tree_util.tree_map_with_path(label, params)


def _write_json(path: str, obj) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
    os.replace(tmp, path)


def _references(args):
    """The validation references of a trace (originals and RTRNs on the fit part of a hold-out
    split, ``tune.references_in_process``) and the model and training options they used."""
    from jit_jax import tune

    ds = dataset(args.dataset, options=getattr(args, "data_set", None))
    model_options = parse_options(args.model_set, "model", model_option_types(args.model))
    train_options = {**recipe_options(ds), **parse_options(args.train_set, "training",
                                                           TrainConfig)}
    refs = tune.references_in_process(ds, args.model, args.forget, seeds=args.seeds,
                                      model_options=model_options, train_options=train_options)
    return refs, model_options, train_options


def trace(args) -> None:
    from jit_jax import tune

    refs, model_options, train_options = _references(args)
    out = {"dataset": args.dataset, "model": args.model, "model_options": model_options,
           "train_options": train_options, "forget": args.forget,
           "seeds": args.seeds, "passes": args.passes, "k": args.k,
           "references": tune.references_info(refs), "runs": []}
    for ref in refs:
        prep = recipes.preprocess_fn(ref.dataset)
        x = prep(ref.dataset.x_train[ref.split.forget_idx])
        fn = functionalize(ref.model)
        ref_logits = predict(ref.model, x)
        labels = np.argmax(ref_logits, -1)
        for norm, scale, step, which, objective in itertools.product(
                args.norms, args.scales, args.steps, args.updates, args.objectives):
            cfg = dataclasses.replace(auto.AUTO_DEFAULTS, k=args.k, scale=scale, step=step,
                                      norm=norm, max_passes=args.passes, seed=ref.seed)
            sigma, chosen = auto.chosen_settings(x, cfg, 0.5)
            stats = auto.forget_stats_fn(fn.apply_fn, x, sigma, labels, cfg.num_checks, cfg.seed)
            if args.probes:
                probes = probe_stats_fn(fn, x, labels, cfg.seed)
                stats = (lambda params, forget=stats, probes=probes:
                         {**forget(params), **probes(params)})
            rows = [{"pass": 0, **stats(fn.params), **_result_row(ref.bsln, ref)}]

            def record(params, p, stats=stats, rows=rows, ref=ref, prep=prep, fn=fn):
                r = evaluate_unlearning(rebuild(fn, params), ref.dataset, ref.split,
                                        method="auto", preprocess=prep)
                rows.append({"pass": p + 1, **stats(params), **_result_row(r, ref)})
                return not np.isfinite(rows[-1]["lip"]), {}

            t0 = time.time()
            try:
                tx = auto.relative_steps(step, norm)
                if which != "all":
                    import optax

                    tx = optax.multi_transform({"move": tx, "freeze": optax.set_to_zero()},
                                               update_labels(ref.model, fn.params, which))
                vg, aux = None, {"sigma": sigma}  # JiT's smoothing, as auto runs it
                if objective != "jit":  # another zero-shot objective in auto's loop and steps
                    obj = unlearn.objectives.OBJECTIVES[objective]
                    given = {"labels": labels, "ref_logits": ref_logits}
                    vg = unlearn.objectives.value_and_grad(obj)
                    aux = {k: given[k] for k in obj.needs}
                jit_unlearn(ref.model, x, auto.jit_config(cfg), optimizer=tx,
                            value_and_grad=vg, aux=aux, stop=record)
                failed = None
            except FloatingPointError as e:
                failed = str(e)
            best = min(rows, key=lambda r: r["retrain_distance"])
            print(f"seed {ref.seed} {ref.split.description} {norm} scale {scale} step {step} "
                  f"updates {which} objective {objective}: "
                  f"best pass "
                  f"{best['pass']} dist {best['retrain_distance']:.1f} (D_r drop "
                  f"{best['dr_drop']:.1f}, D_f {best['forget_acc']:.1f}); pass 0 dist "
                  f"{rows[0]['retrain_distance']:.1f}; {time.time() - t0:.0f} s"
                  + (f"; FAILED {failed}" if failed else ""), flush=True)
            out["runs"].append({"seed": ref.seed, "forget": ref.split.description,
                                "norm": norm, "scale": scale, "step": step, "updates": which,
                                "objective": objective,
                                "sigma_median":
                                chosen["sigma_median"], "failed": failed, "passes": rows})
    _write_json(args.out, out)
    print("wrote", args.out)


def classtrace(args) -> None:
    """Rule 4 (class mode) run with no early stop for ``--passes`` passes per (start step, growth,
    min move), recording after every pass what the rule watches (the forget set's accuracy and
    mean confidence, the step used) and the validation metrics."""
    from jit_jax import tune

    refs, model_options, train_options = _references(args)
    out = {"kind": "class", "dataset": args.dataset, "model": args.model,
           "model_options": model_options, "train_options": train_options,
           "forget": args.forget, "seeds": args.seeds, "passes": args.passes,
           "references": tune.references_info(refs), "runs": []}
    for ref in refs:
        prep = recipes.preprocess_fn(ref.dataset)
        x = prep(ref.dataset.x_train[ref.split.forget_idx])
        labels = ref.dataset.train_targets[ref.split.forget_idx].astype(np.int32)
        ref_logits = predict(ref.model, x)
        fn = functionalize(ref.model)
        row0 = {"pass": 0, **auto.forget_fit_fn(fn.apply_fn, x, labels)(fn.params), "step": 0.0,
                "share": auto.label_share(labels), **_result_row(ref.bsln, ref)}
        mode = args.mode
        if mode == "auto":  # as --method auto decides: class mode for a class-like request
            mode = "class" if auto.class_mode(labels, auto.AUTO_DEFAULTS) else "random"
        runs = [(*r, None, None) for r in itertools.product(
            args.starts, args.grows, args.min_moves, args.holds if mode == "random" else [0],
            args.searches) if not (r[4] and mode == "random" and not args.flip_search)]
        if 1 in args.searches and mode == "random" and not args.flip_search:
            # random_search "stop": one run per searched criterion
            runs += [(*r, None) for r in itertools.product(
                args.starts, args.grows, args.min_moves, [0], [1], args.search_err_rises)]
        # a searched run once per bisection count (the search's resolution)
        runs = [(*r[:6], refine, anchor) for r in runs
                for refine in (args.refines if r[4] else [None])
                for anchor in (args.anchors if r[4] else [None])]
        # rule 4's growth variants (class mode only; rule 5 ignores class_growth)
        runs = [(*r, growth) for r in runs
                for growth in (args.growths if mode == "class" else [None])]
        for start, grow, move, hold, search, rise, refine, anchor, growth in runs:
            cfg = dataclasses.replace(
                auto.AUTO_DEFAULTS, class_objective=args.objective, class_step=start,
                class_grow=grow, random_grow=grow, class_min_move=move,
                class_max_step=max(start, args.max_step),
                class_target=-1.0, class_passes=args.passes, seed=ref.seed,
                random_drop=0.0, random_conf_drop=0.0, random_err_rise=0.0,
                random_passes=args.passes, random_hold=bool(hold), class_search=bool(search),
                random_search=("stop" if rise is not None else "flip") if search else "")
            if refine is not None:
                cfg = dataclasses.replace(cfg, class_search_refine=refine)
            if anchor is not None:
                cfg = dataclasses.replace(cfg, class_search_anchor=anchor)
            if growth is not None:
                cfg = dataclasses.replace(cfg, class_growth=growth)
            if rise is not None:  # random mode: the search looks for the stop, then stops
                cfg = dataclasses.replace(cfg, random_err_rise=rise)
            rows = [dict(row0)]

            def on_pass(params, p, stop, rows=rows, ref=ref, prep=prep, fn=fn):
                r = evaluate_unlearning(rebuild(fn, params), ref.dataset, ref.split,
                                        method="auto", preprocess=prep)
                rows.append({"pass": p + 1, **stop.previous, "step": stop.steps[-1],
                             **_result_row(r, ref)})

            t0 = time.time()
            failed, trials = None, []
            try:
                _, _, stop = auto.run_class_mode(ref.model, x, labels, cfg,
                                                 ref_logits=ref_logits, on_pass=on_pass,
                                                 mode=mode)
                trials = stop.trials
            except FloatingPointError as e:
                failed = str(e)
            best = min(rows, key=lambda r: r["retrain_distance"])
            print(f"seed {ref.seed} {ref.split.description} start {start:g} grow {grow:g} "
                  f"move {move:g} hold {hold} search {search}"
                  + (f" err rise {rise:g}" if rise is not None else "")
                  + (f" refine {refine}" if refine is not None else "")
                  + (f" anchor {anchor:g}" if anchor else "")
                  + (f" growth {growth}" if growth is not None else "") + ": " + " | ".join(
                      f"{r['pass']}:{r['forget_acc']:.0f}/{r['dr_drop']:.1f}/"
                      f"{r['retrain_distance']:.0f}@{r['step']:.2g}" for r in rows)
                  + f"; best pass {best['pass']}; {time.time() - t0:.0f} s"
                  + (f"; FAILED {failed}" if failed else ""), flush=True)
            out["runs"].append({"seed": ref.seed, "forget": ref.split.description,
                                "start": start, "grow": grow, "min_move": move,
                                "hold": bool(hold), "search": cfg.random_search
                                if mode == "random" else bool(search), "err_rise": rise,
                                "refine": refine, "anchor": anchor, "growth": growth,
                                "trials": trials,
                                "mode": mode,
                                "objective": args.objective, "failed": failed, "passes": rows})
            _write_json(args.out, out)  # after every run: a long trace cut short keeps its runs
    print("wrote", args.out)


def class_stop_pass(rows: list[dict], target: float, budget: int,
                    conf_target: float = 0.0) -> dict:
    """Rule 4's stop replayed on a class trace: the first pass whose forget accuracy (what the
    rule measures) is at most ``target`` or whose mean confidence in the forget labels is at most
    ``conf_target`` (0: not used), else the last pass within ``budget``."""
    if rows[0]["acc"] <= target:  # already at the target: auto returns the model untouched
        return rows[0]
    for r in rows[1:budget + 1]:
        if r["acc"] <= target or r["conf"] <= conf_target:
            return r
    return rows[min(budget, len(rows) - 1)]


def _families_text(families: dict, mia: bool = True, spread: bool = False) -> str:
    """One line: each family's mean distance, D_r drop, D_f (MIA when replayed and ``mia``),
    passes and (with ``spread``) the worst / best spread over start steps."""
    return "; ".join(f"{k}: {v['distance']:.1f} (drop {v['dr_drop']:.1f}, D_f "
                     f"{v['forget_acc']:.1f}"
                     + (f", MIA {v['mia']:.1f}" if mia and "mia" in v else "")
                     + f", passes {v['passes']:.1f}"
                     + (f", spread {v['spread']:.2f}" if spread else "")
                     + (f", in the window {v['window_spread']:.2f}" if "window_spread" in v
                        else "") + ")"
                     for k, v in families.items())


def _pass_means(picked: list[dict]) -> dict:
    """Means over replayed passes: distance, D_r drop, D_f, MIA and the pass index."""
    return {k: float(np.mean([p[f] for p in picked])) for k, f in (
        ("distance", "retrain_distance"), ("dr_drop", "dr_drop"),
        ("forget_acc", "forget_acc"), ("mia", "mia"), ("passes", "pass"))}


def _worst_start(scores: list[dict], floor: float) -> dict:
    """A family scored at its worst start step: that start's means (:func:`_pass_means`), the
    largest D_r drop over the starts, and the spread worst / best (best floored at ``floor``)."""
    worst = max(scores, key=lambda v: v["distance"])
    best = min(v["distance"] for v in scores)
    return {**worst, "dr_drop": max(v["dr_drop"] for v in scores),
            "spread": worst["distance"] / max(best, floor)}


def _families(paths, searched: bool = False) -> dict[str, list]:
    """The runs of trace files by model family (``DATASET/MODEL``); runs made with a step search
    (``search`` set) only with ``searched``: they are not traces of the rules' own loop."""
    fams: dict[str, list] = {}
    for p in paths:
        with open(p) as f:
            t = json.load(f)
        fams.setdefault(f"{t['dataset']}/{t['model']}", []).extend(
            r for r in t["runs"] if searched or not r.get("search"))
    return fams


def _start_means(runs: list[dict], picked) -> dict[float, dict]:
    """Each traced start step (in trace order) with the means of ``picked(run)`` over its runs
    (:func:`_pass_means`)."""
    by_start: dict[float, list] = {}
    for r in runs:
        by_start.setdefault(r["start"], []).append(picked(r))
    return {s: _pass_means(v) for s, v in by_start.items()}


def _anchor(r: dict) -> float:
    """The step search's lattice anchor of a searched run (traces from before ``--anchors``
    record none: their lattice ran through the start, anchor 0)."""
    return r.get("anchor") or 0.0


def _default_bisections(r: dict) -> bool:
    """A searched run made at :data:`AUTO_DEFAULTS`' bisection count (traces from before
    ``--refines`` record none: they searched with the default's)."""
    return r.get("refine") in (None, auto.AUTO_DEFAULTS.class_search_refine)


def _default_search(r: dict, anchor: float | None = None) -> bool:
    """A searched run made with :data:`AUTO_DEFAULTS`' step search: its bisection count and its
    anchor (``anchor``, else the default's)."""
    if anchor is None:
        anchor = auto.AUTO_DEFAULTS.class_search_anchor
    return _default_bisections(r) and _anchor(r) == anchor


def classchoose(args) -> dict:
    """Every (start, grow, min move) traced x target x pass budget replayed on the class traces;
    the rule with the lowest mean over model families of their mean retrain distance among those
    whose every family keeps its mean D_r drop within ``--max-dr-drop`` wins (ties: fewer passes,
    no confidence target, the higher accuracy target).

    With ``--robust`` the start step is not part of the rule (as in :func:`randchoose`): each
    family is scored at its worst start among ``--robust-starts`` (default: every start traced;
    every family must have each), with the largest D_r drop over them. Searched runs (``search``
    set) are left out."""
    fams = _families(args.traces)
    robust = getattr(args, "robust", False)
    keys = sorted({(r["start"], r["grow"], r["min_move"]) for runs in fams.values()
                   for r in runs})
    starts = sorted(getattr(args, "robust_starts", None) or {k[0] for k in keys})
    groups = sorted({k[1:] for k in keys}) if robust else keys

    def family_score(rs, target, budget, conf) -> dict:
        picked = [class_stop_pass(r["passes"], target, budget, conf) for r in rs]
        return {"distance": float(np.mean([p["retrain_distance"] for p in picked])),
                "dr_drop": float(np.mean([p["dr_drop"] for p in picked])),
                "forget_acc": float(np.mean([p["forget_acc"] for p in picked])),
                "passes": float(np.mean([p["pass"] for p in picked])),
                "tasks": len(picked)}

    results = []
    for group, target, conf, budget in itertools.product(
            groups, args.targets, args.conf_targets, args.budgets):
        per_fam, ok = {}, True
        for fam, runs in fams.items():
            if robust:
                by_start = [[r for r in runs if math.isclose(r["start"], st, rel_tol=1e-9)
                             and (r["grow"], r["min_move"]) == group] for st in starts]
                if not all(by_start):
                    ok = False
                    break
                per_fam[fam] = _worst_start([family_score(rs, target, budget, conf)
                                             for rs in by_start], 1e-9)
                continue
            rs = [r for r in runs if (r["start"], r["grow"], r["min_move"]) == group]
            if not rs:
                ok = False
                break
            per_fam[fam] = family_score(rs, target, budget, conf)
        if not ok:
            continue
        start, grow, move = ("all", *group) if robust else group
        results.append({"start": start, "grow": grow, "min_move": move, "target": target,
                        "conf_target": conf, "budget": budget,
                        "distance": float(np.mean([v["distance"] for v in per_fam.values()])),
                        "worst_dr_drop": max(v["dr_drop"] for v in per_fam.values()),
                        "families": per_fam})
    valid = [r for r in results if r["worst_dr_drop"] <= args.max_dr_drop]
    # ties (rules that stop at the same passes) go to fewer passes, then to the plainer stop (no
    # confidence target), then to the higher accuracy target (the earlier stop)
    valid.sort(key=lambda r: (r["distance"], r["budget"], r["conf_target"], -r["target"]))
    untouched = {fam: float(np.mean([r["passes"][0]["retrain_distance"] for r in runs]))
                 for fam, runs in fams.items()}
    print("untouched:", {k: round(v, 1) for k, v in untouched.items()})
    for r in valid[:args.top]:
        print(f"start {r['start']} grow {r['grow']:g} move {r['min_move']:g} target "
              f"{r['target']:g} conf {r['conf_target']:g} budget {r['budget']}: mean distance "
              f"{r['distance']:.1f}; " + _families_text(r["families"], spread=robust))
    out = {"untouched": untouched, "valid": valid, "all": results}
    if args.out:
        with open(args.out, "w") as f:
            json.dump(out, f, indent=1)
    return out


def searchcompare(args) -> dict:
    """The step search (``class_search``) against the frozen rules on traces run with both
    (``classtrace --mode auto --searches 0 1 --starts ...``). Class requests: rule 4's stop (the
    accuracy target, the pass budget) replayed on each run. Random requests: without the search,
    rule 5 replayed (``--random-hold`` runs, error rise ``--err-rise``, ``--random-budget``
    passes); with it, the single pass each run kept (one run per searched error rise). Every
    variant is scored per family at its worst traced start (mean over the family's tasks and
    seeds), with its D_r drop and its worst/best spread over the starts; a variant qualifies when
    every family's worst-start D_r drop is within ``--max-dr-drop``. (The spread divides by the
    best distance floored at 1 point: a distance can be 0.)"""
    fams = _families(args.traces, searched=True)

    def variant(r):
        if r["mode"] == "class":
            if not r.get("search"):
                return ("class", "frozen")
            return ("class", "search" + ("" if _default_bisections(r) else f" (refine {r['refine']})")
                    + ("" if _anchor(r) == auto.AUTO_DEFAULTS.class_search_anchor
                       else f" (anchor {_anchor(r):g})"))
        if r.get("search") == "flip":
            return ("random", "search to the first flip" + ("" if r.get("hold") else " (no hold)"))
        if r.get("search"):
            return ("random", f"search, error x{r['err_rise']:g}")
        return ("random", "frozen" + ("" if r.get("hold") else " (no hold)"))

    def picked(r):
        rows = r["passes"]
        if r["mode"] == "class":
            return class_stop_pass(rows, args.target, args.class_budget)
        if r.get("search") and r.get("search") != "flip":
            return rows[min(1, len(rows) - 1)]
        return random_stop_pass(rows, 101.0, 0.0, args.random_budget, args.err_rise)

    out = {}
    for mode in ("class", "random"):
        names = sorted({variant(r)[1] for runs in fams.values() for r in runs
                        if variant(r)[0] == mode})
        for name in names:
            per_fam = {}
            for fam, runs in fams.items():
                rs = [r for r in runs if variant(r) == (mode, name)]
                if not rs:
                    continue
                means = _start_means(rs, picked)
                starts = sorted(means)
                per_fam[fam] = {**_worst_start(list(means.values()), 1.0), "starts": starts,
                                "tasks": len(rs) // len(means)}
                if args.window:  # the acceptance's number: worst / best in the best window
                    dist = [max(means[s]["distance"], 1.0) for s in starts]
                    per_fam[fam]["window_spread"] = worst_in_window(starts, dist, args.window)
                if args.per_request:  # the acceptance's unit: one request, mean over seeds
                    per_fam[fam]["requests"] = _request_spreads(rs, picked, args.window or 8.0)
            if not per_fam:
                continue
            res = {"distance": float(np.mean([v["distance"] for v in per_fam.values()])),
                   "worst_dr_drop": max(v["dr_drop"] for v in per_fam.values()),
                   "max_spread": max(v["spread"] for v in per_fam.values()),
                   "families": per_fam}
            res["qualifies"] = res["worst_dr_drop"] <= args.max_dr_drop
            if args.window:
                res["max_window_spread"] = max(
                    (v["window_spread"] for v in per_fam.values()
                     if not math.isnan(v["window_spread"])), default=float("nan"))
            if args.per_request:
                reqs = [q for v in per_fam.values() for q in v["requests"].values()]
                res["requests_over"] = sum(q["window_spread"] > args.max_spread for q in reqs)
                res["requests"] = len(reqs)
                res["worst_request_dr_drop"] = max(q["dr_drop"] for q in reqs)
                at = [q["at_default"] for q in reqs if q["at_default"] is not None]
                res["mean_at_default"] = float(np.mean(at)) if at else float("nan")
            out[f"{mode}: {name}"] = res
            print(f"{mode}: {name}: worst-start mean {res['distance']:.1f}, worst D_r drop "
                  f"{res['worst_dr_drop']:.1f}, largest spread {res['max_spread']:.2f}"
                  + (f", largest spread in the best {args.window:g}x window "
                     f"{res['max_window_spread']:.2f}" if args.window else "")
                  + f"{'' if res['qualifies'] else ' (D_r drop over the limit)'}; "
                  + _families_text(per_fam, mia=False, spread=True))
            if args.per_request:
                print(f"  per request: {res['requests_over']} of {res['requests']} over "
                      f"{args.max_spread:g}x in the best {args.window or 8.0:g}x window; mean "
                      f"distance at the default start {res['mean_at_default']:.1f}; worst D_r "
                      f"drop {res['worst_request_dr_drop']:.1f}")
                for fam, v in per_fam.items():
                    for req, q in v["requests"].items():
                        print(f"    {fam} {req}: spread {q['window_spread']:.2f}, distances "
                              + " ".join(f"{d:.1f}" for d in q["distances"])
                              + f", worst D_r drop {q['dr_drop']:.1f}")
    if args.out:
        _write_json(args.out, out)
    return out


def searchchoose(args) -> dict:
    """Rule 4's stop (accuracy target, pass budget) chosen for the rule *with* the step search:
    every searched class run of the traces (at the default bisection count and lattice anchor, or
    ``--anchor``) replayed with each
    (target, budget); each family scored at its worst traced start (mean over its runs there),
    with its largest D_r drop over the starts. Candidates whose every family stays within
    ``--max-dr-drop`` qualify; they are listed by their mean over families. (A trace records the
    kept passes of a search run with no target, so a real run whose trial already meets a large
    target can stop one trial earlier than the replay: the replay is exact for the passes kept.)"""
    fams = {}
    for fam, runs in _families(args.traces, searched=True).items():
        rs = [r for r in runs if r["mode"] == "class" and r.get("search")
              and _default_search(r, getattr(args, "anchor", None))]
        if rs:
            fams[fam] = rs
    out = []
    for target, budget in itertools.product(args.targets, args.budgets):
        def picked(r, target=target, budget=budget):
            return class_stop_pass(r["passes"], target, budget)

        per_fam = {fam: _worst_start(list(_start_means(rs, picked).values()), 1.0)
                   for fam, rs in fams.items()}
        out.append({"target": target, "budget": budget,
                    "distance": float(np.mean([v["distance"] for v in per_fam.values()])),
                    "worst_dr_drop": max(v["dr_drop"] for v in per_fam.values()),
                    "families": per_fam})
    valid = sorted((c for c in out if c["worst_dr_drop"] <= args.max_dr_drop),
                   key=lambda c: c["distance"])
    for c in valid[:args.top or len(valid)]:
        print(f"target {c['target']:g}, budget {c['budget']}: worst-start mean {c['distance']:.1f}, "
              f"worst D_r drop {c['worst_dr_drop']:.1f}; " + _families_text(c["families"],
                                                                           mia=False))
    over = [c for c in out if c["worst_dr_drop"] > args.max_dr_drop]
    print(f"{len(over)} of {len(out)} candidates over the D_r bound")
    res = {"valid": valid, "all": out}
    if args.out:
        _write_json(args.out, res)
    return res


def growthcompare(args) -> dict:
    """Rule 4's step-growth variants (``class_growth``) compared at the default start under the
    default search and stop (target, budget), per forget request (the acceptance's unit: means
    over its seeds). A request *meets* the out-of-the-box target when its D_r drop is at most
    ``--max-dr-drop`` and its D_f within ``--max-df-gap`` of its RTRNs' (the trace's
    references). Decision rule (fixed before the traces were read): a variant replaces
    ``--baseline`` only if it meets the target on more requests, its mean over families of the
    family-mean retrain distance is at most ``--margin`` above the baseline's, and no family's
    mean D_r drop exceeds ``--max-dr-drop``; among those, the most requests met, then the lower
    mean, then the order of ``CLASS_GROWTHS``. Only requests traced with every variant count."""
    rtrn, by = {}, {}
    for p in args.traces:
        with open(p) as f:
            t = json.load(f)
        fam = f"{t['dataset']}/{t['model']}"
        for ref in t["references"]:
            rtrn[(fam, ref["forget"], ref["seed"])] = ref["rtrn"]["forget_acc"]
        for r in t["runs"]:
            if (r["mode"] == "class" and r.get("search") and _default_search(r)
                    and math.isclose(r["start"], auto.AUTO_DEFAULTS.class_step)):
                by.setdefault(r.get("growth") or "fall", {}).setdefault(
                    (fam, r["forget"]), {})[r["seed"]] = r
    if args.baseline not in by:
        raise SystemExit(f"growthcompare: no run of the baseline {args.baseline!r} at the default "
                         f"start; traced: {sorted(by)}")
    common = sorted(set.intersection(*(set(v) for v in by.values())))
    # the seeds every variant traced, per request
    seeds_of = {k: sorted(set.intersection(*(set(v[k]) for v in by.values()))) for k in common}
    out = {"requests": [f"{f} {q}" for f, q in common], "variants": {}}
    for g, reqs in by.items():
        rows, fams = [], {}
        for fam, q in common:
            seeds = seeds_of[(fam, q)]
            picked = [class_stop_pass(reqs[(fam, q)][sd]["passes"], args.target, args.budget)
                      for sd in seeds]
            m = _pass_means(picked)
            ref = float(np.mean([rtrn[(fam, q, sd)] for sd in seeds]))
            m.update(request=f"{fam} {q}", rtrn_forget_acc=ref, seeds=seeds,
                     meets=m["dr_drop"] <= args.max_dr_drop
                     and abs(m["forget_acc"] - ref) <= args.max_df_gap)
            rows.append(m)
            fams.setdefault(fam, []).append(m)
        fam_means = {f: {"distance": float(np.mean([m["distance"] for m in ms])),
                         "dr_drop": float(np.mean([m["dr_drop"] for m in ms]))}
                     for f, ms in fams.items()}
        out["variants"][g] = {
            "met": sum(m["meets"] for m in rows), "requests": rows, "families": fam_means,
            "mean": float(np.mean([v["distance"] for v in fam_means.values()])),
            "worst_family_dr_drop": max(v["dr_drop"] for v in fam_means.values())}
    base = out["variants"][args.baseline]
    ok = [g for g, v in out["variants"].items() if g != args.baseline
          and v["met"] > base["met"] and v["mean"] <= base["mean"] + args.margin
          and v["worst_family_dr_drop"] <= args.max_dr_drop]
    out["chosen"] = min(ok, key=lambda g: (-out["variants"][g]["met"], out["variants"][g]["mean"],
                                           auto.CLASS_GROWTHS.index(g))) if ok else args.baseline
    n = len(common)
    for g, v in out["variants"].items():
        print(f"{g}: meets the target on {v['met']} of {n} requests; mean over families "
              f"{v['mean']:.1f}; worst family D_r drop {v['worst_family_dr_drop']:.1f}; misses: "
              + (", ".join(f"{m['request']} (drop {m['dr_drop']:.1f}, D_f {m['forget_acc']:.0f} "
                           f"vs {m['rtrn_forget_acc']:.0f})" for m in v["requests"]
                           if not m["meets"]) or "none"))
        print("   families: " + "; ".join(f"{f}: {x['distance']:.1f} (drop {x['dr_drop']:.1f})"
                                          for f, x in v["families"].items()))
    print(f"chosen: {out['chosen']}" + (" (the baseline)" if out["chosen"] == args.baseline
                                        else ""))
    if args.out:
        _write_json(args.out, out)
    return out


def _request_spreads(runs: list[dict], picked, window: float) -> dict[str, dict]:
    """Per forget request (the acceptance's unit): at each traced start the mean over seeds of
    the replayed pass's distance (``picked``), the worst / best over the best ``window``-wide
    window of starts (distances floored at 1 point), the largest D_r drop over the starts, and
    the distance at :data:`AUTO_DEFAULTS`' start (None when not traced)."""
    out = {}
    default = auto.AUTO_DEFAULTS.class_step
    for req in sorted({r["forget"] for r in runs}):
        by_start = _start_means([r for r in runs if r["forget"] == req], picked)
        starts = sorted(by_start)
        means = [by_start[s] for s in starts]
        dist = [m["distance"] for m in means]
        out[req] = {"starts": starts, "distances": dist,
                    "window_spread": worst_in_window(starts, [max(d, 1.0) for d in dist],
                                                     window),
                    "dr_drop": max(m["dr_drop"] for m in means),
                    "at_default": next((d for s, d in zip(starts, dist, strict=True)
                                        if math.isclose(s, default)), None)}
    return out


def random_stop_pass(rows: list[dict], drop: float, conf_drop: float, budget: int,
                     err_rise: float = 0.0) -> dict:
    """Rule 5's stop (``auto.random_stop_met``) replayed on a trace of rule 4's loop: the first
    pass whose forget accuracy has fallen by at least ``drop`` points from its start (above 100:
    never), whose mean confidence by at least ``conf_drop`` (0: not used), or whose mean error
    ``1 - conf`` has grown to at least ``err_rise`` times its start (0: not used), else the last
    pass within ``budget`` (0: the untouched model)."""
    first = rows[0]
    for r in rows[1:budget + 1]:
        if auto.random_stop_met(first, r, drop, conf_drop, err_rise):
            return r
    return rows[min(budget, len(rows) - 1)]


def randchoose(args) -> dict:
    """Random-request stops replayed on traces of rule 4's loop run on random forget sets
    (``classtrace --forget random:N``): every (start, grow, min move) traced x accuracy drop x
    confidence drop x pass budget (budget 0: the untouched model, always a candidate); the lowest
    mean over model families of their mean retrain distance among rules whose every family keeps
    its mean D_r drop within ``--max-dr-drop`` wins (ties: fewer passes, then the larger drops,
    the later stop).

    With ``--robust`` the start step is not part of the rule: each family's score is its worst
    mean distance over the traced start steps (every family must have every start), its D_r drop
    the largest over them, so the winner is the stop that does best at its worst start;
    ``--robust-starts`` names the starts scored (a family's other starts are then ignored).
    Searched runs (``search`` set) are not traces of rule 5's loop and are left out."""
    fams = _families(args.traces)

    def key(r):
        return r["start"], r["grow"], r["min_move"], r.get("hold", False)

    def replay(rs, drop, conf, budget, rise) -> dict:
        return _pass_means([random_stop_pass(r["passes"], drop, conf, budget, rise)
                            for r in rs])

    keys = sorted({key(r) for runs in fams.values() for r in runs})
    # robust: every traced start step, or the ones named (a family's other starts not scored)
    starts = sorted(getattr(args, "robust_starts", None) or {k[0] for k in keys})
    robust = getattr(args, "robust", False)
    groups = sorted({k[1:] for k in keys}) if robust else keys
    results = []
    for group, drop, conf, rise, budget in itertools.product(
            groups, args.drops, args.conf_drops, args.err_rises, args.budgets):
        per_fam = {}
        for fam, runs in fams.items():
            if not robust:
                rs = [r for r in runs if key(r) == group]
                per_fam[fam] = replay(rs, drop, conf, budget, rise) if rs else None
                continue
            by_start = [replay(rs, drop, conf, budget, rise) for rs in (
                [r for r in runs if math.isclose(r["start"], st, rel_tol=1e-9)
                 and key(r)[1:] == group] for st in starts) if rs]
            per_fam[fam] = (_worst_start(by_start, 1e-9) if len(by_start) == len(starts)
                            else None)
        if any(v is None or not np.isfinite(v["distance"]) for v in per_fam.values()):
            continue
        start, grow, move, hold = ("all", *group) if robust else group
        results.append({"start": start, "grow": grow, "min_move": move, "hold": hold,
                        "drop": drop, "conf_drop": conf, "err_rise": rise, "budget": budget,
                        "distance": float(np.mean([v["distance"] for v in per_fam.values()])),
                        "worst_dr_drop": max(v["dr_drop"] for v in per_fam.values()),
                        "families": per_fam})
    valid = [r for r in results if r["worst_dr_drop"] <= args.max_dr_drop]
    # ties (rules that stop at the same passes) go to fewer passes, then to fewer criteria, then
    # to the later stop (larger thresholds)
    def active(r):
        return (r["drop"] <= 100) + (r["conf_drop"] > 0) + (r["err_rise"] > 0)

    valid.sort(key=lambda r: (r["distance"], r["budget"], active(r), -r["drop"],
                              -(r["conf_drop"] or math.inf), -(r["err_rise"] or math.inf)))
    untouched = {fam: float(np.mean([r["passes"][0]["retrain_distance"] for r in runs]))
                 for fam, runs in fams.items()}
    print("untouched:", {k: round(v, 1) for k, v in untouched.items()},
          f"mean {np.mean(list(untouched.values())):.1f}")
    for r in valid[:args.top]:
        print(f"start {r['start']} grow {r['grow']:g} move {r['min_move']:g} hold "
              f"{r['hold']} drop {r['drop']:g} conf {r['conf_drop']:g} err x{r['err_rise']:g} "
              f"budget {r['budget']}: mean distance "
              f"{r['distance']:.1f}; " + _families_text(r["families"]))
    out = {"untouched": untouched, "valid": valid, "all": results}
    if args.out:
        _write_json(args.out, out)
    return out


def stop_pass(rows: list[dict], lip_ratio: float, gap_peak: bool, budget: int,
              lip_rise: float = 0.0) -> dict:
    """The row rule 3 keeps: where ``auto.should_stop`` stops, the row before the first pass that
    ``auto.has_risen`` undoes, else the last within ``budget``."""
    rows = [r for r in rows if r["pass"] <= budget]
    stats = [{k: r[k] for k in auto.STOP_STATS} for r in rows]
    for p in range(1, len(rows)):
        if auto.has_risen(stats[p], stats[0], lip_rise):  # the passes run, the model kept
            return {**rows[p - 1], "pass": rows[p]["pass"], "undone_first": p == 1}
        if auto.should_stop(stats[p], stats[p - 1], stats[0], lip_ratio, gap_peak):
            return rows[p]
    return rows[-1]


def _norm(run: dict) -> str:
    return run.get("norm", "global")  # traces written before the layer rule used global norms


def candidates(traces: list[dict], ratios, budgets, rises=(0.0,), retries=(0,)):
    # only (norm, scale, step) triples that every trace has: each rule is scored on every task
    keys = sorted(set.intersection(*({(_norm(r), r["scale"], r["step"]) for r in t["runs"]}
                                     for t in traces)))
    return ((*k, *rest) for k in keys
            for rest in itertools.product([0.0, *ratios], [False, True], budgets, rises, retries)
            if rest[3] > 0 or rest[4] == 0)  # retries act only with the damage test on


def _run_at(t: dict, r: dict, step: float) -> dict | None:
    """The run of trace ``t`` for ``r``'s task and seed at another step (None: not traced)."""
    for q in t["runs"]:
        if (q["seed"], q["forget"], _norm(q), q["scale"]) == (r["seed"], r["forget"], _norm(r),
                                                             r["scale"]) \
                and math.isclose(q["step"], step, rel_tol=1e-9):
            return q
    return None


def replay(t: dict, r: dict, lip_ratio, gap_peak, budget, lip_rise, retries) -> dict | None:
    """The row ``--method auto`` keeps on run ``r``, with the retries of ``auto.RETRY_FACTOR``
    times the step after an undone first pass replayed exactly from the traced runs at those
    steps (they restart from the original model); None when such a step was not traced."""
    passes = 0
    for attempt in range(retries + 1):
        row = stop_pass(r["passes"], lip_ratio, gap_peak, budget, lip_rise)
        passes += row["pass"]
        if not (row.get("undone_first") and attempt < retries):
            break
        r = _run_at(t, r, r["step"] * auto.RETRY_FACTOR)
        if r is None:
            return None
    return {**row, "pass": passes}


def _task(t, r):
    return f"{t['dataset']} {t.get('model', 'mlp')} {r['forget'].split(' ')[0]}"


def score(traces: list[dict], norm, scale, step, lip_ratio, gap_peak, budget, lip_rise=0.0,
          retries=0) -> dict | None:
    per_task, per_model, rows = {}, {}, []
    for t in traces:
        for r in t["runs"]:
            if _norm(r) == norm and r["scale"] == scale and r["step"] == step:
                row = replay(t, r, lip_ratio, gap_peak, budget, lip_rise, retries)
                if row is None:
                    return None
                rows.append(row)
                per_task.setdefault(_task(t, r), []).append(row["retrain_distance"])
                per_model.setdefault(t.get("model", "mlp"), []).append(row)
    return {"norm": norm, "scale": scale, "step": step, "lip_ratio": lip_ratio,
            "gap_peak": gap_peak, "max_passes": budget, "lip_rise": lip_rise,
            "retries": retries, "n": len(rows),
            "retrain_distance": float(np.mean([r["retrain_distance"] for r in rows])),
            "dr_drop": float(np.mean([r["dr_drop"] for r in rows])),
            "max_dr_drop": float(np.max([r["dr_drop"] for r in rows])),
            "passes": float(np.mean([r["pass"] for r in rows])),
            "per_task": {k: float(np.mean(v)) for k, v in per_task.items()},
            "per_model": {m: {"retrain_distance": float(np.mean([r["retrain_distance"] for r in v])),
                              "dr_drop": float(np.mean([r["dr_drop"] for r in v]))}
                          for m, v in per_model.items()}}


def balanced(row: dict) -> dict:
    """``--balance-models``: the mean over model families of each family's mean distance and
    D_r drop, and the worst family's D_r drop, so that the many MLP tasks do not outvote the
    conv ones."""
    pm = row["per_model"].values()
    return {**row, "retrain_distance": float(np.mean([v["retrain_distance"] for v in pm])),
            "dr_drop": float(max(v["dr_drop"] for v in pm))}


def merged(traces: list[dict]) -> list[dict]:
    """Traces of the same dataset and model as one (their runs together), so that a dataset
    traced in parts (first the global norms, then the per-tensor ones) counts as one task set."""
    out: dict[tuple, dict] = {}
    for t in traces:
        key = (t["dataset"], t.get("model", "mlp"))
        if key in out:
            out[key] = {**out[key], "runs": out[key]["runs"] + t["runs"]}
        else:
            out[key] = t
    return list(out.values())


def untouched_distance(traces: list[dict], balance_models: bool = False) -> float:
    """The untouched model's mean retrain distance over the traced tasks: each (dataset, model,
    forget request, seed) once, however many steps and scales were traced for it; with
    ``balance_models``, the mean over model families of their means (as the rules are scored)."""
    per = {}
    for t in traces:
        for r in t["runs"]:
            key = (t["dataset"], t.get("model", "mlp"), r["forget"], r["seed"])
            per[key] = r["passes"][0]["retrain_distance"]
    if not balance_models:
        return float(np.mean(list(per.values())))
    fams = {}
    for (_, model, _, _), d in per.items():
        fams.setdefault(model, []).append(d)
    return float(np.mean([np.mean(v) for v in fams.values()]))


def choose(args) -> dict:
    traces = merged([json.load(open(p)) for p in args.traces])
    rows = [score(traces, *c)
            for c in candidates(traces, args.ratios, args.budgets, args.rises, args.retries)]
    rows = [r for r in rows if r is not None]  # rules that need a step some trace lacks
    if args.balance_models:  # equal weight per model family; every family within the D_r bound
        rows = [balanced(r) for r in rows]
    ok = [r for r in rows if r["dr_drop"] <= args.max_dr_drop]
    # ties (rules that stop at the same passes) go to the cheaper one: fewer passes on average
    best = min(ok or rows, key=lambda r: (r["retrain_distance"], r["passes"]))
    bsln = untouched_distance(traces, args.balance_models)
    print(f"{len(rows)} rules; {len(ok)} with mean D_r drop <= {args.max_dr_drop}; untouched "
          f"model's mean distance {bsln:.2f}")
    for r in sorted(ok or rows, key=lambda r: (r["retrain_distance"], r["passes"]))[:args.top]:
        print(f"  {r['norm']:<6} scale {r['scale']:<4} step {r['step']:<7} "
              f"lip {r['lip_ratio']:<4} rise {r['lip_rise']:<4} retry {r['retries']} "
              f"peak {r['gap_peak']!s:<5} budget {r['max_passes']:<3} dist "
              f"{r['retrain_distance']:6.2f} drop {r['dr_drop']:5.2f} (max {r['max_dr_drop']:5.1f})"
              f" passes {r['passes']:4.1f}  " + "  ".join(f"{k}: {v:.1f}"
                                                     for k, v in r["per_task"].items()))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"traces": args.traces, "max_dr_drop": args.max_dr_drop, "best": best,
                       "rules": rows}, f, indent=1)
        print("wrote", args.out)
    return best


def parse_rules(specs: list[str]) -> dict[str, dict]:
    """``["default", "lodo:step=0.004,lip_ratio=0.8"]`` -> ``{name: auto options}``."""
    rules = {}
    for spec in specs or ["default"]:
        name, _, opts = spec.partition(":")
        rules[name] = parse_options([o for o in opts.split(",") if o], f"rule {name!r}",
                                    unlearn.option_types("auto"))
    return rules


def test(args) -> None:
    from jit_jax.demo import train_original
    from jit_jax.models import ModelSpec

    ds = dataset(args.dataset, options=getattr(args, "data_set", None))
    spec = ModelSpec(args.model, ds.num_classes, ds.image_shape, {})
    recipe = recipes.train_recipe(ds.name, spec.name, num_train=len(ds.x_train))
    prep = recipes.preprocess_fn(ds)
    rules = parse_rules(args.rule)
    names = ["rtrn", "bsln", *[f"auto[{r}]" for r in rules], *args.methods,
             *[f"jit[lr x{f:g}]" for f in args.jit_lr_factors]]
    out = {"dataset": args.dataset, "model": args.model, "rules": rules,
           "defaults": dataclasses.asdict(auto.AUTO_DEFAULTS), "recipe": recipe.to_dict(),
           "runs": []}
    for seed in args.seeds:
        cfg = recipe.replace(seed=seed)
        original, _ = train_original(ds, spec, cfg)
        for f in args.forget:
            split = parse_forget(ds, f, seed=seed)
            req = unlearn.Request(original, ds, split, spec, cfg, seed=seed, preprocess=prep)
            res, logs = {}, {}
            for name in names:
                method, opts = name, {}
                if name.startswith("auto["):
                    method, opts = "auto", rules[name[5:-1]]
                elif name.startswith("jit[lr x"):
                    method = "jit"
                    opts = {"lr": unlearn.default_jit_config(req).lr * float(name[8:-1])}
                t0 = time.time()
                try:
                    o = unlearn.run(method, req, **opts)
                except FloatingPointError as e:  # recorded as failed, the others go on
                    logs[name] = {"failed": str(e)}
                    continue
                res[name] = evaluate_unlearning(o.model, ds, split, method=method,
                                                runtime=o.runtime, preprocess=prep)
                logs[name] = {"wall": time.time() - t0,
                              **({"chosen": o.log["chosen"], "pass_info": o.log["pass_info"]}
                                 if method == "auto" else {})}
            row = {"seed": seed, "forget": split.description, "logs": logs}
            for name, r in res.items():
                row[name] = {**r.to_dict(), "retrain_distance": retrain_distance(r, res["rtrn"])}
            out["runs"].append(row)
            print(f"seed {seed} {split.description}: " + "  ".join(
                f"{n} D_r {row[n]['retain_acc']:.1f} D_f {row[n]['forget_acc']:.1f} MIA "
                f"{row[n]['mia']:.1f} dist {row[n]['retrain_distance']:.1f}"
                + (f" ({logs[n]['chosen']['passes_run']} passes)" if "chosen" in logs[n] else "")
                if n in row else f"{n} FAILED" for n in names), flush=True)
    _write_json(args.out, out)
    print("wrote", args.out)


def _sweeps(row: dict, rules: dict, defaults: dict) -> dict[str, list[tuple[float, dict]]]:
    """{"auto": [(step, result)...], "class": [(class_step, result)...], "jit": [(lr factor,
    result)...]} from one test row: the rules that set only the step, or only rules 4 and 5's
    start step (with "default" in the sweep of the mode it ran in), and JiT's lr factors (and
    "jit", factor 1)."""
    out = {"auto": [], "class": [], "jit": []}
    for name, r in row.items():
        if name.startswith("auto["):
            opts = rules.get(name[5:-1], {})
            chosen = row.get("logs", {}).get(name, {}).get("chosen", {})
            if (opts and set(opts) <= {"class_step"}
                    or not opts and chosen.get("mode") in ("class", "random")):
                out["class"].append((opts.get("class_step", defaults.get("class_step")), r))
            elif set(opts) <= {"step"}:
                out["auto"].append((opts.get("step", defaults["step"]), r))
        elif name.startswith("jit[lr x"):
            out["jit"].append((float(name[8:-1]), r))
        elif name == "jit":
            out["jit"].append((1.0, r))
    return {k: sorted(v, key=lambda t: t[0]) for k, v in out.items() if v}


def figure(args) -> None:
    """Sensitivity: retrain distance, D_r and MIA against auto's step and JiT's lr factor, one
    line per test task (mean over seeds), one column per test file."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tests = []  # files of the same dataset are merged (an extra sweep run later, same seeds)
    for path in args.tests:
        t = json.load(open(path))
        same = [u for u in tests if u["dataset"] == t["dataset"]]
        if same:
            same[0]["runs"] += t["runs"]
            same[0]["rules"].update(t["rules"])
        else:
            tests.append(t)
    has_jit = any(k == "jit" for t in tests for row in t["runs"]
                  for k in _sweeps(row, t["rules"], t["defaults"]))
    per = 2 if has_jit else 1  # columns per test file: auto's sweep, and JiT's where run
    fig, axes = plt.subplots(3, per * len(tests), figsize=(4.2 * per * len(tests), 9),
                             squeeze=False)
    summary = {}
    for c, t in enumerate(tests):
        by_task = {}
        for row in t["runs"]:
            task = row["forget"].split(" ")[0]
            for kind, pts in _sweeps(row, t["rules"], t["defaults"]).items():
                for x, r in pts:
                    by_task.setdefault((kind, task), {}).setdefault(x, []).append(r)
        for (kind, task), pts in sorted(by_task.items()):
            xs = sorted(pts)
            col = per * c + (1 if kind == "jit" else 0)
            for i, key in enumerate(["retrain_distance", "retain_acc", "mia"]):
                ys = [float(np.mean([r[key] for r in pts[x]])) for x in xs]
                axes[i, col].plot(xs, ys, "o-", label=task if kind == "jit" else f"{task} {kind}")
                axes[i, col].set_xscale("log", base=2)
                axes[i, col].set_ylabel(key)
            dist = [float(np.mean([r["retrain_distance"] for r in pts[x]])) for x in xs]
            summary[f"{t['dataset']} {kind} {task}"] = {
                "x": xs, "retrain_distance": dist,
                "worst_over_best_in_8x": worst_in_window(xs, dist, 8.0)}
            name = os.path.basename(t["dataset"].split(":", 1)[-1]).removesuffix(".npz")
            axes[0, col].set_title(f"{name}: " + ("JiT, lr factor" if kind == "jit" else
                                                  "auto, (start) step"), fontsize=9)
            axes[2, col].set_xlabel("lr / default lr" if kind == "jit" else "step")
        for col in range(per * c, per * c + per):
            if axes[0, col].lines:
                axes[0, col].legend(fontsize=7)
                # the scale shows the spread as it is: distance from 0, accuracies over at
                # least 10 points (flat lines stay flat instead of filling the axis)
                axes[0, col].set_ylim(bottom=0)
                for i in (1, 2):
                    lo, hi = axes[i, col].get_ylim()
                    if hi - lo < 10:
                        mid = (hi + lo) / 2
                        axes[i, col].set_ylim(mid - 5, mid + 5)
            else:  # no sweep of this kind in this test file (e.g. no JiT lr factors)
                for i in range(3):
                    axes[i, col].set_visible(False)
    fig.tight_layout()
    fig.savefig(args.out, dpi=90)
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump(summary, f, indent=1)
    for k, v in summary.items():
        print(f"{k}: distance {[round(d, 1) for d in v['retrain_distance']]} at {v['x']}; worst/"
              f"best over the best 8x window {v['worst_over_best_in_8x']:.2f}")
    print("wrote", args.out)


def worst_in_window(xs: list[float], dist: list[float], width: float) -> float:
    """The acceptance's robustness number: over every window [x, width * x] of the swept values
    (at least two points), the lowest ratio of its worst distance to the sweep's best."""
    best = min(dist)
    ratios = []
    for x in xs:
        inside = [d for xx, d in zip(xs, dist, strict=True) if x <= xx <= width * x * (1 + 1e-9)]
        if len(inside) >= 2 and xs[-1] >= width * x * (1 - 1e-9):
            ratios.append(max(inside) / max(best, 1e-9))
    return float(min(ratios)) if ratios else float("nan")


def report(args) -> None:
    """Markdown tables from test files: per task, the mean (and sd) over seeds of each method's
    D_r, D_f, MIA and retrain distance, and the acceptance checks for ``auto[default]``."""
    lines = []
    for path in args.tests:
        t = json.load(open(path))
        tasks = {}
        for row in t["runs"]:
            tasks.setdefault(row["forget"].split(" ")[0], []).append(row)
        names = [n for n in t["runs"][0] if n not in ("seed", "forget", "logs")]
        names = [n for n in names if args.methods is None or n in args.methods]
        lines += [f"### {t['dataset']} ({t['model']}), seeds "
                  f"{sorted({r['seed'] for r in t['runs']})}", "",
                  "| task | method | D_r | D_f | MIA | retrain distance | passes |",
                  "|---|---|---|---|---|---|---|"]
        for task, rows in tasks.items():
            for n in names:
                got = [r[n] for r in rows if n in r]
                if not got:
                    lines.append(f"| {task} | {n} | failed | | | | |")
                    continue

                def ms(k, got=got):
                    v = [g[k] for g in got]
                    return f"{np.mean(v):.1f} ± {np.std(v):.1f}" if len(v) > 1 else f"{v[0]:.1f}"

                passes = [r["logs"][n]["chosen"]["passes_run"] for r in rows
                          if "chosen" in r["logs"].get(n, {})]
                lines.append(f"| {task} | {n} | {ms('retain_acc')} | {ms('forget_acc')} | "
                             f"{ms('mia')} | {ms('retrain_distance')} | "
                             f"{np.mean(passes):.1f} |" if passes else
                             f"| {task} | {n} | {ms('retain_acc')} | {ms('forget_acc')} | "
                             f"{ms('mia')} | {ms('retrain_distance')} | |")
            a = [r["auto[default]"] for r in rows if "auto[default]" in r]
            if a:
                df = np.mean([x["forget_acc"] - r["rtrn"]["forget_acc"] for x, r in
                              zip(a, rows, strict=True)])
                dr = np.mean([r["bsln"]["retain_acc"] - x["retain_acc"] for x, r in
                              zip(a, rows, strict=True)])
                ok = abs(df) <= 10 and dr <= 5
                lines.append(f"| {task} | *auto vs targets* | D_r drop {dr:.1f} (<= 5) | D_f - "
                             f"RTRN {df:+.1f} (within 10) | | {'met' if ok else 'not met'} | |")
        lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("trace")
    t.add_argument("--dataset", required=True)
    t.add_argument("--data-set", nargs="*",
                   help="dataset loader options, KEY=VALUE (e.g. target=coarse)")
    t.add_argument("--model", default="mlp")
    t.add_argument("--forget", nargs="+", required=True)
    t.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    t.add_argument("--scales", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    t.add_argument("--steps", type=float, nargs="+", default=[2.5e-4, 1e-3, 4e-3])
    t.add_argument("--norms", nargs="+", default=["global"], choices=auto.NORMS)
    t.add_argument("--model-set", nargs="*", help="model options, KEY=VALUE (e.g. width=16)")
    t.add_argument("--train-set", nargs="*",
                   help="training recipe overrides, KEY=VALUE (e.g. epochs=30 optimizer=adam)")
    t.add_argument("--passes", type=int, default=12)
    t.add_argument("--k", type=int, default=auto.AUTO_DEFAULTS.k)
    t.add_argument("--updates", nargs="+", default=["all"], choices=UPDATES,
                   help="which parameters the loop moves (update_labels)")
    t.add_argument("--objectives", nargs="+", default=["jit"], choices=["jit", *sorted(
        k for k, o in unlearn.objectives.OBJECTIVES.items() if o.zero_shot)],
                   help="JiT's smoothing (auto's) or other zero-shot objectives, same steps")
    t.add_argument("--probes", action="store_true",
                   help="also record candidate damage statistics (probe_stats_fn)")
    t.add_argument("--out", required=True)
    ct = sub.add_parser("classtrace")
    ct.add_argument("--dataset", required=True)
    ct.add_argument("--data-set", nargs="*",
                    help="dataset loader options, KEY=VALUE (e.g. target=coarse)")
    ct.add_argument("--model", default="mlp")
    ct.add_argument("--forget", nargs="+", required=True)
    ct.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    ct.add_argument("--model-set", nargs="*", help="model options, KEY=VALUE (e.g. width=16)")
    ct.add_argument("--train-set", nargs="*",
                    help="training recipe overrides, KEY=VALUE (e.g. epochs=30 optimizer=adam)")
    ct.add_argument("--objective", default="dpo", choices=auto.CLASS_OBJECTIVES)
    ct.add_argument("--starts", type=float, nargs="+", default=[6.25e-5])
    ct.add_argument("--grows", type=float, nargs="+", default=[4.0])
    ct.add_argument("--min-moves", type=float, nargs="+", default=[0.05])
    ct.add_argument("--max-step", type=float, default=auto.AutoConfig.class_max_step)
    ct.add_argument("--passes", type=int, default=12)
    ct.add_argument("--mode", choices=["class", "random", "auto"], default="class",
                    help="rule 4's stop (never firing: class_target -1) or rule 5's (all its "
                         "criteria off); the step grows the same way in both; auto: per "
                         "request, as --method auto chooses")
    ct.add_argument("--holds", type=int, nargs="+", default=[0], choices=[0, 1],
                    help="rule 5's random_hold (1: the step stops growing once a forget sample "
                         "has flipped; --mode random only)")
    ct.add_argument("--searches", type=int, nargs="+", default=[0], choices=[0, 1],
                    help="class_search (1: the first pass's step found by undone trial passes)")
    ct.add_argument("--search-err-rises", type=float, nargs="+", default=[2.0],
                    help="with --mode random and a search: the error rises a trial must reach, "
                         "one run each (rule 5 with a search stops at the pass it finds)")
    ct.add_argument("--refines", type=int, nargs="+",
                    default=[auto.AUTO_DEFAULTS.class_search_refine],
                    help="the step search's bisection counts (class_search_refine), one searched "
                         "run each")
    ct.add_argument("--anchors", type=float, nargs="+",
                    default=[auto.AUTO_DEFAULTS.class_search_anchor],
                    help="the step search's lattice anchors (class_search_anchor; 0: the lattice "
                         "through the start), one searched run each")
    ct.add_argument("--growths", nargs="+", default=[auto.AUTO_DEFAULTS.class_growth],
                    choices=auto.CLASS_GROWTHS,
                    help="rule 4's class_growth variants, one run each (class mode only)")
    ct.add_argument("--flip-search", action="store_true",
                    help="with --mode random and a search: random_search 'flip' (the search "
                         "looks for the first flip, the trace runs on from there) instead of "
                         "'stop'")
    ct.add_argument("--out", required=True)
    cc = sub.add_parser("classchoose")
    cc.add_argument("traces", nargs="+")
    cc.add_argument("--targets", type=float, nargs="+", default=[0.0, 2.0, 5.0, 10.0, 20.0])
    cc.add_argument("--conf-targets", type=float, nargs="+", default=[0.0, 0.05, 0.1, 0.2, 0.3])
    cc.add_argument("--budgets", type=int, nargs="+", default=[6, 8, 12])
    cc.add_argument("--max-dr-drop", type=float, default=5.0)
    cc.add_argument("--robust", action="store_true",
                    help="score each rule by its worst start step per family")
    cc.add_argument("--robust-starts", type=float, nargs="+",
                    help="with --robust: score these start steps (default: every one traced); "
                         "every family must have each")
    cc.add_argument("--top", type=int, default=10)
    cc.add_argument("--out")
    rc = sub.add_parser("randchoose")
    rc.add_argument("traces", nargs="+")
    rc.add_argument("--drops", type=float, nargs="+", default=[1.0, 2.0, 5.0, 10.0, 20.0, 101.0])
    rc.add_argument("--conf-drops", type=float, nargs="+", default=[0.0, 0.02, 0.05, 0.1, 0.2])
    rc.add_argument("--err-rises", type=float, nargs="+", default=[0.0, 1.5, 2.0, 3.0, 4.0, 8.0])
    rc.add_argument("--budgets", type=int, nargs="+", default=[0, 1, 2, 4, 6, 8, 10])
    rc.add_argument("--max-dr-drop", type=float, default=5.0)
    rc.add_argument("--robust", action="store_true",
                    help="score each stop by its worst start step (traced starts) per family")
    rc.add_argument("--robust-starts", type=float, nargs="+",
                    help="with --robust: score these start steps (default: every one traced); "
                         "every family must have each")
    rc.add_argument("--top", type=int, default=10)
    rc.add_argument("--out")
    sc = sub.add_parser("searchcompare")
    sc.add_argument("traces", nargs="+")
    sc.add_argument("--target", type=float, default=auto.AUTO_DEFAULTS.class_target)
    sc.add_argument("--class-budget", type=int, default=auto.AUTO_DEFAULTS.class_passes)
    sc.add_argument("--err-rise", type=float, default=auto.AUTO_DEFAULTS.random_err_rise)
    sc.add_argument("--random-budget", type=int, default=auto.AUTO_DEFAULTS.random_passes)
    sc.add_argument("--max-dr-drop", type=float, default=5.0)
    sc.add_argument("--window", type=float, default=0.0,
                    help="also each family's worst / best over the best window of this width "
                         "(the acceptance's 8x), distances floored at 1 point")
    sc.add_argument("--per-request", action="store_true",
                    help="also per forget request (mean over seeds): the spread in the window "
                         "(--window, else 8x) and how many requests exceed --max-spread")
    sc.add_argument("--max-spread", type=float, default=1.5)
    sc.add_argument("--out")
    sh = sub.add_parser("searchchoose")
    sh.add_argument("traces", nargs="+")
    sh.add_argument("--targets", type=float, nargs="+", default=[0.0, 2.0, 5.0, 10.0, 20.0])
    sh.add_argument("--budgets", type=int, nargs="+", default=[6, 8, 12])
    sh.add_argument("--max-dr-drop", type=float, default=5.0)
    sh.add_argument("--top", type=int, default=10)
    sh.add_argument("--anchor", type=float, default=None,
                    help="replay the searched runs of this lattice anchor (default: "
                         "AUTO_DEFAULTS'; 0 for traces from before class_search_anchor)")
    sh.add_argument("--out")
    gc = sub.add_parser("growthcompare")
    gc.add_argument("traces", nargs="+")
    gc.add_argument("--baseline", default=auto.AUTO_DEFAULTS.class_growth,
                    choices=auto.CLASS_GROWTHS)
    gc.add_argument("--target", type=float, default=auto.AUTO_DEFAULTS.class_target)
    gc.add_argument("--budget", type=int, default=auto.AUTO_DEFAULTS.class_passes)
    gc.add_argument("--max-dr-drop", type=float, default=5.0)
    gc.add_argument("--max-df-gap", type=float, default=10.0)
    gc.add_argument("--margin", type=float, default=1.0)
    gc.add_argument("--out")
    c = sub.add_parser("choose")
    c.add_argument("traces", nargs="+")
    c.add_argument("--ratios", type=float, nargs="+", default=[0.5, 0.6, 0.7, 0.8, 0.9])
    c.add_argument("--budgets", type=int, nargs="+", default=[1, 2, 4, 8, 12])
    c.add_argument("--retries", type=int, nargs="+", default=[0],
                   help="retries values to offer (auto.RETRY_FACTOR x the step after an undone "
                        "first pass; replayed from the traced smaller steps)")
    c.add_argument("--balance-models", action="store_true",
                   help="score a rule by the mean over model families of their mean distance, "
                        "and require every family's mean D_r drop within --max-dr-drop")
    c.add_argument("--rises", type=float, nargs="+", default=[0.0],
                   help="lip_rise values to offer (0: off; auto.has_risen)")
    c.add_argument("--max-dr-drop", type=float, default=5.0)
    c.add_argument("--top", type=int, default=10)
    c.add_argument("--out")
    s = sub.add_parser("test")
    s.add_argument("--dataset", required=True)
    s.add_argument("--data-set", nargs="*",
                   help="dataset loader options, KEY=VALUE (e.g. target=coarse)")
    s.add_argument("--model", default="mlp")
    s.add_argument("--forget", nargs="+", required=True)
    s.add_argument("--seeds", type=int, nargs="+", default=[3, 4, 5])
    s.add_argument("--methods", nargs="*", default=["jit", "bdsh"])
    s.add_argument("--jit-lr-factors", type=float, nargs="*", default=[],
                   help="also JiT at its default lr times each factor (sensitivity)")
    s.add_argument("--rule", nargs="*", default=["default"],
                   help="NAME or NAME:key=value,...: auto with AUTO_DEFAULTS and these options")
    s.add_argument("--out", required=True)
    g = sub.add_parser("figure")
    g.add_argument("tests", nargs="+")
    g.add_argument("--out", required=True)
    r = sub.add_parser("report")
    r.add_argument("tests", nargs="+")
    r.add_argument("--methods", nargs="*")
    r.add_argument("--out")
    args = ap.parse_args(argv)
    {"trace": trace, "classtrace": classtrace, "classchoose": classchoose,
     "randchoose": randchoose, "searchcompare": searchcompare, "searchchoose": searchchoose,
     "growthcompare": growthcompare,
     "choose": choose, "test": test,
     "figure": figure,
     "report": report}[args.cmd](args)


if __name__ == "__main__":
    main()
