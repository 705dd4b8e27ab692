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

Convolution gradients on the CPU (:func:`conv`, used by :class:`Conv`)
--------------------------------------------------------------------------
XLA:CPU computes a convolution's *weight* gradient (dw) up to 10-20x slower than its forward pass
(a 3x3 64->64 convolution at 32x32, batch 128: 12x; 1x1 stride-2 shortcuts: 10x; 1.5x on 8x8
maps), while a matrix product of the same size runs near the full matmul rate. :func:`conv`
therefore runs, on the CPU backend, :func:`conv_custom`: XLA's convolution for the forward pass,
with a custom differentiation rule in which dw is computed as matrix products:

    dw[i, j] = sum over output pixels of x_shifted(i, j)^T dy,   i.e.   dw = patches^T @ dy

where the rows of the patch matrix are the N*H_out*W_out output pixels and its K = kh*kw*C_in
columns the (tap, channel) pairs: the im2col matrix (a 1x1 kernel needs no copy beyond the
stride's subsampling). Measured details (``experiments/bench_conv.py``, ``docs/performance.md``):

- It is done a chunk of images at a time (``lax.scan``; about :data:`DW_CHUNK_BYTES` of patches,
  1024-4096 output pixels, per chunk), so the 9x-larger patch matrix of a 3x3 kernel is built one
  cache-sized piece at a time and never stored whole. The whole-batch im2col was 1.2-4x slower.
- Below 128 input channels the chunk's patches are built transposed, (K, rows), from the
  channel-major input (:func:`_patches_t`): the copies are then long contiguous runs instead of
  C_in-wide slivers, and ``(K, rows) @ (rows, C_out)`` is the orientation XLA:CPU hands to its fast
  matmul library (YNNPACK). From 128 channels on, the pixel-major patches (rows, K) are cheaper to
  build and XLA's generic dot with both operands contracted on their leading axis is faster.

How the rule is defined. ``jax.custom_vjp`` would give the backward pass directly, and it allows
forward-over-reverse (``jvp`` of ``grad``, ``jax.hessian``, as in the curvature analysis), but
not forward mode through the convolution itself (``jax.jvp`` or ``jax.jacfwd`` of a model raise).
So :func:`conv_custom` is a ``jax.custom_jvp``, which supports every mode, and whose tangent is
written as two maps, linear in the tangents:

    d conv(x, w) = conv(dx, w)  +  conv_w(x, dw)

``conv(dx, w)`` is XLA's convolution, so reverse mode transposes it into XLA's own input gradient
(about as fast as the forward here, slower at stride 2). ``conv_w(x, dw)`` is the same convolution written as the chunked
product ``patches @ dw`` (the weight tangent as its matrix operand); JAX derives the backward pass
by transposing it, which gives exactly the chunked ``patches^T @ dy`` products above (each
chunk's patches rebuilt from ``x`` in the backward scan: the body is rematerialised with
``jax.checkpoint``, so only ``x`` is kept, as for XLA's rule). Every part is a plain JAX op, so the
rule composes with ``jit``, ``vmap``, ``grad`` of ``grad``, ``jvp`` of ``grad``, ``jax.hessian``
and ``jvp`` itself; tangents that are symbolically zero (e.g. differentiating with respect to the
input only) skip their term. The primal inside the rule calls :func:`conv_custom` again, so the
next order's derivative of the primal uses this rule too; the extra second-order terms (through
the tangent maps) use XLA's rules: correct, not tuned.

The convolution through oneDNN. XLA:CPU's forward convolution itself runs at about half of the
machine's matmul rate on the CIFAR shapes, and its input gradient no faster. With ``"onednn"``
(:func:`conv_onednn`) all three maps (the forward pass, the input gradient and the kernel
gradient) are oneDNN's direct convolutions, called through XLA FFI custom calls built on first use
and made JAX primitives whose derivatives are each other (:mod:`jit_jax.models.onednn`): every
transformation works, to any order. Float32 only; other dtypes take the custom rule. oneDNN is
fast on small maps too, so :class:`Conv` then skips its im2col form.

Selection: :func:`conv` uses the custom rule when the implementation setting is ``"custom"``,
oneDNN with ``"onednn"`` (an error when it is not available), and with ``"auto"`` (the default),
when JAX's default backend is the CPU, oneDNN if it is available and the process has one device
(a custom call has no sharding rule, so a batch-sharded step keeps the custom rule), else the
custom rule. ``"xla"``, and ``"auto"`` on an accelerator (whose
convolution libraries have their own weight-gradient kernels; not measured here), use
``lax.conv_general_dilated`` as it is. The setting comes from the environment variable ``JIT_JAX_CONV=xla|custom|onednn|auto``, then
:func:`set_conv_impl`, and inside a ``with conv_impl("xla"):`` block from the block. It is read
when a function is *traced*: an already-compiled ``jax.jit`` function keeps the implementation it
was traced with. The forward values are XLA's with ``"custom"`` and agree with them to float32
rounding with ``"onednn"``; gradients agree to float32 rounding (the summation order differs).

Max pooling (:func:`max_pool`) follows the same setting: under the CPU rules its non-overlapping
windows (VGG's, the cnn's) are a reshape and a max with a first-maximum derivative
(:func:`max_pool_blocks`; XLA:CPU's ``select_and_scatter`` was half of VGG's backward pass), and
with ``"xla"`` it is ``nnx.max_pool``.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os
from collections.abc import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax import lax
from jax.custom_derivatives import SymbolicZero

from jit_jax.models import initializers as init
from jit_jax.models import onednn

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


# ---------------------------------------------------------------------------- implementation switch

CONV_IMPLS = ("auto", "xla", "custom", "onednn")
CONV_ENV = "JIT_JAX_CONV"
"""Environment variable giving the default convolution implementation
(``xla|custom|onednn|auto``)."""


def _check_impl(impl: str, where: str) -> str:
    if impl not in CONV_IMPLS:
        raise ValueError(f"{where}: convolution implementation must be one of {CONV_IMPLS}, "
                         f"got {impl!r}")
    return impl


_DEFAULT_IMPL: str | None = None  # set_conv_impl's value; None: the environment variable
_IMPL_OVERRIDE: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "jit_jax_conv_impl", default=None)


