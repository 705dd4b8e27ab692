"""Small ``npz:`` datasets written by the tests (shared by test_data and test_bad_input)."""

from __future__ import annotations

import numpy as np


def npz_arrays(n_train=6, n_test=3, shape=(4, 4, 1), k=3, seed=0) -> dict:
    """Random uint8 images with labels ``0..k-1`` in turn, in the ``npz:`` schema."""
    rng = np.random.default_rng(seed)
    return dict(
        x_train=rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
        y_train=np.arange(n_train) % k,
        x_test=rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
        y_test=np.arange(n_test) % k,
    )


def write_npz(path, **arrays):
    """``np.savez(path, **arrays)``; returns ``path``."""
    np.savez(path, **arrays)
    return path
