"""A probe: this machine's float32 peak (fused multiply-adds in registers), against the rates the
kernel-gradient acceptance of ``bench_conv.py`` asks for.

    python experiments/probe_fma_peak.py --conv-json runs/bench/conv.json

Why. The speed issue asks for the convolution kernel gradient (dw) at 3x XLA's rate on every
layer shape. Where XLA's own dw already runs fast, 3x its rate can be more than the processor can
compute at all. ``bench_conv.py`` compares with a 2048^2 matmul; this probe measures the ceiling
itself: a loop of independent fused multiply-adds on vector registers, nothing loaded or stored,
on 1 and on all threads. No convolution, matmul or any other kernel can exceed that rate.

How. A small C kernel is compiled with the system's C compiler (``cc -O2 -march=native
-fopenmp``) into a temporary folder and called through ctypes. Each thread keeps
``ACC`` accumulators of the widest vector the compiler targets (AVX-512: 16 floats; AVX2: 8;
else scalar), enough independent chains to cover the FMA latency on current x86 cores, and runs
``iters`` rounds of one FMA per accumulator: ``2 * lanes * ACC * iters`` FLOPs per thread. The
median of ``--repeats`` timed calls after one untimed call is reported, beside the 2048^2 matmul
rate measured the same way as ``bench_conv.py`` (before and after), since this machine's speed
swings.

With ``--conv-json`` (a ``bench_conv.py --json`` output), every shape whose dw is under 3x XLA's is
listed with the rate 3x XLA's would take, and whether that is above the measured peak.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

ACC = 16  # independent accumulators per thread (FMA latency 4 cycles x 2-4 pipes)

SOURCE = r"""
#include <omp.h>
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#endif

#if defined(__AVX512F__)
typedef __m512 vec;
#define LANES 16
#define SET1 _mm512_set1_ps
#define FMA _mm512_fmadd_ps
#define SUM(v) _mm512_reduce_add_ps(v)
#elif defined(__AVX2__) && defined(__FMA__)
typedef __m256 vec;
#define LANES 8
#define SET1 _mm256_set1_ps
#define FMA _mm256_fmadd_ps
static float SUM(__m256 v) { float t[8]; _mm256_storeu_ps(t, v); float s = 0;
                             for (int i = 0; i < 8; ++i) s += t[i]; return s; }
#else
typedef float vec;
#define LANES 1
#define SET1(x) (x)
#define FMA(a, b, c) ((a) * (b) + (c))
#define SUM(v) (v)
#endif

int lanes(void) { return LANES; }

/* Runs `iters` rounds of ACC independent FMAs a <- a * b + c on each of `threads` threads;
   returns the wall time in seconds and writes a checksum (so the loop cannot be removed). */
