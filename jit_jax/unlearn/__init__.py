"""Unlearning methods, one registry: ``run(name, model, dataset, split, ...)``.

Every method takes the trained model and a forget request and returns a new model; the source model
is never modified. ``zero_shot`` methods see only the model and the forget set.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
from flax import nnx

from jit_jax.data import Dataset, normalize
from jit_jax.data.splits import ForgetSplit
from jit_jax.models import ModelSpec
from jit_jax.parallel import data_mesh
from jit_jax.train import TrainConfig, predict
from jit_jax.unlearn import boundary, distill, finetune, gkt, noise, ssd
from jit_jax.unlearn import objectives as _objectives
from jit_jax.unlearn.baselines import reset_head, retrain
from jit_jax.unlearn.jit import (
    PRESETS,
    JiTConfig,
    jit_loss,
    jit_unlearn,
    jit_value_and_grad,
    preset,
)


@dataclasses.dataclass
class MethodOutput:
    model: nnx.Module
    runtime: float  # seconds, the method alone, compilation excluded
    compile_time: float
    zero_shot: bool
    log: dict


@dataclasses.dataclass(frozen=True)
class Method:
    name: str
    description: str
    zero_shot: bool
    fn: Callable[..., MethodOutput]


@dataclasses.dataclass(frozen=True)
class Request:
    """Everything a method may use. Zero-shot methods only read ``model`` and the forget set."""

    model: nnx.Module
    dataset: Dataset
    split: ForgetSplit
    spec: ModelSpec
    train_config: TrainConfig | None
    seed: int = 0
    preprocess: Callable[[np.ndarray], np.ndarray] | None = None
    progress: bool = False
    #: the pretrained weights (a ViT ``.npz``) the original was fine-tuned from, if any: RTRN
    #: then starts from them (all but the head), since retraining a fine-tuned model means redoing
    #: the fine-tuning without D_f, and BT's ``random_head`` teacher takes its backbone from them
    init_weights: str | None = None

    def inputs(self, idx: np.ndarray) -> np.ndarray:
        x = self.dataset.x_train[idx]
        if self.preprocess is not None:
            return self.preprocess(x)
        return normalize(x, self.dataset.mean, self.dataset.std)

    def forget_inputs(self) -> np.ndarray:
        return self.inputs(self.split.forget_idx)


def _bsln(req: Request, **options) -> MethodOutput:
    _no_options("bsln", options)
    return MethodOutput(nnx.clone(req.model), 0.0, 0.0, False, {})


def _retrain(req: Request, head_only: bool, mesh=None, state_dir=None, resume: bool = False,
             checkpoint_every: int = 1, run_info: dict | None = None, **options) -> MethodOutput:
    """Retrain on D_r; ``options`` override the recipe (TrainConfig fields). ``state_dir``,
    ``resume``, ``checkpoint_every``, ``run_info``: resumable training (``baselines.retrain``)."""
    if req.train_config is None:
        raise ValueError("retraining needs the original training recipe (train_config)")
    cfg = req.train_config.replace(**options, seed=req.seed)
    y = req.dataset.train_targets[req.split.retain_idx]
    if head_only:
        init = reset_head(req.model, req.seed)
    elif req.init_weights is not None:  # the original's own start: the pretrained backbone
        from jit_jax.models.vit import load_vit_npz

        if not Path(req.init_weights).is_file():
            raise FileNotFoundError(
                f"RTRN starts from the weights the original was fine-tuned from, "
                f"{req.init_weights!r} (the checkpoint's metadata names it), and that file is "
                f"missing: put it back at that path")
        init = load_vit_npz(req.spec.build(seed=req.seed), req.init_weights, load_head=False)
    else:
        init = None
    t0 = time.perf_counter()
    model, res = retrain(req.spec, req.inputs(req.split.retain_idx), y, cfg, seed=req.seed,
                         init_model=init, progress=req.progress, mesh=mesh, state_dir=state_dir,
                         resume=resume, checkpoint_every=checkpoint_every, run_info=run_info)
    wall = time.perf_counter() - t0
    log = {"train_wall_time": wall, "history": res.history, "config": cfg.to_dict()}
    if res.resumed_from:
        log["resumed_from_epoch"] = res.resumed_from
    return MethodOutput(model, res.warm_time, res.compile_time, False, log)


def default_jit_config(req: Request) -> JiTConfig:
    """The authors' preset for the task and model family, then the project's measured defaults for
    the dataset (``jit_jax.recipes.JIT_DEFAULTS``) where there are any."""
    from jit_jax import recipes

    cfg = preset(req.split.kind, req.spec.name)
    return cfg.replace(**recipes.jit_defaults(req.dataset.name, req.spec.name, req.split.kind))


def _jit(req: Request, mesh=None, **options) -> MethodOutput:
    """JiT with the request's defaults and ``options`` (JiTConfig fields); ``mesh`` (a
    ``jax.sharding.Mesh`` with a "data" axis, e.g. ``jit_jax.parallel.data_mesh()``) runs it
    data-parallel."""
    cfg = default_jit_config(req)
    cfg = cfg.replace(seed=req.seed, **options)
    model, log = jit_unlearn(req.model, req.forget_inputs(), cfg, mesh=mesh)
    return MethodOutput(model, log.runtime, log.compile_time, True,
                        {**log.to_dict(), "config": dataclasses.asdict(cfg)})


#: the update loop's settings an objective method takes (JiTConfig fields), with their types
LOOP_OPTIONS = {"lr": float, "batch_size": int, "passes": int, "train_mode": bool}


def objective_inputs(req: Request, needs: tuple[str, ...]) -> tuple[dict, dict]:
    """``(aux, retain)`` for ``jit_unlearn``: what an objective ``needs`` from the request (the
    forget labels, the original model's forget logits, the retain set's inputs and labels)."""
    aux, retain = {}, {}
    if "labels" in needs:
        aux["labels"] = req.dataset.train_targets[req.split.forget_idx].astype(np.int32)
    if "ref_logits" in needs:
        aux["ref_logits"] = predict(req.model, req.forget_inputs())
    if "retain_x" in needs:
        if len(req.split.retain_idx) == 0:
            raise ValueError("this objective reads the retain set, which is empty")
        retain["x"] = req.inputs(req.split.retain_idx)
        retain["y"] = req.dataset.train_targets[req.split.retain_idx].astype(np.int32)
    return aux, retain


def objective_method(name: str) -> Callable[..., MethodOutput]:
    """A method from objective ``name`` (``objectives.OBJECTIVES``): JiT's update loop minimising
    that objective instead of JiT's loss. The loop's settings: JiT's defaults for the task, then
    the objective's own (``Objective.loop``), then the user's. Options: :data:`LOOP_OPTIONS` and the
    objective's own."""
    from jit_jax.unlearn import objectives

    obj = objectives.OBJECTIVES[name]

    def call(req: Request, mesh=None, **options) -> MethodOutput:
        loop = {k: v for k, v in options.items() if k in LOOP_OPTIONS}
        own = {k: v for k, v in options.items() if k not in LOOP_OPTIONS}
        unknown = sorted(set(own) - set(obj.options))
        if unknown:
            raise ValueError(f"unknown option(s) {unknown} for method {name!r}; accepted: "
                             f"{sorted(LOOP_OPTIONS) + sorted(obj.options)}")
        cfg = default_jit_config(req).replace(seed=req.seed, **{**obj.loop, **loop})
        aux, retain = objective_inputs(req, obj.needs)
        model, log = jit_unlearn(req.model, req.forget_inputs(), cfg, mesh=mesh,
                                 value_and_grad=objectives.value_and_grad(obj, **own),
                                 aux=aux, retain=retain)
        config = {"objective": name, **{k: getattr(cfg, k) for k in LOOP_OPTIONS},
                  "seed": cfg.seed, **obj.options, **own}
        return MethodOutput(model, log.runtime, log.compile_time, obj.zero_shot,
                            {**log.to_dict(), "config": config})

    call.target = {**LOOP_OPTIONS, **{k: type(v) for k, v in obj.options.items()}}
    return call


