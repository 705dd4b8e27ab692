"""Convolution forward / input-gradient / weight-gradient GFLOP/s: XLA's rule against jit-jax's.

    python experiments/bench_conv.py                                  # all models, 3 repeats
    python experiments/bench_conv.py --models resnet18-w16 --repeats 3 --train-step
    python experiments/bench_conv.py --models cnn --repeats 2 --out conv.json

For every distinct convolution shape of the chosen models (found by tracing the model with the
convolution functions instrumented), three jitted functions are timed per implementation:
``fwd`` (the convolution), ``dx`` (``jax.vjp`` with respect to the input only) and ``dw`` (with
respect to the kernel only). "xla" is ``lax.conv_general_dilated`` with XLA's own differentiation
rule; "ours" is what :class:`jit_jax.models.layers.Conv` runs on the CPU (``path`` column): with
``--ours auto`` (the library's default) or ``onednn``, oneDNN's forward, input-gradient and
kernel-gradient convolutions when oneDNN is available (``layers.conv_onednn``), on maps of every
size; with ``custom``, the custom rule (``layers.conv_custom``: XLA's forward and input gradient,
the chunked-matmul kernel gradient) and, for maps of at most 4x4, the im2col matmul. The
rate is the nominal ``2 * N * H_out * W_out * kh * kw * C_in * C_out`` FLOPs over the time, for
all three passes. A 2048^2 float32 matmul is timed first and last as a calibration of the
machine's state.

Timing is round-robin in one process: every repeat times each shape's functions for both
implementations (their order alternating between repeats), after one untimed warm-up call of
each (compilation excluded); the table gives medians over the repeats.

``--train-step`` also times one SGD training step (training-mode forward, cross-entropy, backward,
update) of ``--step-model`` at ``--step-batch``, compiled once with each implementation, in the
same round-robin way. "xla" there is XLA's convolutions and max pooling, "ours" the library's
CPU rules (oneDNN convolutions, the block max pooling of ``layers.max_pool_blocks``);
``--pool-ablation`` separates the two for the models that pool (``--step-model vgg11-w16``).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jit_jax.malloc  # noqa: E402
from jit_jax import models  # noqa: E402
from jit_jax.functional import functionalize  # noqa: E402
from jit_jax.models import layers, onednn  # noqa: E402
from jit_jax.train import cross_entropy  # noqa: E402

# name -> (registry model, options, input shape (H, W, C), default batch)
MODELS = {
    "resnet18-w16": ("resnet18", {"width": 16}, (32, 32, 3), 128),
    "resnet18-w64": ("resnet18", {"width": 64}, (32, 32, 3), 128),
    "vgg11": ("vgg11", {"width": 64}, (32, 32, 3), 128),
    "vgg11-w16": ("vgg11", {"width": 16}, (32, 32, 3), 64),  # the CIFAR-100 twins' model
    "cnn": ("cnn", {"width": 32}, (64, 64, 3), 32),
}
PASSES = ("fwd", "dx", "dw")
IMPLS = ("xla", "ours")


def matmul_gflops(repeats: int = 5) -> float:
    a = jnp.ones((2048, 2048), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        f(a).block_until_ready()
        times.append(time.perf_counter() - t)
    return 2 * 2048**3 / statistics.median(times) / 1e9


@contextlib.contextmanager
def _recording(shapes: list):
    """Record (x shape, kernel shape, strides, padding, path) of every Conv call."""
    real_conv, real_im2col = layers.conv, layers.conv_im2col

    def conv(x, kernel, strides, padding, **kw):
        path = "oneDNN" if layers.resolve_conv_impl(kw.get("impl")) == "onednn" else "custom rule"
        shapes.append((x.shape, kernel.shape, tuple(strides), padding, path))
        return real_conv(x, kernel, strides, padding, **kw)

    def im2col(x, kernel, strides, padding):
        shapes.append((x.shape, kernel.shape, tuple(strides), padding, "im2col"))
        return real_im2col(x, kernel, strides, padding)

    layers.conv, layers.conv_im2col = conv, im2col
    try:
        yield
    finally:
        layers.conv, layers.conv_im2col = real_conv, real_im2col


def conv_shapes(model_name: str, batch: int) -> list[tuple]:
    name, opts, shape, _ = MODELS[model_name]
    model = models.ModelSpec(name, 10, shape, tuple(opts.items())).abstract()
    model.train()
    found: list = []
    with layers.conv_impl(OURS), _recording(found):
        nnx.eval_shape(lambda m, x: m(x), model, jax.ShapeDtypeStruct((batch, *shape), jnp.float32))
    return found


def _flops(x_shape, k_shape, strides, padding) -> float:
    n, h, w, _ = x_shape
    kh, kw, cin, cout = k_shape
    (pt, pb), (pl, pr) = padding
    ho = (h + pt + pb - kh) // strides[0] + 1
    wo = (w + pl + pr - kw) // strides[1] + 1
    return 2.0 * n * ho * wo * kh * kw * cin * cout


OURS = "auto"
"""The implementation timed as "ours" (``--ours``): a :data:`jit_jax.models.layers.CONV_IMPLS`
value other than "xla"."""


def make_fns(x_shape, k_shape, strides, padding, path):
    """{impl: {pass: jitted fn(x, w, dy)}} for one shape."""
    def plain(x, w):
        return layers.conv(x, w, strides, padding, impl="xla")

    if path == "im2col":
        def ours(x, w):
            return layers.conv_im2col(x, w, strides, padding)
    else:
        def ours(x, w):
            return layers.conv(x, w, strides, padding, impl=OURS)

    fns = {}
    for impl, f in (("xla", plain), ("ours", ours)):
        fns[impl] = {
            "fwd": jax.jit(lambda x, w, dy, f=f: f(x, w)),
            "dx": jax.jit(lambda x, w, dy, f=f: jax.vjp(lambda a: f(a, w), x)[1](dy)[0]),
            "dw": jax.jit(lambda x, w, dy, f=f: jax.vjp(lambda b: f(x, b), w)[1](dy)[0]),
        }
    return fns


def bench_shapes(shapes: dict, repeats: int, passes=PASSES, log=print, burst: int = 1
                 ) -> list[dict]:
    """Each (shape, implementation, pass) timed ``repeats`` times round-robin (the order of the
    implementations reversed every other repeat). A sample is the mean of ``burst`` consecutive
    calls: 1 times one call after the other shapes' work (oneDNN's threads may have gone to sleep
    and the caches hold other data, as in a model's step); more times the kernel warm."""
    rng = np.random.default_rng(0)
    entries = []
    for key, info in shapes.items():
        x_shape, k_shape, strides, padding, path = key
        x = jnp.asarray(rng.standard_normal(x_shape).astype(np.float32))
        w = jnp.asarray((rng.standard_normal(k_shape) / np.sqrt(np.prod(k_shape[:3])))
                        .astype(np.float32))
        y_shape = jax.eval_shape(functools.partial(layers.conv_general, strides=strides,
                                                   padding=padding), x, w).shape
        dy = jnp.asarray(rng.standard_normal(y_shape).astype(np.float32))
        fns = make_fns(x_shape, k_shape, strides, padding, path)
        for impl in IMPLS:  # warm-up: compile and run once, untimed
            for p in passes:
                jax.block_until_ready(fns[impl][p](x, w, dy))
        entries.append(dict(key=key, info=info, args=(x, w, dy), fns=fns,
                            times={(i, p): [] for i in IMPLS for p in passes}))
    for r in range(repeats):
        order = IMPLS if r % 2 == 0 else IMPLS[::-1]
        for e in entries:
            for impl in order:
                for p in passes:
                    t = time.perf_counter()
                    for _ in range(burst):
                        jax.block_until_ready(e["fns"][impl][p](*e["args"]))
                    e["times"][(impl, p)].append((time.perf_counter() - t) / burst)
        log(f"  repeat {r + 1}/{repeats} done")
    rows = []
    for e in entries:
        x_shape, k_shape, strides, padding, path = e["key"]
        fl = _flops(x_shape, k_shape, strides, padding)
        row = dict(x=list(x_shape), kernel=list(k_shape), strides=list(strides),
                   padding=[list(p) for p in padding], path=path, models=e["info"]["models"],
                   layers=e["info"]["layers"], gflop=fl / 1e9)
        for impl in IMPLS:
            for p in passes:
                t = statistics.median(e["times"][(impl, p)])
                row[f"{p}_{impl}_s"] = t
                row[f"{p}_{impl}_gflops"] = fl / t / 1e9
        rows.append(row)
    return rows