double fma_loop(long iters, int threads, float bval, float cval, float *checksum) {
    float total = 0.0f;
    double t0 = omp_get_wtime();
    #pragma omp parallel num_threads(threads) reduction(+:total)
    {
        vec b = SET1(bval), c = SET1(cval);
        vec a[ACC];
        for (int k = 0; k < ACC; ++k) a[k] = SET1((float)(k + omp_get_thread_num()));
        for (long i = 0; i < iters; ++i) {
            #pragma GCC unroll 64
            for (int k = 0; k < ACC; ++k) a[k] = FMA(a[k], b, c);
        }
        for (int k = 0; k < ACC; ++k) total += SUM(a[k]);
    }
    double t1 = omp_get_wtime();
    *checksum = total;
    return t1 - t0;
}
"""


def build(cc: str = "cc") -> ctypes.CDLL:
    """Compiles the kernel into a temporary folder, removed once the library is loaded; a missing
    compiler or a failed build is an error naming the command."""
    with tempfile.TemporaryDirectory(prefix="jitjax-fma-") as d:
        src, lib = Path(d) / "fma.c", Path(d) / "libfma.so"
        src.write_text(f"#define ACC {ACC}\n" + SOURCE)
        cmd = [cc, "-O2", "-march=native", "-fopenmp", "-shared", "-fPIC", str(src), "-o",
               str(lib)]
        try:
            subprocess.run(cmd, check=True, capture_output=True, text=True)
        except FileNotFoundError as e:
            raise RuntimeError(f"no C compiler {cc!r} ({' '.join(cmd)}); accepted: a cc on "
                               f"PATH") from e
        except subprocess.CalledProcessError as e:
            raise RuntimeError(f"building the FMA kernel failed ({' '.join(cmd)}):\n"
                               f"{e.stderr}") from e
        so = ctypes.CDLL(str(lib))  # mapped: the file can go with the folder
    so.fma_loop.restype = ctypes.c_double
    so.fma_loop.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_float, ctypes.c_float,
                            ctypes.POINTER(ctypes.c_float)]
    so.lanes.restype = ctypes.c_int
    return so


def run(so: ctypes.CDLL, iters: int, threads: int, b: float = 0.999999, c: float = 1e-6
        ) -> tuple[float, float]:
    """One call of the kernel: ``(seconds, checksum)``; the checksum is the float32 sum over
    threads, accumulators and lanes of the recurrence ``a <- a * b + c`` run ``iters`` times from
    ``a = accumulator index + thread index`` (the defaults keep ``a`` bounded)."""
    if threads < 1 or iters < 1:
        raise ValueError(f"threads={threads}, iters={iters}; accepted: integers >= 1")
    check = ctypes.c_float()
    seconds = so.fma_loop(iters, threads, b, c, ctypes.byref(check))
    return seconds, check.value


def peak_gflops(so: ctypes.CDLL, threads: int, iters: int, repeats: int) -> float:
    """Median GFLOP/s of ``repeats`` timed calls after one untimed call."""
    if repeats < 1:
        raise ValueError(f"repeats={repeats}; accepted: an integer >= 1")
    run(so, iters, threads)
    times = [run(so, iters, threads)[0] for _ in range(repeats)]
    flops = 2.0 * so.lanes() * ACC * iters * threads
    return flops / statistics.median(times) / 1e9


def shortfalls(conv: dict, peak: float, factor: float = 3.0) -> list[dict]:
    """The shapes of a ``bench_conv.py --json`` output whose dw is under ``factor`` times XLA's,
    each with the rate ``factor`` times XLA's would take and whether it exceeds ``peak``."""
    rows = []
    for s in conv.get("shapes", []):
        xla, ours = s.get("dw_xla_gflops"), s.get("dw_ours_gflops")
        if xla is None or ours is None:
            continue
        if ours < factor * xla:
            rows.append({"models": s["models"], "x": s["x"], "kernel": s["kernel"],
                         "strides": s["strides"], "dw_xla": xla, "dw_ours": ours,
                         "ratio": ours / xla, "needed": factor * xla,
                         "above_peak": factor * xla > peak})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iters", type=int, default=20_000_000,
                   help="FMA rounds per call and thread (default 2e7: about 0.5 s at 4 GHz)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, nargs="+", default=None,
                   help="thread counts to measure (default: 1 and os.cpu_count())")
    p.add_argument("--conv-json", type=Path, default=None,
                   help="a bench_conv.py --json output to compare with the peak")
    p.add_argument("--cc", default="cc", help="C compiler (default cc)")
    p.add_argument("--json", type=Path, default=None, help="write the numbers here")
    a = p.parse_args(argv)
    if a.conv_json is not None and not a.conv_json.is_file():
        p.error(f"--conv-json {a.conv_json}: no such file; accepted: a bench_conv.py --json output")
    threads = a.threads or sorted({1, os.cpu_count() or 1})
    if min(threads) < 1 or a.iters < 1 or a.repeats < 1:
        p.error(f"--threads {threads} --iters {a.iters} --repeats {a.repeats}: accepted: "
                f"integers >= 1")

    import bench_jit_step  # after argument checks: imports JAX

    so = build(a.cc)
    mm_before = bench_jit_step.matmul_gflops()
    peaks = {t: peak_gflops(so, t, a.iters, a.repeats) for t in threads}
    mm_after = bench_jit_step.matmul_gflops()
    print(f"vector lanes: {so.lanes()} floats, {ACC} accumulators a thread")
    print(f"matmul 2048^2 (XLA): {mm_before:.0f} GFLOP/s before, {mm_after:.0f} after")
    for t, g in peaks.items():
        print(f"FMA peak, {t} thread(s): {g:.0f} GFLOP/s")
    out = {"lanes": so.lanes(), "accumulators": ACC, "iters": a.iters, "repeats": a.repeats,
           "matmul_gflops_before": mm_before, "matmul_gflops_after": mm_after,
           "peak_gflops": {str(t): g for t, g in peaks.items()}}
    if a.conv_json is not None:
        peak = peaks[max(peaks)]
        conv = json.loads(a.conv_json.read_text())
        rows = shortfalls(conv, peak)
        print(f"\n{a.conv_json}: {len(rows)} of {len(conv.get('shapes', []))} shapes with dw "
              f"under 3x XLA's; the peak on {max(peaks)} threads: {peak:.0f} GFLOP/s "
              f"(that run's matmul: {conv.get('matmul_gflops_before', float('nan')):.0f} -> "
              f"{conv.get('matmul_gflops_after', float('nan')):.0f})")
        print("| models | input NHWC | kernel | stride | dw xla | dw ours | ours / xla | "
              "3 x dw xla | above the peak |")
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            k = r["kernel"]
            print(f"| {', '.join(r['models'])} | {'x'.join(map(str, r['x']))} | "
                  f"{k[0]}x{k[1]} {k[2]}->{k[3]} | {r['strides'][0]} | {r['dw_xla']:.0f} | "
                  f"{r['dw_ours']:.0f} | {r['ratio']:.2f}x | {r['needed']:.0f} | "
                  f"{'yes' if r['above_peak'] else 'no'} |")
        out["conv_json"] = str(a.conv_json)
        out["shortfalls"] = rows
    if a.json is not None:
        a.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
