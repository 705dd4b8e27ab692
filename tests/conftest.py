import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TQDM_DISABLE", "1")

# One JAX persistent compilation cache for the whole run, in a fresh folder: the tests build the
# same small models many times over (each CLI command, each fixture builds its functions anew), and
# XLA compilation is most of the suite's time. The controller makes the folder before any jax
# import; pytest-xdist's workers and the tests' subprocesses inherit it through the environment.
# Set JAX_COMPILATION_CACHE_DIR yourself to keep a cache between runs, or
# JIT_JAX_TEST_COMPILATION_CACHE=0 to run without one.
_OWN_CACHE = None
if (os.environ.get("JIT_JAX_TEST_COMPILATION_CACHE", "1") != "0"
        and "JAX_COMPILATION_CACHE_DIR" not in os.environ):
    import tempfile

    _OWN_CACHE = tempfile.mkdtemp(prefix="jit-jax-tests-jax-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _OWN_CACHE
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")


def pytest_unconfigure(config):
    """The controller removes the cache folder it made (workers leave it to the controller)."""
    if _OWN_CACHE is not None and "PYTEST_XDIST_WORKER" not in os.environ:
        import shutil

        shutil.rmtree(_OWN_CACHE, ignore_errors=True)

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="session")
def digits():
    from jit_jax.data import load_dataset

    return load_dataset("digits")


@pytest.fixture(scope="session")
def digits_class3_request(digits):
    """A small MLP trained 3 epochs on digits, and the request to forget class 3 (tests of the
    update loop's methods; a method never modifies the request's model)."""
    from jit_jax import recipes, unlearn
    from jit_jax.data import parse_forget
    from jit_jax.demo import train_original
    from jit_jax.models import ModelSpec

    spec = ModelSpec("mlp", digits.num_classes, digits.image_shape, {"hidden": 32, "depth": 1})
    cfg = recipes.train_recipe(digits.name, "mlp").replace(epochs=3)
    model, _ = train_original(digits, spec, cfg)
    return unlearn.Request(model=model, dataset=digits, split=parse_forget(digits, "class:3"),
                           spec=spec, train_config=cfg, preprocess=recipes.preprocess_fn(digits))


@pytest.fixture(scope="session")
def tiny_images():
    """A small learnable 3-class image problem: class = which quadrant is bright."""
    rng = np.random.default_rng(0)

    def make(n):
        y = rng.integers(0, 3, n)
        x = rng.integers(0, 60, (n, 8, 8, 1)).astype(np.uint8)
        for i, c in enumerate(y):
            r, s = divmod(int(c), 2)
            x[i, r * 4:(r + 1) * 4, s * 4:(s + 1) * 4] += 150
        return x, y.astype(np.int32)

    return make(96), make(48)
