"""GKT's round on the CPU: its generator's transposed convolutions as XLA's dilated convolution
(``nnx.ConvTranspose``, and ``nnx.Conv`` for its last layer) against the phase convolutions
through ``layers.conv`` (``gkt.upsample2x``, what ``gkt.PseudoImageGenerator`` runs).

    python experiments/bench_gkt.py                     # the CIFAR VGG11-w16, 100 classes
    python experiments/bench_gkt.py --checkpoint runs/paper/table2-vgg-s10/original

Times, round-robin in one process after a warm-up call of each (compilation excluded), medians
over ``--repeats``: the gate (generator forward and teacher forward, every call of a round), a
generator step (generator, student and teacher forward, backward to the generator) and a student
step, at GKT's batch of 128. A 2048^2 float32 matmul is timed first and last as a calibration of
the machine's state. Both generators hold the same parameters; their outputs' largest difference
is printed.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_conv import _round_robin, matmul_gflops  # noqa: E402

from jit_jax.models import create  # noqa: E402
from jit_jax.unlearn import gkt  # noqa: E402


class XlaGenerator(gkt.PseudoImageGenerator):
    """The generator as before 2026-12-05: flax's transposed convolution and convolution."""

    def __call__(self, z):
        x = jax.nn.relu(self.fc(z)).reshape(z.shape[0], self.s, self.s, self.inter)
        x = self.bn0(x)
        x = jax.nn.leaky_relu(self.bn1(self.up1(x)), 0.2)
        x = jax.nn.leaky_relu(self.bn2(self.up2(x)), 0.2)
        return self.bn3(self.conv(x))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", type=Path, help="a saved model (default: a fresh vgg11-w16)")
    p.add_argument("--forget-class", type=int, default=69)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args(argv)
    print(f"calibration: {matmul_gflops():.1f} GFLOP/s (2048^2 float32 matmul)", flush=True)
    if args.checkpoint is not None:
        from jit_jax import checkpoint

        model, _ = checkpoint.restore(args.checkpoint)
    else:
        model = create("vgg11", num_classes=100, input_shape=(32, 32, 3), width=16)
    teacher = nnx.clone(model)
    teacher.train()
    student = nnx.clone(model)
    gkt.reinit_conv_kernels(student, jax.random.key(0))
    student.train()
    lr, mom = gkt.torch_onecycle(29 * 15, 0.1)
    s_opt = nnx.Optimizer(student, optax.chain(
        optax.clip_by_global_norm(5.0),
        optax.inject_hyperparams(optax.sgd)(learning_rate=lr, momentum=mom)), wrt=nnx.Param)
    z = jnp.asarray(np.random.default_rng(0).standard_normal((args.batch, 128)), jnp.float32)
    gens = {"xla": XlaGenerator(128, 32, 3, rngs=nnx.Rngs(0)),
            "phases": gkt.PseudoImageGenerator(128, 32, 3, rngs=nnx.Rngs(0))}
    out = {k: nnx.jit(lambda g, z: g(z))(g, z) for k, g in gens.items()}
    print(f"generators' outputs, largest difference: "
          f"{float(jnp.max(jnp.abs(out['xla'] - out['phases']))):.2e} "
          f"(largest output {float(jnp.max(jnp.abs(out['xla']))):.2f})", flush=True)
    opts = {k: nnx.Optimizer(g, optax.chain(optax.clip_by_global_norm(5.0),
                                            optax.sgd(0.01, momentum=0.9)), wrt=nnx.Param)
            for k, g in gens.items()}
    x, mask = gkt._gkt_candidates(gens["phases"], teacher, z, args.forget_class, 0.01)
    fns = {}
    for k, g in gens.items():
        fns[f"gate, {k}"] = (lambda g=g: gkt._gkt_candidates(g, teacher, z, args.forget_class,
                                                              0.01))
        fns[f"generator step, {k}"] = (lambda g=g, o=opts[k]: gkt._gkt_generator_step(
            g, o, student, teacher, z, mask, 1.0))
    fns["student step"] = lambda: gkt._gkt_student_step(student, s_opt, teacher, x, mask, 1.0,
                                                        5.0, ("conv",))
    med = _round_robin(fns, (), args.repeats)["median_s"]
    for k in ("xla", "phases"):
        rnd = 17 * med[f"gate, {k}"] + 2 * med[f"generator step, {k}"] + 15 * med["student step"]
        print(f"  a round (17 gates, 2 generator + 15 student steps), {k}: {rnd:.2f} s")
    print(f"  gate {med['gate, xla'] / med['gate, phases']:.2f}x, generator step "
          f"{med['generator step, xla'] / med['generator step, phases']:.2f}x faster with phases")
    print(f"calibration: {matmul_gflops():.1f} GFLOP/s (2048^2 float32 matmul)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
