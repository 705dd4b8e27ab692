"""Data-parallel JiT on 8 fake CPU devices.

jax reads ``--xla_force_host_platform_device_count`` once, when it starts, and the rest of the suite
runs on one device; so the checks run in a subprocess with its own XLA_FLAGS.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SCRIPT = textwrap.dedent(r"""
    import jax, jax.numpy as jnp, numpy as np, optax, chex
    from flax import nnx
    from jit_jax.functional import functionalize
    from jit_jax.unlearn import jit as J
    from jit_jax.parallel import data_mesh

    assert jax.device_count() == 8, jax.devices()

    class Net(nnx.Module):  # conv + BatchNorm (eval mode in JiT) + head
        def __init__(self):
            rngs = nnx.Rngs(0)
            # no conv bias before BatchNorm: its gradient is rounding noise, which Adam (in the
            # training check below) would blow up to lr-sized steps on either side
            self.conv = nnx.Conv(1, 4, (3, 3), use_bias=False, rngs=rngs)
            self.bn = nnx.BatchNorm(4, rngs=rngs)
            self.head = nnx.Linear(4, 3, rngs=rngs)

        def __call__(self, x):
            return self.head(nnx.relu(self.bn(self.conv(x))).mean((1, 2)))

    def Net64():
        # Comparisons across device counts run in float64 (x64 on, state cast): the count only
        # changes the order of the sums (and the float32 input side, x~ and ||x - x~||, is computed
        # elementwise / per row, the same way), so u = 2^-53 through a few hundred operations and
        # 2 JiT or 8 Adam steps (Adam is scale-free: a relative gradient error stays relative)
        # leaves the results ~1e-15 apart; 1e-10 asserted.
        m = Net()
        for kind in (nnx.Param, nnx.BatchStat):
            nnx.update(m, jax.tree.map(lambda a: jnp.asarray(a, jnp.float64),
                                       nnx.state(m, kind)))
        return m

    RTOL64 = 1e-10
    model = Net()
    xf = np.asarray(jax.random.normal(jax.random.key(5), (16, 6, 6, 1)), np.float32)
    cfg = J.JiTConfig(sigma=0.5, lr=0.05, batch_size=8, num_samples=3, seed=1)
    params = lambda m: jax.tree.map(np.asarray, nnx.state(m, nnx.Param))

    seen = []  # the shardings jit_unlearn gives its step
    make_step = J.make_step
    J.make_step = lambda *a: seen.append(a[5]) or make_step(*a)

    P = jax.sharding.PartitionSpec
    with jax.enable_x64(True):  # float64: see Net64
        model64 = Net64()
        one, log1 = J.jit_unlearn(model64, xf, cfg)
        assert seen == [None]
        for nd in (8, 4, 2):
            many, log = J.jit_unlearn(model64, xf, cfg, mesh=data_mesh(nd))
            rep, bat = seen[-1]
            assert rep.spec == P() and bat.spec == P("data") and rep.mesh.size == nd, seen[-1]
            assert log.num_steps == 2 and log.batch_size == 8, (nd, log)
            assert many.head.kernel[...].dtype == jnp.float64
            chex.assert_trees_all_close(params(many), params(one), rtol=RTOL64, atol=RTOL64)
            np.testing.assert_allclose(log.losses, log1.losses, rtol=RTOL64)
            # the new model's parameters live on every device of the mesh
            assert len(many.head.kernel[...].sharding.device_set) == nd
            np.testing.assert_allclose(np.asarray(many(jnp.asarray(xf[:3]))),
                                       np.asarray(one(jnp.asarray(xf[:3]))), rtol=RTOL64,
                                       atol=RTOL64)
        # the source model is untouched
        chex.assert_trees_all_equal(params(model64), params(Net64()))

    # the step is really partitioned: XLA reduces the batch-sum gradient across devices
    mesh = data_mesh(8)
    rep = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
    bat = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))
    fn = functionalize(model)
    tx = optax.sgd(0.05)
    step = J.make_step(fn.apply_fn, tx, cfg, False, False, (rep, bat))
    p0 = jax.device_put(fn.params, rep)
    hlo = step.lower(p0, jax.device_put(tx.init(fn.params), rep), p0,
                     jax.device_put(xf[:8], bat), jax.device_put(np.ones(8, np.float32), bat),
                     jax.device_put(jax.random.key(0), rep)).compile().as_text()
    assert "all-reduce" in hlo

    # a batch that is not a multiple of the devices is padded and masked
    new, log = J.jit_unlearn(model, xf[:10], cfg.replace(batch_size=5), mesh=data_mesh(4))
    assert log.num_steps == 2 and log.batch_size == 8 and np.all(np.isfinite(log.losses))
    # fewer forget samples than devices
    new, log = J.jit_unlearn(model, xf[:3], cfg, mesh=data_mesh(8))
    assert log.num_steps == 1 and log.batch_size == 8 and np.isfinite(log.losses[0])

    # bad input names the value and what is accepted
    for call, msg in [
        (lambda: J.jit_unlearn(model, xf, cfg, mesh=mesh, data_axis="batch"),
         "data_axis='batch' is not an axis of the mesh; accepted: ['data']"),
        (lambda: data_mesh(9), "devices=9: accepted 1..8"),
        (lambda: data_mesh([]), "devices is an empty sequence"),
    ]:
        try:
            call()
        except ValueError as e:
            assert msg in str(e), str(e)
        else:
            raise AssertionError("no ValueError for " + msg)
    # training (originals, RTRN): the same steps on 1 and 8 devices, BatchNorm in train mode and
    # random crops included
    import jit_jax.train as T
    from jit_jax.train import TrainConfig, train
    specs = []  # how the training step's batch arrives
    step_fn = T._train_step
    T._train_step = lambda m, o, x, *a: specs.append(x.sharding) or step_fn(m, o, x, *a)
    xs = np.asarray(jax.random.normal(jax.random.key(2), (64, 6, 6, 1)), np.float32)
    ys = np.arange(64) % 3
    tc = TrainConfig(epochs=2, batch_size=16, optimizer="adam", lr=1e-2, augment="crop", pad=1)
    with jax.enable_x64(True):  # float64: see Net64
        m1, m8 = Net64(), Net64()
        r1 = train(m1, xs, ys, tc, progress=False)
        r8 = train(m8, xs, ys, tc, progress=False, mesh=data_mesh(8))
        assert m8.head.kernel[...].dtype == jnp.float64
    assert len(specs) == 16  # 2 epochs x 4 steps, on one device and then on eight
    assert all(len(sh.device_set) == 1 for sh in specs[:8]), specs[0]
    assert all(sh.spec == P("data") and sh.mesh.size == 8 for sh in specs[8:]), specs[8]
    np.testing.assert_allclose([h["train_loss"] for h in r8.history],
                               [h["train_loss"] for h in r1.history], rtol=RTOL64)
    st = lambda m: jax.tree.map(np.asarray, nnx.state(m, nnx.Param, nnx.BatchStat))
    chex.assert_trees_all_close(st(m8), st(m1), rtol=RTOL64, atol=RTOL64)
    assert len(m8.bn.mean[...].sharding.device_set) == 8
    for bad, msg in [(tc.replace(batch_size=12), "batch_size=12 does not split over the 8 devices"),
                     (tc.replace(batch_size=64), None)]:
        try:
            train(Net(), xs[:4] if msg is None else xs, ys[:4] if msg is None else ys, bad,
                  progress=False, mesh=data_mesh(8))
        except ValueError as e:
            assert (msg or "4 training samples cannot fill one batch on 8 devices") in str(e), e
        else:
            raise AssertionError("no ValueError")

    # the command line: jit-jax train / unlearn --devices
    import json, pathlib, tempfile
    from jit_jax.cli import main
    d = pathlib.Path(tempfile.mkdtemp())
    assert main(["train", "--dataset", "digits", "--model", "mlp", "--epochs", "1",
                 "--out", str(d / "run"), "--no-progress", "--devices", "4"]) == 0
    assert json.loads((d / "run" / "metadata.json").read_text())["train_devices"] == 4
    assert main(["unlearn", "--checkpoint", str(d / "run"), "--forget", "class:3", "--devices",
                 "all", "--set", "num_samples=2", "--out", str(d / "jit")]) == 0
    res = json.loads((d / "jit" / "result.json").read_text())
    assert res["extra"]["devices"] == 8 and res["zero_shot"], res
    print("SHARDING OK")
""")


@pytest.mark.slow  # ~35 s; tests/test_distributed.py runs JiT on a 4-device mesh in the suite
def test_data_parallel_jit_matches_one_device():
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8",
               JAX_PLATFORMS="cpu")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=root,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "SHARDING OK" in proc.stdout, proc.stdout + proc.stderr
