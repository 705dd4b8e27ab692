"""Max pooling over non-overlapping windows as a reshape and a max (``layers.max_pool_blocks``),
against XLA's ``reduce_window`` / ``select_and_scatter`` (``nnx.max_pool``).

Both compute the same selections with no arithmetic: the forward value is one of the window's
elements, and each derivative copies a tangent (or cotangent) to one element. So the comparisons
below are exact (``array_equal``), with no tolerance. Tie-heavy integer data checks that the
derivative goes to the first maximum in row-major window order, as XLA's does; a rule that split
the cotangent among ties (``jnp.max``'s) or took the last maximum fails those tests.
"""

from __future__ import annotations

from contextlib import nullcontext

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jit_jax import models
from jit_jax.models import layers

CASES = [((2, 8, 8, 3), 2), ((3, 7, 9, 2), 2), ((2, 9, 9, 2), 3), ((2, 2, 2, 4), 2),
         ((1, 5, 6, 1), 3)]


def _xla(x, k):
    return nnx.max_pool(x, (k, k), strides=(k, k), padding=((0, 0), (0, 0)))


def _ours(x, k):
    return layers.max_pool(x, k, k, impl="blocks")


def _data(shape, kind, seed=0):
    rng = np.random.default_rng(seed)
    if kind == "float":
        return jnp.asarray(rng.standard_normal(shape).astype(np.float32))
    # ties everywhere: values in {0, 1, 2}, after a ReLU-like clip many windows are all zero
    return jnp.asarray(np.maximum(rng.integers(-1, 3, shape), 0).astype(np.float32))


@pytest.mark.parametrize("shape,k", CASES)
@pytest.mark.parametrize("kind", ["float", "ties"])
def test_values_and_gradient_equal_xla(shape, k, kind):
    x = _data(shape, kind)
    np.testing.assert_array_equal(jax.jit(_ours, static_argnums=1)(x, k), _xla(x, k))
    out_shape = _xla(x, k).shape
    w = jnp.asarray(np.random.default_rng(1).standard_normal(out_shape).astype(np.float32))

    def loss(f):
        return lambda x: jnp.sum(w * f(x, k))

    g_ours, g_xla = jax.grad(loss(_ours))(x), jax.grad(loss(_xla))(x)
    np.testing.assert_array_equal(g_ours, g_xla)
    if kind == "ties":  # the data really has tied maxima routed to one element only
        assert int(jnp.sum(g_ours != 0)) == int(np.prod(out_shape))


@pytest.mark.parametrize("kind", ["float", "ties"])
def test_jvp_vmap_and_hessian_equal_xla(kind):
    x = _data((2, 4, 6, 3), kind, seed=2)
    t = _data((2, 4, 6, 3), "float", seed=3)
    for f in (_ours, _xla):
        assert f(x, 2).shape == (2, 2, 3, 3)
    y1, t1 = jax.jvp(lambda x: _ours(x, 2), (x,), (t,))
    y2, t2 = jax.jvp(lambda x: _xla(x, 2), (x,), (t,))
    np.testing.assert_array_equal(y1, y2)
    np.testing.assert_array_equal(t1, t2)
    xs = jnp.stack([x, x[::-1] * 2.0])
    np.testing.assert_array_equal(jax.vmap(lambda x: _ours(x, 2))(xs),
                                  jax.vmap(lambda x: _xla(x, 2))(xs))
    small = x[:1, :2, :4, :1]

    def h(f):
        return jax.hessian(lambda x: jnp.sum(jnp.sin(f(x, 2)) * jnp.arange(1.0, 3.0)[:, None]))

    np.testing.assert_array_equal(h(_ours)(small), h(_xla)(small))
    # grad of grad (a gradient-norm penalty's pattern)
    def gg(f):
        inner = jax.grad(lambda z: jnp.sum(jnp.sin(f(z, 2))))
        return jax.grad(lambda x: jnp.sum(inner(x) ** 2))(x)

    np.testing.assert_array_equal(gg(_ours), gg(_xla))


def test_nan_propagates_and_takes_the_derivative():
    """A NaN in a window makes the output NaN, as XLA's; the derivative goes to the window's first
    NaN (XLA's jvp picks an element that depends on its reduction order there, so no equality)."""
    x = _data((1, 4, 4, 2), "float").at[0, 1, 0, 1].set(jnp.nan)
    a, b = _ours(x, 2), _xla(x, 2)
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    assert bool(jnp.isnan(a[0, 0, 0, 1])) and int(jnp.sum(jnp.isnan(a))) == 1
    t = jnp.arange(1.0, 33.0).reshape(1, 4, 4, 2)
    x2 = x.at[0, 1, 1, 1].set(jnp.nan)  # two NaNs in one window: the first in row-major order
    for xx in (x, x2):
        _, tout = jax.jvp(lambda z: _ours(z, 2), (xx,), (t,))
        assert float(tout[0, 0, 0, 1]) == float(t[0, 1, 0, 1])


def test_bad_arguments():
    x = jnp.zeros((1, 4, 4, 1))
    with pytest.raises(ValueError, match="impl must be one of"):
        layers.max_pool(x, 2, 2, impl="fast")
    with pytest.raises(ValueError, match="pool_impl: impl must be one of"):
        with layers.pool_impl("fast"):
            pass
    with pytest.raises(ValueError, match="window == stride, padding 0"):
        layers.max_pool(x, 3, 2, padding=1, impl="blocks")
    # overlapping or padded windows keep XLA's form under "auto"
    np.testing.assert_array_equal(
        layers.max_pool(x, 3, 2, padding=1),
        nnx.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1))))


@pytest.mark.parametrize("impl,pool,expect_xla", [("custom", None, False), ("xla", None, True),
                                                  ("custom", "xla", True),
                                                  ("xla", "blocks", False)])
def test_models_take_the_block_form_with_the_cpu_rules(impl, pool, expect_xla):
    """VGG's and the cnn's pooling follow the layer setting: the block form under the CPU rules,
    XLA's reduce_window under ``JIT_JAX_CONV=xla`` (checked on the gradient's jaxpr), unless a
    ``layers.pool_impl`` block chooses."""
    for name, opts, shape in (("vgg11", {"width": 4}, (32, 32, 3)), ("cnn", {"width": 4},
                                                                     (16, 16, 3))):
        model = models.create(name, 3, shape, **opts)
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)

        def loss(p, x, graphdef=graphdef, rest=rest):
            return jnp.sum(nnx.merge(graphdef, p, rest)(x))

        x = jnp.ones((2, *shape))
        with layers.conv_impl(impl), (layers.pool_impl(pool) if pool else nullcontext()):
            text = str(jax.make_jaxpr(jax.grad(loss))(params, x))
        assert ("reduce_window_max" in text) == expect_xla, name
        assert ("select_and_scatter" in text) == expect_xla, name
