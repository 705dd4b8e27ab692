"""Zero-shot objectives: many losses, one update loop.

An objective is a pure function of the model and a forget batch,

    loss(apply_fn, params, x, key, *, mask, **options) -> scalar

(``apply_fn(params, x) -> logits``; ``mask`` (B,) marks the real rows of a padded batch; ``key`` for
whatever it draws). The update loop (:func:`jit_jax.unlearn.jit.jit_unlearn`) owns everything
else: batching and padding, the optimiser, passes, sharding over devices, compilation and timing.
A new variant is one function and one :data:`OBJECTIVES` entry; it then runs as a method
(``jit-jax unlearn --method NAME --set ...``), in the paper runner and on many devices.

The variants (issue 12):

- ``lipschitz``: the local Lipschitz ratio with no finite noise. For directions v ~ N(0, I) per
  sample, ``E_v ||J(x) v|| / ||v||``, where J is the input Jacobian of the logits; ``jax.jvp``
  gives ``J v`` without forming J. It is the limit of JiT's ratio
  ``||f(x) - f(x + sigma v)|| / ||sigma v||`` as sigma -> 0 (without clipping). Its gradient is the
  true one (through the Jacobian), not JiT's stop-gradient one.
- ``jacobian_fro``: the squared Frobenius norm of the input Jacobian by Hutchinson's estimator,
  ``E_v ||J(x) v||^2`` with v ~ N(0, I) (unbiased: ``E[v v^T] = I``).
- ``curvature``: curvature smoothing, ``||Hess_x log p(y|x)||_F^2`` by Hutchinson (Rademacher
  probes, jvp of the input gradient: the estimator of ``analysis/curvature.py``); and
  ``jit_curvature``, JiT's loss plus ``lam`` times it.
- From related work, adapted to classifiers (the forget label y as the answer to forget):
  ``ga`` (gradient ascent on the cross-entropy), ``npo`` (negative preference optimisation),
  ``dpo`` (the original model's runner-up class preferred to y), ``idkpo`` (the uniform answer,
  "I don't know", preferred to y) and ``graddiff`` (ascent on D_f plus descent on D_r batches).
  All but ``graddiff`` read only the model and the forget set (with its labels); ``graddiff``
  reads the retain set and is not zero-shot (``Objective.zero_shot``).

What an objective reads besides x is declared in ``Objective.needs`` ("labels", "ref_logits",
"retain_x"/"retain_y"); the loop passes the batch's rows of those (``jit_unlearn(aux=...,
retain=...)``) and the method wrapper (``unlearn.objective_method``) builds them from the request.

The losses sum over the batch (JiT's convention) or average (``reduction="mean"``, the default of
the related-work objectives), and average over their random draws. Their step sizes
(``Objective.loop``) are starting points, not settings chosen on validation tasks; ``--method
auto`` (``auto.py``) is the variant with rules for its settings.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jit_jax import prng
from jit_jax.unlearn.jit import _flat, _safe_norm, jit_loss, reduce_draws


def _jvps(apply_fn, params, x, key, num_samples: int):
    """``(J(x) v, v)`` for ``num_samples`` Gaussian directions v (each the shape of x)."""
    def one(k):
        v = prng.normal(k, x.shape, x.dtype)
        _, jv = jax.jvp(lambda xx: apply_fn(params, xx), (x,), (v,))
        return jv, v

    return jax.vmap(one)(jax.random.split(key, num_samples))


def lipschitz(apply_fn, params, x, key, *, mask=None, num_samples: int = 25,
              reduction: str = "sum") -> jax.Array:
    """``E_v ||J(x) v|| / ||v||`` per sample, summed (or averaged) over the batch."""
    jv, v = _jvps(apply_fn, params, x, key, num_samples)  # (N, B, C), (N, B, ...)
    num = _safe_norm(jv)
    den = jax.vmap(lambda a: _safe_norm(_flat(a)))(v)
    return reduce_draws(num / jnp.where(den > 0, den, 1.0), mask, reduction)


def jacobian_fro(apply_fn, params, x, key, *, mask=None, num_samples: int = 4,
                 reduction: str = "sum") -> jax.Array:
    """Hutchinson's ``E_v ||J(x) v||^2 = ||J(x)||_F^2`` per sample, summed (or averaged)."""
    jv, _ = _jvps(apply_fn, params, x, key, num_samples)
    return reduce_draws(jnp.sum(jnp.square(jv), axis=-1), mask, reduction)