def _auto(req: Request, mesh=None, **options) -> MethodOutput:
    """``--method auto``: JiT with sigma, step size and stopping chosen by rules that read only the
    model and the forget set (``jit_jax/unlearn/auto.py``); ``options`` override
    ``auto.AUTO_DEFAULTS`` (AutoConfig fields)."""
    from jit_jax.functional import functionalize
    from jit_jax.unlearn import auto

    cfg = dataclasses.replace(auto.AUTO_DEFAULTS, seed=req.seed)
    unknown = sorted(set(options) - {f.name for f in dataclasses.fields(cfg)})
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for method 'auto'; accepted: "
                         f"{[f.name for f in dataclasses.fields(cfg)]}")
    cfg = dataclasses.replace(cfg, **options)
    x = req.forget_inputs()
    forget_labels = req.dataset.train_targets[req.split.forget_idx].astype(np.int32)
    # rule 4 for a class or sub-class request; rule 5 (the same loop with a random-request stop)
    # for any other, unless random_rule is off
    mode = ("class" if auto.class_mode(forget_labels, cfg)
            else "random" if cfg.random_rule else None)
    if mode is not None:
        model, log, stop = auto.run_class_mode(req.model, x, forget_labels, cfg, mesh=mesh,
                                               mode=mode)
        chosen = {"mode": mode, "label_share": auto.label_share(forget_labels),
                  "objective": cfg.class_objective, "steps": stop.steps,
                  "trials": stop.trials,
                  "passes_run": log.passes_run, "forget_accuracy": stop.previous["acc"]}
        if mode == "class":
            chosen["target"] = cfg.class_target
        else:
            chosen.update(forget_confidence=stop.previous["conf"],
                          start={"acc": stop.first["acc"], "conf": stop.first["conf"]})
        return MethodOutput(model, log.runtime, log.compile_time, True,
                            {**log.to_dict(), "config": dataclasses.asdict(cfg),
                             "chosen": chosen})
    sigma, chosen = auto.chosen_settings(x, cfg, default_jit_config(req).sigma)
    chosen["mode"] = "smoothing"
    fn = functionalize(req.model)
    labels = np.argmax(predict(req.model, x), axis=-1)
    stats = auto.forget_stats_fn(fn.apply_fn, x, sigma, labels, cfg.num_checks, cfg.seed)
    first = stats(fn.params)
    step, attempts, runtime, compile_time = cfg.step, [], 0.0, 0.0
    for attempt in range(cfg.retries + 1):  # each attempt restarts from the original
        stop = auto.Stop(stats, first, cfg, fn.params)
        model, log = jit_unlearn(req.model, x, auto.jit_config(cfg), mesh=mesh,
                                 optimizer=auto.relative_steps(step, cfg.norm),
                                 aux={"sigma": sigma}, stop=stop)
        kept = log.passes_run - int(stop.undone)
        attempts.append({"step": step, "passes_run": log.passes_run, "passes_kept": kept})
        runtime, compile_time = runtime + log.runtime, compile_time + log.compile_time
        if not (stop.undone and kept == 0 and attempt < cfg.retries):
            break
        step *= auto.RETRY_FACTOR  # the first pass was undone: start again with a smaller step
    # (an undone last pass: the loop returned the parameters from before it)
    chosen.update(passes_run=log.passes_run, passes_kept=kept, step_used=step, attempts=attempts)
    return MethodOutput(model, runtime, compile_time, True,
                        {**log.to_dict(), "runtime": runtime, "compile_time": compile_time,
                         "config": dataclasses.asdict(cfg), "chosen": chosen})


