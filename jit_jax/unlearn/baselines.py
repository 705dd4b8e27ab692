"""Reference points for every comparison: the untouched model (BSLN) and retraining (RTRN).

- ``bsln``: the original model, unchanged.
- ``rtrn``: the gold standard. A freshly initialised model of the same spec trained on D_r alone with
  the original model's training recipe.
- ``rtrn_head``: the authors' ``retrain`` as their code runs it (original-code.md section 3): it calls
  ``reset_parameters()`` on the model's direct children only, which for their VGG and ViT wrappers
  re-initialises just the final classifier layer; the backbone keeps the original weights, and the
  whole network is then trained on D_r. Kept under its own name so tables say which one they used.
"""

from __future__ import annotations

import math

import jax
import numpy as np
from flax import nnx

from jit_jax import prng
from jit_jax.models import ModelSpec
from jit_jax.train import TrainConfig, train


def classifier_head(model: nnx.Module) -> nnx.Linear:
    """The model's final classifier: the last ``nnx.Linear`` in graph order."""
    last = None
    for _, m in nnx.iter_graph(model):
        if isinstance(m, nnx.Linear):
            last = m
    if last is None:
        raise ValueError(f"{type(model).__name__} has no nnx.Linear layer to reset")
    return last


def reset_head(model: nnx.Module, seed: int = 0) -> nnx.Module:
    """A copy of ``model`` whose classifier head is re-initialised as torch's ``nn.Linear`` does
    (weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)))."""
    model = nnx.clone(model)
    head = classifier_head(model)
    k_w, k_b = jax.random.split(jax.random.key(seed))
    fan_in = head.kernel.shape[0]
    bound = 1.0 / math.sqrt(fan_in)
    head.kernel[...] = prng.uniform(k_w, head.kernel.shape, head.kernel.dtype, -bound, bound)
    if head.bias is not None:
        head.bias[...] = jax.random.uniform(k_b, head.bias.shape, head.bias.dtype, -bound, bound)
    return model


def retrain(spec: ModelSpec, x_retain: np.ndarray, y_retain: np.ndarray, config: TrainConfig, *,
            seed: int = 0, init_model: nnx.Module | None = None, progress: bool = False,
            mesh=None, state_dir=None, resume: bool = False, checkpoint_every: int = 1,
            run_info: dict | None = None):
    """Train ``init_model`` (default: a fresh ``spec.build(seed)``) on D_r with ``config``
    (data-parallel over ``mesh`` if given: :func:`jit_jax.train.train`).

    Returns ``(model, TrainResult)``; the recipe's seed is replaced by ``seed`` so repeats differ.
    ``state_dir`` saves the training state every ``checkpoint_every`` epochs and ``resume=True``
    continues an interrupted retraining from it, to the same model bit for bit (``train``); the
    spec, whether ``init_model`` was given and ``run_info`` must match the interrupted run's.
    """
    model = init_model if init_model is not None else spec.build(seed=seed)
    info = None
    if state_dir is not None:
        info = {"model_spec": spec.to_dict(), "init": "given" if init_model is not None else "fresh",
                **(run_info or {})}
    result = train(model, x_retain, y_retain, config.replace(seed=seed), progress=progress,
                   mesh=mesh, state_dir=state_dir, resume=resume,
                   checkpoint_every=checkpoint_every, run_info=info)
    return model, result