def at_least_float32(a: jax.Array) -> jax.Array:
    """``a`` in at least float32 (half-precision logits are upcast; float64 stays float64)."""
    return a.astype(jnp.promote_types(a.dtype, jnp.float32))


def _log_probs(apply_fn, params, x) -> jax.Array:
    return jax.nn.log_softmax(at_least_float32(apply_fn(params, x)), axis=-1)


def _pick(logp: jax.Array, labels: jax.Array) -> jax.Array:
    """``logp[i, labels[i]]`` for each row."""
    return jnp.take_along_axis(logp, labels.astype(jnp.int32)[:, None], axis=-1)[:, 0]


def _reduce(per_sample: jax.Array, mask, reduction: str) -> jax.Array:
    return reduce_draws(per_sample[None], mask, reduction)


def runner_up(ref_logits: jax.Array, labels: jax.Array) -> jax.Array:
    """The class the original model ranks highest after the label: DPO's alternative answer."""
    hit = jax.nn.one_hot(labels, ref_logits.shape[-1], dtype=bool)
    return jnp.argmax(jnp.where(hit, -jnp.inf, ref_logits), axis=-1)


def gradient_ascent(apply_fn, params, x, key, *, mask=None, labels, reduction: str = "mean"
                    ) -> jax.Array:
    """Gradient ascent on the forget set's cross-entropy: minimises ``log p(y | x)``."""
    return _reduce(_pick(_log_probs(apply_fn, params, x), labels), mask, reduction)


def npo(apply_fn, params, x, key, *, mask=None, labels, ref_logits, beta: float = 0.1,
        reduction: str = "mean") -> jax.Array:
    """Negative preference optimisation (Zhang et al. 2024) for a classifier:
    ``(2/beta) log(1 + (p(y|x) / p_ref(y|x))^beta)``, the forget label as the only, dispreferred,
    answer; ``p_ref`` is the original model. Bounded below by 0, unlike gradient ascent."""
    lp = _pick(_log_probs(apply_fn, params, x), labels)
    lr = _pick(jax.nn.log_softmax(at_least_float32(ref_logits), -1), labels)
    return _reduce(2.0 / beta * jax.nn.softplus(beta * (lp - lr)), mask, reduction)


def _preference(lp_win, lr_win, lp_lose, lr_lose, beta):
    """DPO's ``-log sigmoid(beta [(log pi_w - log ref_w) - (log pi_l - log ref_l)])``."""
    return jax.nn.softplus(-beta * ((lp_win - lr_win) - (lp_lose - lr_lose)))


def dpo(apply_fn, params, x, key, *, mask=None, labels, ref_logits, beta: float = 0.1,
        reduction: str = "mean") -> jax.Array:
    """Direct preference optimisation with the forget label dispreferred and the original model's
    runner-up class preferred (the classifier's "alternative answer")."""
    logp = _log_probs(apply_fn, params, x)
    ref = jax.nn.log_softmax(at_least_float32(ref_logits), -1)
    alt = runner_up(ref_logits, labels)
    per = _preference(_pick(logp, alt), _pick(ref, alt), _pick(logp, labels), _pick(ref, labels),
                      beta)
    return _reduce(per, mask, reduction)


def idkpo(apply_fn, params, x, key, *, mask=None, labels, ref_logits, beta: float = 0.1,
          reduction: str = "mean") -> jax.Array:
    """DPO with "I don't know" preferred: for a classifier, the uniform answer, whose
    log-likelihood is the mean log-probability over the classes (``-CE(uniform, p)``)."""
    logp = _log_probs(apply_fn, params, x)
    ref = jax.nn.log_softmax(at_least_float32(ref_logits), -1)
    per = _preference(jnp.mean(logp, -1), jnp.mean(ref, -1), _pick(logp, labels),
                      _pick(ref, labels), beta)
    return _reduce(per, mask, reduction)


