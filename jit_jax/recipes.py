"""Known-good settings: training recipes per dataset and model, and JiT's CPU-scale defaults.

Each entry records how it was measured (see README and docs/); a user override always wins.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from jit_jax.data import Dataset, normalize
from jit_jax.train import TrainConfig

#: (dataset name, model name) -> training recipe; "*" matches any model.
TRAIN_RECIPES: dict[tuple[str, str], TrainConfig] = {
    # digits (1438 train images of 8x8): Adam 1e-2, one-cycle, no augmentation (crops and flips
    # hurt on 8x8 digits), the authors' weight decay 5e-4 (coupled, as in their recipe). Without
    # the weight decay the models are as accurate but so over-confident that JiT's retrain
    # distance stays near 16 on validation (9.2 with it; docs/jit-tuning.md, third round).
    ("digits", "*"): TrainConfig(epochs=30, batch_size=64, optimizer="adam", lr=1e-2,
                                 weight_decay=5e-4, schedule="onecycle", augment="none"),
    # CIFAR-style data (the authors' recipe: SGD 0.1, momentum 0.9, wd 5e-4, one-cycle, crop+flip).
    ("*", "*"): TrainConfig(epochs=30, batch_size=128, optimizer="sgd", lr=0.1, momentum=0.9,
                            weight_decay=5e-4, schedule="onecycle", augment="crop_flip"),
}


#: Below this many training images a dataset with no recipe of its own gets the small-data recipe
#: (Adam 1e-3, batch 32, no augmentation) and, with ``--model auto``, the MLP. Why: the authors'
#: CIFAR recipe (SGD 0.1, one-cycle, batch 128) was made for 50,000 images; on 280 images of 40
#: classes it runs 2 steps an epoch and the CNN stays at chance (10% after 30 epochs, measured
#: on ``jit_jax.data.synthetic.identities``; the user's own 40-class set: 14%), while a convnet
#: trained from scratch on so few images is both data-starved and slow on a CPU (the identities
#: CNN with Adam: 12.5% after 30 epochs, 215 s; the MLP with Adam: 97.5% in 4 s).
SMALL_DATA = 5000

#: Every default recipe runs at least this many optimiser steps (epochs are raised to reach it):
#: the digits recipe runs 660, the CIFAR one 2,100 on the 9,000-image subset.
MIN_STEPS = 500


def train_recipe(dataset: str, model: str, num_train: int | None = None) -> TrainConfig:
    """The training recipe for ``model`` on ``dataset``.

    A recipe measured for the dataset (``TRAIN_RECIPES``) is returned as it is. Otherwise the
    generic recipe, adapted to the training set's size when ``num_train`` is given
    (:func:`adapt_recipe`)."""
    for key in [(dataset, model), (dataset, "*"), ("*", model)]:
        if key in TRAIN_RECIPES:
            return TRAIN_RECIPES[key]
    base = TRAIN_RECIPES[("*", "*")]
    return base if num_train is None else adapt_recipe(base, num_train)


def adapt_recipe(config: TrainConfig, num_train: int) -> TrainConfig:
    """``config`` fitted to a training set of ``num_train`` images: under :data:`SMALL_DATA`
    images Adam 1e-3, batch at most 32 and no augmentation; then enough epochs for
    :data:`MIN_STEPS` optimiser steps (batches are full: the last partial one is dropped)."""
    if num_train < 1:
        raise ValueError(f"num_train={num_train}; accepted: an integer >= 1")
    if num_train < SMALL_DATA:
        config = config.replace(optimizer="adam", lr=1e-3, batch_size=min(config.batch_size, 32),
                                augment="none")
    steps_per_epoch = max(num_train // min(config.batch_size, num_train), 1)
    epochs = max(config.epochs, -(-MIN_STEPS // steps_per_epoch))
    return config.replace(epochs=epochs)


def default_model(num_train: int, image_shape: tuple[int, int, int]) -> tuple[str, dict, str]:
    """``--model auto``: (model name, options, the reason), from the data's size and shape.

    Under :data:`SMALL_DATA` training images: the MLP (see above). Otherwise a CIFAR ResNet18 of
    width 16 for inputs of at least 32x32 (73.8% on the 9,000-image CIFAR-10 subset, 36 s an
    epoch here), the small CNN below that (98.6% on 8x8 digits)."""
    h, w = image_shape[:2]
    if num_train < SMALL_DATA:
        return "mlp", {}, (f"{num_train} training images (< {SMALL_DATA}): a convnet trained from "
                           "scratch on so few is data-starved and slow on a CPU")
    if min(h, w) >= 32:
        return "resnet18", {"width": 16}, (f"{num_train} training images of {h}x{w}")
    return "cnn", {}, f"{num_train} training images of {h}x{w} (< 32x32)"


def training_warnings(final: dict, num_classes: int, model: str, num_train: int) -> list[str]:
    """Warnings when a trained model looks unusable, naming what to try (empty if it looks fine).

    ``final`` is the last epoch's record (``train_accuracy`` and, if evaluated, ``test_accuracy``,
    in %). Unusable: training accuracy under 50%, or test accuracy under twice chance."""
    chance = 100.0 / num_classes
    train_acc = final.get("train_accuracy", float("nan"))
    test_acc = final.get("test_accuracy")
    bad = []
    if train_acc < 50.0:
        bad.append(f"training accuracy {train_acc:.1f}%")
    if test_acc is not None and test_acc < 2 * chance:
        bad.append(f"test accuracy {test_acc:.1f}% (chance {chance:.1f}%)")
    if not bad:
        return []
    tries = []
    if model != "mlp" and num_train < SMALL_DATA:
        tries.append("--model mlp (or --model auto)")
    tries += ["--optimizer adam --lr 1e-3", "more --epochs", "`jit-jax models` for which model "
              "suits which input size"]
    return [f"the model looks unusable: {' and '.join(bad)}; try " + ", ".join(tries)]


#: (dataset name, task) -> JiT options chosen on a validation split (docs/jit-tuning.md).
JIT_DEFAULTS: dict[tuple[str, str], dict] = {
    # digits + mlp (trained with the digits recipe above): best mean retrain distance (9.21) over
    # all 10 classes x 2 seeds on a 20% hold-out of the training set; grids in
    # docs/tuning/digits-mlp*.json, summary in docs/jit-tuning.md.
    ("digits", "*"): dict(sigma=1.0, lr=8e-3, batch_size=32),
}


def jit_defaults(dataset: str, model: str, task: str) -> dict:
    """JiT options for a dataset/task when the authors' presets do not cover it ({} otherwise)."""
    for key in [(dataset, task), (dataset, "*")]:
        if key in JIT_DEFAULTS:
            return dict(JIT_DEFAULTS[key])
    return {}


def preprocess_fn(ds: Dataset) -> Callable[[np.ndarray], np.ndarray]:
    """uint8 NHWC images -> normalised float32 model inputs for ``ds``."""
    mean, std = ds.mean, ds.std
    return lambda x: normalize(x, mean, std)
