"""Supervised training and evaluation (optax, jit), for original models and for retraining (RTRN).

``train(model, x, y, config)`` trains an NNX model in place on normalised float inputs and returns
its per-epoch history; ``evaluate`` / ``predict`` run it in eval mode in fixed-size padded batches (one
compile per model). Training is seeded and deterministic (shuffling, augmentation and dropout keys all
derive from ``config.seed``), and stops with a clear error as soon as a loss or gradient is NaN or inf.

With ``state_dir`` the full training state is saved every ``checkpoint_every`` epochs and
``resume=True`` continues an interrupted run from the latest one, to the same final parameters, bit
for bit on the same machine, as a run that was never interrupted (see :func:`train`).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh

from jit_jax.data.transforms import random_crop_flip
from jit_jax.parallel import data_shardings, host_local, is_multiprocess, replicate, shard_batch

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("onecycle", "cosine", "constant")
AUGMENTS = ("none", "crop", "crop_flip")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A training recipe. Defaults follow the authors' base-model recipe (SGD 0.1, momentum 0.9,
    weight decay 5e-4, one-cycle schedule, crop + flip augmentation)."""

    epochs: int = 20
    batch_size: int = 128
    optimizer: str = "sgd"
    lr: float = 0.1  # peak learning rate
    momentum: float = 0.9
    weight_decay: float = 5e-4  # coupled (added to the gradient), as torch's SGD/Adam
    schedule: str = "onecycle"
    warmup_frac: float = 0.25  # one-cycle: fraction of steps rising; cosine: linear warm-up
    augment: str = "crop_flip"
    pad: int = 4  # random-crop padding, pixels
    label_smoothing: float = 0.0
    grad_clip: float | None = None
    seed: int = 0

    def __post_init__(self):
        checks = [
            (self.epochs >= 1, "epochs", "an integer >= 1"),
            (self.batch_size >= 1, "batch_size", "an integer >= 1"),
            (self.optimizer in OPTIMIZERS, "optimizer", OPTIMIZERS),
            (self.schedule in SCHEDULES, "schedule", SCHEDULES),
            (self.augment in AUGMENTS, "augment", AUGMENTS),
            (self.lr > 0 and math.isfinite(self.lr), "lr", "a finite number > 0"),
            (0 <= self.warmup_frac < 1, "warmup_frac", "[0, 1)"),
            (self.weight_decay >= 0, "weight_decay", ">= 0"),
            (0 <= self.label_smoothing < 1, "label_smoothing", "[0, 1)"),
        ]
        for ok, name, accepted in checks:
            if not ok:
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)!r}; accepted: {accepted}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> TrainConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown training option(s) {sorted(unknown)}; accepted: {sorted(names)}")
        return cls(**d)

    def replace(self, **kw) -> TrainConfig:
        return TrainConfig.from_dict({**self.to_dict(), **kw})


def make_schedule(config: TrainConfig, total_steps: int) -> optax.Schedule:
    if config.schedule == "constant":
        return optax.constant_schedule(config.lr)
    if config.schedule == "onecycle":  # torch OneCycleLR defaults: div 25, final div 1e4, cosine
        return optax.cosine_onecycle_schedule(
            total_steps, config.lr, pct_start=max(config.warmup_frac, 1e-6), div_factor=25.0,
            final_div_factor=1e4)
    warm = int(config.warmup_frac * total_steps)
    return optax.warmup_cosine_decay_schedule(0.0, config.lr, warm, max(total_steps, warm + 1))


def make_optimizer(config: TrainConfig, total_steps: int) -> optax.GradientTransformation:
    sched = make_schedule(config, total_steps)
    parts = []
    if config.grad_clip:
        parts.append(optax.clip_by_global_norm(config.grad_clip))
    if config.optimizer == "adamw":
        parts.append(optax.adamw(sched, weight_decay=config.weight_decay))
        return optax.chain(*parts)
    if config.weight_decay:
        parts.append(optax.add_decayed_weights(config.weight_decay))
    if config.optimizer == "sgd":
        parts.append(optax.sgd(sched, momentum=config.momentum or None))
    else:
        parts.append(optax.adam(sched))
    return optax.chain(*parts)