def graddiff(apply_fn, params, x, key, *, mask=None, labels, retain_x, retain_y,
             alpha: float = 1.0, reduction: str = "mean") -> jax.Array:
    """Gradient difference: ascent on the forget set's cross-entropy plus ``alpha`` times descent
    on a retain batch's (reads D_r: not zero-shot)."""
    forget = gradient_ascent(apply_fn, params, x, key, mask=mask, labels=labels,
                             reduction=reduction)
    ce = -_pick(_log_probs(apply_fn, params, retain_x), retain_y)
    return forget + alpha * jnp.mean(ce)


def input_hvps(apply_fn, params, x, labels, probes: jax.Array) -> jax.Array:
    """``H_i v_i`` for each sample i and each probe: H_i the input Hessian of
    ``log p(y_i | x_i)`` (the scalar of ``analysis/curvature.py``), by jvp of the input gradient.

    ``probes`` has shape (P, B, ...). The samples' Hessians come from one batched call: exact
    when the model treats samples independently (eval mode; BatchNorm in training mode couples
    them)."""
    def total(xx):
        return jnp.sum(_pick(_log_probs(apply_fn, params, xx), labels))

    grad = jax.grad(total)
    return jax.vmap(lambda v: jax.jvp(grad, (x,), (v,))[1])(probes)


def curvature(apply_fn, params, x, key, *, mask=None, labels, num_probes: int = 1,
              reduction: str = "sum") -> jax.Array:
    """Curvature smoothing: ``||H_i||_F^2`` of the input Hessian of ``log p(y_i | x_i)`` at each
    forget sample, by Hutchinson's estimator ``E_v ||H v||^2`` with Rademacher v (unbiased; the
    estimator of ``analysis/curvature.hutchinson_frobenius_sq``)."""
    v = prng.rademacher(key, (num_probes,) + x.shape, x.dtype)
    hv = input_hvps(apply_fn, params, x, labels, v)
    return reduce_draws(jnp.sum(jnp.square(hv.reshape(hv.shape[:2] + (-1,))), -1), mask,
                        reduction)


def jit_curvature(apply_fn, params, x, key, *, mask=None, labels, sigma: float = 0.5,
                  num_samples: int = 25, lam: float = 1.0, num_probes: int = 1,
                  reduction: str = "sum") -> jax.Array:
    """JiT's loss (its defaults: p = 1, stop-gradient, clipping) plus ``lam`` times
    :func:`curvature`."""
    k_jit, k_curv = jax.random.split(key)
    base = jit_loss(apply_fn, params, x, k_jit, sigma=sigma, num_samples=num_samples,
                    reduction=reduction, mask=mask)
    return base + lam * curvature(apply_fn, params, x, k_curv, mask=mask, labels=labels,
                                  num_probes=num_probes, reduction=reduction)


@dataclasses.dataclass(frozen=True)
class Objective:
    name: str
    loss: Callable[..., jax.Array]
    description: str
    options: dict  # the loss's own options and their defaults (--set NAME=VALUE)
    #: what the loss reads besides x, as keyword arguments: "labels" (the forget labels),
    #: "ref_logits" (the original model's logits on the forget set), "retain_x"/"retain_y" (a
    #: retain batch: the objective is then not zero-shot)
    needs: tuple[str, ...] = ()
    #: the update loop's settings for this objective (lr, batch_size, ...) when the user sets none
    loop: dict = dataclasses.field(default_factory=dict)

    @property
    def zero_shot(self) -> bool:
        return "retain_x" not in self.needs


