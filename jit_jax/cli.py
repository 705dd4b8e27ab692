"""The ``jit-jax`` command: train, evaluate, unlearn, tune, models, demo.

    jit-jax train --dataset digits --model cnn --out runs/digits-cnn
    jit-jax evaluate --checkpoint runs/digits-cnn
    jit-jax unlearn --checkpoint runs/digits-cnn --method jit --forget class:3 --out runs/forget3
    jit-jax tune --dataset digits --model mlp --forget class:0 class:5 --out runs/tune
    jit-jax models --input-shape 64,64,1
    jit-jax demo

This module and ``experiments/`` are the only places that read or write files.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

DEFAULT_RUNS = Path("runs")


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def parse_options(pairs: list[str] | None, what: str, target=None) -> dict:
    """``["width=16", "augment=none"]`` -> ``{"width": 16, "augment": "none"}``, each value
    converted by the type its ``target`` (a dataclass, a function or ``{name: type}``) declares
    (:mod:`jit_jax.options`)."""
    from jit_jax.options import parse_options as _parse

    if target is None and what in ("JiT", "training"):
        if what == "JiT":
            from jit_jax.unlearn.jit import JiTConfig as target
        else:
            from jit_jax.train import TrainConfig as target
    return _parse(pairs, what, target)


def _model_types(name: str) -> dict:
    from jit_jax.models import option_types

    try:
        return option_types(name)
    except ValueError:
        return {}  # an unknown model is reported where the spec is built


def _free_default(base: Path) -> Path:
    if not base.exists():
        return base
    i = 2
    while Path(f"{base}-{i}").exists():
        i += 1
    return Path(f"{base}-{i}")


def _dataset_spec(spec: str) -> str:
    """Make ``npz:``/``folder:`` paths absolute so the checkpoint can find them again."""
    for prefix in ("npz:", "folder:"):
        if spec.startswith(prefix):
            return prefix + str(Path(spec[len(prefix):]).expanduser().absolute())
    return spec


def _err(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


# ------------------------------------------------------------------------------------------------
# train
# ------------------------------------------------------------------------------------------------
def _state_dir_of(out: Path) -> Path:
    """Where a run writing the checkpoint ``out`` keeps its training state: ``OUT.partial/``
    beside it, never inside, so that ``out`` only ever appears complete (``checkpoint.save``
    renames it into place) and "``out`` exists" keeps meaning "that run finished"."""
    return out.parent / f"{out.name}.partial"


def _train_state_dir(out: Path, *, resume: bool, every: int, overwrite: bool) -> Path | None:
    """The training-state directory of a run writing ``out`` (None with ``--checkpoint-every 0``),
    once ``--resume`` has been checked against what is on disk."""
    from jit_jax.checkpoint import saved_epochs

    if every < 0:
        raise ValueError(f"--checkpoint-every {every}; accepted: 0 (no training state) or N >= 1")
    state = _state_dir_of(out)
    epochs = saved_epochs(state)
    if resume:
        if every < 1:
            raise ValueError("--resume continues from saved training state and keeps saving it; "
                             "it needs --checkpoint-every >= 1")
        if out.exists() and not overwrite:
            hint = (f"; {state} holds an interrupted run meant to replace it: add --overwrite to "
                    f"continue that one" if epochs else "")
            raise FileExistsError(f"{out} already exists: that run finished and wrote its "
                                  f"checkpoint, so there is nothing to resume{hint}")
        if not epochs:
            what = "does not exist" if not state.exists() else "holds no saved epoch"
            raise FileNotFoundError(f"nothing to resume: {state} {what} (a run with --out {out} "
                                    f"keeps its training state there)")
        print(f"resuming from epoch {epochs[-1]} saved in {state}", flush=True)
        return state
    if every < 1:
        return None
    if epochs:
        raise FileExistsError(
            f"{state} holds the training state of an interrupted run (epochs "
            f"{', '.join(map(str, epochs))}); pass --resume with the same arguments to continue "
            f"it, or remove {state} to start afresh")
    return state


def _report_epoch(rec: dict) -> None:
    import os

    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in rec.items()}),
          flush=True)
    if os.environ.get("JIT_JAX_TEST_HANG_AFTER_EPOCH") == str(rec["epoch"]):
        # test hook (tests/test_resume.py): the epoch's training state is on disk; wait to be killed
        time.sleep(300)
        os._exit(3)


def _join_distributed(args) -> None:
    """``--distributed``: join the ``jax.distributed`` run (settings from JAX_COORDINATOR_ADDRESS,
    JAX_NUM_PROCESSES and JAX_PROCESS_ID, or a cluster jax detects) before any other jax use; with
    several processes the data-parallel mesh spans all their devices and only process 0 shows
    progress and writes files (docs/distributed.md)."""
    from jit_jax.parallel import initialize_distributed

    info = initialize_distributed()
    print(f"distributed: process {info['process_id']} of {info['num_processes']}, "
          f"{info['local_devices']} of {info['devices']} devices here", flush=True)
    if info["num_processes"] > 1:
        if args.devices not in (None, "all"):
            raise ValueError(f"--devices {args.devices} with --distributed over "
                             f"{info['num_processes']} processes; accepted: all (the default)")
        args.devices = "all"
        args.no_progress = args.no_progress or info["process_id"] != 0


#: scores of the untouched and the retrained model, per (role, checkpoint, forget request, seed,
#: split): a process that runs many methods on one original (experiments/paper/run.py) scores
#: each of the two once, not once per method. The checkpoint's metadata file time is part of the
#: key, so a checkpoint rewritten in place is scored again.
_SCORES: dict = {}


def _scores(role: str, path, args, compute):
    import copy

    meta = Path(path) / "metadata.json"
    key = (role, str(Path(path).resolve()), meta.stat().st_mtime_ns if meta.exists() else None,
           tuple(args.forget), args.seed, bool(args.validation))
    if key not in _SCORES:
        _SCORES[key] = compute()
    return copy.deepcopy(_SCORES[key])


def _skips_writing(args, out) -> bool:
    """True on the processes of a ``--distributed`` run other than process 0, which writes."""
    if not getattr(args, "distributed", False):
        return False
    import jax

    if jax.process_index() == 0:
        return False
    print(f"process {jax.process_index()}: done; process 0 writes {out}", flush=True)
    return True


def cmd_train(args) -> int:
    if args.distributed:
        _join_distributed(args)
    from jit_jax import checkpoint, recipes
    from jit_jax.data import load_dataset
    from jit_jax.models import ModelSpec
    from jit_jax.train import evaluate, train

    data_opts = parse_options(args.data_opt, "dataset")
    ds = load_dataset(_dataset_spec(args.dataset), **data_opts)
    if args.holdout:
        from jit_jax.data import holdout

        ds, _ = holdout(ds, args.holdout, seed=0)
    model_name, auto_opts = args.model, {}
    if model_name == "auto":
        model_name, auto_opts, why = recipes.default_model(len(ds.x_train), ds.image_shape)
        print(f"--model auto: {model_name} {auto_opts or ''}({why}; `jit-jax models` lists the "
              "others)", flush=True)
    model_opts = {**auto_opts,
                  **parse_options(args.model_opt, "model", _model_types(model_name))}
    if args.width is not None:
        model_opts["width"] = args.width
    spec = ModelSpec(model_name, ds.num_classes, ds.image_shape, model_opts)
    overrides = {k: v for k, v in {
        "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
        "optimizer": args.optimizer, "schedule": args.schedule, "weight_decay": args.weight_decay,
        "augment": args.augment, "momentum": args.momentum, "seed": args.seed,
    }.items() if v is not None}
    config = recipes.train_recipe(ds.name, model_name, num_train=len(ds.x_train)).replace(
        **overrides)
    if args.out:
        out = Path(args.out)
    elif args.resume:
        return _err("--resume needs --out: the checkpoint directory the interrupted run was to write")
    else:  # a free name, with no interrupted run's state beside it either
        base = out = DEFAULT_RUNS / f"{ds.name}-{model_name}"
        i = 1
        while out.exists() or _state_dir_of(out).exists():
            i += 1
            out = Path(f"{base}-{i}")
    if out.exists() and not args.overwrite and not args.resume:
        return _err(f"{out} already exists; choose another --out or pass --overwrite")
    state_dir = _train_state_dir(out, resume=args.resume, every=args.checkpoint_every,
                                 overwrite=args.overwrite)
    mesh = None
    if args.devices is not None:
        from jit_jax.parallel import mesh_from_flag

        mesh = mesh_from_flag(args.devices)
    prep = recipes.preprocess_fn(ds)
    x_train, y_train = prep(ds.x_train), ds.train_targets
    x_test, y_test = prep(ds.x_test), ds.test_targets
    model = spec.build(seed=config.seed)
    if args.vit_weights:
        from jit_jax.models import ViT, load_vit_npz

        if not isinstance(model, ViT):
            return _err(f"--vit-weights needs a ViT model (vit, vit_b16, vit_s16, vit_ti16), "
                        f"got --model {model_name}")
        if not Path(args.vit_weights).is_file():
            return _err(f"--vit-weights {args.vit_weights}: no such file")
        try:
            load_vit_npz(model, args.vit_weights, load_head=False)
        except (ValueError, OSError) as e:
            return _err(f"--vit-weights {args.vit_weights}: {e}")
        print(f"initialised from {args.vit_weights} (all but the head)", flush=True)
    print(f"dataset {ds!r}\nmodel {spec.name} {spec.options} ({spec.num_params():,} params)\n"
          f"recipe {config}", flush=True)
    t0 = time.perf_counter()
    if state_dir is not None and not args.resume:
        print(f"training state: {state_dir} (every {args.checkpoint_every} epoch(s); continue an "
              f"interrupted run with the same arguments and --resume)", flush=True)
    run_info = {"command": "train", "model_spec": spec.to_dict(), "vit_weights": args.vit_weights,
                "dataset": {"spec": _dataset_spec(args.dataset), "holdout": args.holdout or None,
                            "options": data_opts}}
    res = train(model, x_train, y_train, config, eval_data=(x_test, y_test),
                progress=not args.no_progress, eval_every=args.eval_every, mesh=mesh,
                callback=_report_epoch, state_dir=state_dir, resume=args.resume,
                checkpoint_every=max(args.checkpoint_every, 1), run_info=run_info)
    elapsed = time.perf_counter() - t0
    ev = evaluate(model, x_test, y_test)
    meta = {
        "kind": "trained",
        "dataset": {"spec": _dataset_spec(args.dataset), "name": ds.name, "target": ds.target,
                    "holdout": args.holdout or None, "options": data_opts},
        "class_names": list(ds.target_names),
        "normalisation": {"mean": list(ds.mean), "std": list(ds.std)},
        "train_config": config.to_dict(),
        # absolute, so that RTRN (which starts from it) finds it from any working directory
        "init": {"vit_weights": str(Path(args.vit_weights).absolute())} if args.vit_weights
        else None,
        "seed": config.seed,
        "metrics": {"test_accuracy": ev["accuracy"], "test_loss": ev["loss"],
                    "train_time_s": elapsed, "compile_time_s": res.compile_time},
        "train_devices": 1 if mesh is None else mesh.size,
        "history": res.history,
    }
    if _skips_writing(args, out):
        return 0
    path = checkpoint.save(out, model, spec, meta, overwrite=args.overwrite)
    if state_dir is not None:  # the final checkpoint is complete: the training state has served
        import shutil

        shutil.rmtree(state_dir, ignore_errors=True)
    print(f"test accuracy {ev['accuracy']:.2f}% after {elapsed:.1f}s "
          f"(compile ~{res.compile_time:.1f}s); checkpoint written to {path}")
    final = {**res.final, "test_accuracy": ev["accuracy"]}
    for w in recipes.training_warnings(final, ds.num_classes, spec.name, len(ds.x_train)):
        print(f"warning: {w}", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------------------------
# evaluate
# ------------------------------------------------------------------------------------------------
def load_run(path, *, validation: bool = False):
    """Restore a checkpoint and its dataset (the training set it saw; with ``validation`` the
    held-out part of the training data replaces the test set)."""
    from jit_jax import checkpoint
    from jit_jax.data import holdout, load_dataset

    model, meta = checkpoint.restore(path)
    dmeta = meta["dataset"]
    ds = load_dataset(dmeta["spec"], **dmeta.get("options", {}))
    if dmeta.get("target", "fine") != ds.target:
        ds = ds.with_target(dmeta["target"])
    if dmeta.get("holdout"):
        fit, val = holdout(ds, dmeta["holdout"], seed=0)
        ds = val if validation else fit
    elif validation:
        raise ValueError(f"{path} was trained without --holdout: it has no validation split")
    return model, meta, ds


def cmd_evaluate(args) -> int:
    from jit_jax import recipes
    from jit_jax.train import evaluate

    model, meta, ds = load_run(args.checkpoint, validation=args.validation)
    prep = recipes.preprocess_fn(ds)
    ev = evaluate(model, prep(ds.x_test), ds.test_targets)
    out = {"checkpoint": str(args.checkpoint), "dataset": ds.name, "test_accuracy": ev["accuracy"],
           "test_loss": ev["loss"], "n_test": ev["n"],
           "saved_test_accuracy": meta.get("metrics", {}).get("test_accuracy")}
    if args.forget:
        from jit_jax.data import parse_forget
        from jit_jax.metrics import evaluate_unlearning

        split = parse_forget(ds, args.forget, seed=args.seed)
        out["unlearning"] = evaluate_unlearning(model, ds, split, method=meta.get("method", "?"),
                                                preprocess=prep).to_dict()
    print(json.dumps(out, indent=2))
    return 0


# ------------------------------------------------------------------------------------------------
# unlearn
# ------------------------------------------------------------------------------------------------
def _metric_args_error(args) -> str | None:
    """--metrics and --shadows checked before anything runs: an unknown metric raises (naming the
    accepted ones); a bad --shadows is returned as the message."""
    from jit_jax.metrics import metric_names

    metric_names(args.metrics)
    if args.shadows is not None and args.shadows < 2:
        return (f"--shadows {args.shadows}; accepted: an integer >= 2 (16 or more for a "
                f"meaningful U-LiRA AUC)")
    return None


def cmd_unlearn(args) -> int:
    if args.distributed:
        if args.method not in ("jit", "rtrn", "rtrn_head"):
            return _err(f"--distributed applies to --method jit, rtrn or rtrn_head, not "
                        f"{args.method!r}")
        _join_distributed(args)
    from jit_jax import checkpoint, recipes, unlearn
    from jit_jax.data import parse_forget
    from jit_jax.metrics import evaluate_unlearning, retrain_distance
    from jit_jax.models import ModelSpec
    from jit_jax.train import TrainConfig

    out = Path(args.out)
    if out.exists() and not args.overwrite and not args.resume:
        return _err(f"{out} already exists; choose another --out or pass --overwrite")
    if out.absolute() == Path(args.checkpoint).absolute():
        return _err("--out must differ from --checkpoint: the source checkpoint is never overwritten")
    if args.method not in unlearn.METHODS:
        return _err(f"unknown method {args.method!r}; accepted: {', '.join(unlearn.METHODS)}")
    state_opt = {}  # rtrn, rtrn_head: resumable training state in OUT.partial/
    if args.resume and args.method not in ("rtrn", "rtrn_head"):
        return _err(f"--resume applies to --method rtrn or rtrn_head, not {args.method!r}")
    if args.method in ("rtrn", "rtrn_head"):
        state_dir = _train_state_dir(out, resume=args.resume, every=args.checkpoint_every,
                                     overwrite=args.overwrite)
        if state_dir is not None:
            state_opt = {"state_dir": state_dir, "resume": args.resume,
                         "checkpoint_every": args.checkpoint_every,
                         "run_info": {"command": "unlearn", "method": args.method,
                                      "forget": args.forget, "validation": args.validation,
                                      "source": str(Path(args.checkpoint).absolute())}}
    mesh_opt = {}
    if args.devices is not None:
        if args.method not in ("jit", "rtrn", "rtrn_head"):
            return _err(f"--devices applies to --method jit, rtrn or rtrn_head, not "
                        f"{args.method!r}")
        from jit_jax.parallel import mesh_from_flag

        mesh_opt["mesh"] = mesh_from_flag(args.devices)
    bad = _metric_args_error(args)
    if bad:
        return _err(bad)
    model, meta, ds = load_run(args.checkpoint, validation=args.validation)
    split = parse_forget(ds, args.forget, seed=args.seed)
    spec = ModelSpec.from_dict(meta["model"])
    prep = recipes.preprocess_fn(ds)
    if args.shadows and "train_config" not in meta:
        return _err(f"--shadows: {args.checkpoint} records no training recipe to train shadow "
                    f"models with (train it with `jit-jax train`)")
    req = unlearn.Request(model=model, dataset=ds, split=split, spec=spec,
                          train_config=TrainConfig.from_dict(meta["train_config"])
                          if "train_config" in meta else None,
                          seed=args.seed, preprocess=prep, progress=not args.no_progress,
                          init_weights=(meta.get("init") or {}).get("vit_weights"))
    options = parse_options(args.set, "method", unlearn.option_types(args.method))
    if args.paper:  # the authors' run for this task and model; --set still overrides
        from jit_jax.unlearn import paper

        options = {**paper.options(split.kind, spec.name, args.method), **options}
    res = unlearn.run(args.method, req, **options, **mesh_opt, **state_opt)
    if "chosen" in res.log and res.log["chosen"].get("mode") == "class":
        c = res.log["chosen"]
        print(f"auto chose class mode ({100 * c['label_share']:.0f}% of the forget set share one "
              f"label): {c['objective']} with per-tensor relative steps "
              + (", ".join(f"{s:g}" for s in c["steps"]) or "(none: already at the target)")
              + f"; stopped after {c['passes_run']} passes at forget accuracy "
              f"{c['forget_accuracy']:.1f}% (target {c['target']:g}%)", flush=True)
    elif "chosen" in res.log and res.log["chosen"].get("mode") == "random":
        c = res.log["chosen"]
        print(f"auto chose random mode (the most common label holds {100 * c['label_share']:.0f}% "
              f"of the forget set): {c['objective']} with per-tensor relative steps "
              + ", ".join(f"{s:g}" for s in c["steps"])
              + f"; stopped after {c['passes_run']} passes at forget accuracy "
              f"{c['forget_accuracy']:.1f}% (from {c['start']['acc']:.1f}%), mean confidence "
              f"{c['forget_confidence']:.4f} (from {c['start']['conf']:.4f})", flush=True)
    elif "chosen" in res.log:  # --method auto: what its rules chose
        c = res.log["chosen"]
        print(f"auto chose: sigma per sample {c['sigma_min']:.3g}..{c['sigma_max']:.3g} (median "
              f"{c['sigma_median']:.3g}; {c['sigma_rule']}), steps of {c['step_used']:g} x ||params|| "
              f"({c['norm']} norms),"
              f" batch {c['batch_size']}, N {c['num_samples']}; stopped after "
              f"{c['passes_run']} of {c['max_passes']} passes (lip ratio {c['lip_ratio']:g}, gap "
              f"peak {'on' if c['gap_peak'] else 'off'}, lip rise {c['lip_rise']:g}"
              + ("; the last pass undone" if c["passes_kept"] < c["passes_run"] else "") + ")"
              + (f"; {len(c['attempts'])} attempts, steps "
                 + ", ".join(f"{a['step']:g}" for a in c["attempts"])
                 if len(c["attempts"]) > 1 else ""),
              flush=True)
    extra = {"options": options, "source": str(args.checkpoint), "paper_setting": args.paper}
    if mesh_opt:
        extra["devices"] = mesh_opt["mesh"].size

    @functools.cache
    def rtrn_model():  # restored only when read: its scores may be cached (_scores), and the
        return load_run(args.rtrn, validation=args.validation)[0]  # "paper" metrics need none

    before = None
    if args.method != "bsln" or args.metrics != "paper":
        before = _scores("bsln", args.checkpoint, args, lambda: evaluate_unlearning(
            model, ds, split, method="bsln", preprocess=prep))
    shadows = None
    if args.shadows:
        from jit_jax.metrics import train_ulira_shadows

        print(f"U-LiRA: {args.shadows} shadow models (cached in {args.shadow_cache}) ...",
              flush=True)
        shadows = train_ulira_shadows(ds, split, spec, req.train_config, n_shadows=args.shadows,
                                      cache_dir=args.shadow_cache, preprocess=prep,
                                      init_weights=req.init_weights)
    result = evaluate_unlearning(res.model, ds, split, method=args.method, runtime=res.runtime,
                                 compile_time=res.compile_time, zero_shot=res.zero_shot,
                                 seed=args.seed, preprocess=prep, extra=extra,
                                 metrics=args.metrics,
                                 reference=rtrn_model() if args.rtrn and args.metrics != "paper"
                                 else None,
                                 original_forget_acc=before.forget_acc if before else None,
                                 shadows=shadows)
    if args.rtrn:
        rres = _scores("rtrn", args.rtrn, args, lambda: evaluate_unlearning(
            rtrn_model(), ds, split, method="rtrn", preprocess=prep))
        result.retrain_distance = retrain_distance(result, rres)
        result.extra["rtrn"] = rres.to_dict()
        rseed = checkpoint.load_metadata(args.rtrn).get("result", {}).get("seed")
        result.extra["rtrn_seed"] = rseed
        if rseed is not None and rseed != args.seed:
            print(f"warning: the --rtrn model was retrained with seed {rseed}, this run uses "
                  f"--seed {args.seed}; the protocol compares each seed with the RTRN of the same "
                  f"seed (docs/protocol.md)", file=sys.stderr)
    if args.method != "bsln":
        from jit_jax.metrics import sanity_warnings

        warnings = sanity_warnings(result, before, ds.num_classes)
        result.extra["original"] = {k: getattr(before, k) for k in
                                    ("retain_acc", "forget_acc", "test_acc", "mia")}
        if warnings:
            result.extra["warnings"] = warnings
    new_meta = {**{k: v for k, v in meta.items() if k not in ("history", "metrics")},
                "kind": "unlearned", "method": args.method, "forget": args.forget,
                "source_checkpoint": str(Path(args.checkpoint).absolute()),
                "metrics": {"test_accuracy": result.test_acc}, "result": result.to_dict(),
                "method_log": {k: v for k, v in res.log.items() if k != "history"}}
    if _skips_writing(args, out):
        return 0
    checkpoint.save(out, res.model, spec, new_meta, overwrite=args.overwrite)
    (out / "result.json").write_text(result.to_json())
    if state_opt:  # the retrained checkpoint is complete: its training state has served
        import shutil

        shutil.rmtree(state_opt["state_dir"], ignore_errors=True)
    print(result.to_json())
    print(f"checkpoint and result.json written to {out}")
    for w in result.extra.get("warnings", []):
        print(f"warning: {w}", file=sys.stderr)
    return 0


# ------------------------------------------------------------------------------------------------
# demo
# ------------------------------------------------------------------------------------------------
def _shape_arg(text: str) -> tuple[int, int, int]:
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"--input-shape {text!r}; accepted: H,W,C with positive integers, "
                         "e.g. 32,32,3")
    return shape


def time_train_step(spec, batch_size: int = 32, repeats: int = 3) -> float:
    """Median seconds of one training step of ``spec`` (compiled beforehand) on random data."""
    import numpy as np

    from jit_jax.train import TrainConfig, train

    rng = np.random.default_rng(0)
    x = rng.normal(size=(batch_size, *spec.input_shape)).astype(np.float32)
    y = rng.integers(0, spec.num_classes, batch_size).astype(np.int32)
    res = train(spec.build(0), x, y, TrainConfig(epochs=repeats + 1, batch_size=batch_size,
                                                 augment="none", optimizer="adam", lr=1e-4),
                progress=False)
    return res.warm_time / repeats


def cmd_models(args) -> int:
    from jit_jax import models

    shape = _shape_arg(args.input_shape)
    rows = []
    for name in models.available():
        try:
            spec = models.ModelSpec(name, args.num_classes, shape, {})
            params = f"{spec.num_params():,}"
        except ValueError as e:
            spec, params = None, f"n/a: {e}"
        row = f"{name:<18} {params:>14}  {models.NOTES.get(name, '')}"
        if args.time and spec is not None and name in args.time:
            row += f"  [train step of 32 here: {time_train_step(spec):.3f} s]"
        rows.append(row)
    print(f"models at input {shape[0]}x{shape[1]}x{shape[2]}, {args.num_classes} classes "
          "(parameters; what each suits):")
    print("\n".join(rows))
    print("\ntrain --model auto picks: the MLP under 5,000 training images; a ResNet18 of width 16 "
          "for larger sets of >= 32x32 images; the cnn below 32x32.")
    return 0


def cmd_demo(args) -> int:
    from jit_jax import demo

    bad = _metric_args_error(args)
    if bad:
        return _err(bad)
    demo.run_demo(out=Path(args.out), forget=args.forget, seeds=args.seeds, model=args.model,
                  progress=not args.no_progress, overwrite=args.overwrite, metrics=args.metrics,
                  shadows=args.shadows or 0, shadow_cache=args.shadow_cache)
    return 0


# ------------------------------------------------------------------------------------------------
# tune
# ------------------------------------------------------------------------------------------------
_TUNE_IN_PROCESS = {"dataset": "--dataset", "model": "--model", "model_opt": "--model-opt",
                    "holdout": "--holdout", "train_set": "--train-set"}


def cmd_tune(args) -> int:
    from jit_jax import tune

    if bool(args.checkpoint) != bool(args.rtrn):
        raise ValueError("--checkpoint and --rtrn go together (the original trained with "
                         "--holdout and its retrained model); without both, tune trains them here")
    given = [flag for k, flag in _TUNE_IN_PROCESS.items() if getattr(args, k) is not None]
    if args.checkpoint and given:
        raise ValueError(f"{', '.join(given)} apply when tune trains the references itself, not "
                         f"with --checkpoint/--rtrn")
    if args.checkpoint and len(args.forget) > 1:
        raise ValueError(f"--forget {' '.join(args.forget)}: with --checkpoint/--rtrn, accepted: "
                         f"one request (the one the --rtrn model was retrained without)")
    jit_options = parse_options(args.set, "JiT")
    train_options = parse_options(args.train_set, "training")
    holdout = 0.1 if args.holdout is None else args.holdout
    tune.check_search(args.sigma, args.lr, args.batch_size, num_samples=args.num_samples,
                      jit_options=jit_options, max_dr_drop=args.max_dr_drop,
                      holdout_fraction=None if args.checkpoint else holdout, seeds=args.seeds,
                      train_options=train_options)
    if args.checkpoint:
        model, meta, val = load_run(args.checkpoint, validation=True)
        rmodel, _, _ = load_run(args.rtrn, validation=True)
        default_out = f"tune-{Path(args.checkpoint).name}"
        argv = ["--checkpoint", str(args.checkpoint), "--rtrn", str(args.rtrn)]
    else:
        from jit_jax.data import load_dataset

        dataset, model_name = _dataset_spec(args.dataset or "digits"), args.model or "cnn"
        full = load_dataset(dataset)
        default_out = f"tune-{full.name}-{model_name}"
        argv = ["--dataset", dataset, "--model", model_name, "--holdout", str(holdout)]
        for flag, pairs in (("--model-opt", args.model_opt), ("--train-set", args.train_set)):
            for kv in pairs or []:
                argv += [flag, kv]
    out = Path(args.out) if args.out else _free_default(DEFAULT_RUNS / default_out)
    if out.exists() and not args.overwrite:
        return _err(f"{out} already exists; choose another --out or pass --overwrite")
    t0 = time.perf_counter()
    if args.checkpoint:
        from jit_jax.models import ModelSpec

        refs = tune.references_from_models(model, rmodel, val, ModelSpec.from_dict(meta["model"]),
                                           args.forget, args.seeds)
    else:
        refs = tune.references_in_process(full, model_name, args.forget, args.seeds,
                                          holdout_fraction=holdout,
                                          model_options=parse_options(args.model_opt, "model",
                                                                      _model_types(model_name)),
                                          train_options=train_options)
    found = tune.search(refs, args.sigma, args.lr, args.batch_size, num_samples=args.num_samples,
                        jit_options=jit_options, max_dr_drop=args.max_dr_drop)
    argv = ["tune", *argv, "--forget", *args.forget, "--seeds", *map(str, args.seeds),
            "--sigma", *map(repr, found.axes["sigma"]), "--lr", *map(repr, found.axes["lr"]),
            "--batch-size", *map(str, found.axes["batch_size"]),
            "--num-samples", str(args.num_samples)]
    for kv in args.set or []:
        argv += ["--set", kv]
    if args.max_dr_drop is not None:
        argv += ["--max-dr-drop", repr(args.max_dr_drop)]
    out.mkdir(parents=True, exist_ok=True)
    (out / "grid.json").write_text(json.dumps(found.to_dict(argv + ["--out", str(out)]), indent=2))
    fig = tune.plot_grid(found.rows, found.best, args.max_dr_drop)
    fig.savefig(out / "grid.png", dpi=120)
    print(f"total {time.perf_counter() - t0:.0f}s; grid.json and grid.png written to {out}")
    best = found.best
    if best is None:
        print("no setting chosen: every setting diverged" if args.max_dr_drop is None else
              f"no setting chosen: none kept its mean D_r drop within {args.max_dr_drop} points "
              f"without diverging")
        return 1
    print(f"best on validation: sigma {best['sigma']} lr {best['lr']} B {best['batch_size']} "
          f"(mean retrain distance {best['retrain_distance']:.2f}, mean D_r drop "
          f"{best['dr_drop']:.1f})")
    print(tune.set_line(best))
    return 0


# ------------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    from jit_jax.data.sources import datasets_help

    p = argparse.ArgumentParser(prog="jit-jax", description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model and write a checkpoint",
                       formatter_class=argparse.RawDescriptionHelpFormatter,
                       description="Train a classifier on a dataset and save an orbax checkpoint.\n\n"
                       "datasets:\n" + datasets_help() +
                       "\n\nexample: jit-jax train --dataset digits --model cnn --out runs/digits-cnn")
    t.add_argument("--dataset", default="digits", help="dataset spec (default: digits)")
    t.add_argument("--model", default="auto",
                   help="model name (`jit-jax models` lists them, with the input sizes each suits "
                   "and its speed here); auto (default): the MLP under 5,000 training images, a "
                   "CIFAR ResNet18 of width 16 for larger sets of >= 32x32 images, else the cnn")
    t.add_argument("--width", type=int, help="model width (cnn, resnet18, vgg*)")
    t.add_argument("--vit-weights", metavar="PATH",
                   help="start a ViT from a Google ViT .npz checkpoint (e.g. ViT-B/16 ImageNet-21k "
                   "for --model vit_b16): every weight but the classification head, which is "
                   "initialised fresh for this dataset's classes (models.load_vit_npz)")
    t.add_argument("--data-opt", action="append", metavar="KEY=VALUE",
                   help="dataset options, repeatable, kept in the checkpoint for evaluate/unlearn "
                   "(folder: image_size=N|HxW, grayscale=true|false, test_fraction=F; npz: "
                   "target=coarse, image_size=N|HxW)")
    t.add_argument("--model-opt", action="append", metavar="KEY=VALUE",
                   help="other model options, repeatable (e.g. stem=imagenet, depth=6)")
    t.add_argument("--out", help="checkpoint directory (default: runs/<dataset>-<model>, suffixed "
                   "-2, -3, ... if taken)")
    t.add_argument("--epochs", type=int)
    t.add_argument("--batch-size", type=int)
    t.add_argument("--lr", type=float, help="peak learning rate")
    t.add_argument("--optimizer", choices=["sgd", "adam", "adamw"])
    t.add_argument("--schedule", choices=["onecycle", "cosine", "constant"])
    t.add_argument("--momentum", type=float)
    t.add_argument("--weight-decay", type=float)
    t.add_argument("--augment", choices=["none", "crop", "crop_flip"])
    t.add_argument("--seed", type=int)
    t.add_argument("--holdout", type=float, default=0.0, metavar="FRACTION",
                   help="keep this stratified fraction of the training set out of training, as a "
                   "validation split for choosing unlearning hyperparameters (--validation)")
    t.add_argument("--eval-every", type=int, default=1, help="evaluate every N epochs")
    t.add_argument("--devices", metavar="N|all",
                   help="data-parallel: split each batch over the first N devices jax sees, or "
                   "all (the batch size must be a multiple); default: one device")
    t.add_argument("--distributed", action="store_true",
                   help="one of several processes (hosts) of a jax.distributed run: start every "
                   "process with the same arguments; settings from JAX_COORDINATOR_ADDRESS, "
                   "JAX_NUM_PROCESSES, JAX_PROCESS_ID or a TPU/SLURM cluster; each batch is split "
                   "over all their devices, process 0 writes (docs/distributed.md)")
    t.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    t.add_argument("--checkpoint-every", type=int, default=1, metavar="N",
                   help="save the full training state to OUT.partial/ every N epochs and after "
                   "the last (0: never); removed once OUT is written (default: 1)")
    t.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from OUT.partial/; give the same arguments "
                   "(a different recipe, model or data is refused)")
    t.add_argument("--no-progress", action="store_true")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("evaluate", help="evaluate a checkpoint on its dataset's test set",
                       description="Evaluate a checkpoint; with --forget also score the paper's "
                       "unlearning metrics (D_r, D_f, test acc, MIA) for that request.")
    e.add_argument("--checkpoint", required=True)
    e.add_argument("--forget", help="class:N|class:NAME|subclass:NAME|random:N")
    e.add_argument("--seed", type=int, default=0, help="seed of a random:N forget split")
    e.add_argument("--validation", action="store_true",
                   help="score on the held-out validation split (checkpoints trained with --holdout)")
    e.set_defaults(func=cmd_evaluate)

    u = sub.add_parser("unlearn", help="forget part of the training set with a method",
                       description="Run an unlearning method on a trained checkpoint and write the "
                       "new checkpoint plus result.json (D_r, D_f, test acc, MIA, runtime).")
    u.add_argument("--checkpoint", required=True, help="the trained model (never modified)")
    u.add_argument("--method", default="jit",
                   help="jit | auto (JiT with no settings to choose: sigma, steps and stopping "
                   "from the model and the forget set) | rtrn | rtrn_head | bsln, or one of the "
                   "paper's comparison methods: fntn | amn | ssd | bt | unsir | emmn | scrub | "
                   "bdsh | gkt (docs/peers.md), or an objective in JiT's loop: lipschitz | "
                   "jacobian_fro | curvature | jit_curvature | ga | npo | dpo | idkpo | graddiff "
                   "(jit_jax/unlearn/objectives.py; graddiff reads D_r; steps not tuned)")
    u.add_argument("--forget", required=True, help="class:N|class:NAME|subclass:NAME|random:N")
    u.add_argument("--out", required=True, help="new checkpoint directory")
    u.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="method options, e.g. --set sigma=1.0 --set lr=3e-3 --set batch_size=32")
    u.add_argument("--paper", action="store_true",
                   help="the authors' setting for this task and model instead of the project's "
                   "defaults (JiT: their sigma/lr/batch, gradients accumulated over the pass, "
                   "train mode; sub-class SSD/SCRUB/FNTN: batch 64, ...; jit_jax/unlearn/paper.py, "
                   "docs/protocol.md); --set still overrides")
    u.add_argument("--rtrn", help="a retrained checkpoint: adds the retrain distance")
    u.add_argument("--metrics", default="paper", metavar="paper|full|NAMES",
                   help="paper (default): D_r, D_f, test accuracy, the entropy MIA; full: also the "
                        "three-feature LR and SVC attacks and the loss-threshold attack (member "
                        "rate and AUC), output distances to --rtrn (KL, JS, argmax agreement on "
                        "the forget and test sets), relearn time, U-LiRA with --shadows; or "
                        "comma-separated names from: mia_lr3, mia_svc3, mia_threshold, "
                        "distances, relearn, ulira")
    u.add_argument("--shadows", type=int, metavar="N",
                   help="U-LiRA with N shadow models (the checkpoint's recipe, trained on the "
                        "retained data plus half of the forget and held-out candidates each; "
                        "cached in --shadow-cache); 16 or more")
    u.add_argument("--shadow-cache", default="runs/shadows", metavar="DIR",
                   help="where shadow models' statistics are cached (default: runs/shadows)")
    u.add_argument("--devices", metavar="N|all",
                   help="data-parallel: split each batch (forget batch for jit, training batch for "
                   "rtrn) over the first N devices jax sees, or all; default: one device")
    u.add_argument("--distributed", action="store_true",
                   help="jit, rtrn, rtrn_head: one of several processes of a jax.distributed run, "
                   "as for train (docs/distributed.md)")
    u.add_argument("--seed", type=int, default=0)
    u.add_argument("--validation", action="store_true",
                   help="score on the held-out validation split instead of the test set")
    u.add_argument("--overwrite", action="store_true")
    u.add_argument("--checkpoint-every", type=int, default=1, metavar="N",
                   help="rtrn, rtrn_head: save the training state to OUT.partial/ every N epochs "
                   "(0: never); removed once OUT is written (default: 1)")
    u.add_argument("--resume", action="store_true",
                   help="rtrn, rtrn_head: continue an interrupted retraining from OUT.partial/ "
                   "(same arguments)")
    u.add_argument("--no-progress", action="store_true")
    u.set_defaults(func=cmd_unlearn)

    m = sub.add_parser("models", help="the models, the input sizes each suits, its speed here",
                       description="List the registered models with their parameter count at an "
                       "input shape, what each suits, and (--time NAME ...) a measured training "
                       "step on this machine.")
    m.add_argument("--input-shape", default="32,32,3", metavar="H,W,C")
    m.add_argument("--num-classes", type=int, default=10)
    m.add_argument("--time", nargs="+", metavar="NAME", default=[],
                   help="time one training step (batch 32) of these models here")
    m.set_defaults(func=cmd_models)

    d = sub.add_parser("demo", help="the quickstart: digits, original, RTRN, JiT, the table",
                       description="Train the original and the retrained model on digits, run JiT, "
                       "print the paper's table and write it as markdown and JSON.")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--forget", default="class:3")
    d.add_argument("--seeds", type=int, default=3, help="repeats of RTRN and JiT (seeds 0..N-1)")
    d.add_argument("--model", default="mlp", help="mlp (default: JiT unlearns it selectively) or cnn")
    d.add_argument("--overwrite", action="store_true", help="replace the files of an earlier demo")
    d.add_argument("--metrics", default="paper", metavar="paper|full|NAMES",
                   help="the table's metrics, as `jit-jax unlearn --metrics` (full: stronger "
                        "membership attacks, output distances to RTRN, relearn time)")
    d.add_argument("--shadows", type=int, metavar="N",
                   help="with --metrics full: U-LiRA with N shadow models (16 or more)")
    d.add_argument("--shadow-cache", default="runs/shadows", metavar="DIR")
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(func=cmd_demo)

    n = sub.add_parser(
        "tune", help="choose JiT's sigma, lr and batch size on a validation split",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Grid-search JiT's sigma x lr x batch size on a stratified hold-out of the "
        "training set\n(the test set never informs the choice); a setting scores its mean retrain "
        "distance over the\nforget requests and seeds. Writes DIR/grid.json and DIR/grid.png (a "
        "heat map) and prints\nthe chosen setting as --set options for jit-jax unlearn.\n\n"
        "small data (trains the originals and RTRN here, on the fit part of the hold-out):\n"
        "  jit-jax tune --dataset digits --model mlp --forget class:0 class:5 --out runs/tune\n"
        "large data (checkpoints from jit-jax train --holdout F and unlearn --method rtrn):\n"
        "  jit-jax tune --checkpoint runs/cifar-r18 --rtrn runs/cifar-r18-rtrn-airplane \\\n"
        "      --forget class:airplane --sigma 0.25 0.5 1 --lr 7.5e-5 1.5e-4 3e-4\n\n"
        "default grid: JiT's defaults for the task and model (sigma0, lr0, B0) as sigma0 x "
        "{0.5, 1, 2},\nlr0 x {0.25, 0.5, 1, 2, 4}, batch size B0 (digits: sigma 0.5 1 2, lr 2e-3 "
        "... 3.2e-2, B 32).")
    n.add_argument("--forget", nargs="+", required=True, metavar="REQUEST",
                   help="forget requests scored together: class:N|class:NAME|subclass:NAME|random:N")
    n.add_argument("--seeds", type=int, nargs="+", default=[0],
                   help="seeds of the originals, RTRN and JiT (from checkpoints: of JiT only)")
    n.add_argument("--dataset", help="in-process: dataset spec (default: digits)")
    n.add_argument("--model", help="in-process: model name (default: cnn)")
    n.add_argument("--model-opt", action="append", metavar="KEY=VALUE",
                   help="in-process: model options, repeatable")
    n.add_argument("--holdout", type=float, metavar="FRACTION",
                   help="in-process: the stratified fraction of the training set held out for "
                   "scoring (default: 0.1)")
    n.add_argument("--train-set", action="append", metavar="KEY=VALUE",
                   help="in-process: override the training recipe of the originals and RTRN, "
                   "repeatable (e.g. epochs=10)")
    n.add_argument("--checkpoint", help="the original, trained with jit-jax train --holdout")
    n.add_argument("--rtrn", help="its retrained model for the forget request (jit-jax "
                   "unlearn --method rtrn), with --checkpoint")
    n.add_argument("--sigma", type=float, nargs="+", help="sigma grid (default: see above)")
    n.add_argument("--lr", type=float, nargs="+", help="lr grid (default: see above)")
    n.add_argument("--batch-size", type=int, nargs="+", help="batch size grid (default: JiT's)")
    n.add_argument("--num-samples", type=int, default=25, help="JiT's noise draws N (default 25)")
    n.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="other JiT options, repeatable (e.g. passes=2)")
    n.add_argument("--max-dr-drop", type=float, metavar="POINTS",
                   help="choose only among settings whose mean D_r drop from the untouched model is "
                   "at most this many points (default: no limit)")
    n.add_argument("--out", metavar="DIR", help="where grid.json and grid.png go (default: "
                   "runs/tune-<dataset>-<model> or runs/tune-<checkpoint name>, suffixed if taken)")
    n.add_argument("--overwrite", action="store_true", help="write into an existing --out")
    n.set_defaults(func=cmd_tune)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError, FileExistsError, FloatingPointError) as e:
        return _err(str(e))
    except Exception as e:
        from jit_jax.checkpoint import CheckpointError

        if isinstance(e, CheckpointError):
            return _err(str(e))
        raise


if __name__ == "__main__":
    sys.exit(main())
