"""A probe: the 3x3 stride-1 kernel gradient as Winograd F(3x3, 2x2) in JAX ops, against XLA's and
oneDNN's kernel gradient, per layer shape of the CIFAR models.

    python experiments/probe_winograd_dw.py --repeats 5

Why. On 11 of the 36 shapes of ``bench_conv.py`` the acceptance's 3x of XLA's kernel gradient
would need more than the machine's matmul rate (docs/performance.md), so no direct method can
reach it there. Winograd's minimal filtering does fewer multiplications: per 2x2 tile of the
output gradient, 16 products in the transformed domain instead of the direct 36 (2.25x fewer).
This probe measures whether that helps when written in JAX ops (XLA fuses the transforms, the 16
products are one batched matmul); it is not used by the models.

How. For an NHWC input ``x`` padded to ``xp`` and the output gradient ``dy``, the kernel gradient
``dw[i, j] = sum_{n, p, q} xp[n, p + i, q + j] dy[n, p, q]`` is a correlation with a 3-tap
output. Per tile (4x4 input patch ``d``, 2x2 gradient tile ``g``) and in one dimension:
``y = A^T [(G g) * (B^T d)]`` with the matrices below (checked against XLA to float32 rounding).
In two dimensions the transforms apply on both axes, the products sum over the tiles and the
batch (one matmul per transformed point) and ``A^T`` maps the 4x4 sums back to the 3x3 kernel.

Timing is round-robin in one process after one untimed call of each function; the rate is the
direct method's nominal ``2 * N * H * W * 9 * C_in * C_out`` FLOPs over the time for all three, so
a rate above the matmul calibration is possible only for Winograd.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_conv  # noqa: E402

from jit_jax.models import layers, onednn  # noqa: E402

BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, -1, 0, 1]], np.float32)
G = np.array([[1, 0], [0.5, 0.5], [0.5, -0.5], [0, 1]], np.float32)
AT = np.array([[1, 1, 1, 0], [0, 1, -1, 0], [0, 1, 1, 1]], np.float32)


def winograd_dw(x, dy, padding):
    """The kernel gradient of a 3x3 stride-1 convolution of ``x`` (NHWC) with explicit
    ``padding`` ((top, bottom), (left, right)), given the output gradient ``dy``."""
    n, h, w, ci = x.shape
    _, ho, wo, co = dy.shape
    th, tw = -(-ho // 2), -(-wo // 2)  # tiles; an odd output size gets a zero row of dy
    dy = jnp.pad(dy, ((0, 0), (0, 2 * th - ho), (0, 2 * tw - wo), (0, 0)))
    (pt, _), (pl, _) = padding
    xp = jnp.pad(x, ((0, 0), (pt, 2 * th + 2 - h - pt), (pl, 2 * tw + 2 - w - pl), (0, 0)))
    rows = jnp.stack([xp[:, r:r + 2 * th:2] for r in range(4)], 1)  # the tiles' 4 rows
    u = jnp.einsum("ar,nrtwc->natwc", BT, rows)
    cols = jnp.stack([u[:, :, :, s:s + 2 * tw:2] for s in range(4)], 2)
    u = jnp.einsum("bs,naspqc->abnpqc", BT, cols).reshape(4, 4, -1, ci)
    v = jnp.einsum("ai,bj,npiqjc->abnpqc", G, G, dy.reshape(n, th, 2, tw, 2, co))
    m = jnp.einsum("abtc,abtd->abcd", u, v.reshape(4, 4, -1, co))
    return jnp.einsum("ka,lb,abcd->klcd", AT, AT, m)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs="+", default=list(bench_conv.MODELS),
                   choices=list(bench_conv.MODELS))
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    if args.repeats < 1:
        p.error(f"--repeats {args.repeats}: accepted: an integer >= 1")
    shapes: dict = {}
    for m in args.models:
        for xs, ks, st, pad, _ in bench_conv.conv_shapes(m, bench_conv.MODELS[m][3]):
            if ks[:2] == (3, 3) and tuple(st) == (1, 1):
                shapes.setdefault((xs, ks, tuple(map(tuple, pad))), []).append(m)
    impls = ["xla"] + (["onednn"] if onednn.available() else [])
    print(f"{len(shapes)} 3x3 stride-1 shapes; jax {jax.__version__}; oneDNN: {onednn.status()}")
    print(f"calibration before: {bench_conv.matmul_gflops():.0f} GFLOP/s", flush=True)
    rng = np.random.default_rng(0)
    entries = []
    for (xs, ks, pad), ms in shapes.items():
        x = jnp.asarray(rng.standard_normal(xs), jnp.float32)
        w = jnp.asarray(rng.standard_normal(ks) / np.sqrt(np.prod(ks[:3])), jnp.float32)
        dy = jnp.asarray(rng.standard_normal(layers.conv_general(x, w, (1, 1), pad).shape),
                         jnp.float32)
        fns = {impl: jax.jit(lambda x, dy, impl=impl, w=w, pad=pad: jax.vjp(
            lambda b: layers.conv(x, b, (1, 1), pad, impl=impl), w)[1](dy)[0]) for impl in impls}
        fns["winograd"] = jax.jit(lambda x, dy, pad=pad: winograd_dw(x, dy, pad))
        ref = fns["xla"](x, dy)
        # float32 rounding of sums over N*H*W*9 terms, relative to the largest entry
        err = float(jnp.max(jnp.abs(fns["winograd"](x, dy) - ref)) / jnp.max(jnp.abs(ref)))
        for f in fns.values():
            jax.block_until_ready(f(x, dy))
        entries.append(((xs, ks, pad), ms, fns, (x, dy), err, {k: [] for k in fns}))
    for _ in range(args.repeats):
        for _, _, fns, a, _, times in entries:
            for k, f in fns.items():
                t = time.perf_counter()
                jax.block_until_ready(f(*a))
                times[k].append(time.perf_counter() - t)
    print(f"calibration after: {bench_conv.matmul_gflops():.0f} GFLOP/s\n")
    print("| input NHWC | kernel | models | " + " | ".join(f"dw {k}" for k in entries[0][2])
          + " | winograd / xla | max rel. error |")
    print("|---|---|---|" + "---|" * (len(entries[0][2]) + 2))
    for (xs, ks, pad), ms, fns, _, err, times in entries:
        fl = bench_conv._flops(xs, ks, (1, 1), pad)
        rate = {k: fl / statistics.median(v) / 1e9 for k, v in times.items()}
        print(f"| {'x'.join(map(str, xs))} | 3x3 {ks[2]}->{ks[3]} | {', '.join(sorted(set(ms)))} | "
              + " | ".join(f"{rate[k]:.0f}" for k in fns)
              + f" | {rate['winograd'] / rate['xla']:.1f}x | {err:.1e} |")


if __name__ == "__main__":
    main()
