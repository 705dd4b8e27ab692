"""The convolution through oneDNN on the CPU: XLA FFI custom calls, built on first use, as JAX
primitives.

Why. XLA:CPU's forward convolution runs at about half of the machine's matmul rate on the CIFAR
ResNet18 shapes, its input gradient no faster, and its kernel gradient at a tenth of it or less
(``docs/performance.md``), while oneDNN, the library PyTorch uses on the CPU, runs all three close
to the matmul rate. ``jax`` 0.10 has no switch that routes convolutions to oneDNN
(``--xla_cpu_use_onednn`` and the oneDNN/XNNPACK/YNNPACK fusion flags were measured: no change).

How. ``jit_jax/native/dnnl_conv.cc`` holds three typed XLA FFI handlers around oneDNN's direct
convolution: forward, backward data (the input gradient) and backward weights (the kernel
gradient); NHWC activations, the HWIO kernel reordered per call to and from oneDNN's blocked
layout. It is compiled with the system's C++ compiler (``$CXX``, else ``g++``, else ``c++``)
against the oneDNN wheel (``onednn-cpu-gomp`` / ``onednn-devel-cpu-gomp``, installed with jit-jax
on Linux x86-64) and JAX's FFI headers, once per source/JAX version, into ``$JIT_JAX_CACHE``
(default ``~/.cache/jit-jax``); the build takes a few seconds. Anything missing (not Linux x86-64,
no compiler, no oneDNN, a failed build) makes :func:`available` return False, :func:`status` say
why, and the models keep the custom rule of :mod:`jit_jax.models.layers`: nothing fails because of
it. ``JIT_JAX_ONEDNN=0`` turns it off.

Each handler is a JAX primitive (:data:`forward_p`, :data:`data_p`, :data:`weights_p`). All three
maps are bilinear and each one's transposes are maps of the same three, so their jvp and transpose
rules close over them: ``grad``, ``jvp``, ``grad`` of ``grad``, ``jax.hessian`` all run in oneDNN.
Under ``vmap`` the mapped axis is folded into the image axis (one call) when the kernel is not
mapped, and otherwise (a mapped kernel; per-example kernel gradients) the maps run once per
element through ``lax.map``. Float32 only. Off the CPU, and on the CPU before the library is
loaded, the primitives lower to XLA's own convolution ops.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import Primitive
from jax.interpreters import ad, batching, mlir

ENV_SWITCH = "JIT_JAX_ONEDNN"
"""Set to 0 to never use oneDNN (the models then use the custom rule of ``layers``)."""
CACHE_ENV = "JIT_JAX_CACHE"
"""Folder for the compiled library (default ``~/.cache/jit-jax``)."""
SOURCE = Path(__file__).resolve().parents[1] / "native" / "dnnl_conv.cc"

_STATUS: dict[str, str] = {}


def _prefixes() -> list[Path]:
    seen, out = set(), []
    for p in (os.environ.get("ONEDNN_ROOT"), sys.prefix, sys.base_prefix, sys.exec_prefix):
        if p and p not in seen:
            seen.add(p)
            out.append(Path(p))
    return out


def find_onednn() -> tuple[Path, Path] | None:
    """(include dir, lib dir) of a oneDNN installation (``$ONEDNN_ROOT`` or the Python prefix,
    where the ``onednn-*`` wheels put it), or None."""
    for prefix in _prefixes():
        inc, lib = prefix / "include", prefix / "lib"
        if (inc / "oneapi" / "dnnl" / "dnnl.hpp").is_file() and any(lib.glob("libdnnl.so*")):
            return inc, lib
    return None


def _compiler() -> str | None:
    for name in (os.environ.get("CXX"), "g++", "c++"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _cache_dir() -> Path:
    root = os.environ.get(CACHE_ENV) or os.path.join(os.path.expanduser("~"), ".cache", "jit-jax")
    return Path(root) / "native"


def _build(inc: Path, lib: Path, cxx: str) -> Path:
    src = SOURCE.read_bytes()
    tag = hashlib.sha256(src + jax.__version__.encode() + str(inc).encode() + str(lib).encode()
                         ).hexdigest()[:16]
    out = _cache_dir() / f"libjitjax_dnnl_{tag}.so"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=out.parent)
    os.close(fd)
    cmd = [cxx, "-O2", "-std=c++17", "-shared", "-fPIC", f"-I{inc}", f"-I{jax.ffi.include_dir()}",
           str(SOURCE), f"-L{lib}", "-ldnnl", f"-Wl,-rpath,{lib}", "-o", tmp]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if res.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stderr[-2000:]}")
        os.replace(tmp, out)  # atomic: concurrent builders never see a half-written library
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


@functools.cache
def _load() -> bool:
    if os.environ.get(ENV_SWITCH, "1").strip().lower() in ("0", "false", "no", "off"):
        _STATUS["reason"] = f"turned off by ${ENV_SWITCH}"
        return False
    if sys.platform != "linux" or platform.machine().lower() not in ("x86_64", "amd64"):
        _STATUS["reason"] = f"only built on Linux x86-64 (this is {sys.platform} "\
                            f"{platform.machine()})"
        return False
    found = find_onednn()
    if found is None:
        _STATUS["reason"] = ("oneDNN not found (pip install onednn-cpu-gomp "
                             "onednn-devel-cpu-gomp, or set $ONEDNN_ROOT)")
        return False
    cxx = _compiler()
    if cxx is None:
        _STATUS["reason"] = "no C++ compiler ($CXX, g++ or c++) to build the oneDNN call"
        return False
    try:
        path = _build(*found, cxx)
        lib = ctypes.cdll.LoadLibrary(str(path))
        for prim, target in TARGETS.items():
            jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, _SYMBOLS[prim])),
                                        platform="cpu")
            mlir.register_lowering(prim, _lowering(prim), platform="cpu")
    except Exception as e:  # noqa: BLE001 -- any failure means: use XLA's convolution
        _STATUS["reason"] = f"build or load failed: {e}"
        return False
    _STATUS["reason"] = f"available ({path})"
    return True


def available() -> bool:
    """Whether the oneDNN convolution can be used in this process (builds it on the
    first call; never raises)."""
    return _load()


def status() -> str:
    """Why :func:`available` is what it is."""
    _load()
    return _STATUS.get("reason", "")


def _out_hw(in_hw, kernel_hw, strides, padding):
    return tuple((i + lo + hi - k) // s + 1
                 for i, k, s, (lo, hi) in zip(in_hw, kernel_hw, strides, padding, strict=True))


# ---- the three convolution maps as JAX primitives -------------------------------------------
# A convolution y = conv(x, w) is bilinear, and so are its two derivative maps:
#   data(dy, w)    -> dx, the input gradient (the transpose of x -> conv(x, w));
#   weights(x, dy) -> dw, the kernel gradient (the transpose of w -> conv(x, w)).
# Each map's transposes are maps of the same three, so with jvp rules (bilinear: jvp = op(t, b) +
# op(a, t)) and transpose rules between them, every derivative of any order stays in oneDNN.
# Params: strides (sh, sw), padding ((top, bottom), (left, right)), and the shape the map cannot
# infer: the input's spatial size for data(), the kernel's for weights().


def _ref_forward(x, w, *, strides, padding):
    from jit_jax.models.layers import conv_general  # (layers imports this module)

    return conv_general(x, w, strides, padding)


def _ref_data(dy, w, *, strides, padding, in_hw):
    x0 = jnp.zeros((dy.shape[0], *in_hw, w.shape[2]), dy.dtype)
    return jax.vjp(lambda x: _ref_forward(x, w, strides=strides, padding=padding), x0)[1](dy)[0]


def _ref_weights(x, dy, *, strides, padding, kernel_hw):
    w0 = jnp.zeros((*kernel_hw, x.shape[3], dy.shape[3]), x.dtype)
    return jax.vjp(lambda w: _ref_forward(x, w, strides=strides, padding=padding), w0)[1](dy)[0]


forward_p = Primitive("jit_jax_dnnl_conv")
data_p = Primitive("jit_jax_dnnl_conv_data")
weights_p = Primitive("jit_jax_dnnl_conv_weights")
_REF = {forward_p: _ref_forward, data_p: _ref_data, weights_p: _ref_weights}
TARGETS = {forward_p: "jit_jax_dnnl_conv_forward", data_p: "jit_jax_dnnl_conv_data",
           weights_p: "jit_jax_dnnl_conv_weights"}
_SYMBOLS = {forward_p: "JitJaxDnnlConvForward", data_p: "JitJaxDnnlConvBackwardData",
            weights_p: "JitJaxDnnlConvBackwardWeights"}
TARGET = TARGETS[forward_p]


@forward_p.def_abstract_eval
def _forward_aval(x, w, *, strides, padding):
    hw = _out_hw(x.shape[1:3], w.shape[:2], strides, padding)
    return jax.core.ShapedArray((x.shape[0], *hw, w.shape[3]), x.dtype)


@data_p.def_abstract_eval
def _data_aval(dy, w, *, strides, padding, in_hw):
    return jax.core.ShapedArray((dy.shape[0], *in_hw, w.shape[2]), dy.dtype)


@weights_p.def_abstract_eval
def _weights_aval(x, dy, *, strides, padding, kernel_hw):
    return jax.core.ShapedArray((*kernel_hw, x.shape[3], dy.shape[3]), x.dtype)


def _geometry(p):
    return {k: v for k, v in p.items() if k in ("strides", "padding")}


# transposes: <ct, op(a, b)> differentiated by the undefined argument
ad.defbilinear(
    forward_p,
    lambda ct, x, w, **p: data_p.bind(ct, w, **p, in_hw=tuple(x.aval.shape[1:3])),
    lambda ct, x, w, **p: weights_p.bind(x, ct, **p, kernel_hw=tuple(w.aval.shape[:2])))
ad.defbilinear(
    data_p,
    lambda ct, dy, w, **p: forward_p.bind(ct, w, **_geometry(p)),
    lambda ct, dy, w, **p: weights_p.bind(ct, dy, **_geometry(p),
                                          kernel_hw=tuple(w.aval.shape[:2])))
ad.defbilinear(
    weights_p,
    lambda ct, x, dy, **p: data_p.bind(dy, ct, **_geometry(p), in_hw=tuple(x.aval.shape[1:3])),
    lambda ct, x, dy, **p: forward_p.bind(x, ct, **_geometry(p)))


def _batch_rule(prim):
    """vmap: when only the activations are mapped (JiT's noise draws) the mapped axis is folded
    into the image axis, one call for all; otherwise (a mapped kernel, or the kernel gradient,
    which sums over images) one call per mapped element with ``lax.map``."""
    foldable = prim is not weights_p

    def rule(args, dims, **params):
        a, b = args
        da, db = dims
        size = a.shape[da] if da is not None else b.shape[db]
        if foldable and db is None:
            a = jnp.moveaxis(a, da, 0)
            out = prim.bind(a.reshape((size * a.shape[1],) + a.shape[2:]), b, **params)
            return out.reshape((size, a.shape[1]) + out.shape[1:]), 0

        def front(v, d):
            if d is None:
                return jnp.broadcast_to(v, (size,) + v.shape)
            return jnp.moveaxis(v, d, 0)

        return jax.lax.map(lambda ab: prim.bind(*ab, **params), (front(a, da), front(b, db))), 0

    return rule


def _lowering(prim):
    rule = jax.ffi.ffi_lowering(TARGETS[prim])

    def lower(ctx, a, b, *, strides, padding, **_):
        (pt, pb), (pl, pr) = padding
        i64 = np.int64
        return rule(ctx, a, b, sh=i64(strides[0]), sw=i64(strides[1]), pt=i64(pt), pb=i64(pb),
                    pl=i64(pl), pr=i64(pr))

    return lower


@functools.cache
def _jitted(prim, params: tuple):
    return jax.jit(functools.partial(prim.bind, **dict(params)))


def _eager(prim, *args, **params):
    """An eager call of ``prim``: through a jitted function per (primitive, params)."""
    return _jitted(prim, tuple(sorted(params.items())))(*args)


for _p in _REF:
    # other platforms (and CPU until the library is loaded) lower to XLA's convolution, so a
    # traced program never depends on the library's presence
    _p.def_impl(functools.partial(_eager, _p))
    batching.primitive_batchers[_p] = _batch_rule(_p)
    mlir.register_lowering(_p, mlir.lower_fun(_REF[_p], multiple_results=False))


def conv(x, w, strides, padding):
    """``lax.conv_general_dilated(x, w, strides, padding, ("NHWC", "HWIO", "NHWC"))`` with the
    forward pass, the input gradient and the kernel gradient through oneDNN (float32; call
    :func:`available` first). ``strides`` and ``padding`` are static, padding as
    ``((top, bottom), (left, right))``. Differentiable to any order (``grad``, ``jvp``,
    ``hessian``) and vmappable."""
    if x.dtype != jnp.float32 or w.dtype != jnp.float32:
        raise TypeError(f"oneDNN convolution is float32 only, got {x.dtype} and {w.dtype}")
    if x.ndim != 4 or w.ndim != 4 or x.shape[3] != w.shape[2]:
        raise ValueError(f"oneDNN convolution: expected NHWC input and HWIO kernel with matching "
                         f"channels, got {x.shape} and {w.shape}")
    strides = tuple(int(s) for s in strides)
    padding = tuple(tuple(int(v) for v in p) for p in padding)
    return forward_p.bind(x, w, strides=strides, padding=padding)
