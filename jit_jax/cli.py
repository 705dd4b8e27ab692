"""The ``jit-jax`` command: train, evaluate, unlearn, demo.

    jit-jax train --dataset digits --model cnn --out runs/digits-cnn
    jit-jax evaluate --checkpoint runs/digits-cnn
    jit-jax unlearn --checkpoint runs/digits-cnn --method jit --forget class:3 --out runs/forget3
    jit-jax demo

This module and ``experiments/`` are the only places that read or write files.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

DEFAULT_RUNS = Path("runs")


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def _parse_value(v: str):
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    low = v.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    return v


def parse_options(pairs: list[str] | None, what: str) -> dict:
    """``["width=16", "stem=cifar"]`` -> ``{"width": 16, "stem": "cifar"}``."""
    out = {}
    for p in pairs or []:
        if "=" not in p:
            raise SystemExit(f"error: {what} option {p!r} must look like key=value")
        k, v = p.split("=", 1)
        out[k.strip().replace("-", "_")] = _parse_value(v.strip())
    return out


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
def cmd_train(args) -> int:
    from jit_jax import checkpoint, recipes
    from jit_jax.data import load_dataset
    from jit_jax.models import ModelSpec
    from jit_jax.train import evaluate, train

    ds = load_dataset(_dataset_spec(args.dataset))
    if args.holdout:
        from jit_jax.data import holdout

        ds, _ = holdout(ds, args.holdout, seed=0)
    model_opts = parse_options(args.model_opt, "model")
    if args.width is not None:
        model_opts["width"] = args.width
    spec = ModelSpec(args.model, ds.num_classes, ds.image_shape, model_opts)
    overrides = {k: v for k, v in {
        "epochs": args.epochs, "batch_size": args.batch_size, "lr": args.lr,
        "optimizer": args.optimizer, "schedule": args.schedule, "weight_decay": args.weight_decay,
        "augment": args.augment, "momentum": args.momentum, "seed": args.seed,
    }.items() if v is not None}
    config = recipes.train_recipe(ds.name, args.model).replace(**overrides)
    out = Path(args.out) if args.out else _free_default(DEFAULT_RUNS / f"{ds.name}-{args.model}")
    if out.exists() and not args.overwrite:
        return _err(f"{out} already exists; choose another --out or pass --overwrite")
    mesh = None
    if args.devices is not None:
        from jit_jax.parallel import mesh_from_flag

        mesh = mesh_from_flag(args.devices)
    prep = recipes.preprocess_fn(ds)
    x_train, y_train = prep(ds.x_train), ds.train_targets
    x_test, y_test = prep(ds.x_test), ds.test_targets
    model = spec.build(seed=config.seed)
    print(f"dataset {ds!r}\nmodel {spec.name} {spec.options} ({spec.num_params():,} params)\n"
          f"recipe {config}", flush=True)
    t0 = time.perf_counter()
    res = train(model, x_train, y_train, config, eval_data=(x_test, y_test),
                progress=not args.no_progress, eval_every=args.eval_every, mesh=mesh,
                callback=lambda r: print(json.dumps({k: round(v, 4) if isinstance(v, float) else v
                                                     for k, v in r.items()}), flush=True))
    elapsed = time.perf_counter() - t0
    ev = evaluate(model, x_test, y_test)
    meta = {
        "kind": "trained",
        "dataset": {"spec": _dataset_spec(args.dataset), "name": ds.name, "target": ds.target,
                    "holdout": args.holdout or None},
        "class_names": list(ds.target_names),
        "normalisation": {"mean": list(ds.mean), "std": list(ds.std)},
        "train_config": config.to_dict(),
        "seed": config.seed,
        "metrics": {"test_accuracy": ev["accuracy"], "test_loss": ev["loss"],
                    "train_time_s": elapsed, "compile_time_s": res.compile_time},
        "train_devices": 1 if mesh is None else mesh.size,
        "history": res.history,
    }
    path = checkpoint.save(out, model, spec, meta, overwrite=args.overwrite)
    print(f"test accuracy {ev['accuracy']:.2f}% after {elapsed:.1f}s "
          f"(compile ~{res.compile_time:.1f}s); checkpoint written to {path}")
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
    ds = load_dataset(dmeta["spec"])
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
def cmd_unlearn(args) -> int:
    from jit_jax import checkpoint, recipes, unlearn
    from jit_jax.data import parse_forget
    from jit_jax.metrics import evaluate_unlearning, retrain_distance
    from jit_jax.models import ModelSpec
    from jit_jax.train import TrainConfig

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        return _err(f"{out} already exists; choose another --out or pass --overwrite")
    if out.absolute() == Path(args.checkpoint).absolute():
        return _err("--out must differ from --checkpoint: the source checkpoint is never overwritten")
    if args.method not in unlearn.METHODS:
        return _err(f"unknown method {args.method!r}; accepted: {', '.join(unlearn.METHODS)}")
    mesh_opt = {}
    if args.devices is not None:
        if args.method not in ("jit", "rtrn", "rtrn_head"):
            return _err(f"--devices applies to --method jit, rtrn or rtrn_head, not "
                        f"{args.method!r}")
        from jit_jax.parallel import mesh_from_flag

        mesh_opt["mesh"] = mesh_from_flag(args.devices)
    model, meta, ds = load_run(args.checkpoint, validation=args.validation)
    split = parse_forget(ds, args.forget, seed=args.seed)
    spec = ModelSpec.from_dict(meta["model"])
    prep = recipes.preprocess_fn(ds)
    req = unlearn.Request(model=model, dataset=ds, split=split, spec=spec,
                          train_config=TrainConfig.from_dict(meta["train_config"])
                          if "train_config" in meta else None,
                          seed=args.seed, preprocess=prep, progress=not args.no_progress)
    options = parse_options(args.set, "method")
    res = unlearn.run(args.method, req, **options, **mesh_opt)
    extra = {"options": options, "source": str(args.checkpoint)}
    if mesh_opt:
        extra["devices"] = mesh_opt["mesh"].size
    result = evaluate_unlearning(res.model, ds, split, method=args.method, runtime=res.runtime,
                                 compile_time=res.compile_time, zero_shot=res.zero_shot,
                                 seed=args.seed, preprocess=prep, extra=extra)
    if args.rtrn:
        rmodel, _, _ = load_run(args.rtrn, validation=args.validation)
        rres = evaluate_unlearning(rmodel, ds, split, method="rtrn", preprocess=prep)
        result.retrain_distance = retrain_distance(result, rres)
        result.extra["rtrn"] = rres.to_dict()
    new_meta = {**{k: v for k, v in meta.items() if k not in ("history", "metrics")},
                "kind": "unlearned", "method": args.method, "forget": args.forget,
                "source_checkpoint": str(Path(args.checkpoint).absolute()),
                "metrics": {"test_accuracy": result.test_acc}, "result": result.to_dict(),
                "method_log": {k: v for k, v in res.log.items() if k != "history"}}
    checkpoint.save(out, res.model, spec, new_meta, overwrite=args.overwrite)
    (out / "result.json").write_text(result.to_json())
    print(result.to_json())
    print(f"checkpoint and result.json written to {out}")
    return 0


# ------------------------------------------------------------------------------------------------
# demo
# ------------------------------------------------------------------------------------------------
def cmd_demo(args) -> int:
    from jit_jax import demo

    demo.run_demo(out=Path(args.out), forget=args.forget, seeds=args.seeds, model=args.model,
                  progress=not args.no_progress, overwrite=args.overwrite)
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
    t.add_argument("--model", default="cnn", help="model name (see jit_jax.models.available())")
    t.add_argument("--width", type=int, help="model width (cnn, resnet18, vgg*)")
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
    t.add_argument("--overwrite", action="store_true", help="replace an existing --out")
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
                   help="jit | rtrn | rtrn_head | bsln, or one of the paper's comparison methods: "
                   "fntn | amn | ssd | bt | unsir | emmn | scrub | bdsh | gkt (docs/peers.md)")
    u.add_argument("--forget", required=True, help="class:N|class:NAME|subclass:NAME|random:N")
    u.add_argument("--out", required=True, help="new checkpoint directory")
    u.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="method options, e.g. --set sigma=1.0 --set lr=3e-3 --set batch_size=32")
    u.add_argument("--rtrn", help="a retrained checkpoint: adds the retrain distance")
    u.add_argument("--devices", metavar="N|all",
                   help="data-parallel: split each batch (forget batch for jit, training batch for "
                   "rtrn) over the first N devices jax sees, or all; default: one device")
    u.add_argument("--seed", type=int, default=0)
    u.add_argument("--validation", action="store_true",
                   help="score on the held-out validation split instead of the test set")
    u.add_argument("--overwrite", action="store_true")
    u.add_argument("--no-progress", action="store_true")
    u.set_defaults(func=cmd_unlearn)

    d = sub.add_parser("demo", help="the quickstart: digits, original, RTRN, JiT, the table",
                       description="Train the original and the retrained model on digits, run JiT, "
                       "print the paper's table and write it as markdown and JSON.")
    d.add_argument("--out", default="runs/demo")
    d.add_argument("--forget", default="class:3")
    d.add_argument("--seeds", type=int, default=3, help="repeats of RTRN and JiT (seeds 0..N-1)")
    d.add_argument("--model", default="mlp", help="mlp (default: JiT unlearns it selectively) or cnn")
    d.add_argument("--overwrite", action="store_true", help="replace the files of an earlier demo")
    d.add_argument("--no-progress", action="store_true")
    d.set_defaults(func=cmd_demo)
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
