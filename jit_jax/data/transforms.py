"""Batch transforms in ``jax.numpy``: pure, jit-friendly, randomness only through explicit keys.

All image functions take NHWC batches. :func:`normalize` here is the jnp twin of
:func:`jit_jax.data.dataset.normalize` (same formula, usable inside ``jax.jit``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np


def normalize(x: jax.Array, mean: Sequence[float], std: Sequence[float]) -> jax.Array:
    """uint8 (or float in [0, 255]) NHWC -> float32 ``(x / 255 - mean) / std``."""
    x = jnp.asarray(x, jnp.float32) / 255.0
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def random_crop_flip(
    key: jax.Array,
    x: jax.Array,
    pad: int = 4,
    flip: bool = True,
    fill: float | Sequence[float] = 0.0,
) -> jax.Array:
    """CIFAR-style augmentation of a float NHWC batch, independently per image.

    Each image is padded by ``pad`` pixels on every side with ``fill`` (a scalar or one value per
    channel), cropped back to H x W at a uniformly drawn offset in ``[0, 2 * pad]`` per axis, and
    flipped left-right with probability 1/2 when ``flip``. torchvision's ``RandomCrop(pad=4)`` pads
    the raw image with black; on normalised images that is ``fill = -mean / std``. Vectorised
    (``vmap`` of ``dynamic_slice``), so it runs inside ``jit``; ``pad`` and ``flip`` are static.
    """
    if pad < 0:
        raise ValueError(f"pad must be >= 0, got {pad}")
    x = jnp.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"expected an NHWC batch (4 dims), got shape {x.shape}")
    b, h, w, c = x.shape
    k_crop, k_flip = jax.random.split(key)
    if pad:
        fill_c = jnp.broadcast_to(jnp.asarray(fill, x.dtype), (c,))
        canvas = jnp.broadcast_to(fill_c, (b, h + 2 * pad, w + 2 * pad, c))
        padded = canvas.at[:, pad : pad + h, pad : pad + w, :].set(x)
        offsets = jax.random.randint(k_crop, (b, 2), 0, 2 * pad + 1)

        def crop(img, off):
            return jax.lax.dynamic_slice(img, (off[0], off[1], 0), (h, w, c))

        x = jax.vmap(crop)(padded, offsets)
    if flip:
        do_flip = jax.random.bernoulli(k_flip, 0.5, (b,))
        x = jnp.where(do_flip[:, None, None, None], x[:, :, ::-1, :], x)
    return x


def resize(x: jax.Array, size: int | Sequence[int], method: str = "bilinear") -> jax.Array:
    """Resize an NHWC batch to ``size`` (int -> square, or (H, W)) with ``jax.image.resize``
    (bilinear, antialiased when shrinking), e.g. 32 -> 224 for ViT. Integer input becomes float32;
    resize after :func:`normalize` (the authors' order: Normalize, then Resize)."""
    x = jnp.asarray(x)
    if x.ndim != 4:
        raise ValueError(f"expected an NHWC batch (4 dims), got shape {x.shape}")
    hw = (int(size), int(size)) if np.isscalar(size) else tuple(int(s) for s in size)
    if len(hw) != 2 or min(hw) <= 0:
        raise ValueError(f"size must be a positive int or (H, W), got {size!r}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    return jax.image.resize(x, (x.shape[0], *hw, x.shape[3]), method=method)


def batches(
    n: int,
    batch_size: int,
    *,
    key_or_seed: jax.Array | int | None = None,
    drop_last: bool = False,
) -> Iterator[np.ndarray]:
    """Yield int64 index arrays covering ``range(n)`` in batches of ``batch_size``.

    In order when ``key_or_seed`` is None; shuffled by ``jax.random.permutation`` for a PRNG key or
    by ``np.random.default_rng`` for an int seed. ``drop_last`` drops a final short batch (useful
    to keep one compiled shape).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    if key_or_seed is None:
        order = np.arange(n, dtype=np.int64)
    elif isinstance(key_or_seed, (int, np.integer)) and not isinstance(key_or_seed, bool):
        order = np.random.default_rng(int(key_or_seed)).permutation(n).astype(np.int64)
    else:
        order = np.asarray(jax.random.permutation(key_or_seed, n), dtype=np.int64)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        yield order[start : start + batch_size]
