"""Shared pieces of the paper configs: the config record, the paper's numbers, tiny data.

A config (``experiments/paper/<name>.py``) has ``get_config(scale)`` returning a :class:`Config`
for ``scale`` in :data:`SCALES`:

- ``paper``: the paper's setting (full data, the authors' model and training length);
- ``cpu``: the CPU twin (a smaller width, a class-balanced subset, fewer epochs), sized to run on
  2 cores in at most 45 minutes;
- ``gpu``: the paper's data and model with fewer epochs (:data:`GPU_EPOCHS`), for
  ``experiments/paper/gpu.sh`` on one H200-class GPU in about 12 minutes;
- ``tiny``: a few generated images and width-4 models, for the smoke test (seconds).

The paper's numbers come from ``paper_tables.csv`` here (every row of the paper's Tables 1-4:
Foster et al., "An Information Theoretic Approach to Machine Unlearning", TMLR 2025), carried as
data.
"""

from __future__ import annotations

import csv
import dataclasses
import math
from pathlib import Path

import numpy as np

SCALES = ("tiny", "cpu", "gpu", "paper")
#: training epochs at the ``gpu`` scale, per model. Not measured on a GPU yet: sized from the one
#: GPU timing of training we have (ResNet18 width 64, 15 epochs on 9,000 CIFAR images in 40 s on
#: an H200 with compilation, about 0.3 ms an image an epoch), so about 15 s an epoch on 50,000
#: images for a model of that cost; the original and three retrainings then fit table 2's VGG11 in
#: about 6 minutes. ViT-B/16 fine-tunes from pretrained weights (``--vit-weights``) at 224x224.
GPU_EPOCHS = {"vgg11_torchvision": 6, "vit_b16": 1}
HERE = Path(__file__).resolve().parent
#: the paper's method tags -> this project's method names
METHOD_NAMES = {"BSLN": "bsln", "RTRN": "rtrn", "FNTN": "fntn", "AMN": "amn", "SSD": "ssd",
                "BT": "bt", "UNSIR": "unsir", "EMMN": "emmn", "SCRUB": "scrub", "BDSH": "bdsh",
                "GKT": "gkt", "OURS": "jit"}


@dataclasses.dataclass(frozen=True)
class Config:
    name: str  # the config module's name
    table: str  # the paper's (sub-)table key in paper_tables.csv, e.g. "table2b"
    scale: str
    task: str  # class | subclass | random
    forget: str  # the forget request, e.g. "class:rocket"
    dataset: str  # a dataset spec ("npz:{data}" takes --data), or "tiny:<kind>"
    model: str
    model_opts: dict = dataclasses.field(default_factory=dict)
    data_opts: dict = dataclasses.field(default_factory=dict)  # jit-jax train --data-opt
    load_opts: dict = dataclasses.field(default_factory=dict)  # reading a folder: image_size, ...
    train: dict = dataclasses.field(default_factory=dict)  # jit-jax train flags (epochs, lr, ...)
    per_class: int | None = None  # class-balanced subset: training images per class
    test_per_class: int | None = None
    seeds: tuple[int, ...] = (0, 1, 2)
    methods: tuple[str, ...] | None = None  # None: the table's methods (paper_tables.csv)
    paper_setting: bool = True  # the authors' method settings (jit-jax unlearn --paper)
    #: the paper's training of the original: epochs, and training images (None: the same data
    #: as this run, e.g. a faces folder used whole). They size GKT at the smaller scales
    #: (:func:`gkt_rounds`).
    paper_epochs: int | None = None
    paper_train_images: int | None = None
    #: further method options, ``{method: {key: value}}`` (jit-jax unlearn --set), over --paper
    method_sets: dict = dataclasses.field(default_factory=dict)

    def replace(self, **kw) -> Config:
        return dataclasses.replace(self, **kw)

    def method_list(self) -> list[str]:
        if self.methods is not None:
            return list(self.methods)
        rows = paper_rows(self.table)
        order = list(METHOD_NAMES.values())
        return sorted(rows, key=order.index)


