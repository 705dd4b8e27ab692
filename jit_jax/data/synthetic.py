"""Seeded synthetic image classification sets with class-specific structure, for tests and for
checking recipes on a shape of problem no real dataset here has.

``identities(...)`` makes a face-identification-like problem: few classes' worth of images each
(by default 40 classes, 7 training and 3 test images per class, 64x64 greyscale, the shape of a
small face database). Each class has a *prototype*: a smooth random image (a sum of Gaussian blobs
of random position, width and sign on a shared base, so every class looks alike at a glance). A
sample is its class's prototype seen with nuisance variation: a random translation of a few pixels,
a random global brightness and contrast, a sample-specific smooth distortion field (a weaker sum of
blobs) and pixel noise. The label is recoverable only from the prototype's layout, so a model must
learn which blob pattern belongs to which class; nothing is copied from any real data set.
"""

from __future__ import annotations

import numpy as np

__all__ = ["identities"]


def _blobs(rng: np.random.Generator, n: int, size: int, count: int, scale: float) -> np.ndarray:
    """(n, size, size) float sums of ``count`` Gaussian blobs of random centre, width and sign."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    out = np.zeros((n, size, size), np.float32)
    for _ in range(count):
        cy = rng.uniform(0.1, 0.9, (n, 1, 1)) * size
        cx = rng.uniform(0.1, 0.9, (n, 1, 1)) * size
        w = rng.uniform(0.04, 0.15, (n, 1, 1)) * size
        a = rng.normal(0.0, scale, (n, 1, 1))
        out += a * np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * w**2))
    return out


def identities(
    num_classes: int = 40,
    train_per_class: int = 7,
    test_per_class: int = 3,
    size: int = 64,
    *,
    shift: int = 3,
    noise: float = 0.06,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """A seeded identities problem as arrays in the ``npz:`` schema (uint8 NHWC greyscale).

    Returns ``{"x_train", "y_train", "x_test", "y_test", "class_names"}``, train and test drawn from
    the same per-class distribution, classes ordered and balanced.
    """
    if num_classes < 2 or train_per_class < 1 or test_per_class < 1 or size < 8:
        raise ValueError(
            f"identities: num_classes={num_classes} (>= 2), train_per_class={train_per_class} "
            f"(>= 1), test_per_class={test_per_class} (>= 1), size={size} (>= 8)")
    rng = np.random.default_rng(seed)
    base = _blobs(rng, 1, size, 6, 0.5)[0]
    protos = base[None] + _blobs(rng, num_classes, size, 12, 0.35)
    per = train_per_class + test_per_class
    labels = np.repeat(np.arange(num_classes), per)
    n = len(labels)
    pad = shift
    padded = np.pad(protos, ((0, 0), (pad, pad), (pad, pad)), mode="edge")
    dy = rng.integers(-shift, shift + 1, n)
    dx = rng.integers(-shift, shift + 1, n)
    imgs = np.stack([padded[c, pad + a:pad + a + size, pad + b:pad + b + size]
                     for c, a, b in zip(labels, dy, dx, strict=True)])
    imgs = imgs + _blobs(rng, n, size, 4, 0.15)  # the sample's own distortion
    contrast = rng.uniform(0.7, 1.3, (n, 1, 1))
    brightness = rng.normal(0.0, 0.1, (n, 1, 1))
    imgs = imgs * contrast + brightness + rng.normal(0.0, noise, imgs.shape)
    lo, hi = np.percentile(imgs, [0.5, 99.5])
    u8 = np.clip((imgs - lo) / (hi - lo) * 255.0, 0, 255).round().astype(np.uint8)[..., None]
    is_test = np.tile(np.r_[np.zeros(train_per_class, bool), np.ones(test_per_class, bool)],
                      num_classes)
    return {
        "x_train": u8[~is_test], "y_train": labels[~is_test].astype(np.int64),
        "x_test": u8[is_test], "y_test": labels[is_test].astype(np.int64),
        "class_names": np.array([f"id{c:02d}" for c in range(num_classes)]),
    }
