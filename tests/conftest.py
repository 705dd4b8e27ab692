import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("TQDM_DISABLE", "1")

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
