"""Time one JiT step (N noisy forwards + one backward + SGD) side by side in one process.

    python experiments/bench_jit_step.py --model resnet18 --batch 1 8 32 --rounds 5

Variants, run round-robin so machine drift hits them alike (medians reported, with ratios):
- ``chunked``: ``images_per_forward=32`` (``lax.map`` over chunks of vmapped draws), the CPU default;
- ``auto``: the default, ``images_per_forward="auto"`` resolved for this backend (32 on the CPU, up
  to 1024 images per forward on accelerators);
- ``one_forward``: ``images_per_forward=None``, all B*N perturbed images in one vmapped forward;
- ``fused_sg``: clean and perturbed images in one differentiated forward with a stop-gradient on the
  perturbed outputs (what the split in ``jit_value_and_grad`` avoids);
- ``obj:NAME``: the step of objective NAME (``jit_jax/unlearn/objectives.py``) with its default
  options (labels, the original's logits and a retain batch made up for the timing), e.g.
  ``--variants chunked obj:lipschitz obj:curvature obj:npo`` for the cost of each against JiT's.
A 2048^2 float32 matmul is timed before and after as a calibration of the machine's state.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jit_jax.malloc  # noqa: E402
from jit_jax.functional import functionalize  # noqa: E402
from jit_jax.models import ModelSpec  # noqa: E402
from jit_jax.unlearn import jit as J  # noqa: E402


def matmul_gflops() -> float:
    a = jnp.ones((2048, 2048), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    t = time.perf_counter()
    for _ in range(5):
        f(a).block_until_ready()
    return 5 * 2 * 2048**3 / (time.perf_counter() - t) / 1e9


def make_step(fn, variant, sigma, n):
    tx = optax.sgd(3e-4)

    def fused_loss(params, x, key):
        k_pert, _ = jax.random.split(key)
        keys = jax.random.split(k_pert, n)
        xt = jax.vmap(lambda k: J.perturb(jax.random.split(k)[0], x, sigma))(keys)
        allx = jnp.concatenate([x[None], xt]).reshape((-1,) + x.shape[1:])
        out = fn.apply_fn(params, allx).reshape((n + 1, x.shape[0], -1))
        dx = jnp.sqrt(jnp.sum(jnp.square((x[None] - xt).reshape(n, x.shape[0], -1)), -1))
        return J.loss_from_outputs(out[0], jax.lax.stop_gradient(out[1:]), dx)

    aux_fn = None
    if variant.startswith("obj:"):
        from jit_jax.unlearn import objectives

        vg = objectives.value_and_grad(variant[4:])

        def aux_fn(x):
            b = x.shape[0]
            out = fn.apply_fn(fn.params, x)
            return {"labels": jnp.arange(b) % out.shape[-1], "ref_logits": out,
                    "retain_x": x, "retain_y": jnp.arange(b) % out.shape[-1]}

    def step(params, opt_state, x, key, aux):
        if aux_fn is not None:
            loss, g = vg(fn.apply_fn, params, x, key, mask=None, forward_keys=False, aux=aux)
        elif variant == "fused_sg":
            loss, g = jax.value_and_grad(fused_loss)(params, x, key)
        else:
            ipf = {"chunked": 32, "one_forward": None,
                   "auto": J.resolve_images_per_forward("auto")}[variant]
            loss, g = J.jit_value_and_grad(fn.apply_fn, params, x, key, sigma=sigma,
                                           num_samples=n, images_per_forward=ipf)
        upd, opt_state = tx.update(g, opt_state, params)
        return optax.apply_updates(params, upd), opt_state, loss

    return jax.jit(step), tx, aux_fn


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--batch", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--num-samples", type=int, default=25)
    p.add_argument("--variants", nargs="+", default=["chunked", "one_forward", "fused_sg"])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--image-size", type=int, default=32)
    p.add_argument("--model-opt", action="append", metavar="KEY=VALUE",
                   help="model options instead of --width (e.g. for vit_b16, which has none)")
    args = p.parse_args(argv)
    from jit_jax.cli import parse_options

    opts = parse_options(args.model_opt, "model") if args.model_opt else {"width": args.width}
    if args.model.startswith("vit") and not args.model_opt:
        opts = {}
    size = args.image_size
    spec = ModelSpec(args.model, args.classes, (size, size, 3), opts)
    fn = functionalize(spec.build(0))
    print(f"{spec.name} {spec.kwargs} at {size}x{size} ({spec.num_params():,} params), "
          f"N={args.num_samples}, on {jax.devices()[0].device_kind}; matmul "
          f"{matmul_gflops():.0f} GFLOP/s; {jit_jax.malloc.status()}", flush=True)
    for b in args.batch:
        x = jnp.asarray(np.random.default_rng(0).normal(size=(b, size, size, 3)).clip(-1.9, 2.0),
                        jnp.float32)
        steps, auxs, times = {}, {}, {v: [] for v in args.variants}
        for v in args.variants:
            step, tx, aux_fn = make_step(fn, v, 0.5, args.num_samples)
            auxs[v] = {} if aux_fn is None else jax.block_until_ready(aux_fn(x))  # precomputed,
            t = time.perf_counter()                                          # as in the loop
            steps[v] = step.lower(fn.params, tx.init(fn.params), x, jax.random.key(0),
                                  auxs[v]).compile()
            state = (fn.params, tx.init(fn.params))
            jax.block_until_ready(steps[v](*state, x, jax.random.key(0), auxs[v]))  # warm-up
            print(f"  B={b} {v}: compile {time.perf_counter() - t:.1f}s", flush=True)
        for r in range(args.rounds):
            for v in args.variants:
                state = (fn.params, tx.init(fn.params))
                t = time.perf_counter()
                jax.block_until_ready(steps[v](*state, x, jax.random.key(r + 1), auxs[v]))
                times[v].append(time.perf_counter() - t)
            print(f"  round {r + 1}: " + " ".join(f"{v} {times[v][-1]:.3f}s"
                                                 for v in args.variants), flush=True)
        base = np.median(times[args.variants[0]])
        for v in args.variants:
            med = np.median(times[v])
            print(f"B={b:<3} {v:12s} median {med:7.3f}s  (x{med / base:.2f} vs "
                  f"{args.variants[0]})  all {np.round(times[v], 3).tolist()}", flush=True)
    print(f"matmul after: {matmul_gflops():.0f} GFLOP/s")


if __name__ == "__main__":
    main()
