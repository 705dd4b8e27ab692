"""Parameter initialisers that draw on the host (numpy), seeded from the JAX key they are given.

They have the usual ``init(key, shape, dtype)`` signature, so they plug into ``nnx.Linear`` etc.,
and they are deterministic functions of the key. Why not ``jax.random``: every distinct parameter
shape makes eager JAX compile a new threefry/normal program, 0.3-2 s each on the project's 2-core
CPU, so building a ResNet18 or VGG16 took 10-20 s before its first step. Here the key only goes
through ``jax.random.key_data`` (compiled once) and numpy draws the values, so a model builds in
a fraction of a second whatever its size.

Under a JAX transformation (``nnx.eval_shape``, ``jax.jit``) the key is abstract; the initialisers
then fall back to the equivalent ``jax.nn.initializers`` function (same distribution, different
draws), which is all ``nnx.eval_shape`` needs.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

_TRUNC_STD = 0.87962566103423978  # std of a standard normal truncated to (-2, 2)


def _host_rng(key) -> np.random.Generator | None:
    """A numpy Generator seeded by ``key``'s bits, or None if ``key`` is abstract (traced)."""
    if isinstance(key, jax.core.Tracer):
        return None
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        key = jax.random.key_data(key)
    return np.random.default_rng([int(v) for v in np.asarray(key).ravel()])


def _standard_normal(rng: np.random.Generator, shape) -> np.ndarray:
    return rng.standard_normal(shape, dtype=np.float32)


def _uniform(rng: np.random.Generator, lo: float, hi: float, shape) -> np.ndarray:
    return (lo + (hi - lo) * rng.random(shape, dtype=np.float32)).astype(np.float32)


def _fans(shape) -> tuple[int, int]:
    """jax's fan rule with in_axis=-2, out_axis=-1: the other axes are the receptive field."""
    if len(shape) < 2:
        raise ValueError(f"variance scaling needs a kernel of >= 2 dims, got shape {shape}")
    rf = math.prod(shape[:-2])
    return shape[-2] * rf, shape[-1] * rf


def variance_scaling(scale: float, mode: str, distribution: str):
    """Like ``jax.nn.initializers.variance_scaling`` (modes fan_in/fan_out/fan_avg; distributions
    truncated_normal/normal/uniform), drawn with numpy."""
    fallback = jax.nn.initializers.variance_scaling(scale, mode, distribution)

    def init(key, shape, dtype=jnp.float32):
        rng = _host_rng(key)
        if rng is None:
            return fallback(key, shape, dtype)
        shape = tuple(shape)
        fan_in, fan_out = _fans(shape)
        denom = {"fan_in": fan_in, "fan_out": fan_out, "fan_avg": (fan_in + fan_out) / 2}[mode]
        var = scale / denom
        if distribution == "truncated_normal":
            x = _standard_normal(rng, shape)
            bad = np.abs(x) > 2
            while bad.any():
                x[bad] = _standard_normal(rng, int(bad.sum()))
                bad = np.abs(x) > 2
            x *= np.float32(math.sqrt(var) / _TRUNC_STD)
        elif distribution == "normal":
            x = _standard_normal(rng, shape) * np.float32(math.sqrt(var))
        elif distribution == "uniform":
            x = _uniform(rng, -1.0, 1.0, shape) * np.float32(math.sqrt(3 * var))
        else:
            raise ValueError(f"unknown distribution {distribution!r}")
        return jnp.asarray(x, dtype)

    return init


def normal(stddev: float):
    fallback = jax.nn.initializers.normal(stddev)

    def init(key, shape, dtype=jnp.float32):
        rng = _host_rng(key)
        if rng is None:
            return fallback(key, shape, dtype)
        return jnp.asarray(_standard_normal(rng, tuple(shape)) * np.float32(stddev), dtype)

    return init


def uniform(bound: float):
    """U(-bound, bound)."""

    def init(key, shape, dtype=jnp.float32):
        rng = _host_rng(key)
        if rng is None:
            return jax.random.uniform(key, shape, dtype, -bound, bound)
        return jnp.asarray(_uniform(rng, -bound, bound, tuple(shape)), dtype)

    return init


def zeros(key, shape, dtype=jnp.float32):
    del key
    return jnp.asarray(np.zeros(shape, dtype))


lecun_normal = variance_scaling(1.0, "fan_in", "truncated_normal")  # flax's Dense/Conv default
xavier_uniform = variance_scaling(1.0, "fan_avg", "uniform")
he_normal_fan_out = variance_scaling(2.0, "fan_out", "normal")  # torchvision's ResNet/VGG convs


def torch_linear(fan_in: int):
    """torch.nn.Linear's default init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)), kernel and bias."""
    return uniform(1.0 / math.sqrt(fan_in))