def set_conv_impl(impl: str | None) -> None:
    """Set the process-wide convolution implementation, one of :data:`CONV_IMPLS` (``None``: back
    to ``$JIT_JAX_CONV``, else ``"auto"``). Read when functions are traced."""
    global _DEFAULT_IMPL
    _DEFAULT_IMPL = None if impl is None else _check_impl(impl, "set_conv_impl")


def get_conv_impl() -> str:
    """The setting in force: the innermost :func:`conv_impl` block, else :func:`set_conv_impl`'s
    value, else ``$JIT_JAX_CONV``, else ``"auto"``."""
    impl = _IMPL_OVERRIDE.get()
    if impl is None:
        impl = _DEFAULT_IMPL
    if impl is None:
        impl = _check_impl(os.environ.get(CONV_ENV, "auto").strip().lower() or "auto",
                           f"${CONV_ENV}")
    return impl


def resolve_conv_impl(impl: str | None = None) -> str:
    """``"xla"``, ``"custom"`` or ``"onednn"``: what :func:`conv` uses now. ``"auto"``: on the
    CPU backend oneDNN when it is available (:func:`jit_jax.models.onednn.available`) and the
    process has one device, else the custom rule; XLA's rule on accelerators. ``"onednn"`` raises when oneDNN is not available."""
    impl = get_conv_impl() if impl is None else _check_impl(impl, "resolve_conv_impl")
    if impl == "auto":
        if jax.default_backend() != "cpu":
            return "xla"
        # A custom call has no sharding rule: with several devices (a batch-sharded step) XLA
        # could gather its operands, so "auto" keeps XLA's forward there.
        if jax.device_count() == 1 and onednn.available():
            return "onednn"
        return "custom"
    if impl == "onednn" and not onednn.available():
        raise RuntimeError(f"convolution implementation 'onednn' is not available: "
                           f"{onednn.status()}")
    return impl