@functools.lru_cache(maxsize=8)
def _cached_optimizer(config: TrainConfig, total_steps: int) -> optax.GradientTransformation:
    """``make_optimizer``, one object per (config, steps): the optimiser is a static part of the
    jitted step, so ``train`` called again with the same recipe reuses its compiled step."""
    return make_optimizer(config, total_steps)


def cross_entropy(logits: jax.Array, labels: jax.Array, smoothing: float = 0.0) -> jax.Array:
    onehot = jax.nn.one_hot(labels, logits.shape[-1])
    if smoothing:
        onehot = optax.smooth_labels(onehot, smoothing)
    return optax.softmax_cross_entropy(logits, onehot)


def _augment(key, x, config: TrainConfig):
    if config.augment == "none" or x.ndim != 4:
        return x
    return random_crop_flip(key, x, pad=config.pad, flip=config.augment == "crop_flip")


@nnx.jit(static_argnames=("config",))
def _train_step(model, optimizer, x, y, key, config: TrainConfig):
    x = _augment(key, x, config)

    def loss_fn(m):
        logits = m(x)
        return cross_entropy(logits, y, config.label_smoothing).mean(), logits

    (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    optimizer.update(model, grads)
    return {
        "loss": loss,
        "accuracy": jnp.mean(jnp.argmax(logits, -1) == y),
        "grad_norm": optax.tree.norm(grads),
    }


@nnx.jit
def _forward(model, x):
    return model(x)


def predict(model: nnx.Module, x: np.ndarray, *, batch_size: int = 500) -> np.ndarray:
    """Logits of ``model`` in eval mode for all of ``x``, in padded fixed-size batches:
    ``batch_size`` images, or the next power of two of ``len(x)`` (at least 64) when that is
    smaller.

    The model's train/eval mode is restored afterwards."""
    n = len(x)
    if n == 0:
        return np.zeros((0, 0), np.float32)
    # a set smaller than one batch is padded to the next power of two, at least 64, so that sets
    # of many sizes share a few compiled programs (at most twice the work on the last batch of a
    # set over 64, at most 64 rows for a smaller one)
    b = min(batch_size, max(64, 1 << (n - 1).bit_length()))
    was_training = _is_training(model)
    model.eval()
    outs = []
    try:
        for s in range(0, n, b):
            xb = np.asarray(x[s:s + b], np.float32)
            m = len(xb)
            if m < b:
                xb = np.concatenate([xb, np.repeat(xb[:1], b - m, 0)])
            outs.append(np.asarray(_forward(model, jnp.asarray(xb)))[:m])
    finally:
        if was_training:
            model.train()
    return np.concatenate(outs)


def _is_training(model: nnx.Module) -> bool:
    for _, m in nnx.iter_graph(model):
        if isinstance(m, nnx.Dropout):
            return not m.deterministic
        if isinstance(m, nnx.BatchNorm):
            return not m.use_running_average
    return False


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    """Percentage of argmax predictions equal to the labels (NaN for an empty set)."""
    if len(labels) == 0:
        return float("nan")
    return float(100.0 * np.mean(np.argmax(logits, -1) == np.asarray(labels)))


def evaluate(model: nnx.Module, x: np.ndarray, y: np.ndarray, *, batch_size: int = 500) -> dict:
    """Accuracy (%) and mean cross-entropy of ``model`` (eval mode) on ``(x, y)``."""
    logits = predict(model, x, batch_size=batch_size)
    if len(y) == 0:
        return {"accuracy": float("nan"), "loss": float("nan"), "n": 0}
    loss = float(np.mean(cross_entropy(jnp.asarray(logits), jnp.asarray(y))))
    return {"accuracy": accuracy(logits, y), "loss": loss, "n": int(len(y))}


@dataclasses.dataclass
class TrainResult:
    history: list[dict]
    train_time: float  # wall seconds, compilation and evaluation included
    final: dict  # last epoch's record
    compile_time: float = 0.0  # first step's time minus the median step time (an estimate)
    warm_time: float = 0.0  # the training steps alone, compile and evaluation excluded
    resumed_from: int = 0  # the epoch a resumed run restored (0: trained from the start)


def _check_inputs(x, y, num_classes: int | None):
    if len(x) != len(y):
        raise ValueError(f"x has {len(x)} samples but y has {len(y)}")
    if len(x) == 0:
        raise ValueError("cannot train on an empty set")
    if not np.all(np.isfinite(x)):
        raise ValueError("training inputs contain NaN or inf")
    if num_classes is not None and (y.min() < 0 or y.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}), got [{y.min()}, {y.max()}]")


