"""FNTN and AMN, two of the methods the paper compares JiT with, as the authors' harness runs them.

- ``fntn`` (fine-tune): 5 epochs on D_r, SGD lr 0.02, momentum 0.9, weight decay 5e-4, constant lr,
  batch 128.
- ``amn`` (amnesiac, the "random relabel" variant the authors run): D_f with random wrong labels
  joined to all of D_r, 3 epochs of Adam lr 1e-4, batch 128.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from jit_jax.train import TrainConfig
from jit_jax.unlearn._common import _fit

if TYPE_CHECKING:
    from jit_jax.unlearn import MethodOutput, Request


def finetune(req: Request, *, epochs: int = 5, lr: float = 0.02, batch_size: int = 128
             ) -> MethodOutput:
    """FNTN: keep training the original on D_r alone (``finetune`` in the authors' harness)."""
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, optimizer="sgd", lr=lr, momentum=0.9,
                      weight_decay=5e-4, schedule="constant", augment="none")
    idx = req.split.retain_idx
    return _fit(req, req.inputs(idx), req.dataset.train_targets[idx], cfg, {})


def random_wrong_labels(y: np.ndarray, num_classes: int, seed: int) -> np.ndarray:
    """For each label, a label drawn uniformly from the other ``num_classes - 1``."""
    if num_classes < 2:
        raise ValueError(f"num_classes={num_classes}: relabelling needs at least 2 classes")
    r = np.random.default_rng(seed).integers(0, num_classes - 1, len(y))
    return (r + (r >= y)).astype(np.int32)


def amnesiac(req: Request, *, epochs: int = 3, lr: float = 1e-4, batch_size: int = 128
             ) -> MethodOutput:
    """AMN: train on D_f with random wrong labels (full class: another class; sub-class: another
    super-class; random: any label but the true one, i.e. always another training target) together
    with all of D_r."""
    ds, split = req.dataset, req.split
    y_f = random_wrong_labels(ds.train_targets[split.forget_idx], ds.num_classes, req.seed)
    x = np.concatenate([req.inputs(split.forget_idx), req.inputs(split.retain_idx)])
    y = np.concatenate([y_f, ds.train_targets[split.retain_idx]])
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, optimizer="adam", lr=lr,
                      weight_decay=0.0, schedule="constant", augment="none")
    return _fit(req, x, y, cfg, {})
