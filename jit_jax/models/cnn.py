"""A small CNN for the digits data set and fast tests.

conv3x3(w) - ReLU - conv3x3(w) - ReLU - maxpool 2x2 - conv3x3(2w) - ReLU - global average pool -
dense(num_classes). Convolutions have a bias and no BatchNorm (JiT works best on BN-free models).
With ``width=32`` it has 28,714 parameters on 8x8x1 inputs (29,290 on 3 channels); it works on any
input of at least 2x2.
"""

from __future__ import annotations

import jax
from flax import nnx

from jit_jax.models.layers import Conv, dense, global_avg_pool, max_pool


class CNN(nnx.Module):
    def __init__(
        self,
        num_classes: int,
        input_shape: tuple[int, int, int],
        *,
        width: int = 32,
        rngs: nnx.Rngs,
    ):
        c = input_shape[2]
        self.conv1 = Conv(c, width, 3, padding=1, rngs=rngs)
        self.conv2 = Conv(width, width, 3, padding=1, rngs=rngs)
        self.conv3 = Conv(width, 2 * width, 3, padding=1, rngs=rngs)
        self.head = dense(2 * width, num_classes, rngs=rngs)

    def __call__(self, x):
        x = jax.nn.relu(self.conv1(x))
        x = jax.nn.relu(self.conv2(x))
        x = max_pool(x, 2, 2)
        x = jax.nn.relu(self.conv3(x))
        return self.head(global_avg_pool(x))


class SimpleCNN(nnx.Module):
    """The CNN of the JiT authors' toy notebook: two [conv3x3 - ReLU - maxpool 2x2] blocks
    (``width`` and ``2 * width`` channels), flatten, dense(``hidden``) - ReLU - dense(num_classes).
    Needs inputs of at least 4x4 (two 2x2 pools)."""

    def __init__(
        self,
        num_classes: int,
        input_shape: tuple[int, int, int],
        *,
        width: int = 32,
        hidden: int = 128,
        rngs: nnx.Rngs,
    ):
        h, w, c = input_shape
        self.conv1 = Conv(c, width, 3, padding=1, rngs=rngs)
        self.conv2 = Conv(width, 2 * width, 3, padding=1, rngs=rngs)
        self.fc = dense((h // 4) * (w // 4) * 2 * width, hidden, rngs=rngs)
        self.head = dense(hidden, num_classes, rngs=rngs)

    def __call__(self, x):
        x = max_pool(jax.nn.relu(self.conv1(x)), 2, 2)
        x = max_pool(jax.nn.relu(self.conv2(x)), 2, 2)
        x = jax.nn.relu(self.fc(x.reshape(x.shape[0], -1)))
        return self.head(x)