def compile_estimate(step_times: list[float], first: list[int]) -> float:
    """Compile time of a loop of jitted steps: the steps at indices ``first`` (the first of each
    compiled shape) minus the median of the others, summed (never below 0)."""
    warm = [t for i, t in enumerate(step_times) if i not in set(first)]
    median = float(np.median(warm)) if warm else 0.0
    return sum(max(step_times[i] - median, 0.0) for i in first)


def _state_arrays(model: nnx.Module, optimizer: nnx.Optimizer, key: jax.Array) -> dict:
    """All a run carries from one epoch to the next, as arrays: the model's whole state
    (parameters, BatchNorm statistics, dropout RNG streams), the optimiser's (moments and the step
    count that drives the schedule) and the JAX key of the augmentation stream."""
    return {"model": nnx.to_pure_dict(nnx.state(model)),
            "optimizer": nnx.to_pure_dict(nnx.state(optimizer)), "key": key}


def _load_state_arrays(model: nnx.Module, optimizer: nnx.Optimizer, arrays: dict) -> jax.Array:
    """Put ``_state_arrays``' output back into ``model`` and ``optimizer``; returns the key."""
    for obj, name in ((model, "model"), (optimizer, "optimizer")):
        state = nnx.state(obj)
        nnx.replace_by_pure_dict(state, arrays[name])
        nnx.update(obj, state)
    return arrays["key"]


def _run_fingerprint(model: nnx.Module, x: np.ndarray, y: np.ndarray, config: TrainConfig,
                     batch: int, drop_last: bool, run_info: dict | None) -> dict:
    """What must not change between an interrupted run and its resumption (JSON)."""
    digest = hashlib.sha256(np.ascontiguousarray(x).data)
    digest.update(np.ascontiguousarray(y).data)
    flat, _ = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(nnx.state(model)))
    arrays = {"/".join(str(getattr(k, "key", k)) for k in kp): f"{tuple(leaf.shape)} {leaf.dtype}"
              for kp, leaf in flat}
    fp = {"config": config.to_dict(),
          "data": {"n": len(x), "sample_shape": list(x.shape[1:]),
                   "sha256": digest.hexdigest()[:16]},
          "batch": {"size": batch, "drop_last": drop_last},
          "model": {"class": type(model).__name__, "arrays": arrays},
          "run_info": run_info or {}}
    return json.loads(json.dumps(fp))  # as it reads back from the saved JSON


def _differences(saved: dict, now: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(saved) | set(now)):
        a, b = saved.get(k, "<absent>"), now.get(k, "<absent>")
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: saved {a!r}, now {b!r}")
    return out


