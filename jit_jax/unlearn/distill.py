"""Bad teacher and SCRUB, the distillation methods the paper compares JiT with, as the authors'
harness runs them.

- ``bt`` (bad teacher): a copy of the model is distilled, with KL at temperature 1, towards an
  "incompetent" teacher on D_f (a fresh initialisation; on ViT the authors' is a pretrained
  backbone with a random head: ``teacher="random_head"``) and towards the original model on a
  random 30% of D_r;
  Adam lr 1e-4, one epoch, batch 256, torch's ``kl_div`` "mean" reduction (over every element).
- ``scrub``: a student (a copy of the model, train mode) and a frozen teacher (the original, eval
  mode); 3 epochs; in epochs 1-2 first a "max" pass over D_f (loss -KL_T(s, t)), then every epoch
  a "min" pass over D_r (gamma CE + alpha KL_T); KL_T as ``DistillKL``: summed, times T^2 / B, T = 4;
  one SGD optimiser for both passes (lr 5e-4, momentum 0.9, weight decay 5e-4), batch 128;
  (alpha, gamma) = (0.001, 0.99) for full class with gradient-norm clipping at 1 (the authors'
  full-class port adds it), (1, 5) without clipping for sub-class and random.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jit_jax.train import compile_estimate, cross_entropy, predict

if TYPE_CHECKING:
    from jit_jax.unlearn import MethodOutput, Request


# ------------------------------------------------------------------------------------------------
# Bad teacher
# ------------------------------------------------------------------------------------------------
def kl_terms(student_logits: jax.Array, teacher_logits: jax.Array, temperature: float
             ) -> jax.Array:
    """The elementwise terms of torch's ``F.kl_div(log_softmax(s/T), softmax(t/T))``:
    ``t log t - t log s`` per sample and class (0 where the teacher's probability is 0).

    Written as ``t * (log_softmax(t) - log s)`` with ``t = exp(log_softmax(t))`` so that the
    gradient with respect to the teacher's logits (GKT's generator differentiates through the
    teacher) is finite where a probability underflows to 0, as torch's is (its ``kl_div``
    backward masks the target's gradient to 0 there). ``xlogy(t, t)`` has the same value but
    its derivative there is ``0 * log 0 = NaN``."""
    log_t = jax.nn.log_softmax(teacher_logits / temperature, axis=-1)
    s = jax.nn.log_softmax(student_logits / temperature, axis=-1)
    return jnp.exp(log_t) * (log_t - s)


def bad_teacher_loss(student_logits: jax.Array, teacher_logits: jax.Array,
                     temperature: float = 1.0) -> jax.Array:
    """KL(teacher || student) at ``temperature`` with torch's default "mean" reduction: averaged
    over every element (batch x classes), not per sample."""
    return jnp.mean(kl_terms(student_logits, teacher_logits, temperature))


@nnx.jit(static_argnames=("temperature",))
def _bt_step(student, optimizer, x, teacher_logits, temperature: float):
    def loss_fn(m):
        return bad_teacher_loss(m(x), teacher_logits, temperature)

    loss, grads = nnx.value_and_grad(loss_fn)(student)
    optimizer.update(student, grads)
    return loss


TEACHERS = ("fresh", "random_head")


def teacher_backbone(req: Request, teacher: str, teacher_weights: str | None) -> str | None:
    """The ViT ``.npz`` whose backbone the incompetent teacher takes: ``teacher_weights``, else
    for ``"random_head"`` the weights the original was fine-tuned from (``req.init_weights``);
    None for the model's own backbone or a fresh teacher."""
    if teacher_weights is None and teacher == "random_head":
        return req.init_weights
    return teacher_weights