def paper_rows(table: str) -> dict[str, dict]:
    """``{method: row}`` of the paper's sub-table ``table`` (floats for the numbers)."""
    out = {}
    with open(HERE / "paper_tables.csv") as f:
        for row in csv.DictReader(f):
            if row["table"] != table:
                continue
            rec = dict(row)
            for k in ("retain_acc", "retain_acc_sd", "forget_acc", "forget_acc_sd", "mia",
                      "mia_sd"):
                rec[k] = float(row[k])
            out[METHOD_NAMES[row["method"]]] = rec
    if not out:
        raise ValueError(f"no rows for {table!r} in paper_tables.csv")
    return out


def tiny_dataset(kind: str, seed: int = 0) -> dict[str, np.ndarray]:
    """A generated stand-in with the structure a paper task needs (npz arrays): 4 fine classes of
    8x8 RGB images (class = which quadrant is bright), 24 training and 8 test images each, named so
    that the paper's forget requests resolve: ``rocket`` among them, and for ``cifar20`` two
    super-classes (``vehicles 2`` holds rocket)."""
    rng = np.random.default_rng(seed)
    names = np.array(["apple", "rocket", "tractor", "whale"])

    def make(per_class):
        y = np.repeat(np.arange(4), per_class)
        x = rng.integers(0, 60, (len(y), 8, 8, 3)).astype(np.uint8)
        for i, c in enumerate(y):
            r, s = divmod(int(c), 2)
            x[i, r * 4:(r + 1) * 4, s * 4:(s + 1) * 4] += 150
        return x, y.astype(np.int64)

    x_tr, y_tr = make(24)
    x_te, y_te = make(8)
    arrays = dict(x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te, class_names=names)
    if kind == "cifar20":
        coarse = np.array([0, 1, 1, 0])  # apple, whale: "other"; rocket, tractor: "vehicles 2"
        arrays.update(coarse_names=np.array(["other", "vehicles 2"]),
                      y_train_coarse=coarse[y_tr], y_test_coarse=coarse[y_te])
    return arrays