def make_train_step(model_name: str, batch: int):
    name, opts, shape, _ = MODELS[model_name]
    model = models.create(name, 10, shape, **opts)
    fn = functionalize(model, train=True)
    tx = optax.sgd(0.01, momentum=0.9)
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.standard_normal((batch, *shape)).astype(np.float32))
    y = jnp.asarray(rng.integers(0, 10, batch).astype(np.int32))

    def new_step():  # a new function object for each implementation: JAX caches traces by it
        def step(params, opt_state, x, y):
            loss, g = jax.value_and_grad(
                lambda p: cross_entropy(fn.apply_fn(p, x), y).mean())(params)
            upd, opt_state = tx.update(g, opt_state, params)
            return optax.apply_updates(params, upd), opt_state, loss

        return step

    args = (fn.params, tx.init(fn.params), x, y)
    compiled = {}
    for impl, setting in (("xla", "xla"), ("ours", OURS)):
        with layers.conv_impl(setting):  # read while tracing: each compiled step keeps its rule
            t = time.perf_counter()
            compiled[impl] = jax.jit(new_step()).lower(*args).compile()
            compiled[impl + "_compile_s"] = time.perf_counter() - t
    return compiled, args


def bench_train_step(model_name: str, batch: int, repeats: int, log=print) -> dict:
    compiled, args = make_train_step(model_name, batch)
    times = {impl: [] for impl in IMPLS}
    for impl in IMPLS:
        jax.block_until_ready(compiled[impl](*args))  # warm-up
    for r in range(repeats):
        for impl in (IMPLS if r % 2 == 0 else IMPLS[::-1]):
            t = time.perf_counter()
            jax.block_until_ready(compiled[impl](*args))
            times[impl].append(time.perf_counter() - t)
        log(f"  train step repeat {r + 1}/{repeats}: "
            + ", ".join(f"{i} {times[i][-1]:.3f} s" for i in IMPLS))
    med = {impl: statistics.median(times[impl]) for impl in IMPLS}
    return dict(model=model_name, batch=batch, repeats=repeats,
                xla_s=med["xla"], ours_s=med["ours"], speedup=med["xla"] / med["ours"],
                xla_all_s=times["xla"], ours_all_s=times["ours"],
                compile_s={i: compiled[i + "_compile_s"] for i in IMPLS})


