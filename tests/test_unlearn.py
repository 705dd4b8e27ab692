"""The method registry: BSLN, RTRN, the authors' head-only retrain, JiT defaults."""

import chex
import jax
import numpy as np
import pytest
from flax import nnx

from jit_jax import unlearn
from jit_jax.data import parse_forget
from jit_jax.models import ModelSpec
from jit_jax.train import TrainConfig
from jit_jax.unlearn.baselines import classifier_head, reset_head


def _params(m):
    return jax.tree.map(np.asarray, nnx.state(m, nnx.Param))


def test_reset_head_changes_only_the_head():
    m = ModelSpec("resnet18", 3, (8, 8, 1), {"width": 4}).build(0)
    r = reset_head(m, seed=5)
    assert classifier_head(m) is m.head
    assert not np.allclose(np.asarray(r.head.kernel[...]), np.asarray(m.head.kernel[...]))
    bound = 1 / np.sqrt(m.head.kernel.shape[0])
    assert np.abs(np.asarray(r.head.kernel[...])).max() <= bound
    body = lambda model: {k: v for k, v in _params(model).items() if k != "head"}  # noqa: E731
    chex.assert_trees_all_equal(body(r), body(m))
    chex.assert_trees_all_equal(_params(m), _params(ModelSpec("resnet18", 3, (8, 8, 1),
                                                              {"width": 4}).build(0)))


@pytest.fixture(scope="module")
def request_digits(digits):
    spec = ModelSpec("mlp", 10, digits.image_shape, {"hidden": 32})
    model = spec.build(0)
    cfg = TrainConfig(epochs=2, batch_size=64, optimizer="adam", lr=1e-2, weight_decay=0.0,
                      augment="none")
    split = parse_forget(digits, "class:3")
    return unlearn.Request(model, digits, split, spec, cfg, seed=1)


def test_registry_methods(request_digits):
    req = request_digits
    assert set(unlearn.available()) >= {"bsln", "rtrn", "rtrn_head", "jit", "fntn", "amn", "ssd",
                                        "bt", "unsir", "emmn", "scrub", "bdsh"}
    b = unlearn.run("bsln", req)
    chex.assert_trees_all_equal(_params(b.model), _params(req.model))
    assert b.model is not req.model and not b.zero_shot
    r = unlearn.run("rtrn", req)
    assert r.runtime > 0 and r.log["config"]["seed"] == 1 and len(r.log["history"]) == 2
    h = unlearn.run("rtrn_head", req, epochs=1)
    assert len(h.log["history"]) == 1
    j = unlearn.run("jit", req, num_samples=2)
    assert j.zero_shot and j.log["config"]["num_samples"] == 2
    # digits defaults from jit_jax.recipes apply unless overridden
    from jit_jax import recipes

    for k, v in recipes.jit_defaults("digits", "mlp", "class").items():
        assert j.log["config"][k] == v
    with pytest.raises(ValueError, match="unknown method 'nope'; accepted: bsln, rtrn"):
        unlearn.run("nope", req)
    with pytest.raises(ValueError, match="takes no options"):
        unlearn.run("bsln", req, lr=1.0)
    with pytest.raises(ValueError, match="unknown JiT option"):
        unlearn.run("jit", req, sigmaa=1.0)
