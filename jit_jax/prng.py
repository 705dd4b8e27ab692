"""Random draws of any shape that compile fast on the CPU.

``jax.random.normal(key, shape)`` and its kin give the same numbers whether ``shape`` is an image
batch or the same number of elements in one row: each element's counter is its flat (row-major)
index, with ``jax_threefry_partitionable`` on (jax's default) or off. XLA:CPU, though, compiles
the multi-dimensional counters of the partitionable threefry slowly: about 1 s for a
(24, 8, 8, 3) batch against about 0.25 s for the flat draw (jax 0.10.2, this project's 2-core
machine). A JiT step draws its noise in this shape, so the flat draw takes a second off every
compilation of the step, with the same result to the bit (``tests/test_prng.py``).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp


def _flat_shape(shape) -> tuple[tuple[int, ...], tuple[int]]:
    shape = tuple(int(s) for s in shape)
    return shape, (math.prod(shape),)


def normal(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
    """``jax.random.normal(key, shape, dtype)``, drawn flat and reshaped (the same array)."""
    shape, flat = _flat_shape(shape)
    return jax.random.normal(key, flat, dtype).reshape(shape)


def uniform(key: jax.Array, shape, dtype=jnp.float32, minval=0.0, maxval=1.0) -> jax.Array:
    """``jax.random.uniform(key, shape, dtype, minval, maxval)`` with scalar bounds, drawn flat
    and reshaped (the same array)."""
    shape, flat = _flat_shape(shape)
    return jax.random.uniform(key, flat, dtype, minval, maxval).reshape(shape)


def rademacher(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
    """``jax.random.rademacher(key, shape, dtype)``, drawn flat and reshaped (the same array)."""
    shape, flat = _flat_shape(shape)
    return jax.random.rademacher(key, flat, dtype).reshape(shape)
