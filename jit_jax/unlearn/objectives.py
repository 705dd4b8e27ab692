"""Zero-shot objectives: many losses, one update loop.

An objective is a pure function of the model and a forget batch,

    loss(apply_fn, params, x, key, *, mask, **options) -> scalar

(``apply_fn(params, x) -> logits``; ``mask`` (B,) marks the real rows of a padded batch; ``key`` for
whatever it draws). The update loop (:func:`jit_jax.unlearn.jit.jit_unlearn`) owns everything
else: batching and padding, the optimiser, passes, sharding over devices, compilation and timing.
A new variant is one function and one :data:`OBJECTIVES` entry; it then runs as a method
(``jit-jax unlearn --method NAME --set ...``), in the paper runner and on many devices.

The first variants (the sigma -> 0 limits of JiT's smoothing; issue 12):

- ``lipschitz``: the local Lipschitz ratio with no finite noise. For directions v ~ N(0, I) per
  sample, ``E_v ||J(x) v|| / ||v||``, where J is the input Jacobian of the logits; ``jax.jvp``
  gives ``J v`` without forming J. It is the limit of JiT's ratio
  ``||f(x) - f(x + sigma v)|| / ||sigma v||`` as sigma -> 0 (without clipping). Its gradient is the
  true one (through the Jacobian), not JiT's stop-gradient one.
- ``jacobian_fro``: the squared Frobenius norm of the input Jacobian by Hutchinson's estimator,
  ``E_v ||J(x) v||^2`` with v ~ N(0, I) (unbiased: ``E[v v^T] = I``).

Both sum over the batch (as JiT's loss does by default; ``reduction="mean"`` averages) and average
over ``num_samples`` directions. Their step sizes have not been chosen on validation tasks yet:
the defaults below are JiT's, a starting point, not a recommendation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from jit_jax.unlearn.jit import _flat, _safe_norm, reduce_draws


def _jvps(apply_fn, params, x, key, num_samples: int):
    """``(J(x) v, v)`` for ``num_samples`` Gaussian directions v (each the shape of x)."""
    def one(k):
        v = jax.random.normal(k, x.shape, x.dtype)
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


@dataclasses.dataclass(frozen=True)
class Objective:
    name: str
    loss: Callable[..., jax.Array]
    description: str
    options: dict  # the loss's own options and their defaults (--set NAME=VALUE)


OBJECTIVES: dict[str, Objective] = {
    "lipschitz": Objective(
        "lipschitz", lipschitz, "exact local Lipschitz smoothing: E_v ||J(x) v|| / ||v|| (jvp)",
        {"num_samples": 25, "reduction": "sum"}),
    "jacobian_fro": Objective(
        "jacobian_fro", jacobian_fro, "input-Jacobian Frobenius norm, Hutchinson (jvp)",
        {"num_samples": 4, "reduction": "sum"}),
}


def value_and_grad(objective: str | Objective, **options) -> Callable[..., tuple[Any, Any]]:
    """The loop's ``value_and_grad(apply_fn, params, x, key, *, mask, forward_keys)`` for an
    objective with ``options`` (unknown names are an error naming the accepted ones)."""
    obj = OBJECTIVES[objective] if isinstance(objective, str) else objective
    unknown = sorted(set(options) - set(obj.options))
    if unknown:
        raise ValueError(f"unknown option(s) {unknown} for objective {obj.name!r}; accepted: "
                         f"{sorted(obj.options)}")
    opts = {**obj.options, **options}
    if int(opts.get("num_samples", 1)) < 1:
        raise ValueError(f"num_samples={opts['num_samples']!r}; accepted: an integer >= 1")

    def vg(apply_fn, params, x, key, *, mask, forward_keys):
        if forward_keys:  # train mode draws a key per forward (dropout); the objectives do not
            def apply(p, xx):
                return apply_fn(p, xx, key)
        else:
            apply = apply_fn
        return jax.value_and_grad(lambda p: obj.loss(apply, p, x, key, mask=mask, **opts))(params)

    return vg
