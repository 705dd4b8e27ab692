"""ResNet18 with BasicBlocks, CIFAR or ImageNet stem.

- ``stem="cifar"`` (default; the CIFAR ResNet18 of the SSD/JiT code, weiaicunzai/pytorch-cifar100):
  conv3x3 s1 p1 (w) + BN + ReLU, no max-pool.
- ``stem="imagenet"`` (torchvision): conv7x7 s2 p3 (w) + BN + ReLU + maxpool3x3 s2 p1.

Then four stages of two BasicBlocks with widths w, 2w, 4w, 8w and strides 1, 2, 2, 2, a 1x1
conv + BN projection shortcut where the shape changes, global average pooling and a dense head.
Convolutions have no bias (BN follows). With ``width=64``: 11,173,962 parameters for 10 classes,
11,220,132 for 100 (BatchNorm scale/bias counted, running statistics not).
"""

from __future__ import annotations

import jax
from flax import nnx

from jit_jax.models.layers import Conv, batch_norm, dense, global_avg_pool, max_pool


class BasicBlock(nnx.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int, *, rngs: nnx.Rngs):
        self.conv1 = Conv(in_ch, out_ch, 3, strides=stride, padding=1, use_bias=False, rngs=rngs)
        self.bn1 = batch_norm(out_ch, rngs)
        self.conv2 = Conv(out_ch, out_ch, 3, padding=1, use_bias=False, rngs=rngs)
        self.bn2 = batch_norm(out_ch, rngs)
        if stride != 1 or in_ch != out_ch:
            self.proj_conv = Conv(in_ch, out_ch, 1, strides=stride, use_bias=False, rngs=rngs)
            self.proj_bn = batch_norm(out_ch, rngs)
        else:
            self.proj_conv = nnx.data(None)
            self.proj_bn = nnx.data(None)

    def __call__(self, x):
        y = jax.nn.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        shortcut = x if self.proj_conv is None else self.proj_bn(self.proj_conv(x))
        return jax.nn.relu(y + shortcut)


class ResNet18(nnx.Module):
    STAGES = (2, 2, 2, 2)

    def __init__(
        self,
        num_classes: int,
        input_shape: tuple[int, int, int],
        *,
        width: int = 64,
        stem: str = "cifar",
        rngs: nnx.Rngs,
    ):
        if stem not in ("cifar", "imagenet"):
            raise ValueError(f"stem must be 'cifar' or 'imagenet', got {stem!r}")
        c = input_shape[2]
        self.stem_type = stem
        if stem == "cifar":
            self.stem_conv = Conv(c, width, 3, padding=1, use_bias=False, rngs=rngs)
        else:
            self.stem_conv = Conv(c, width, 7, strides=2, padding=3, use_bias=False, rngs=rngs)
        self.stem_bn = batch_norm(width, rngs)
        blocks = []
        in_ch = width
        for i, n in enumerate(self.STAGES):
            out_ch = width * 2**i
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(BasicBlock(in_ch, out_ch, stride, rngs=rngs))
                in_ch = out_ch
        self.blocks = nnx.List(blocks)
        self.head = dense(in_ch, num_classes, rngs=rngs)

    def __call__(self, x):
        x = jax.nn.relu(self.stem_bn(self.stem_conv(x)))
        if self.stem_type == "imagenet":
            x = max_pool(x, 3, 2, padding=1)
        for block in self.blocks:
            x = block(x)
        return self.head(global_avg_pool(x))
