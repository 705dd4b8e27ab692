"""Checkpoints: bit-exact round trip with BatchNorm statistics, metadata, errors, no overwrite."""

import json

import chex
import jax
import numpy as np
import pytest
from flax import nnx

from jit_jax import checkpoint
from jit_jax.models import ModelSpec


@pytest.fixture
def bn_model():
    spec = ModelSpec("resnet18", 3, (8, 8, 1), {"width": 4})
    m = spec.build(0)
    m.train()
    m(np.random.default_rng(0).normal(size=(4, 8, 8, 1)).astype(np.float32))  # move BN stats
    m.eval()
    return spec, m


def _arrays(m):
    return jax.tree.map(np.asarray, nnx.state(m, nnx.Param, nnx.BatchStat))


def test_round_trip_is_bit_exact(tmp_path, bn_model):
    spec, m = bn_model
    meta = {"dataset": {"spec": "digits"}, "class_names": ["a", "b", "c"], "metrics": {"acc": 1.5},
            "train_config": {"epochs": 2}}
    checkpoint.save(tmp_path / "run", m, spec, meta)
    m2, meta2 = checkpoint.restore(tmp_path / "run")
    chex.assert_trees_all_equal(_arrays(m2), _arrays(m))
    x = np.ones((2, 8, 8, 1), np.float32)
    np.testing.assert_array_equal(np.asarray(m2(x)), np.asarray(m(x)))
    assert meta2["class_names"] == ["a", "b", "c"] and meta2["metrics"] == {"acc": 1.5}
    assert ModelSpec.from_dict(meta2["model"]) == spec
    # BN statistics really were non-trivial (not the init values).
    assert not np.allclose(np.asarray(m2.stem_bn.mean[...]), 0.0)


def test_model_without_batchnorm(tmp_path):
    spec = ModelSpec("cnn", 10, (8, 8, 1), {"width": 4})
    m = spec.build(3)
    checkpoint.save(tmp_path / "c", m, spec, {})
    m2, _ = checkpoint.restore(tmp_path / "c")
    chex.assert_trees_all_equal(_arrays(m2), _arrays(m))


def test_never_overwrites(tmp_path, bn_model):
    spec, m = bn_model
    checkpoint.save(tmp_path / "run", m, spec, {"v": 1})
    with pytest.raises(FileExistsError, match="already exists"):
        checkpoint.save(tmp_path / "run", m, spec, {"v": 2})
    assert checkpoint.load_metadata(tmp_path / "run")["v"] == 1
    checkpoint.save(tmp_path / "run", m, spec, {"v": 3}, overwrite=True)
    assert checkpoint.load_metadata(tmp_path / "run")["v"] == 3
    assert [p.name for p in tmp_path.iterdir()] == ["run"]  # no temporary leftovers


def test_missing_and_corrupt(tmp_path, bn_model):
    spec, m = bn_model
    with pytest.raises(checkpoint.CheckpointError, match="does not exist"):
        checkpoint.restore(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(checkpoint.CheckpointError, match="metadata.json is missing"):
        checkpoint.restore(tmp_path / "empty")
    checkpoint.save(tmp_path / "run", m, spec, {})
    (tmp_path / "run" / "metadata.json").write_text("{not json")
    with pytest.raises(checkpoint.CheckpointError, match="not valid JSON"):
        checkpoint.restore(tmp_path / "run")
    checkpoint.save(tmp_path / "run2", m, spec, {})
    for f in (tmp_path / "run2" / "state").rglob("*"):
        if f.is_file() and f.stat().st_size > 0 and "metadata" not in f.name:
            f.write_bytes(b"garbage")
    with pytest.raises(checkpoint.CheckpointError, match="corrupt"):
        checkpoint.restore(tmp_path / "run2")
    checkpoint.save(tmp_path / "run3", m, spec, {})
    meta = json.loads((tmp_path / "run3" / "metadata.json").read_text())
    meta["model"]["options"]["width"] = 8  # shapes no longer match the saved arrays
    (tmp_path / "run3" / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(checkpoint.CheckpointError):
        checkpoint.restore(tmp_path / "run3")
