"""Data: sources -> in-memory arrays -> forget/retain splits -> batch transforms.

``load_dataset`` reads (the only I/O in this package); everything else is pure.
``normalize`` here is the numpy version; ``transforms.normalize`` is the jnp one for jitted code.
"""

from jit_jax.data import transforms
from jit_jax.data.dataset import Dataset, channel_stats, normalize
from jit_jax.data.sources import (
    CIFAR10_NAMES,
    CIFAR10_SUPERCLASSES,
    CIFAR100_COARSE_NAMES,
    CIFAR100_FINE_NAMES,
    CIFAR100_SUPERCLASSES,
    CIFAR_MEAN,
    CIFAR_STD,
    DATASETS,
    datasets_help,
    group_classes,
    holdout,
    load_dataset,
    load_digits,
    load_folder,
    load_npz,
    load_tfds,
)
from jit_jax.data.splits import (
    FORGET_SPECS,
    EvalSet,
    ForgetSplit,
    evaluation_sets,
    forget_class,
    forget_random,
    forget_subclass,
    fraction_count,
    parse_forget,
)
from jit_jax.data.transforms import batches, random_crop_flip, resize

__all__ = [
    "CIFAR10_NAMES",
    "CIFAR10_SUPERCLASSES",
    "CIFAR100_COARSE_NAMES",
    "CIFAR100_FINE_NAMES",
    "CIFAR100_SUPERCLASSES",
    "CIFAR_MEAN",
    "CIFAR_STD",
    "DATASETS",
    "FORGET_SPECS",
    "Dataset",
    "EvalSet",
    "ForgetSplit",
    "batches",
    "channel_stats",
    "datasets_help",
    "evaluation_sets",
    "forget_class",
    "forget_random",
    "forget_subclass",
    "fraction_count",
    "group_classes",
    "holdout",
    "load_dataset",
    "load_digits",
    "load_folder",
    "load_npz",
    "load_tfds",
    "normalize",
    "parse_forget",
    "random_crop_flip",
    "resize",
    "transforms",
]