@contextlib.contextmanager
def conv_impl(impl: str) -> Iterator[None]:
    """Use ``impl`` (one of :data:`CONV_IMPLS`) for the convolutions traced inside the block.
    Blocks nest; the setting is per thread/context (a ``contextvars`` variable)."""
    token = _IMPL_OVERRIDE.set(_check_impl(impl, "conv_impl"))
    try:
        yield
    finally:
        _IMPL_OVERRIDE.reset(token)


# ---------------------------------------------------------------------------- custom-rule conv

DW_CHUNK_BYTES = 2 << 20
"""Target size of one chunk of the patch matrix in the weight gradient (about the L2 cache)."""
DW_CHUNK_ROWS: int | None = None
"""Output pixels (patch-matrix rows) per weight-gradient chunk; ``None``: ``DW_CHUNK_BYTES`` of
patches, kept between 1024 and 4096 rows (measured best on the CIFAR ResNet18 and VGG11 shapes)."""
DW_INTERLEAVE: bool | None = None
"""Interleave the weight-gradient chunks (chunk b = images b, b + g, ...) so that a batch sharded
over devices stays local; ``None``: when the process has more than one device. Contiguous chunks
are 5-15% faster on one device (2.5x on 1x1 stride-2 layers), but with a batch-sharded
(data-parallel) step they made every device all-gather the batch (seen in the compiled step on 4
host devices; the interleaved step has no all-gather; its speed there was not measured)."""


