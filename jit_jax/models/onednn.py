"""The forward convolution through oneDNN on the CPU: an XLA FFI custom call, built on first use.

Why. XLA:CPU's forward convolution runs at about half of the machine's matmul rate on the CIFAR
ResNet18 shapes (64 channels at 32x32: ~170-200 GFLOP/s against ~300-400 for a 2048^2 matmul on
the project's 2-core machine), while oneDNN, the library PyTorch uses on the CPU, runs close to the
matmul rate. JiT's step is dominated by its N noisy forward passes, so this is where it loses to
the authors' PyTorch step (``docs/performance.md``). ``jax`` 0.10 has no switch that routes
convolutions to oneDNN (``--xla_cpu_use_onednn`` and the oneDNN/XNNPACK/YNNPACK fusion flags were
measured: no change on the JiT step).

How. ``jit_jax/native/dnnl_conv.cc`` is a typed XLA FFI handler that runs oneDNN's direct
convolution (NHWC input and output, the kernel reordered per call into oneDNN's blocked layout).
It is compiled with the system's C++ compiler (``$CXX``, else ``g++``, else ``c++``) against the
oneDNN wheel (``onednn-cpu-gomp`` / ``onednn-devel-cpu-gomp``, installed with jit-jax on Linux
x86-64) and JAX's FFI headers, once per source/JAX version, into ``$JIT_JAX_CACHE`` (default
``~/.cache/jit-jax``); the build takes a few seconds. Anything missing (not Linux x86-64, no
compiler, no oneDNN, a failed build) makes :func:`available` return False, :func:`status` say why,
and the models keep XLA's convolution: nothing fails because of it. ``JIT_JAX_ONEDNN=0`` turns it
off.

Only the forward pass of float32 convolutions goes through oneDNN; derivatives keep the custom
rule of :mod:`jit_jax.models.layers` (XLA's input gradient, the chunked-matmul weight gradient), so
every transformation (``grad``, ``jvp``, ``hessian``, ``vmap``) works as before. Under ``vmap`` the
mapped axis is folded into the image axis (one call for all images) when only the input is mapped,
and XLA's convolution is used when the kernel is mapped too.
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

ENV_SWITCH = "JIT_JAX_ONEDNN"
"""Set to 0 to never use oneDNN (the models then use XLA's convolution)."""
CACHE_ENV = "JIT_JAX_CACHE"
"""Folder for the compiled library (default ``~/.cache/jit-jax``)."""
TARGET = "jit_jax_dnnl_conv_forward"
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
        jax.ffi.register_ffi_target(TARGET, jax.ffi.pycapsule(lib.JitJaxDnnlConvForward),
                                    platform="cpu")
    except Exception as e:  # noqa: BLE001 -- any failure means: use XLA's convolution
        _STATUS["reason"] = f"build or load failed: {e}"
        return False
    _STATUS["reason"] = f"available ({path})"
    return True


def available() -> bool:
    """Whether the oneDNN forward convolution can be used in this process (builds it on the
    first call; never raises)."""
    return _load()


def status() -> str:
    """Why :func:`available` is what it is."""
    _load()
    return _STATUS.get("reason", "")


def _call(x, w, strides, padding):
    n, h, wi, _ = x.shape
    kh, kw, _, o = w.shape
    (pt, pb), (pl, pr) = padding
    sh, sw = strides
    ho, wo = (h + pt + pb - kh) // sh + 1, (wi + pl + pr - kw) // sw + 1
    i64 = np.int64
    return jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct((n, ho, wo, o), jnp.float32))(
        x, w, sh=i64(sh), sw=i64(sw), pt=i64(pt), pb=i64(pb), pl=i64(pl), pr=i64(pr))


@functools.cache
def _conv_fn(strides, padding):
    @jax.custom_batching.custom_vmap
    def f(x, w):
        return _call(x, w, strides, padding)

    @f.def_vmap
    def _rule(axis_size, in_batched, x, w):
        x_b, w_b = in_batched
        if w_b:  # a kernel per mapped element: XLA's convolution, vmapped
            from jit_jax.models.layers import conv_general  # (layers imports this module)

            out = jax.vmap(lambda a, b: conv_general(a, b, strides, padding),
                           in_axes=(0 if x_b else None, 0))(x, w)
            return out, True
        y = f(x.reshape((axis_size * x.shape[1],) + x.shape[2:]), w)  # fold into the image axis
        return y.reshape((axis_size, x.shape[1]) + y.shape[1:]), True

    return f


def conv_forward(x, w, strides, padding):
    """``lax.conv_general_dilated(x, w, strides, padding, ("NHWC", "HWIO", "NHWC"))`` through
    oneDNN (float32; call :func:`available` first). ``strides`` and ``padding`` are static
    tuples, padding as ``((top, bottom), (left, right))``. Not differentiable by itself: the
    models reach it through the custom rule of :func:`jit_jax.models.layers.conv_custom`."""
    if x.dtype != jnp.float32 or w.dtype != jnp.float32:
        raise TypeError(f"oneDNN convolution is float32 only, got {x.dtype} and {w.dtype}")
    strides = tuple(int(s) for s in strides)
    padding = tuple(tuple(int(v) for v in p) for p in padding)
    return _conv_fn(strides, padding)(x, w)
