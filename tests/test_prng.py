"""``jit_jax.prng``: flat draws reshaped are jax.random's own draws, bit for bit, in both threefry
modes, for typed and raw keys, under jit and vmap; JiT's noise is unchanged by using them."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jit_jax import prng
from jit_jax.unlearn.jit import perturb

SHAPES = [(2, 3, 4, 5), (3, 5)]  # small: jax.random's own N-D draws are what compile slowly


@pytest.mark.parametrize("partitionable", [True, False])
@pytest.mark.parametrize("raw_key", [False, True])
def test_flat_draws_are_jax_randoms_draws(partitionable, raw_key):
    old = jax.config.jax_threefry_partitionable
    jax.config.update("jax_threefry_partitionable", partitionable)
    try:
        key = jax.random.PRNGKey(7) if raw_key else jax.random.key(7)

        def draws(k):  # one compiled program: (ours, jax.random's) pairs
            pairs = []
            for shape in SHAPES:
                pairs += [
                    (prng.normal(k, shape), jax.random.normal(k, shape)),
                    (prng.uniform(k, shape, jnp.float32, -2.0, 3.0),
                     jax.random.uniform(k, shape, jnp.float32, -2.0, 3.0)),
                    (prng.rademacher(k, shape), jax.random.rademacher(k, shape, jnp.float32)),
                ]
            vk = jax.random.split(k, 3)
            pairs.append((jax.vmap(lambda q: prng.normal(q, (2, 3, 2)))(vk),
                          jax.vmap(lambda q: jax.random.normal(q, (2, 3, 2)))(vk)))
            return pairs

        for ours, theirs in jax.jit(draws)(key):
            assert ours.shape == theirs.shape and ours.dtype == theirs.dtype
            np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
    finally:
        jax.config.update("jax_threefry_partitionable", old)


def test_jit_noise_is_unchanged():
    """JiT's perturbation draws through prng: the same noisy batch as jax.random.normal gives."""
    key = jax.random.key(3)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 4, 4, 3)), jnp.float32)
    expected = jnp.clip(x + 0.5 * jax.random.normal(key, x.shape, x.dtype), x.min(), x.max())
    np.testing.assert_array_equal(np.asarray(perturb(key, x, 0.5)), np.asarray(expected))