def subset_indices(arrays: dict, per_class: int | None, test_per_class: int | None,
                   seed: int = 0) -> dict:
    """The indices :func:`balanced_subset` keeps, per split (``"train"``, ``"test"``; None where
    the split is kept whole)."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, k in (("train", per_class), ("test", test_per_class)):
        if k is None:
            out[split] = None
            continue
        y = arrays[f"y_{split}"]
        out[split] = np.sort(np.concatenate([rng.permutation(np.flatnonzero(y == c))[:k]
                                             for c in np.unique(y)]))
    return out


def take(arrays: dict, split: str, idx: np.ndarray) -> dict:
    """``arrays`` with the images and labels of ``split`` ("train" or "test") at ``idx``."""
    out = dict(arrays)
    for key in (f"x_{split}", f"y_{split}", f"y_{split}_coarse"):
        if key in arrays:
            out[key] = arrays[key][idx]
    return out


def balanced_subset(arrays: dict, per_class: int | None, test_per_class: int | None,
                    seed: int = 0) -> dict:
    """The first ``per_class`` training (``test_per_class`` test) images of every fine class after
    a seeded shuffle; None keeps the split whole."""
    out = dict(arrays)
    for split, idx in subset_indices(arrays, per_class, test_per_class, seed).items():
        if idx is not None:
            out = take(out, split, idx)
    return out


#: the CPU twins' recipes and models, one place for every table
CPU_VGG_TRAIN = dict(epochs=30, batch_size=64, lr=0.05, optimizer="sgd", schedule="onecycle",
                     augment="crop_flip")
#: CIFAR-100 twins: the torchvision-layout VGG11 at width 16 (no BatchNorm, 4096-wide head scaled
#: down, its 0.01-std head initialisation) barely starts learning on 100 images a class: 5.0%
#: training accuracy after 8 epochs with Adam 1e-3 (4.3% with 3e-4, and 2.7% after 10 of 30 epochs
#: of the SGD recipe), where the CIFAR-layout VGG11 (the same convolutions, a small head) reached
#: 19.8% with Adam 1e-3 in the same 8 epochs (``jit-jax train``, 2026-12-02). So those twins use
#: the CIFAR layout with Adam.
CPU_VGG100 = dict(model="vgg11", model_opts={"width": 16})
CPU_VGG100_TRAIN = dict(epochs=30, batch_size=64, lr=1e-3, optimizer="adam", schedule="onecycle",
                        augment="crop_flip")
#: ViT twins: 8x8 patches (16 tokens on 32x32 images), 20 epochs. With 4x4 patches (64 tokens)
#: one epoch on 2,000 images took 15-20 s on 2 cores (2026-12-02), so 30 epochs on 10,000 images
#: and four trainings (the original, three RTRN) would take 3-4 hours, against the 45-minute budget.
CPU_VIT_TRAIN = dict(epochs=20, batch_size=64, lr=1e-3, optimizer="adam", schedule="onecycle",
                     augment="crop_flip")
SMALL_VIT = {"patch_size": 8, "hidden": 128, "depth": 4, "heads": 4, "mlp_dim": 256}
TINY_VIT = {"patch_size": 4, "hidden": 8, "depth": 1, "heads": 2, "mlp_dim": 16}


def make(scale: str, *, name: str, table: str, task: str, forget: str, dataset: str,
         tiny_kind: str, paper: dict, cpu: dict, tiny: dict | None = None,
         paper_train_images: int | None = 50_000) -> Config:
    """The config at ``scale``: the shared fields, then the scale's own (model, data, training).
    The tiny scale uses generated data (:func:`tiny_dataset`), one seed and the cnn at width 4
    unless ``tiny`` says otherwise. ``paper_train_images``: the size of the paper's training set
    (CIFAR's 50,000; None where the run reads the paper's data whole)."""
    if scale not in SCALES:
        raise ValueError(f"scale {scale!r}; accepted: {list(SCALES)}")
    base = dict(name=name, table=table, scale=scale, task=task, forget=forget, dataset=dataset,
                paper_epochs=int(paper["train"]["epochs"]),
                paper_train_images=paper_train_images)
    if scale == "tiny":
        fields = dict(dataset=f"tiny:{tiny_kind}", model="cnn", model_opts={"width": 4},
                      train=dict(epochs=2, batch_size=16, optimizer="adam", lr=3e-3,
                                 schedule="constant", augment="none"), seeds=(0,))
        fields.update(tiny or {})
    elif scale == "gpu":
        fields = dict(paper)
        fields["train"] = {**paper["train"],
                           "epochs": min(paper["train"]["epochs"],
                                         GPU_EPOCHS.get(paper["model"], 6))}
    else:
        fields = dict(paper if scale == "paper" else cpu)
    return Config(**{**base, **fields})


def gkt_rounds(cfg: Config, n_train: int) -> int | None:
    """GKT's ``pseudo_batches`` at this config's scale, or None for the authors' own.

    GKT trains a student (the model with re-drawn convolution kernels) on generated images for a
    fixed number of rounds, whatever the size of the data or of the original's training: at the
    paper's scale 1000 rounds of 15 student steps of 128 images, 1.92M student images against the
    paper's 210 x 50,000 = 10.5M images of training for Table 2's VGG11 (18%). At a smaller scale
    (fewer epochs, a subset) the rounds shrink in proportion to the original's training, epochs x
    training images, so that the student gets the same share of it as in the paper: Table 2's VGG
    twin (30 epochs x 10,000 images) runs 29 rounds, its ViT twin (20 x 10,000 against 8 x
    50,000) 51. Without this, GKT alone would take hours on the VGG twin (about 8 s a round on 2
    cores) where every other method takes seconds to minutes."""
    if cfg.paper_epochs is None:
        return None
    paper_images = n_train if cfg.paper_train_images is None else cfg.paper_train_images
    ratio = (int(cfg.train["epochs"]) * n_train) / (cfg.paper_epochs * paper_images)
    if ratio >= 1:
        return None
    from jit_jax.unlearn.gkt import default_rounds

    return max(1, math.ceil(default_rounds(cfg.model) * ratio))
