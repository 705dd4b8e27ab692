"""BDSH (boundary shrink), one of the methods the paper compares JiT with, as the authors' harness
runs it.

- ``bdsh`` (boundary shrink, zero-shot): each forget image is pushed across the nearest boundary by
  one FGSM step of 0.1 in [0, 1] pixel space on the frozen original (rounded to 1/255; the images
  reach the model through the request's ``preprocess``, as in training); the original's prediction
  there is its new label; the model is fine-tuned on D_f with those labels,
  SGD lr 1e-5, momentum 0.9, 10 epochs, batch 64 (train mode).
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import jax
import jax.numpy as jnp
import numpy as np

from jit_jax.data import normalize
from jit_jax.functional import functionalize
from jit_jax.train import TrainConfig, cross_entropy
from jit_jax.unlearn._common import _fit

if TYPE_CHECKING:
    from jit_jax.unlearn import MethodOutput, Request


def _fgsm(apply_fn, params, x01: np.ndarray, y: np.ndarray, to_input, epsilon: float):
    """The FGSM step shared by :func:`fgsm_labels` and :func:`boundary_shrink`.

    ``to_input`` maps images in [0, 1] (multiples of 1/255 at the adversarial point) to model
    inputs and must be elementwise and increasing in each pixel (normalisation is): the sign of the
    cross-entropy's gradient in pixel space is then the sign of its gradient with respect to the
    model input, whatever the (positive) slope. Checked on a black and a white image.
    """
    x01 = np.asarray(x01, np.float32)
    inp = np.asarray(to_input(x01), np.float32)
    lo = np.asarray(to_input(np.zeros_like(x01[:1])))
    hi = np.asarray(to_input(np.ones_like(x01[:1])))
    if inp.shape != x01.shape or not np.all(hi > lo):
        raise ValueError("the FGSM step needs an elementwise preprocess increasing in every pixel "
                         f"(as normalisation is); got inputs of shape {inp.shape} for images of "
                         f"shape {x01.shape}")

    @jax.jit
    def input_grad_sign(v, yb):
        return jnp.sign(jax.grad(lambda w: jnp.sum(cross_entropy(apply_fn(params, w), yb)))(v))

    @jax.jit
    def labels(v):
        return jnp.argmax(apply_fn(params, v), axis=-1)

    g = np.asarray(input_grad_sign(jnp.asarray(inp), jnp.asarray(y)))
    adv = np.round(np.clip(x01 + np.float32(epsilon) * g, 0.0, 1.0) * 255.0) / np.float32(255.0)
    lab = labels(jnp.asarray(np.asarray(to_input(adv), np.float32)))
    return adv.astype(np.float32), np.asarray(lab, np.int32)


def fgsm_labels(apply_fn, params, x01: np.ndarray, y: np.ndarray, mean, std, *,
                epsilon: float = 0.1) -> tuple[np.ndarray, np.ndarray]:
    """One signed gradient step of size ``epsilon`` up the cross-entropy from ``x01`` (images in
    [0, 1]), clipped to [0, 1] and rounded to 1/255, for a model fed ``(x - mean) / std``; returns
    ``(x_adv in [0, 1], the model's argmax at x_adv)``."""
    mean = np.asarray(mean, np.float32)
    std = np.asarray(std, np.float32)
    return _fgsm(apply_fn, params, x01, y, lambda v: (v - mean) / std, epsilon)


def boundary_shrink(req: Request, *, epsilon: float = 0.1, lr: float = 1e-5, epochs: int = 10,
                    batch_size: int = 64) -> MethodOutput:
    """BDSH (Chen et al., CVPR 2023), zero-shot: only the model and D_f are used.

    The attack perturbs the stored images (uint8, as [0, 1]) and feeds them to the model through the
    request's own input map (``req.preprocess``, default the dataset's normalisation), the same map
    the fine-tuning uses."""
    ds, split = req.dataset, req.split
    x_uint8 = ds.x_train[split.forget_idx]
    y = ds.train_targets[split.forget_idx]
    fn = functionalize(req.model)  # the frozen original, eval mode

    prep = req.preprocess or (lambda u: normalize(u, ds.mean, ds.std))  # as Request.inputs

    def to_input(v01):  # [0, 1] multiples of 1/255 -> uint8 -> the request's model inputs
        return prep(np.round(np.asarray(v01) * 255.0).astype(np.uint8))

    t0 = time.perf_counter()
    _, new_y = _fgsm(fn.apply_fn, fn.params, np.asarray(x_uint8, np.float32) / 255.0, y,
                     to_input, epsilon)
    attack_time = time.perf_counter() - t0
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, optimizer="sgd", lr=lr, momentum=0.9,
                      weight_decay=0.0, schedule="constant", augment="none")
    out = _fit(req, req.inputs(split.forget_idx), new_y, cfg,
               {"attack_time": attack_time, "label_changed": float(np.mean(new_y != y))})
    out.runtime += attack_time  # includes the attack's compile: a small over-count, said here
    out.zero_shot = True
    return out
