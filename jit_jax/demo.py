"""The quickstart on the embedded digits data, and the comparison loop the experiments share.

``compare(...)`` runs BSLN, RTRN and JiT (or any registered methods) on one forget request for a
few seeds and returns one :class:`~jit_jax.metrics.UnlearnResult` per method and seed, with the
retrain distance of each against the RTRN of the same seed.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path

from flax import nnx

from jit_jax import checkpoint, recipes, unlearn
from jit_jax.data import Dataset, load_dataset, parse_forget
from jit_jax.data.splits import ForgetSplit
from jit_jax.metrics import (
    UnlearnResult,
    evaluate_unlearning,
    markdown_table,
    reference_logits,
    retrain_distance,
    train_ulira_shadows,
    write_results,
)
from jit_jax.models import ModelSpec
from jit_jax.train import TrainConfig, evaluate, train


def train_original(ds: Dataset, spec: ModelSpec, config: TrainConfig, *, progress: bool = False):
    """Train ``spec`` on all of ``ds``; returns ``(model, TrainResult)``."""
    prep = recipes.preprocess_fn(ds)
    model = spec.build(seed=config.seed)
    res = train(model, prep(ds.x_train), ds.train_targets, config, progress=progress)
    return model, res


def compare(model: nnx.Module, ds: Dataset, split: ForgetSplit, spec: ModelSpec,
            train_config: TrainConfig, *, seeds: Sequence[int] = (0,),
            methods: Sequence[str] = ("bsln", "rtrn", "jit"), method_options: dict | None = None,
            progress: bool = False, log=print, metrics="paper", shadows=None,
            relearn=None) -> list[UnlearnResult]:
    """Run ``methods`` on ``split`` for each seed; the retrain distance is against that seed's RTRN
    (``rtrn`` is run even when not listed, as the reference). ``metrics``, ``shadows`` and
    ``relearn`` go to :func:`~jit_jax.metrics.evaluate_unlearning`, with the same seed's RTRN as
    the reference of the output distances and the untouched model's D_f as relearn's target."""
    prep = recipes.preprocess_fn(ds)
    method_options = method_options or {}
    results: list[UnlearnResult] = []
    original_df = None
    if metrics != "paper":
        original_df = evaluate_unlearning(model, ds, split, method="bsln",
                                          preprocess=prep).forget_acc
    for seed in seeds:
        req = unlearn.Request(model=model, dataset=ds, split=split, spec=spec,
                              train_config=train_config, seed=seed, preprocess=prep,
                              progress=progress)
        per_seed: dict[str, UnlearnResult] = {}
        order = ["rtrn"] + [m for m in methods if m != "rtrn"]
        for name in order:
            opts = method_options.get(name, {})
            t0 = time.perf_counter()
            out = unlearn.run(name, req, **opts)
            if name == "rtrn" and metrics != "paper":
                ref = reference_logits(out.model, ds, split, preprocess=prep)
            r = evaluate_unlearning(out.model, ds, split, method=name, runtime=out.runtime,
                                    compile_time=out.compile_time, zero_shot=out.zero_shot,
                                    seed=seed, preprocess=prep,
                                    extra={"options": opts, "config": out.log.get("config")},
                                    metrics=metrics,
                                    reference=ref if metrics != "paper" else None,
                                    original_forget_acc=original_df, shadows=shadows,
                                    relearn=relearn)
            per_seed[name] = r
            log(f"  seed {seed} {name:10s} D_r {r.retain_acc:5.1f}  D_f {r.forget_acc:5.1f}  "
                f"MIA {r.mia:5.1f}  runtime {out.runtime:.2f}s  "
                f"(wall {time.perf_counter() - t0:.1f}s)")
        for r in per_seed.values():
            r.retrain_distance = retrain_distance(r, per_seed["rtrn"])
        results.extend(per_seed[m] for m in methods if m in per_seed)
    return results


def run_demo(out: Path = Path("runs/demo"), *, forget: str = "class:3", seeds: int = 3,
             model: str = "mlp", progress: bool = True, overwrite: bool = False,
             metrics: str = "paper", shadows: int = 0,
             shadow_cache: str | Path = "runs/shadows") -> list[UnlearnResult]:
    """Digits end-to-end: original model, RTRN, JiT, the table (printed, markdown and JSON).
    ``metrics="full"`` adds the further metrics (``shadows`` >= 2: U-LiRA with that many shadow
    models, cached in ``shadow_cache``)."""
    out = Path(out)
    table_json = out / "results.json"
    if table_json.exists() and not overwrite:
        raise FileExistsError(f"{table_json} exists from an earlier demo; pass --overwrite or "
                              f"choose another --out")
    t_start = time.perf_counter()
    ds = load_dataset("digits")
    split = parse_forget(ds, forget)
    spec = ModelSpec(model, ds.num_classes, ds.image_shape, {})
    config = recipes.train_recipe(ds.name, spec.name)
    print(f"jit-jax demo: {ds!r}; forget {split.description} ({split.n_forget} training samples)")
    print(f"1/3 training the original {spec.name} ({spec.num_params():,} params) ...", flush=True)
    model, res = train_original(ds, spec, config, progress=progress)
    prep = recipes.preprocess_fn(ds)
    acc = evaluate(model, prep(ds.x_test), ds.test_targets)["accuracy"]
    print(f"    test accuracy {acc:.1f}% ({res.train_time:.1f}s)")
    ckpt = out / "original"
    checkpoint.save(ckpt, model, spec, {
        "kind": "trained", "dataset": {"spec": "digits", "name": ds.name, "target": ds.target},
        "class_names": list(ds.target_names), "train_config": config.to_dict(),
        "seed": config.seed, "metrics": {"test_accuracy": acc}}, overwrite=overwrite)
    shadow_set = None
    if shadows:
        print(f"    U-LiRA: {shadows} shadow models (cached in {shadow_cache}) ...", flush=True)
        shadow_set = train_ulira_shadows(ds, split, spec, config, n_shadows=shadows,
                                         cache_dir=shadow_cache, preprocess=prep)
        print(f"    shadows trained in {shadow_set.train_seconds:.1f}s")
    print("2/3 BSLN, RTRN (retrained without the forget set) and JiT ...", flush=True)
    t_compare = time.perf_counter()
    results = compare(model, ds, split, spec, config, seeds=range(seeds), progress=False,
                      metrics=metrics, shadows=shadow_set)
    compare_s = time.perf_counter() - t_compare
    table = markdown_table(results)
    print("3/3 results (percent; retrain distance = |dD_r|+|dD_f|+|dMIA| vs RTRN):\n")
    print(table)
    write_results(table_json, results, context={
        "dataset": ds.name, "forget": split.description, "model": spec.to_dict(),
        "train_config": config.to_dict(), "original_test_acc": acc, "seeds": seeds,
        "metrics": metrics, "shadows": shadows})
    print(f"\nwritten: {table_json}, {table_json.with_suffix('.md')}, checkpoint {ckpt}")
    print(f"try: jit-jax unlearn --checkpoint {ckpt} --method jit --forget class:5 "
          f"--out {out / 'forget5'}")
    shadow_s = shadow_set.train_seconds if shadow_set is not None else 0.0
    print(f"total {time.perf_counter() - t_start:.1f}s (methods and metrics {compare_s:.1f}s; "
          f"U-LiRA shadow training {shadow_s:.1f}s)")
    return results


def load_results(path: str | Path) -> list[dict]:
    return json.loads(Path(path).read_text())["runs"]
