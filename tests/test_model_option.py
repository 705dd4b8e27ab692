"""experiments/paper/model_option.py: a checkpoint copied with a parameter-free model option
changed (the dropout probe of the Table 2 EMMN row)."""

import importlib.util
import json
from pathlib import Path

import jax
import numpy as np
import pytest
from flax import nnx

from jit_jax import checkpoint
from jit_jax.models import ModelSpec

PATH = Path(__file__).resolve().parents[1] / "experiments" / "paper" / "model_option.py"


def _tool():
    spec = importlib.util.spec_from_file_location("model_option", PATH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _params(model):
    return jax.tree.leaves(nnx.state(model, nnx.Param))


def test_the_copy_keeps_the_weights_and_changes_only_the_option(tmp_path):
    tool = _tool()
    spec = ModelSpec("vgg11", 5, (32, 32, 3), {"width": 4})
    src = checkpoint.save(tmp_path / "src", spec.build(seed=3), spec, {"seed": 3, "note": "x"})
    before = sorted(p.name for p in tmp_path.iterdir())
    dst = tool.derive(src, tmp_path / "dst", {"dropout": 0.5})
    a, meta_a = checkpoint.restore(src)
    b, meta_b = checkpoint.restore(dst)
    assert meta_b["model"]["options"] == {"dropout": 0.5, "width": 4}
    assert meta_b["note"] == "x" and meta_b["derived_from"]["model_options"] == {"dropout": 0.5}
    assert b.drop is not None and a.drop is None
    for x, y in zip(_params(a), _params(b), strict=True):
        np.testing.assert_array_equal(x, y)
    x = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_array_equal(a(x), b(x))  # both in eval mode: dropout off
    b.train()
    assert not np.array_equal(b(x), b(x))  # train mode: dropout on
    assert json.loads((Path(src) / "metadata.json").read_text())["model"]["options"] == {
        "dropout": 0.0, "width": 4}  # the source is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(before + ["dst"])


def test_options_that_change_the_parameters_and_existing_destinations_are_refused(tmp_path):
    tool = _tool()
    spec = ModelSpec("vgg11", 5, (32, 32, 3), {"width": 4})
    src = checkpoint.save(tmp_path / "src", spec.build(), spec)
    with pytest.raises(ValueError, match=r"width.*changes the model's Param arrays"):
        tool.derive(src, tmp_path / "dst", {"width": 8})
    assert not (tmp_path / "dst").exists()
    with pytest.raises(ValueError, match="no option to change"):
        tool.derive(src, tmp_path / "dst", {})
    (tmp_path / "taken").mkdir()
    with pytest.raises(FileExistsError, match="taken already exists"):
        tool.derive(src, tmp_path / "taken", {"dropout": 0.5})
    with pytest.raises(SystemExit):
        tool.main([str(src), str(tmp_path / "d2"), "--set", "colour=red"])
    assert not (tmp_path / "d2").exists()
