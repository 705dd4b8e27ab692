"""Helpers shared by the paper's comparison methods, the methods it compares JiT with, as the
authors' harness runs them (:mod:`jit_jax.unlearn.finetune`, :mod:`~jit_jax.unlearn.ssd`,
:mod:`~jit_jax.unlearn.distill`, :mod:`~jit_jax.unlearn.boundary`, :mod:`~jit_jax.unlearn.noise`,
:mod:`~jit_jax.unlearn.gkt`).

Each is re-derived from ``reference/original-code.md`` section 3 (which cites the authors' files and
lines); the settings are theirs unless a docstring says otherwise. All take an
:class:`jit_jax.unlearn.Request` and return a :class:`jit_jax.unlearn.MethodOutput`; the source
model is never modified. Like the authors' baselines they train on fixed, pre-normalised inputs
(no augmentation), and a last partial batch is kept, as torch's DataLoader does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from flax import nnx

from jit_jax.train import TrainConfig, train

if TYPE_CHECKING:
    from jit_jax.unlearn import MethodOutput, Request


def _output(model, res, extra: dict) -> MethodOutput:
    from jit_jax.unlearn import MethodOutput

    return MethodOutput(model, res.warm_time, res.compile_time, False,
                        {**extra, "history": res.history})


def _fit(req: Request, x, y, config: TrainConfig, extra: dict) -> MethodOutput:
    """Train a copy of the model on ``(x, y)`` with ``config``, keeping last partial batches."""
    model = nnx.clone(req.model)
    res = train(model, x, y, config.replace(seed=req.seed), progress=req.progress,
                drop_last=False)
    return _output(model, res, {**extra, "config": config.replace(seed=req.seed).to_dict()})


def _full_class_only(req: Request, name: str) -> int:
    if req.split.kind != "class":
        raise ValueError(f"{name} is a full-class method here; got a {req.split.kind!r} request "
                         f"({req.split.description}); accepted: class:N")
    return int(req.split.forget_class)
