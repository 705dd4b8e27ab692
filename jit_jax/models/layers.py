"""Building blocks shared by the CNN, ResNet and VGG ports.

Everything is NHWC / HWIO (the flax layout, which is also the faster one on XLA:CPU).

:class:`Conv` is a drop-in for ``nnx.Conv`` (same ``kernel``/``bias`` parameters, same maths) that
switches to an explicit *im2col* form -- pad, take the ``kh*kw`` shifted views, concatenate them on
the channel axis and do one matmul with the reshaped HWIO kernel -- when the input's spatial size
is small (``max(H, W) <= im2col_max_spatial``, default 4). XLA:CPU runs a 3x3/pad-1 convolution
over a 2x2 (or 1x1) map at 2-3 GFLOP/s, against ~300 GFLOP/s for the same maths as a matmul; VGG's
last two convolutions at 32x32 input are exactly that case, and the im2col form made a VGG11 step
13x faster (``reference/perf-jit-step.md``; here a VGG11-BN forward+backward at batch 32 went
from 7.6 s to 0.38 s). Above 4x4 XLA's own convolution is as fast or faster, so it is used there.
The choice is made from static shapes at trace time, so it costs nothing at run time.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jit_jax.models import initializers as init

IM2COL_MAX_SPATIAL = 4
"""Default spatial size at or below which :class:`Conv` uses the im2col form."""

BN_MOMENTUM = 0.9  # flax convention; equals torch's momentum=0.1
BN_EPSILON = 1e-5  # torch's default


def _pair(v: int | Sequence[int], what: str) -> tuple[int, int]:
    if isinstance(v, int):
        return (v, v)
    v = tuple(int(a) for a in v)
    if len(v) != 2:
        raise ValueError(f"{what} must be an int or a pair of ints, got {v!r}")
    return v


def _padding(
    padding: int | str | Sequence, kernel: tuple[int, int]
) -> tuple[tuple[int, int], tuple[int, int]]:
    """Normalise a padding spec to explicit ((top, bottom), (left, right)).

    An int ``p`` pads ``p`` on every side (torch's ``padding=p``); "VALID" is 0; "SAME" (odd
    kernels only) is the symmetric ``k // 2``, which equals flax's "SAME" at stride 1.
    """
    if isinstance(padding, str):
        if padding.upper() == "VALID":
            return ((0, 0), (0, 0))
        if padding.upper() == "SAME" and kernel[0] % 2 == 1 and kernel[1] % 2 == 1:
            return ((kernel[0] // 2,) * 2, (kernel[1] // 2,) * 2)
        raise ValueError(
            f"padding {padding!r} not supported; use an int, a pair of (lo, hi) pairs, 'VALID', "
            "or 'SAME' with an odd kernel"
        )
    if isinstance(padding, int):
        return ((padding, padding), (padding, padding))
    pads = tuple(_pair(p, "padding") if not isinstance(p, int) else (p, p) for p in padding)
    if len(pads) != 2:
        raise ValueError(f"padding must give 2 spatial dimensions, got {padding!r}")
    return pads  # type: ignore[return-value]


def conv_general(x, kernel, strides, padding):
    """Plain XLA convolution, NHWC x HWIO -> NHWC (what ``nnx.Conv`` computes)."""
    return jax.lax.conv_general_dilated(
        x, kernel, window_strides=strides, padding=padding,
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )


def conv_im2col(x, kernel, strides, padding):
    """The same convolution as :func:`conv_general`, as patches @ reshaped kernel.

    Taps whose shifted view lies entirely in the zero padding (e.g. the 8 outer taps of a 3x3
    pad-1 convolution on a 1x1 map) are dropped statically together with their kernel rows, so a
    1x1 map costs one ``C_in x C_out`` matmul.
    """
    kh, kw, cin, cout = kernel.shape
    (pt, pb), (pl, pr) = padding
    sh, sw = strides
    b, h, w, c = x.shape
    if c != cin:
        raise ValueError(f"input has {c} channels, the kernel expects {cin}")
    hp, wp = h + pt + pb, w + pl + pr
    ho, wo = (hp - kh) // sh + 1, (wp - kw) // sw + 1
    if ho <= 0 or wo <= 0:
        raise ValueError(f"input {h}x{w} is too small for a {kh}x{kw} kernel with {padding=}")
    xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))

    def touches_data(start, n_out, stride, lo, size):
        rows = range(start, start + stride * (n_out - 1) + 1, stride)
        return any(lo <= r < lo + size for r in rows)

    taps, views = [], []
    for i in range(kh):
        if not touches_data(i, ho, sh, pt, h):
            continue
        for j in range(kw):
            if not touches_data(j, wo, sw, pl, w):
                continue
            taps.append(i * kw + j)
            views.append(xp[:, i : i + sh * (ho - 1) + 1 : sh, j : j + sw * (wo - 1) + 1 : sw, :])
    patches = views[0] if len(views) == 1 else jnp.concatenate(views, axis=-1)
    k = kernel.reshape(kh * kw, cin, cout)
    if len(taps) != kh * kw:
        k = k[np.asarray(taps)]
    return jnp.dot(patches, k.reshape(len(taps) * cin, cout))


_RECORDING: contextvars.ContextVar[list | None] = contextvars.ContextVar("jit_jax_activations",
                                                                     default=None)


@contextlib.contextmanager
def record_activations() -> Iterator[list[tuple[str, jax.Array]]]:
    """Collect intermediate activations of the models called inside the block, in call order, as
    ``(kind, array)``: ``"conv"`` for the output of every :class:`Conv` (before any norm or
    activation; NHWC) and ``"encoder"`` for the output of every ViT encoder block ((B, T, D)).
    Works inside traced functions (``jit``, ``grad``): the arrays are that trace's values, to be
    used within the same function (GKT's attention transfer does). Blocks may nest; each collects
    its own calls."""
    acts: list[tuple[str, jax.Array]] = []
    token = _RECORDING.set(acts)
    try:
        yield acts
    finally:
        _RECORDING.reset(token)


def record(kind: str, x: jax.Array) -> jax.Array:
    """Append ``(kind, x)`` to the innermost :func:`record_activations` block, if any."""
    acts = _RECORDING.get()
    if acts is not None:
        acts.append((kind, x))
    return x


class Conv(nnx.Module):
    """2-D convolution, NHWC, parameters ``kernel`` (kh, kw, in, out) and optional ``bias``.

    Same maths as ``nnx.Conv`` with explicit symmetric padding (torch semantics: ``padding=1``
    pads one pixel on every side, also for stride 2, unlike flax's 'SAME'). When the input's
    spatial size is ``<= im2col_max_spatial`` the im2col form is used instead (see module doc);
    set ``im2col_max_spatial=0`` to always use XLA's convolution.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        kernel_size: int | Sequence[int] = 3,
        *,
        strides: int | Sequence[int] = 1,
        padding: int | str | Sequence = 0,
        use_bias: bool = True,
        kernel_init: nnx.Initializer = init.he_normal_fan_out,
        bias_init: nnx.Initializer = init.zeros,
        im2col_max_spatial: int = IM2COL_MAX_SPATIAL,
        rngs: nnx.Rngs,
    ):
        kh, kw = _pair(kernel_size, "kernel_size")
        self.in_features = in_features
        self.out_features = out_features
        self.kernel_size = (kh, kw)
        self.strides = _pair(strides, "strides")
        self.padding = _padding(padding, (kh, kw))
        self.im2col_max_spatial = im2col_max_spatial
        self.kernel = nnx.Param(kernel_init(rngs.params(), (kh, kw, in_features, out_features)))
        if use_bias:
            self.bias = nnx.Param(bias_init(rngs.params(), (out_features,)))
        else:
            self.bias = nnx.data(None)

    def uses_im2col(self, spatial: tuple[int, int]) -> bool:
        return max(spatial) <= self.im2col_max_spatial

    def __call__(self, x):
        if x.ndim != 4:
            raise ValueError(f"Conv expects NHWC input (4 dims), got shape {x.shape}")
        kernel = self.kernel[...]
        if self.uses_im2col(x.shape[1:3]):
            y = conv_im2col(x, kernel, self.strides, self.padding)
        else:
            y = conv_general(x, kernel, self.strides, self.padding)
        if self.bias is not None:
            y = y + self.bias[...]
        return record("conv", y)


def dense(
    in_features: int,
    out_features: int,
    *,
    rngs: nnx.Rngs,
    kernel_init: nnx.Initializer = init.lecun_normal,
    bias_init: nnx.Initializer = init.zeros,
) -> nnx.Linear:
    """``nnx.Linear`` with host-drawn initialisation (flax's default distributions)."""
    return nnx.Linear(
        in_features, out_features, kernel_init=kernel_init, bias_init=bias_init, rngs=rngs
    )


def batch_norm(num_features: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
    """BatchNorm with the project's convention (momentum 0.9 = torch 0.1, epsilon 1e-5)."""
    return nnx.BatchNorm(num_features, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, rngs=rngs)


def max_pool(x, window: int = 2, stride: int = 2, padding: int = 0):
    """Max pooling, NHWC, floor output size (torch's MaxPool2d); pads with -inf."""
    pad = ((padding, padding), (padding, padding))
    return nnx.max_pool(x, (window, window), strides=(stride, stride), padding=pad)


def global_avg_pool(x):
    return jnp.mean(x, axis=(1, 2))


def adaptive_pool_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) averaging matrix of torch's AdaptiveAvgPool for one axis.

    Output cell i averages input cells [floor(i*in/out), ceil((i+1)*in/out)). With in=1 every
    output cell copies the single input (broadcast); with in=out it is the identity.
    """
    m = np.zeros((out_size, in_size), np.float32)
    for i in range(out_size):
        start = (i * in_size) // out_size
        end = -((-(i + 1) * in_size) // out_size)
        m[i, start:end] = 1.0 / (end - start)
    return m


def adaptive_avg_pool(x, out_hw: tuple[int, int]):
    """torch ``AdaptiveAvgPool2d(out_hw)`` on NHWC input (exact, any input size)."""
    _, h, w, _ = x.shape
    oh, ow = out_hw
    if (h, w) == (oh, ow):
        return x
    if (h, w) == (1, 1):
        return jnp.broadcast_to(x, (x.shape[0], oh, ow, x.shape[3]))
    mh = jnp.asarray(adaptive_pool_matrix(h, oh))
    mw = jnp.asarray(adaptive_pool_matrix(w, ow))
    return jnp.einsum("oh,bhwc,pw->bopc", mh, x, mw)