def incompetent_teacher(req: Request, teacher: str = "fresh",
                        teacher_weights: str | None = None) -> nnx.Module:
    """BT's incompetent teacher: ``"fresh"``, a fresh initialisation of the model's spec (the
    authors' CNNs); ``"random_head"``, a trained backbone with a freshly initialised head (the
    authors' ViT: the ImageNet-pretrained ViT-B/16 with a random head). The backbone is read from
    ``teacher_weights`` (a ViT ``.npz``, all but its head) when given, else from the weights the
    original was fine-tuned from (``req.init_weights``), else it is the model's own (a model
    trained from scratch has no pretrained start). The fresh parts come from seed
    ``req.seed + 1``."""
    if teacher not in TEACHERS:
        raise ValueError(f"teacher={teacher!r}; accepted: {list(TEACHERS)}")
    fresh = req.spec.build(seed=req.seed + 1)
    if teacher == "fresh":
        if teacher_weights is not None:
            raise ValueError("teacher_weights is for teacher='random_head'")
        return fresh
    if not hasattr(fresh, "head"):
        raise ValueError(f"teacher='random_head' needs a model with a `head` layer (every model "
                         f"but VGG); {req.spec.name} has none: use teacher='fresh'")
    teacher_weights = teacher_backbone(req, teacher, teacher_weights)
    if teacher_weights is not None:
        from jit_jax.models.vit import load_vit_npz

        if not Path(teacher_weights).is_file():
            raise FileNotFoundError(f"teacher_weights={teacher_weights!r}: no such file (a ViT "
                                    ".npz whose backbone the teacher takes)")
        return load_vit_npz(fresh, teacher_weights, load_head=False)
    bad = nnx.clone(req.model)
    bad.head = fresh.head
    return bad


def bad_teacher(req: Request, *, epochs: int = 1, lr: float = 1e-4, batch_size: int = 256,
                retain_fraction: float = 0.3, temperature: float = 1.0, teacher: str = "fresh",
                teacher_weights: str | None = None) -> MethodOutput:
    """Bad teacher (the authors' ``blindspot``). The student starts as a copy of the model and
    trains in train mode; both teachers are frozen and in eval mode (their logits are computed
    once, which is what recomputing them per batch gives). ``teacher``/``teacher_weights``: the
    incompetent teacher (:func:`incompetent_teacher`)."""
    from jit_jax.unlearn import MethodOutput

    if not 0 < retain_fraction <= 1:
        raise ValueError(f"retain_fraction={retain_fraction}; accepted: 0 < retain_fraction <= 1")
    split = req.split
    rng = np.random.default_rng(req.seed)
    n_r = int(retain_fraction * len(split.retain_idx))
    r_idx = np.sort(rng.choice(split.retain_idx, n_r, replace=False))
    # inputs prepared before the clock starts, as for every other method (fixed tensors)
    x = np.concatenate([req.inputs(split.forget_idx), req.inputs(r_idx)]).astype(np.float32)
    t0 = time.perf_counter()
    bad = incompetent_teacher(req, teacher, teacher_weights)
    targets = np.concatenate([predict(bad, x[:split.n_forget]),
                              predict(req.model, x[split.n_forget:])])
    prep_time = time.perf_counter() - t0
    student = nnx.clone(req.model)
    student.train()
    optimizer = nnx.Optimizer(student, optax.adam(lr), wrt=nnx.Param)
    n = len(x)
    b = min(batch_size, n)
    times, losses = [], []
    try:
        for _ in range(epochs):
            perm = rng.permutation(n)
            for s in range(0, n, b):
                idx = perm[s:s + b]
                ts = time.perf_counter()
                loss = float(_bt_step(student, optimizer, jnp.asarray(x[idx]),
                                      jnp.asarray(targets[idx]), float(temperature)))
                times.append(time.perf_counter() - ts)
                if not np.isfinite(loss):
                    raise FloatingPointError(f"bad teacher: loss {loss}; lower lr (now {lr})")
                losses.append(loss)
    finally:
        student.eval()
    compile_time = compile_estimate(times, [0, len(range(0, n, b)) - 1] if n % b else [0])
    return MethodOutput(student, prep_time + sum(times) - compile_time, compile_time, False,
                        {"config": {"epochs": epochs, "lr": lr, "batch_size": b,
                                    "retain_fraction": retain_fraction,
                                    "temperature": temperature, "teacher": teacher,
                                    "teacher_weights": teacher_backbone(req, teacher,
                                                                        teacher_weights)},
                         "losses": losses, "n_retain_used": n_r})