def _no_options(name, options):
    if options:
        raise ValueError(f"method {name!r} takes no options, got {sorted(options)}")


def _peer(name: str, fn: Callable[..., MethodOutput]) -> Callable[..., MethodOutput]:
    """``fn(req, **options)`` with unknown option names reported as a ValueError."""
    import inspect

    accepted = [k for k in inspect.signature(fn).parameters if k != "req"]

    def call(req: Request, **options) -> MethodOutput:
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise ValueError(f"unknown option(s) {unknown} for method {name!r}; accepted: "
                             f"{accepted}")
        return fn(req, **options)

    call.target = fn
    return call


METHODS: dict[str, Method] = {
    "bsln": Method("bsln", "the original model, untouched", False, _bsln),
    "rtrn": Method("rtrn", "retrain from scratch on D_r with the original recipe (gold standard)",
                   False, lambda req, **o: _retrain(req, False, **o)),
    "rtrn_head": Method("rtrn_head", "the authors' retrain: reset only the classifier head, then "
                        "train on D_r", False, lambda req, **o: _retrain(req, True, **o)),
    "jit": Method("jit", "JiT: Lipschitz smoothing around each forget sample (zero-shot)", True,
                  _jit),
    "auto": Method("auto", "no hand-set settings: dpo with a growing relative step, stopped "
                   "for a class request at a forget accuracy of 5%, for any other once the forget "
                   "set's mean error has doubled (zero-shot)", True, _auto),
    # objectives in JiT's update loop (jit_jax/unlearn/objectives.py)
    **{name: Method(name, obj.description + ("" if obj.zero_shot else " (not zero-shot)"),
                    obj.zero_shot, objective_method(name))
       for name, obj in _objectives.OBJECTIVES.items()},
    # the paper's comparison methods (one module per family: finetune, ssd, distill, boundary,
    # noise, gkt)
    "fntn": Method("fntn", "fine-tune on D_r (5 epochs, SGD 0.02)", False,
                   _peer("fntn", finetune.finetune)),
    "amn": Method("amn", "amnesiac: D_f relabelled at random, trained with D_r (3 epochs, Adam)",
                  False, _peer("amn", finetune.amnesiac)),
    "ssd": Method("ssd", "selective synaptic dampening (importances on D_f and D)", False,
                  _peer("ssd", ssd.ssd)),
    "bt": Method("bt", "bad teacher: distil from a random teacher on D_f, the model on 30% of D_r",
                 False, _peer("bt", distill.bad_teacher)),
    "bdsh": Method("bdsh", "boundary shrink: fine-tune D_f on the labels one FGSM step away "
                   "(zero-shot)", True, _peer("bdsh", boundary.boundary_shrink)),
    "unsir": Method("unsir", "UNSIR: impair with error-maximising noise, repair on D_r samples "
                    "(full class)", False, _peer("unsir", noise.unsir)),
    "emmn": Method("emmn", "error-min/max noise: train on optimised noise only (zero-shot, full "
                   "class)", True, _peer("emmn", noise.emmn)),
    "scrub": Method("scrub", "SCRUB: max KL to the original on D_f, min CE + KL on D_r", False,
                    _peer("scrub", distill.scrub)),
    "gkt": Method("gkt", "gated knowledge transfer: a student distilled from the model on generated "
                  "images the model does not call the forget class (zero-shot, full class)", True,
                  _peer("gkt", gkt.gkt)),
}


def available() -> list[str]:
    return list(METHODS)


def option_types(name: str) -> dict:
    """``{option: declared type}`` of method ``name`` (what ``--set KEY=VALUE`` is converted to)."""
    from jit_jax.options import option_types as _types

    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; accepted: {', '.join(METHODS)}")
    if name == "jit":
        return _types(JiTConfig)
    if name == "auto":
        from jit_jax.unlearn.auto import AutoConfig
        return _types(AutoConfig)
    if name in ("rtrn", "rtrn_head"):
        return _types(TrainConfig)
    if name == "bsln":
        return {}
    return _types(getattr(METHODS[name].fn, "target", None))


def run(name: str, req: Request, **options) -> MethodOutput:
    """Run method ``name`` on ``req``; ``options`` override the method's defaults."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; accepted: {', '.join(METHODS)}")
    return METHODS[name].fn(req, **options)


__all__ = ["METHODS", "PRESETS", "JiTConfig", "Method", "MethodOutput", "Request", "available",
           "data_mesh", "jit_loss", "jit_unlearn", "jit_value_and_grad", "objective_method",
           "option_types", "preset", "run"]
