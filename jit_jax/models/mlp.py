"""A multilayer perceptron on flattened inputs: the digits model for unlearning experiments.

flatten - [dense(hidden) - ReLU] x depth - dense(num_classes). No BatchNorm, no dropout.

Why it exists: on sklearn's digits, JiT unlearns an MLP far more selectively than the small CNN
(global-average-pooled features): forgetting a class with the CNN costs 20-40 points of D_r accuracy
before D_f reaches 0, against under 2 points with this MLP (measurements in docs/jit-tuning.md).
"""

from __future__ import annotations

import math

import jax
from flax import nnx

from jit_jax.models.layers import dense


class MLP(nnx.Module):
    def __init__(
        self,
        num_classes: int,
        input_shape: tuple[int, int, int],
        *,
        hidden: int = 256,
        depth: int = 2,
        rngs: nnx.Rngs,
    ):
        d = math.prod(input_shape)
        dims = [d] + [hidden] * depth
        self.layers = nnx.List([dense(a, b, rngs=rngs) for a, b in zip(dims[:-1], dims[1:], strict=True)])
        self.head = dense(dims[-1], num_classes, rngs=rngs)

    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        for layer in self.layers:
            x = jax.nn.relu(layer(x))
        return self.head(x)