# ------------------------------------------------------------------------------------------------
# SCRUB
# ------------------------------------------------------------------------------------------------
#: task -> (alpha, gamma, clip) as the authors' harness runs SCRUB (original-code.md section 3).
SCRUB_SETTINGS: dict[str, tuple[float, float, float | None]] = {
    "class": (0.001, 0.99, 1.0),
    "subclass": (1.0, 5.0, None),
    "random": (1.0, 5.0, None),
}


def distill_kl(student_logits: jax.Array, teacher_logits: jax.Array, temperature: float
               ) -> jax.Array:
    """SCRUB's ``DistillKL``: ``sum KL(softmax(t/T) || softmax(s/T)) * T^2 / batch``."""
    kl = jnp.sum(kl_terms(student_logits, teacher_logits, temperature))
    return kl * temperature ** 2 / student_logits.shape[0]


@nnx.jit(static_argnames=("maximise", "alpha", "gamma", "temperature"))
def _scrub_step(student, optimizer, x, y, teacher_logits, *, maximise: bool, alpha: float,
                gamma: float, temperature: float):
    def loss_fn(m):
        out = m(x)
        kl = distill_kl(out, teacher_logits, temperature)
        if maximise:
            return -kl
        return gamma * jnp.mean(cross_entropy(out, y)) + alpha * kl

    loss, grads = nnx.value_and_grad(loss_fn)(student)
    optimizer.update(student, grads)
    return loss


def scrub(req: Request, *, epochs: int = 3, max_epochs: int = 2, lr: float = 5e-4,
          batch_size: int = 128, temperature: float = 4.0, alpha: float | None = None,
          gamma: float | None = None) -> MethodOutput:
    """SCRUB with the authors' settings for the task unless ``alpha``/``gamma`` are given."""
    from jit_jax.unlearn import MethodOutput

    d_alpha, d_gamma, clip = SCRUB_SETTINGS[req.split.kind]
    alpha = d_alpha if alpha is None else float(alpha)
    gamma = d_gamma if gamma is None else float(gamma)
    ds, split = req.dataset, req.split
    x_f, x_r = req.inputs(split.forget_idx), req.inputs(split.retain_idx)
    y_f, y_r = ds.train_targets[split.forget_idx], ds.train_targets[split.retain_idx]
    rng = np.random.default_rng(req.seed)
    t0 = time.perf_counter()
    t_f, t_r = predict(req.model, x_f), predict(req.model, x_r)  # the frozen teacher
    prep_time = time.perf_counter() - t0
    student = nnx.clone(req.model)
    student.train()
    tx = optax.chain(*([optax.clip_by_global_norm(clip)] if clip else []),
                     optax.add_decayed_weights(5e-4), optax.sgd(lr, momentum=0.9))
    optimizer = nnx.Optimizer(student, tx, wrt=nnx.Param)
    times, seen, first, losses = [], set(), [], {"max": [], "min": []}

    def run_pass(x, y, t, order, maximise):
        for s in range(0, len(order), batch_size):
            idx = order[s:s + batch_size]
            sig = (maximise, len(idx))
            if sig not in seen:
                seen.add(sig)
                first.append(len(times))
            ts = time.perf_counter()
            loss = float(_scrub_step(student, optimizer, jnp.asarray(x[idx]), jnp.asarray(y[idx]),
                                     jnp.asarray(t[idx]), maximise=maximise, alpha=alpha,
                                     gamma=gamma, temperature=float(temperature)))
            times.append(time.perf_counter() - ts)
            if not np.isfinite(loss):
                raise FloatingPointError(f"SCRUB diverged: loss {loss}; lower lr (now {lr})")
            losses["max" if maximise else "min"].append(loss)

    try:
        for epoch in range(1, epochs + 1):
            if epoch <= max_epochs:  # in order, as their forget loader
                run_pass(x_f, y_f, t_f, np.arange(len(x_f)), True)
            run_pass(x_r, y_r, t_r, rng.permutation(len(x_r)), False)
    finally:
        student.eval()
    compile_time = compile_estimate(times, first)
    return MethodOutput(student, prep_time + sum(times) - compile_time, compile_time, False,
                        {"config": {"epochs": epochs, "max_epochs": max_epochs, "lr": lr,
                                    "batch_size": batch_size, "temperature": temperature,
                                    "alpha": alpha, "gamma": gamma, "clip": clip},
                         "losses": losses})