def train(model: nnx.Module, x_train: np.ndarray, y_train: np.ndarray, config: TrainConfig, *,
          eval_data: tuple[np.ndarray, np.ndarray] | None = None, progress: bool = True,
          eval_every: int = 1, callback: Callable[[dict], None] | None = None,
          mesh: Mesh | None = None, data_axis: str = "data",
          drop_last: bool = True, state_dir: str | Path | None = None, checkpoint_every: int = 1,
          resume: bool = False, run_info: dict | None = None) -> TrainResult:
    """Train ``model`` in place on normalised ``x_train`` with integer ``y_train``.

    One jitted step per batch (the last, incomplete batch of each epoch is dropped so one shape is
    compiled; with fewer samples than ``batch_size`` the batch is the whole set).
    ``drop_last=False`` keeps it, as torch's DataLoader does by default (a second compiled shape,
    counted in ``compile_time``). Raises ``FloatingPointError`` when the loss or the gradient norm
    becomes NaN or inf.

    ``mesh`` (e.g. :func:`jit_jax.parallel.data_mesh`) trains data-parallel: every batch is split
    over the mesh axis ``data_axis`` and the model and optimiser state are replicated (BatchNorm
    statistics are then those of the whole batch, as on one device). ``batch_size`` must be a
    multiple of that axis's size. A mesh over several processes' devices (after
    :func:`jit_jax.parallel.initialize_distributed`) needs every process to call ``train`` with the
    same data and config: each reads only its devices' rows of each batch, and the model comes back
    holding process-local copies of the (replicated) result (docs/distributed.md).

    ``state_dir`` saves the full training state after every ``checkpoint_every``-th epoch and after
    the last (:class:`jit_jax.checkpoint.TrainingState`, the last two kept): the model's state
    (parameters, BatchNorm statistics, dropout RNG streams), the optimiser's (its step count drives
    the schedule), the numpy shuffling generator, the JAX key, the step and epoch counters, the
    history, and a fingerprint of the run (``config``, data size, shape and digest, the model's
    arrays, batch size, ``run_info``: any JSON the caller adds, e.g. the model spec). Each save
    happens before ``callback`` sees the epoch's record. ``resume=True`` restores the latest saved
    epoch and continues; the final state is then bit for bit that of an uninterrupted run on the
    same machine. It raises ``FileNotFoundError`` when ``state_dir`` holds nothing, and
    ``ValueError`` naming each difference when the run differs from the saved one; without
    ``resume``, a ``state_dir`` that already holds a run raises ``FileExistsError``. The caller
    removes ``state_dir`` once it no longer needs it. A run resumed after its last epoch only
    restores the final state. ``history[i]["time"]``, ``train_time``, ``compile_time`` and
    ``warm_time`` add up the sessions.
    """
    x_train = np.asarray(x_train, np.float32)
    y_train = np.asarray(y_train, np.int32)
    _check_inputs(x_train, y_train, None)
    if checkpoint_every < 1:
        raise ValueError(f"checkpoint_every={checkpoint_every!r}; accepted: an integer >= 1")
    if resume and state_dir is None:
        raise ValueError("resume=True needs state_dir, the interrupted run's training-state "
                         "directory")
    n = len(x_train)
    b = min(config.batch_size, n)

    def place(a, rows):
        return jnp.asarray(a[rows])

    if mesh is not None:
        rep, bat = data_shardings(mesh, data_axis)
        nd = mesh.shape[data_axis]
        if config.batch_size % nd:
            raise ValueError(f"batch_size={config.batch_size} does not split over the {nd} devices "
                             f"of mesh axis {data_axis!r}; accepted: a multiple of {nd}")
        if b < nd:
            raise ValueError(f"{n} training samples cannot fill one batch on {nd} devices")
        b -= b % nd  # a whole training set smaller than batch_size

        def place(a, rows):  # each process reads only its devices' rows (docs/distributed.md)
            return shard_batch(a, bat, rows)
    if not drop_last and mesh is not None and n % b:
        raise ValueError(f"drop_last=False with a mesh: {n} samples leave a last batch of "
                         f"{n % b} that does not split over the devices; accepted: drop_last=True")
    starts = list(range(0, n - b + 1, b)) if drop_last else list(range(0, n, b))
    steps_per_epoch = len(starts)
    total = steps_per_epoch * config.epochs
    # compilation: the first step of each batch shape (a full batch; a last, partial one)
    first_steps = [0] + ([steps_per_epoch - 1] if starts[-1] + b > n else [])
    optimizer = nnx.Optimizer(model, _cached_optimizer(config, total), wrt=nnx.Param)
    if mesh is not None:
        nnx.update((model, optimizer), replicate(nnx.state((model, optimizer)), rep))
    rng = np.random.default_rng(config.seed)
    key = jax.random.key(config.seed)
    if mesh is not None:
        key = replicate(key, rep)
    history: list[dict] = []
    step = 0
    first_epoch = 1
    earlier = {"compile_time": 0.0, "warm_time": 0.0}  # of the sessions before a resume
    saver = None
    if state_dir is not None:
        from jit_jax.checkpoint import TrainingState

        fingerprint = _run_fingerprint(model, x_train, y_train, config, b, drop_last, run_info)
        saver = TrainingState(state_dir)
        try:
            latest = saver.latest_epoch()
            if resume:
                if latest is None:
                    raise FileNotFoundError(f"nothing to resume: no training state saved in "
                                            f"{saver.directory}")
                info = saver.info(latest)
                diffs = _differences(info.get("run", {}), fingerprint)
                if diffs:
                    raise ValueError(
                        f"cannot resume from {saver.directory} (epoch {latest}): this run differs "
                        f"from the saved one in {len(diffs)} place(s): " + "; ".join(diffs[:8])
                        + ("; ..." if len(diffs) > 8 else "") + ". Resume with the same settings "
                        f"and data, or remove {saver.directory} to start afresh.")
                key = _load_state_arrays(
                    model, optimizer, saver.restore(_state_arrays(model, optimizer, key), latest))
                rng.bit_generator.state = info["numpy_rng"]
                history, step, first_epoch = info["history"], info["step"], info["epoch"] + 1
                earlier = {k: float(info[k]) for k in earlier}
            elif latest is not None:
                raise FileExistsError(
                    f"{saver.directory} already holds the training state of a run (epochs "
                    f"{saver.epochs()}); resume it (resume=True, --resume) or remove it to start "
                    f"afresh")
        except BaseException:
            saver.close()
            raise
    resumed_from = first_epoch - 1
    t0 = time.perf_counter() - (history[-1]["time"] if history else 0.0)
    bar = None
    if progress:
        from jit_jax.progress import progress_bar

        bar = progress_bar(total, "train", unit="step")
        if bar is not None and step:
            bar.update(step)  # a resumed run starts part-way
    step_times: list[float] = []  # this session's
    # the step with the model and optimiser bound once: nnx's graph traversal of both on every
    # call costs about 3 ms, a third of a batch-4 VGG11-w16 step on 2 CPU cores (EMMN runs 12,000
    # of those). The cached copies share the Variables, so the model and optimiser see every
    # update; the copy is made in train mode and stays so while evaluation switches the model.
    model.train()
    step_fn = nnx.cached_partial(_train_step, model, optimizer)

    def session_times() -> tuple[float, float]:
        if not step_times:
            return earlier["compile_time"], earlier["warm_time"]
        compile_time = compile_estimate(step_times, first_steps)
        return (earlier["compile_time"] + compile_time,
                earlier["warm_time"] + sum(step_times) - compile_time)

    try:
        for epoch in range(first_epoch, config.epochs + 1):
            model.train()
            perm = rng.permutation(n)
            sums = {"loss": 0.0, "accuracy": 0.0}
            for start in starts:
                idx = perm[start:start + b]
                key, sub = jax.random.split(key)
                ts = time.perf_counter()
                m = step_fn(place(x_train, idx), place(y_train, idx), sub, config)
                loss, gnorm = float(m["loss"]), float(m["grad_norm"])
                step_times.append(time.perf_counter() - ts)
                if not (math.isfinite(loss) and math.isfinite(gnorm)):
                    raise FloatingPointError(
                        f"training diverged at epoch {epoch}, step {step}: loss={loss}, "
                        f"grad_norm={gnorm} (lr={config.lr}); lower the learning rate")
                sums["loss"] += loss
                sums["accuracy"] += float(m["accuracy"])
                step += 1
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(epoch=epoch, loss=f"{loss:.3f}")
            rec = {
                "epoch": epoch,
                "train_loss": sums["loss"] / steps_per_epoch,
                "train_accuracy": 100.0 * sums["accuracy"] / steps_per_epoch,
                "time": time.perf_counter() - t0,
            }
            if eval_data is not None and (epoch % eval_every == 0 or epoch == config.epochs):
                ev = evaluate(model, *eval_data)
                rec["test_accuracy"], rec["test_loss"] = ev["accuracy"], ev["loss"]
                if bar is not None:
                    bar.set_postfix(epoch=epoch, test_acc=f"{ev['accuracy']:.1f}")
            history.append(rec)
            if saver is not None and (epoch % checkpoint_every == 0 or epoch == config.epochs):
                compile_time, warm_time = session_times()
                saver.save(epoch, _state_arrays(model, optimizer, key), {
                    "format": 1, "epoch": epoch, "step": step,
                    "numpy_rng": rng.bit_generator.state, "history": history,
                    "compile_time": compile_time, "warm_time": warm_time, "run": fingerprint})
            if callback is not None:
                callback(rec)
    finally:
        if bar is not None:
            bar.close()
        if saver is not None:
            saver.close()
        model.eval()
    if mesh is not None and is_multiprocess():  # process-local copies of the replicated state
        nnx.update(model, host_local(nnx.state(model)))
    compile_time, warm_time = session_times()
    return TrainResult(history=history, train_time=time.perf_counter() - t0, final=history[-1],
                       compile_time=compile_time, warm_time=warm_time, resumed_from=resumed_from)