def bench_bn_ablation(model_name: str, batch: int, repeats: int, log=print) -> dict:
    """The training step four ways, round-robin: XLA's or our convolutions, with flax's BatchNorm
    (``nnx.BatchNorm.__call__``) or the library's closed-form one (``layers.BatchNorm``)."""
    from flax import nnx

    closed = layers.BatchNorm.__call__
    layers.BatchNorm.__call__ = nnx.BatchNorm.__call__
    try:
        flax_bn, args = make_train_step(model_name, batch)
    finally:
        layers.BatchNorm.__call__ = closed
    closed_bn, _ = make_train_step(model_name, batch)
    steps = {"xla conv, flax BN": flax_bn["xla"], "ours conv, flax BN": flax_bn["ours"],
             "xla conv, closed-form BN": closed_bn["xla"], "ours conv, closed-form BN": closed_bn["ours"]}
    return {"model": model_name, "batch": batch, "repeats": repeats,
            **_round_robin(steps, args, repeats, log)}


def _round_robin(steps: dict, args, repeats: int, log=print) -> dict:
    """Each compiled step of ``steps`` once per repeat after a warm-up call, the order reversed
    every other repeat; medians logged and returned (``median_s``, ``all_s``)."""
    for f in steps.values():
        jax.block_until_ready(f(*args))
    times = {k: [] for k in steps}
    for r in range(repeats):
        for k in (list(steps) if r % 2 == 0 else list(steps)[::-1]):
            t = time.perf_counter()
            jax.block_until_ready(steps[k](*args))
            times[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    for k, v in med.items():
        log(f"  {k:27s} {v:.3f} s")
    return {"median_s": med, "all_s": times}


def bench_pool_ablation(model_name: str, batch: int, repeats: int, log=print) -> dict:
    """The training step four ways, round-robin: XLA's or our convolutions, with XLA's max pooling
    (``reduce_window``, differentiated by ``select_and_scatter``) or the block form
    (``layers.max_pool_blocks``), for the models that pool (VGG, cnn)."""
    with layers.pool_impl("xla"):  # read while tracing, as the convolution setting
        xla_pool, args = make_train_step(model_name, batch)
    with layers.pool_impl("blocks"):
        blocks, _ = make_train_step(model_name, batch)
    steps = {"xla conv, xla pool": xla_pool["xla"], "ours conv, xla pool": xla_pool["ours"],
             "xla conv, block pool": blocks["xla"], "ours conv, block pool": blocks["ours"]}
    outs = {k: f(*args) for k, f in steps.items()}
    same = {"xla conv": _tree_equal(outs["xla conv, xla pool"], outs["xla conv, block pool"]),
            "ours conv": _tree_equal(outs["ours conv, xla pool"], outs["ours conv, block pool"])}
    log(f"  one step from the same state, XLA's pooling against the block form, bit for bit "
        f"equal: {same}")
    return {"model": model_name, "batch": batch, "repeats": repeats,
            **_round_robin(steps, args, repeats, log), "bit_equal": same}


def _tree_equal(a, b) -> bool:
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(
        np.array_equal(x, y) for x, y in zip(la, lb, strict=True))


def markdown(rows: list[dict], passes=PASSES) -> str:
    head = ["models", "input NHWC", "kernel", "stride", "pad", "path", "n"]
    for p in passes:
        head += [f"{p} xla", f"{p} ours"]
    if "dw" in passes:
        head += ["dw ours / xla"]
        if "fwd" in passes:
            head += ["dw ours / fwd xla"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        pad = r["padding"]
        pad_s = (str(pad[0][0]) if len({v for pp in pad for v in pp}) == 1
                 else ",".join(f"{a}-{b}" for a, b in pad))
        cells = [", ".join(r["models"]), "x".join(map(str, r["x"])),
                 f"{r['kernel'][0]}x{r['kernel'][1]} {r['kernel'][2]}->{r['kernel'][3]}",
                 str(r["strides"][0]), pad_s, r["path"], str(r["layers"])]
        for p in passes:
            cells += [f"{r[f'{p}_xla_gflops']:.1f}", f"{r[f'{p}_ours_gflops']:.1f}"]
        if "dw" in passes:
            cells.append(f"{r['dw_ours_gflops'] / r['dw_xla_gflops']:.1f}x")
            if "fwd" in passes:
                cells.append(f"{r['dw_ours_gflops'] / r['fwd_xla_gflops']:.2f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    p.add_argument("--batch", type=int, default=None,
                   help="batch for every model (default: 128, the cnn 32)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--burst", type=int, default=1,
                   help="calls per timed sample of a shape (1: one call after the other shapes' "
                        "work, the default; more: the mean of that many consecutive calls)")
    p.add_argument("--passes", nargs="+", default=list(PASSES), choices=list(PASSES))
    p.add_argument("--no-shapes", action="store_true", help="skip the per-shape table")
    p.add_argument("--train-step", action="store_true", help="also time a training step")
    p.add_argument("--step-model", default="resnet18-w16", choices=list(MODELS))
    p.add_argument("--step-batch", type=int, default=128)
    p.add_argument("--step-repeats", type=int, default=None, help="default: --repeats")
    p.add_argument("--bn-ablation", action="store_true",
                   help="with --train-step: the step four ways (XLA or our convolutions x flax's "
                        "or the closed-form BatchNorm)")
    p.add_argument("--pool-ablation", action="store_true",
                   help="with --train-step: the step four ways (XLA or our convolutions x XLA's "
                        "or the block max pooling; VGG and cnn)")
    p.add_argument("--chunk-rows", type=int, default=None,
                   help="override layers.DW_CHUNK_ROWS (output pixels per dw chunk), for tuning")
    p.add_argument("--layout", choices=["auto", "pixel-major", "channel-major"], default="auto",
                   help="force the dw patch layout, for tuning (default: the library's rule)")
    p.add_argument("--ours", choices=["auto", "custom", "onednn"], default="auto",
                   help="the implementation timed as 'ours' (auto: the library's default)")
    p.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = p.parse_args(argv)
    global OURS
    OURS = args.ours

    if args.chunk_rows is not None:
        layers.DW_CHUNK_ROWS = args.chunk_rows
    if args.layout != "auto":
        forced = args.layout == "channel-major"
        layers._channel_major = lambda cin, kh, kw: forced

    result = dict(jax=jax.__version__, backend=jax.default_backend(),
                  devices=[str(d) for d in jax.devices()], chunk_rows=layers.DW_CHUNK_ROWS,
                  layout=args.layout, repeats=args.repeats, ours=OURS,
                  ours_resolved=layers.resolve_conv_impl(OURS), onednn=onednn.status(),
                  malloc_retained=jit_jax.malloc.applied, burst=args.burst)
    cal = matmul_gflops()
    result["matmul_gflops_before"] = cal
    print(f"calibration: 2048^2 float32 matmul {cal:.1f} GFLOP/s "
          f"(jax {jax.__version__}, {jax.default_backend()}, DW_CHUNK_ROWS={layers.DW_CHUNK_ROWS},"
          f" layout {args.layout}; ours = {OURS} -> {layers.resolve_conv_impl(OURS)}; oneDNN: "
          f"{onednn.status()}; {jit_jax.malloc.status()})", flush=True)

    if not args.no_shapes:
        shapes: dict = {}
        for m in args.models:
            batch = args.batch or MODELS[m][3]
            for x_shape, k_shape, strides, padding, path in conv_shapes(m, batch):
                key = (tuple(x_shape), tuple(k_shape), strides, padding, path)
                info = shapes.setdefault(key, {"models": [], "layers": 0})
                if m not in info["models"]:
                    info["models"].append(m)
                info["layers"] += 1
        print(f"{len(shapes)} distinct convolution shapes", flush=True)
        rows = bench_shapes(shapes, args.repeats, tuple(args.passes), burst=args.burst,
                            log=lambda s: print(s, flush=True))
        result["shapes"] = rows
        print()
        print(markdown(rows, tuple(args.passes)))
        print()
    if args.train_step:
        step = bench_train_step(args.step_model, args.step_batch,
                                args.step_repeats or args.repeats,
                                log=lambda s: print(s, flush=True))
        result["train_step"] = step
        print(f"training step, {step['model']} batch {step['batch']}: xla {step['xla_s']:.3f} s, "
              f"ours {step['ours_s']:.3f} s: {step['speedup']:.2f}x faster "
              f"(median of {step['repeats']}; compile {step['compile_s']['xla']:.1f} s / "
              f"{step['compile_s']['ours']:.1f} s)")
        if args.pool_ablation:
            result["pool_ablation"] = bench_pool_ablation(args.step_model, args.step_batch,
                                                          args.step_repeats or args.repeats,
                                                          log=lambda s: print(s, flush=True))
        if args.bn_ablation:
            result["bn_ablation"] = bench_bn_ablation(args.step_model, args.step_batch,
                                                      args.step_repeats or args.repeats,
                                                      log=lambda s: print(s, flush=True))
    cal = matmul_gflops()
    result["matmul_gflops_after"] = cal
    print(f"calibration after: {cal:.1f} GFLOP/s")
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
