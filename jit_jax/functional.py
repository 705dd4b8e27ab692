"""Bridges between stateful Flax NNX modules and the pure functions the algorithms are written as.

Every algorithm in jit-jax (training steps, JiT, metrics) works on ``apply_fn(params, x) -> logits`` with
``params`` a pytree of trainable parameters. :func:`functionalize` turns an NNX model into that form,
with every non-parameter variable (BatchNorm statistics, dropout RNG state) closed over as a constant,
and :func:`rebuild` turns the result back into a new, independent model. The source model is never
mutated.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
from flax import nnx


class Functional(NamedTuple):
    apply_fn: Callable[..., jax.Array]  # (params, x, key=None) -> logits
    params: Any  # nnx.State of nnx.Param
    rest: Any  # nnx.State of everything else (batch stats, RNG state)
    graphdef: Any


def functionalize(model: nnx.Module, *, train: bool = False) -> Functional:
    """Split ``model`` into a pure ``apply_fn(params, x, key=None)`` and its state.

    ``train=False`` (the default) evaluates BatchNorm with its running statistics and switches dropout
    off, so ``apply_fn`` is deterministic and ``key`` is ignored. ``train=True`` uses batch statistics
    (the running statistics are *not* updated: the returned function is pure) and, when ``key`` is
    given, reseeds every dropout stream with it, so that each call draws fresh masks.
    """
    model = nnx.clone(model)
    model.train() if train else model.eval()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)

    def apply_fn(params, x, key=None):
        m = nnx.merge(graphdef, params, rest, copy=True)
        if train and key is not None:
            nnx.reseed(m, dropout=key)
        return m(x)

    return Functional(apply_fn, params, rest, graphdef)


def rebuild(fn: Functional, params: Any, *, train: bool | None = None) -> nnx.Module:
    """A fresh model with ``params`` and the other state of ``fn``; eval mode unless ``train``."""
    model = nnx.merge(fn.graphdef, params, fn.rest, copy=True)
    model.train() if train else model.eval()
    return model
