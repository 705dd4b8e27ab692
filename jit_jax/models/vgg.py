"""VGG11 / VGG16 (configs A and D), with or without BatchNorm, and the authors' torchvision VGG11.

Feature extractor: 3x3 pad-1 convolutions with bias (+ BatchNorm for the ``_bn`` variants), ReLU,
2x2 max-pools; channel counts are the standard ones times ``width / 64``.

Heads:
- ``cifar`` (``vgg11``, ``vgg16``, ``vgg11_bn``, ``vgg16_bn``): global average pool over what is
  left after the five pools, then dense(num_classes). At 32x32 input the map is 1x1, so this is the
  usual CIFAR VGG "flatten 512 -> dense"; for larger inputs (any size >= 32) it averages the
  remaining map instead of flattening it, so the parameter count does not depend on the input size.
  ``dropout`` (default 0: none) puts a dropout layer between the pool and the dense layer, active
  in train mode as the torchvision head's are (the authors run their unlearning methods in train
  mode).
- ``torchvision`` (``vgg11_torchvision``, the model the JiT code calls "VGG16"): torch's
  AdaptiveAvgPool2d((7, 7)) (at 32x32 the 1x1 map is replicated to 7x7), flatten, Linear(49*C,
  4096) - ReLU - Dropout(0.5) - Linear(4096, 4096) - ReLU - Dropout(0.5) - Linear(4096, 1000), then
  the extra Linear(1000, num_classes) the authors add. The hidden size is ``64 * width`` (4096 at
  the default width 64); 132,963,436 parameters for 100 classes. The flatten is in NHWC order
  (torch flattens NCHW): porting torch weights would need the first Linear's rows permuted.
  Initialisation follows torchvision (conv He-normal fan-out, Linear N(0, 0.01), zero biases; the
  extra Linear has torch's default uniform init).

The last two convolutions see a 2x2 map at 32x32 input; :class:`~jit_jax.models.layers.Conv` runs
them (and any conv at spatial size <= 4) as im2col matmuls, which XLA:CPU runs ~100x faster.
"""

from __future__ import annotations

import jax
from flax import nnx

from jit_jax.models import initializers as init
from jit_jax.models import layers
from jit_jax.models.layers import Conv, adaptive_avg_pool, dense, global_avg_pool, max_pool

CONFIGS = {
    "A": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "D": (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"),
}
MIN_INPUT = 32  # five 2x2 pools


class ConvBNReLU(nnx.Module):
    def __init__(self, in_ch: int, out_ch: int, *, batch_norm_: bool, rngs: nnx.Rngs):
        self.conv = Conv(in_ch, out_ch, 3, padding=1, use_bias=True, rngs=rngs)
        self.bn = layers.batch_norm(out_ch, rngs) if batch_norm_ else nnx.data(None)

    def __call__(self, x):
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return jax.nn.relu(x)


class VGG(nnx.Module):
    def __init__(
        self,
        num_classes: int,
        input_shape: tuple[int, int, int],
        *,
        config: str = "A",
        batch_norm: bool = False,
        head: str = "cifar",
        width: int = 64,
        dropout: float | None = None,
        rngs: nnx.Rngs,
    ):
        if config not in CONFIGS:
            raise ValueError(f"VGG config must be one of {sorted(CONFIGS)}, got {config!r}")
        if head not in ("cifar", "torchvision"):
            raise ValueError(f"VGG head must be 'cifar' or 'torchvision', got {head!r}")
        self.head_type = head
        layers = []
        in_ch = input_shape[2]
        for v in CONFIGS[config]:
            if v == "M":
                layers.append("M")
            else:
                out_ch = max(1, v * width // 64)
                layers.append(ConvBNReLU(in_ch, out_ch, batch_norm_=batch_norm, rngs=rngs))
                in_ch = out_ch
        # Strings are static; the conv blocks are data. Keep the plan apart from the modules.
        self.plan = tuple(v == "M" for v in layers)
        self.features = nnx.List([m for m in layers if m != "M"])
        if dropout is None:  # the heads' defaults: none before the CIFAR head's one dense layer
            dropout = 0.0 if head == "cifar" else 0.5
        if head == "cifar":
            self.classifier = dense(in_ch, num_classes, rngs=rngs)
            self.drop = nnx.Dropout(dropout, rngs=rngs) if dropout > 0 else nnx.data(None)
        else:
            hidden = 64 * width
            lin = dict(kernel_init=init.normal(0.01), rngs=rngs)
            self.fc1 = dense(in_ch * 49, hidden, **lin)
            self.drop1 = nnx.Dropout(dropout, rngs=rngs)
            self.fc2 = dense(hidden, hidden, **lin)
            self.drop2 = nnx.Dropout(dropout, rngs=rngs)
            self.fc3 = dense(hidden, 1000, **lin)
            self.fc = dense(
                1000, num_classes,
                kernel_init=init.torch_linear(1000), bias_init=init.torch_linear(1000), rngs=rngs,
            )

    def __call__(self, x):
        convs = iter(self.features)
        for is_pool in self.plan:
            x = max_pool(x, 2, 2) if is_pool else next(convs)(x)
        if self.head_type == "cifar":
            x = global_avg_pool(x)
            return self.classifier(x if self.drop is None else self.drop(x))
        x = adaptive_avg_pool(x, (7, 7))
        x = x.reshape(x.shape[0], -1)
        x = self.drop1(jax.nn.relu(self.fc1(x)))
        x = self.drop2(jax.nn.relu(self.fc2(x)))
        return self.fc(self.fc3(x))
