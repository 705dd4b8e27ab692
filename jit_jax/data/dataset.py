"""The in-memory dataset every other part of jit-jax consumes.

A :class:`Dataset` is plain numpy arrays: uint8 NHWC images (greyscale has C=1), integer labels,
class names and the per-channel normalisation statistics (in the [0, 1] pixel scale). Models always
see ``normalize(images)``: float32, ``(x / 255 - mean) / std``. JiT's noise lives in that normalised
space, as in the authors' code.

Some datasets carry two label granularities (CIFAR-100: 100 fine classes, 20 coarse super-classes).
``y_*`` always holds the *fine* labels; ``y_*_coarse`` the coarse ones when present; ``target`` says
which of the two the model is trained and scored on (``"coarse"`` for CIFAR-20).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    name: str
    x_train: np.ndarray  # (n, H, W, C) uint8
    y_train: np.ndarray  # (n,) int32, fine labels
    x_test: np.ndarray
    y_test: np.ndarray
    class_names: tuple[str, ...]  # fine class names, index = label
    mean: tuple[float, ...]  # per channel, [0, 1] pixel scale
    std: tuple[float, ...]
    y_train_coarse: np.ndarray | None = None
    y_test_coarse: np.ndarray | None = None
    coarse_names: tuple[str, ...] | None = None
    target: str = "fine"  # "fine" or "coarse": which labels the model predicts

    def __post_init__(self):
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.ndim != 4:
                raise ValueError(
                    f"{self.name}: x_{split} must be NHWC (4 dims), got shape {x.shape}"
                )
            if x.dtype != np.uint8:
                raise ValueError(f"{self.name}: x_{split} must be uint8, got {x.dtype}")
            if y.shape != (x.shape[0],):
                raise ValueError(
                    f"{self.name}: y_{split} has shape {y.shape}, expected ({x.shape[0]},)"
                )
            yc = getattr(self, f"y_{split}_coarse")
            if yc is not None and yc.shape != y.shape:
                raise ValueError(f"{self.name}: y_{split}_coarse shape {yc.shape} != {y.shape}")
        if self.x_train.shape[1:] != self.x_test.shape[1:]:
            raise ValueError(
                f"{self.name}: train images {self.x_train.shape[1:]} and test images "
                f"{self.x_test.shape[1:]} differ in shape"
            )
        if self.target not in ("fine", "coarse"):
            raise ValueError(f"target must be 'fine' or 'coarse', got {self.target!r}")
        if self.target == "coarse" and self.y_train_coarse is None:
            raise ValueError(f"{self.name}: target='coarse' but the dataset has no coarse labels")
        c = self.x_train.shape[-1]
        if len(self.mean) != c or len(self.std) != c:
            raise ValueError(
                f"{self.name}: mean/std need {c} channel values, got {self.mean}/{self.std}"
            )
        for key, names in (("y_train", self.class_names), ("y_test", self.class_names),
                           ("y_train_coarse", self.coarse_names),
                           ("y_test_coarse", self.coarse_names)):
            y = getattr(self, key)
            if y is None or not len(y):
                continue
            if not np.issubdtype(y.dtype, np.integer):
                raise ValueError(f"{self.name}: {key} must hold integer labels, got {y.dtype}")
            if names is not None and (y.min() < 0 or y.max() >= len(names)):
                raise ValueError(
                    f"{self.name}: {key} labels must lie in [0, {len(names)}) (one per class "
                    f"name), got [{y.min()}, {y.max()}]"
                )

    # -- views ---------------------------------------------------------------------------------
    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.x_train.shape[1:])  # type: ignore[return-value]

    @property
    def target_names(self) -> tuple[str, ...]:
        return self.coarse_names if self.target == "coarse" else self.class_names  # type: ignore

    @property
    def num_classes(self) -> int:
        return len(self.target_names)

    @property
    def train_targets(self) -> np.ndarray:
        return self.y_train_coarse if self.target == "coarse" else self.y_train  # type: ignore

    @property
    def test_targets(self) -> np.ndarray:
        return self.y_test_coarse if self.target == "coarse" else self.y_test  # type: ignore

    def with_target(self, target: str) -> Dataset:
        return dataclasses.replace(self, target=target)

    def class_index(self, name_or_index: str | int, *, coarse: bool = False) -> int:
        """Resolve a class given by name or index; raises with the accepted values."""
        names = self.coarse_names if coarse else self.class_names
        if names is None:
            raise ValueError(f"{self.name} has no coarse labels")
        if isinstance(name_or_index, (int, np.integer)) or str(name_or_index).lstrip("-").isdigit():
            idx = int(name_or_index)
            if not 0 <= idx < len(names):
                listed = f" ({', '.join(names)})" if len(names) <= 20 else ""
                raise ValueError(
                    f"class index {idx} is out of range for {self.name}: "
                    f"accepted 0..{len(names) - 1}{listed}"
                )
            return idx
        if name_or_index in names:
            return names.index(name_or_index)
        raise ValueError(
            f"unknown class {name_or_index!r} for {self.name}; accepted names: {', '.join(names)}"
        )

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={self.x_train.shape}, test={self.x_test.shape}, "
            f"classes={self.num_classes}, target={self.target!r})"
        )


def normalize(x: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 NHWC -> float32 ``(x/255 - mean)/std`` (numpy; jit code: ``transforms.normalize``)."""
    x = np.asarray(x, dtype=np.float32) / 255.0
    return (x - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)


def channel_stats(x: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 NHWC images, in the [0, 1] scale (std floored at 1e-3)."""
    xf = x.reshape(-1, x.shape[-1]).astype(np.float64) / 255.0
    return tuple(float(v) for v in xf.mean(0)), tuple(float(max(v, 1e-3)) for v in xf.std(0))