OBJECTIVES: dict[str, Objective] = {
    "lipschitz": Objective(
        "lipschitz", lipschitz, "exact local Lipschitz smoothing: E_v ||J(x) v|| / ||v|| (jvp)",
        {"num_samples": 25, "reduction": "sum"}),
    "jacobian_fro": Objective(
        "jacobian_fro", jacobian_fro, "input-Jacobian Frobenius norm, Hutchinson (jvp)",
        {"num_samples": 4, "reduction": "sum"}),
    "curvature": Objective(
        "curvature", curvature, "curvature smoothing: Hutchinson ||Hess_x log p(y|x)||_F^2 (jvp of "
        "grad)", {"num_probes": 1, "reduction": "sum"}, needs=("labels",)),
    "jit_curvature": Objective(
        "jit_curvature", jit_curvature, "JiT's loss + lam * curvature smoothing",
        {"sigma": 0.5, "num_samples": 25, "lam": 1.0, "num_probes": 1, "reduction": "sum"},
        needs=("labels",)),
    "ga": Objective(
        "ga", gradient_ascent, "gradient ascent on the forget set's cross-entropy",
        {"reduction": "mean"}, needs=("labels",), loop={"lr": 1e-3, "batch_size": 64}),
    "npo": Objective(
        "npo", npo, "negative preference optimisation (the forget label dispreferred)",
        {"beta": 0.1, "reduction": "mean"}, needs=("labels", "ref_logits"),
        loop={"lr": 1e-3, "batch_size": 64}),
    "dpo": Objective(
        "dpo", dpo, "DPO: the original model's runner-up class preferred to the forget label",
        {"beta": 0.1, "reduction": "mean"}, needs=("labels", "ref_logits"),
        loop={"lr": 1e-3, "batch_size": 64}),
    "idkpo": Objective(
        "idkpo", idkpo, "DPO with the uniform answer (\"I don't know\") preferred",
        {"beta": 0.1, "reduction": "mean"}, needs=("labels", "ref_logits"),
        loop={"lr": 1e-3, "batch_size": 64}),
    "graddiff": Objective(
        "graddiff", graddiff, "gradient difference: ascent on D_f + alpha * descent on D_r "
        "batches (reads D_r)", {"alpha": 1.0, "reduction": "mean"},
        needs=("labels", "retain_x", "retain_y"), loop={"lr": 1e-3, "batch_size": 64}),
}


def value_and_grad(objective: str | Objective, **options) -> Callable[..., tuple[Any, Any]]:
    """The loop's ``value_and_grad(apply_fn, params, x, key, *, mask, forward_keys, aux)`` for an
    objective with ``options`` (unknown names are an error naming the accepted ones)."""
    obj = OBJECTIVES[objective] if isinstance(objective, str) else objective
    unknown = sorted(set(options) - set(obj.options))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for objective {obj.name!r}; accepted: "
                         f"{sorted(obj.options)}")
    opts = {**obj.options, **options}
    for name in ("num_samples", "num_probes"):
        if int(opts.get(name, 1)) < 1:
            raise ValueError(f"{name}={opts[name]!r}; accepted: an integer >= 1")
    for name in ("beta", "sigma"):
        if name in opts and not float(opts[name]) > 0:
            raise ValueError(f"{name}={opts[name]!r}; accepted: a number > 0")
    if opts.get("reduction", "sum") not in ("sum", "mean"):
        raise ValueError(f"reduction={opts['reduction']!r}; accepted: 'sum' or 'mean'")

    def vg(apply_fn, params, x, key, *, mask, forward_keys, aux=None):
        aux = aux or {}
        missing = [k for k in obj.needs if k not in aux]
        if missing:
            raise ValueError(f"objective {obj.name!r} needs {missing} from the update loop "
                             f"(jit_unlearn(aux=..., retain=...)); got {sorted(aux)}")
        reads = {k: aux[k] for k in obj.needs}
        if forward_keys:  # train mode draws a key per forward (dropout); the objectives do not
            def apply(p, xx):
                return apply_fn(p, xx, key)
        else:
            apply = apply_fn
        return jax.value_and_grad(
            lambda p: obj.loss(apply, p, x, key, mask=mask, **reads, **opts))(params)

    return vg
