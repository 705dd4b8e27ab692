"""Training: recipes, schedules, determinism, NaN stop, evaluation."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jit_jax.data import normalize
from jit_jax.models import ModelSpec
from jit_jax.train import TrainConfig, evaluate, make_schedule, predict, train


def _data(tiny_images):
    (xtr, ytr), (xte, yte) = tiny_images
    return normalize(xtr, (0.3,), (0.3,)), ytr, normalize(xte, (0.3,), (0.3,)), yte


CFG = TrainConfig(epochs=6, batch_size=16, optimizer="adam", lr=1e-2, weight_decay=0.0,
                  augment="none")


def test_train_learns_and_is_deterministic(tiny_images):
    x, y, xt, yt = _data(tiny_images)
    spec = ModelSpec("cnn", 3, (8, 8, 1), {"width": 8})
    m1, m2 = spec.build(0), spec.build(0)
    r1 = train(m1, x, y, CFG, eval_data=(xt, yt), progress=False)
    train(m2, x, y, CFG, progress=False)
    assert r1.final["test_accuracy"] > 90
    assert len(r1.history) == 6 and r1.history[0]["train_loss"] > r1.history[-1]["train_loss"]
    chex.assert_trees_all_equal(jax.tree.map(np.asarray, nnx.state(m1, nnx.Param)),
                                jax.tree.map(np.asarray, nnx.state(m2, nnx.Param)))
    ev = evaluate(m1, xt, yt)
    assert ev["accuracy"] == pytest.approx(r1.final["test_accuracy"])
    assert r1.compile_time >= 0 and r1.warm_time > 0


@pytest.mark.parametrize("kw", [dict(optimizer="sgd", lr=0.05, schedule="cosine",
                                     augment="crop_flip"),
                                pytest.param(dict(optimizer="adamw", schedule="constant",
                                                  augment="crop"), marks=pytest.mark.slow)])
def test_other_recipes_run(tiny_images, kw):
    x, y, _, _ = _data(tiny_images)
    m = ModelSpec("resnet18", 3, (8, 8, 1), {"width": 4}).build(0)
    r = train(m, x, y, CFG.replace(epochs=1, **kw), progress=False)
    assert np.isfinite(r.final["train_loss"])


def test_schedules():
    # float32 schedules: a few operations each (a division, a cosine, a product, a sum), so
    # rel err <= ~gamma_8 = 5e-7 of the largest term; the tolerances below are far above that
    one = make_schedule(TrainConfig(lr=0.1, schedule="onecycle"), 100)
    assert one(0) == pytest.approx(0.1 / 25, rel=1e-4)
    assert max(float(one(i)) for i in range(100)) == pytest.approx(0.1, rel=1e-3)
    assert float(one(100)) < 1e-4
    cos = make_schedule(TrainConfig(lr=0.2, schedule="cosine", warmup_frac=0.1), 100)
    assert float(cos(10)) == pytest.approx(0.2, rel=1e-3) and float(cos(100)) < 1e-3


def test_nan_stops_training(tiny_images):
    x, y, _, _ = _data(tiny_images)
    m = ModelSpec("cnn", 3, (8, 8, 1), {"width": 8}).build(0)
    with pytest.raises(FloatingPointError, match="diverged"):
        train(m, x, y, CFG.replace(lr=1e30, optimizer="sgd", momentum=0.0), progress=False)


def test_bad_inputs(tiny_images):
    x, y, _, _ = _data(tiny_images)
    m = ModelSpec("cnn", 3, (8, 8, 1), {"width": 8}).build(0)
    bad = x.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        train(m, bad, y, CFG, progress=False)
    with pytest.raises(ValueError, match="samples"):
        train(m, x, y[:-1], CFG, progress=False)
    with pytest.raises(ValueError, match="optimizer"):
        TrainConfig(optimizer="rmsprop")
    with pytest.raises(ValueError, match="unknown training option"):
        TrainConfig.from_dict({"epoch": 3})


class _BNNet(nnx.Module):
    """Linear -> BatchNorm -> relu -> Linear on flattened 8x8x1 images (flax layers promote their
    inputs, so the model runs in float64 once its state is)."""

    def __init__(self):
        rngs = nnx.Rngs(0)
        self.fc1, self.bn, self.fc2 = (nnx.Linear(64, 16, rngs=rngs), nnx.BatchNorm(16, rngs=rngs),
                                       nnx.Linear(16, 3, rngs=rngs))

    def __call__(self, x):
        return self.fc2(nnx.relu(self.bn(self.fc1(x.reshape(x.shape[0], -1)))))


def test_predict_pads_small_sets_to_a_power_of_two(tiny_images, monkeypatch):
    """Sets smaller than a batch share programs: each is padded to the next power of two, at least
    64 (sizes 1-64 run one 64-image program, 65-96 a 128-image one), larger sets run full batches;
    the padding never shows."""
    from jit_jax import train as train_mod

    x, _, _, _ = _data(tiny_images)
    assert len(x) == 96
    m = ModelSpec("cnn", 3, (8, 8, 1), {"width": 4}).build(0)
    shapes, forward = [], train_mod._forward
    monkeypatch.setattr(train_mod, "_forward",
                        lambda model, xb: shapes.append(xb.shape[0]) or forward(model, xb))
    assert predict(m, x[:20], batch_size=500).shape == (20, 3)
    for n in (1, 5, 64, 65, 96):
        assert predict(m, x[:n], batch_size=500).shape == (n, 3)
    # the same 64-image program, each sample's row alone (eval mode): the padding rows change nothing
    np.testing.assert_array_equal(predict(m, x[:5], batch_size=500),
                                  predict(m, x[:64], batch_size=500)[:5])
    assert predict(m, x[:20], batch_size=8).shape == (20, 3)
    assert shapes == [64, 64, 64, 64, 128, 128, 64, 64, 8, 8, 8]


def test_predict_restores_mode_and_pads(tiny_images):
    x, _, _, _ = _data(tiny_images)
    m = ModelSpec("resnet18", 3, (8, 8, 1), {"width": 4}).build(0)
    m.train()
    assert predict(m, x[:7], batch_size=4).shape == (7, 3)
    assert not m.stem_bn.use_running_average  # train mode restored
    # Batches of 4 (one padded) and of 7 are different programs: the same per-sample maths, sums
    # possibly in another order. Compared in float64 (x64 on, state cast; the float32 inputs are
    # promoted): rounding u = 2^-53 through < 100 operations, far below 1e-10.
    net = _BNNet()
    net.bn.mean.set_value(jnp.linspace(-0.5, 0.5, 16))  # non-trivial running statistics
    net.bn.var.set_value(jnp.linspace(0.5, 2.0, 16))
    net.train()
    with jax.enable_x64(True):
        for kind in (nnx.Param, nnx.BatchStat):
            nnx.update(net, jax.tree.map(lambda v: jnp.asarray(v, jnp.float64),
                                         nnx.state(net, kind)))
        a = predict(net, x[:7], batch_size=4)
        b = predict(net, x[:7], batch_size=7)
    assert a.shape == (7, 3) and a.dtype == np.float64
    np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10 * np.abs(b).max())
    assert not net.bn.use_running_average  # train mode restored
    # predict ran in eval mode (running statistics): sample 0 alone, eval mode, by hand
    net.eval()
    with jax.enable_x64(True):
        c = np.asarray(net(jnp.asarray(x[:1], jnp.float64)))
    np.testing.assert_allclose(a[:1], c, rtol=1e-10, atol=1e-10 * np.abs(c).max())