def _normalise(x, kernel, strides, padding):
    """Static (strides, padding) as hashable tuples, and the output spatial size."""
    strides = _pair(strides, "strides")
    kh, kw = kernel.shape[:2]
    if isinstance(padding, str):
        if padding.upper() == "SAME":  # XLA/flax 'SAME': out = ceil(in / stride), extra pad at the end
            pads = []
            for size, k, s in zip(x.shape[1:3], (kh, kw), strides, strict=True):
                total = max((-(-size // s) - 1) * s + k - size, 0)
                pads.append((total // 2, total - total // 2))
            padding = tuple(pads)
        else:
            padding = _padding(padding, (kh, kw))
    else:
        padding = _padding(padding, (kh, kw))
    padding = tuple(tuple(int(v) for v in p) for p in padding)
    if x.ndim != 4 or kernel.ndim != 4:
        raise ValueError(f"conv expects NHWC x and HWIO kernel, got {x.shape} and {kernel.shape}")
    if x.shape[3] != kernel.shape[2]:
        raise ValueError(f"input has {x.shape[3]} channels, the kernel expects {kernel.shape[2]}")
    out = tuple((size + lo + hi - k) // s + 1 for size, k, s, (lo, hi)
                in zip(x.shape[1:3], (kh, kw), strides, padding, strict=True))
    if min(out) <= 0:
        raise ValueError(f"input {x.shape[1:3]} is too small for a {kh}x{kw} kernel with "
                         f"{padding=}")
    return strides, padding, out


def _batch_chunk(n: int, rows_per_image: int, k: int, itemsize: int = 4) -> int:
    """Images per weight-gradient chunk: the largest divisor of ``n`` whose chunk has at most the
    target number of output rows (:data:`DW_CHUNK_ROWS`, read at trace time), and at least 1.
    ``k`` is the patch-matrix width kh*kw*C_in."""
    target = DW_CHUNK_ROWS
    if target is None:
        target = min(max(DW_CHUNK_BYTES // (k * itemsize), 1024), 4096)
    limit = max(1, target // max(rows_per_image, 1))
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


def _taps(xp, axes, kh, kw, strides, out):
    """The kh*kw shifted (strided) views of the padded array ``xp``; ``axes`` = its (H, W) axes."""
    (sh, sw), (ho, wo) = strides, out
    views = []
    for i in range(kh):
        for j in range(kw):
            idx = [slice(None)] * xp.ndim
            idx[axes[0]] = slice(i, i + sh * (ho - 1) + 1, sh)
            idx[axes[1]] = slice(j, j + sw * (wo - 1) + 1, sw)
            views.append(xp[tuple(idx)])
    return views


def _patches(x, kh, kw, strides, padding, out):
    """im2col, (N*Ho*Wo, kh*kw*C): row = output pixel, column = (tap i, tap j, channel)."""
    xp = jnp.pad(x, ((0, 0), *padding, (0, 0)))
    views = _taps(xp, (1, 2), kh, kw, strides, out)
    p = views[0] if len(views) == 1 else jnp.concatenate(views, axis=-1)
    return p.reshape(-1, kh * kw * x.shape[3])


def _patches_t(x, kh, kw, strides, padding, out):
    """The transposed im2col, (kh*kw*C, N*Ho*Wo), built from the channel-major input (cheaper
    than :func:`_patches` when C is small: long contiguous runs instead of C-wide slivers)."""
    xt = jnp.pad(jnp.transpose(x, (3, 0, 1, 2)), ((0, 0), (0, 0), *padding))
    views = _taps(xt, (2, 3), kh, kw, strides, out)
    p = views[0] if len(views) == 1 else jnp.concatenate(views, axis=0)
    return p.reshape(kh * kw * x.shape[3], -1)


def _channel_major(cin: int, kh: int, kw: int) -> bool:
    """Which patch layout the weight gradient uses: channel-major below 128 input channels, where
    the pixel-major patches are built from narrow C_in-wide pieces (measured with
    ``experiments/bench_conv.py --layout``: up to 2x faster there, most with 3 input channels,
    about even at 16; 1.1-1.2x slower than pixel-major from 128 channels on)."""
    del kh, kw
    return cin < 128


def _conv_w_linear(x, w_t, strides, padding, out):
    """conv(x, w_t) as a map linear in the kernel ``w_t``: chunked patch-matrix products.

    Written so that JAX's transpose of it (the weight gradient) is, per chunk of images,
    ``patches^T @ dy`` (see the module docstring)."""
    kh, kw, cin, cout = w_t.shape
    n, h, w, _ = x.shape
    ho, wo = out
    k = kh * kw * cin
    chunk = _batch_chunk(n, ho * wo, k, x.dtype.itemsize)
    channel_major = _channel_major(cin, kh, kw)

    @jax.checkpoint  # keep x, not its patches, for the backward pass
    def one(wmat, xc):  # (k, cout), (c, h, w, cin) -> (c*ho*wo, cout)
        if channel_major:  # (k, rows)^T @ wmat: transposed, (k, rows) @ (rows, cout)
            pt = _patches_t(xc, kh, kw, strides, padding, out)
            return lax.dot_general(pt, wmat, (((0,), (0,)), ((), ())))
        return _patches(xc, kh, kw, strides, padding, out) @ wmat

    wmat = w_t.reshape(k, cout)
    if chunk == n:
        return one(wmat, x).reshape(n, ho, wo, cout)
    g = n // chunk
    interleave = DW_INTERLEAVE if DW_INTERLEAVE is not None else jax.device_count() > 1
    if not interleave:
        _, y = lax.scan(lambda c, xc: (c, one(wmat, xc)), None, x.reshape(g, chunk, h, w, cin))
        return y.reshape(n, ho, wo, cout)
    # Chunk b holds images b, b + g, b + 2g, ...: with the batch split across devices (data
    # parallel), every chunk is then spread over all of them, and each device works on its own
    # images (with contiguous chunks every device all-gathers the batch).
    xr = x.reshape(chunk, g, h, w, cin)

    def body(carry, b):
        return carry, one(wmat, lax.dynamic_index_in_dim(xr, b, axis=1, keepdims=False))

    _, y = lax.scan(body, None, jnp.arange(g))  # (g, chunk*ho*wo, cout)
    y = y.reshape(g, chunk, ho, wo, cout)
    return jnp.swapaxes(y, 0, 1).reshape(n, ho, wo, cout)


@functools.partial(jax.custom_jvp, nondiff_argnums=(2, 3))
def _conv_custom(x, kernel, strides, padding):
    return conv_general(x, kernel, strides, padding)


@functools.partial(_conv_custom.defjvp, symbolic_zeros=True)
def _conv_custom_jvp(strides, padding, primals, tangents):
    x, kernel = primals
    x_t, kernel_t = tangents
    y = _conv_custom(x, kernel, strides, padding)
    out = y.shape[1:3]
    t = None
    if not isinstance(x_t, SymbolicZero):
        t = conv_general(x_t, kernel, strides, padding)  # reverse mode: XLA's input gradient
    if not isinstance(kernel_t, SymbolicZero):
        u = _conv_w_linear(x, kernel_t, strides, padding, out)
        t = u if t is None else t + u
    if t is None:
        t = jnp.zeros_like(y)
    return y, t


def conv_custom(x, kernel, strides=(1, 1), padding=((0, 0), (0, 0))):
    """The convolution (NHWC x HWIO -> NHWC) with the custom differentiation rule of the module
    docstring (weight gradient as chunked matrix products), on any backend. ``padding``: explicit
    pairs, an int, "VALID" or "SAME" (XLA's meaning)."""
    strides, padding, _ = _normalise(x, kernel, strides, padding)
    return _conv_custom(x, kernel, strides, padding)


def conv_onednn(x, kernel, strides=(1, 1), padding=((0, 0), (0, 0))):
    """The convolution with its forward pass and both gradients through oneDNN
    (:func:`jit_jax.models.onednn.conv`; CPU, float32, call ``onednn.available()`` first); other
    dtypes use :func:`conv_custom`. ``strides``/``padding`` as :func:`conv_custom`."""
    strides, padding, _ = _normalise(x, kernel, strides, padding)
    if x.dtype == jnp.float32 and kernel.dtype == jnp.float32:
        return onednn.conv(x, kernel, strides, padding)
    return _conv_custom(x, kernel, strides, padding)


def conv(x, kernel, strides=(1, 1), padding=((0, 0), (0, 0)), *, impl: str | None = None):
    """The convolution every model uses: :func:`conv_onednn` (``"onednn"``), :func:`conv_custom`
    (``"custom"``) or :func:`conv_general` (XLA's rule), by ``impl`` or, when ``None``, by the
    current setting (:func:`conv_impl`)."""
    resolved = resolve_conv_impl(impl)
    if resolved == "onednn":
        return conv_onednn(x, kernel, strides, padding)
    if resolved == "custom":
        return conv_custom(x, kernel, strides, padding)
    strides, padding, _ = _normalise(x, kernel, strides, padding)
    return conv_general(x, kernel, strides, padding)


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

    def uses_im2col(self, spatial: tuple[int, int], dtype=jnp.float32,
                    impl: str | None = None) -> bool:
        """Whether a ``dtype`` map of size ``spatial`` goes through the im2col form: at or below
        ``im2col_max_spatial``, unless the convolution runs through oneDNN (``impl``, default the
        current setting; float32), which is fast on small maps too."""
        if max(spatial) > self.im2col_max_spatial:
            return False
        return not (resolve_conv_impl(impl) == "onednn" and jnp.dtype(dtype) == jnp.float32
                    and self.kernel.dtype == jnp.float32)

    def __call__(self, x):
        if x.ndim != 4:
            raise ValueError(f"Conv expects NHWC input (4 dims), got shape {x.shape}")
        kernel = self.kernel[...]
        if self.uses_im2col(x.shape[1:3], x.dtype):
            y = conv_im2col(x, kernel, self.strides, self.padding)
        else:
            y = conv(x, kernel, self.strides, self.padding)
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


def _batch_moments(x):
    """Mean and (biased) variance over every axis but the last, as flax computes them
    (``E[x^2] - E[x]^2`` clipped at 0)."""
    axes = tuple(range(x.ndim - 1))
    mean = x.mean(axes)
    return mean, jnp.maximum(0.0, (x * x).mean(axes) - mean * mean)


@functools.partial(jax.custom_jvp, nondiff_argnums=(3,))
def batch_norm_train(x, scale, bias, epsilon):
    """Training-mode batch normalisation over every axis but the last (channels):
    ``(x - mean) * (rsqrt(var + epsilon) * scale) + bias`` with the batch's own mean and variance,
    the same operations as ``nnx.BatchNorm``. Its derivative is given in closed form (below)."""
    mean, var = _batch_moments(x)
    return (x - mean) * (lax.rsqrt(var + epsilon) * scale) + bias


@batch_norm_train.defjvp
def _batch_norm_train_jvp(epsilon, primals, tangents):
    # With xh = (x - mean) * r, r = rsqrt(var + eps), k = scale * r and means over the n
    # non-channel positions, the tangent is
    #     k * (dx - mean(dx) - xh * mean(dx * xh)) + xh * dscale + dbias.
    # Reverse mode transposes it into the textbook backward pass:
    #     dx = k * (dy - mean(dy) - xh * mean(dy * xh)),  dscale = sum(dy * xh),  dbias = sum(dy),
    # two reductions over the activations (sum(dy) and sum(dy * xh), shared by all three) where
    # differentiating the forward operations gives XLA several. The per-channel factors are
    # applied to the reduced vectors, not to the activations, so that the two sums are the same
    # expressions in every term and XLA computes each once. The rule is plain JAX, so every
    # transformation (jvp, grad of grad, vmap) works through it.
    x, scale, bias = primals
    dx, dscale, dbias = tangents
    axes = tuple(range(x.ndim - 1))
    mean, var = _batch_moments(x)
    r = lax.rsqrt(var + epsilon)
    xh = (x - mean) * r
    k = scale * r
    y = (x - mean) * k + bias
    t = k * dx - k * dx.mean(axes) - xh * (k * (dx * xh).mean(axes)) + xh * dscale + dbias
    return y, t


class BatchNorm(nnx.BatchNorm):
    """``nnx.BatchNorm`` (the same parameters, statistics, maths and checkpoints) whose
    training-mode normalisation is :func:`batch_norm_train`, with its closed-form derivative.

    Differentiating flax's operations left XLA:CPU several passes over the activations per layer;
    the closed form halves the time of BatchNorm + ReLU forward and backward (20 ResNet18-w16
    layers at batch 128: 135-172 ms -> 71-90 ms in one process, ``docs/performance.md``). Evaluation
    mode, masks, named-axis statistics (``axis_name``), other feature axes, missing scale or bias,
    non-float32 inputs and the exact-variance option take flax's own code."""

    def __call__(self, x, use_running_average: bool | None = None, *, mask=None):
        use_ra = use_running_average if use_running_average is not None else self.use_running_average
        if (use_ra is not False or mask is not None or self.axis_name is not None
                or self.axis not in (-1, x.ndim - 1) or self.scale is None or self.bias is None
                or x.dtype != jnp.float32 or self.dtype not in (None, jnp.float32)
                or self.param_dtype != jnp.float32 or not self.use_fast_variance):
            return super().__call__(x, use_running_average, mask=mask)
        mean, var = _batch_moments(x)  # the same reductions as inside: XLA computes them once
        # as flax: the running statistics are cut from the gradient only for array references
        can_update = getattr(self.mean, "_can_update", False) or getattr(self.var, "_can_update", False)
        cut = lax.stop_gradient if can_update else (lambda v: v)
        self.mean[...] = cut(self.momentum * self.mean[...] + (1 - self.momentum) * mean)
        self.var[...] = cut(self.momentum * self.var[...] + (1 - self.momentum) * var)
        return batch_norm_train(x, self.scale[...], self.bias[...], self.epsilon)


def batch_norm(num_features: int, rngs: nnx.Rngs) -> nnx.BatchNorm:
    """BatchNorm with the project's convention (momentum 0.9 = torch 0.1, epsilon 1e-5):
    :class:`BatchNorm`."""
    return BatchNorm(num_features, momentum=BN_MOMENTUM, epsilon=BN_EPSILON, rngs=rngs)


POOL_IMPLS = ("auto", "xla", "blocks")
_POOL_OVERRIDE: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "jit_jax_pool_impl", default=None)


@contextlib.contextmanager
def pool_impl(impl: str) -> Iterator[None]:
    """Inside the block, :func:`max_pool` calls left at ``impl="auto"`` (every model's) take
    ``impl`` (one of :data:`POOL_IMPLS`; ``"blocks"`` where it applies), e.g. to compare XLA's
    pooling with the block form in one model. Read when functions are traced; blocks nest."""
    if impl not in POOL_IMPLS:
        raise ValueError(f"pool_impl: impl must be one of {POOL_IMPLS}, got {impl!r}")
    token = _POOL_OVERRIDE.set(impl)
    try:
        yield
    finally:
        _POOL_OVERRIDE.reset(token)


def max_pool(x, window: int = 2, stride: int = 2, padding: int = 0, *, impl: str = "auto"):
    """Max pooling, NHWC, floor output size (torch's MaxPool2d); pads with -inf.

    ``impl="xla"`` is ``nnx.max_pool`` (XLA's ``reduce_window``, differentiated by
    ``select_and_scatter``). ``"blocks"`` (:func:`max_pool_blocks`; non-overlapping windows
    without padding only) gives the same values and, in every order of differentiation, the same
    derivatives bit for bit, and its backward pass was 2.4x faster on XLA:CPU over VGG11-w16's
    five pooling shapes at batch 64. ``"auto"`` takes
    ``"blocks"`` where it applies when the convolutions take a CPU rule (:func:`resolve_conv_impl`
    is not ``"xla"``: ``JIT_JAX_CONV=xla`` restores XLA's own layers throughout), else ``"xla"``,
    unless a :func:`pool_impl` block says otherwise.
    """
    if impl not in POOL_IMPLS:
        raise ValueError(f"max_pool: impl must be one of {POOL_IMPLS}, got {impl!r}")
    blocks_ok = window == stride and padding == 0 and x.ndim == 4
    if impl == "auto":
        impl = _POOL_OVERRIDE.get() or "auto"
        if impl == "auto":
            impl = "blocks" if resolve_conv_impl() != "xla" else "xla"
        if not blocks_ok:
            impl = "xla"
    if impl == "blocks":
        if not blocks_ok:
            raise ValueError(f"max_pool impl='blocks' needs window == stride, padding 0 and an "
                             f"NHWC input; got window {window}, stride {stride}, padding "
                             f"{padding}, input shape {tuple(x.shape)}")
        return max_pool_blocks(x, window)
    pad = ((padding, padding), (padding, padding))
    return nnx.max_pool(x, (window, window), strides=(stride, stride), padding=pad)


def _pool_blocks(x, k: int):
    """``(N, H//k, k, W//k, k, C)`` view of NHWC ``x`` (the rows and columns past the last whole
    window dropped, as floor pooling does)."""
    n, h, w, c = x.shape
    return x[:, :h // k * k, :w // k * k].reshape(n, h // k, k, w // k, k, c)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def max_pool_blocks(x, k: int):
    """Max pooling over non-overlapping ``k x k`` windows (stride ``k``, no padding), NHWC, as a
    reshape and a max: the values of ``nnx.max_pool`` exactly.

    XLA:CPU differentiates ``reduce_window`` with ``select_and_scatter``, which took about half of
    the CIFAR VGG11-w16 training step's backward pass (2026-12-05: the gradient at batch 64 took
    144 ms with it, 85 ms with this; docs/performance.md). The values and every derivative of the
    pooling itself are XLA's bit for bit (tests/test_pooling.py); in a whole model XLA may fuse
    the neighbouring reductions differently, so a sum there can differ in its last bit.

    The derivative routes each window's tangent to the *first* maximum in row-major window order
    (a NaN counts as the maximum), which is what ``select_and_scatter`` (and torch's max_pool2d)
    does on ties; a plain ``jnp.max`` would split it among tied elements instead. The tangent map
    is a select, so it transposes (``grad``), and the rule calls this function for its value, so
    a second derivative (``jax.hessian``, grad of grad) takes the same rule again.
    """
    return jnp.max(_pool_blocks(x, k), axis=(2, 4))


@max_pool_blocks.defjvp
def _max_pool_blocks_jvp(k, primals, tangents):
    (x,), (t,) = primals, tangents
    # the value through this function again, so that a second derivative (forward over this
    # rule) also routes to the first maximum; the choice itself is constant in x
    out = max_pool_blocks(x, k)
    xb, top = _pool_blocks(lax.stop_gradient(x), k), lax.stop_gradient(out)
    order = (jnp.arange(k)[:, None, None, None] * k
             + jnp.arange(k)[None, None, :, None])  # position in the window, (k, 1, k, 1)
    hit = (xb == top[:, :, None, :, None, :]) | jnp.isnan(xb)
    first = jnp.min(jnp.where(hit, order, k * k), axis=(2, 4), keepdims=True)
    return out, jnp.sum(jnp.where(order == first, _pool_blocks(t, k), 0), axis=(2, 4))


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
