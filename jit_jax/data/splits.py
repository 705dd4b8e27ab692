"""Forget/retain splits and the evaluation sets of the unlearning protocol.

A :class:`ForgetSplit` names the training samples to forget (``forget_idx``) and the rest
(``retain_idx``), as sorted int64 indices into ``ds.x_train``. Three kinds, as in the paper:

``class``     every training sample of one target class (on a coarse-target dataset such as
              CIFAR-20 the class is a coarse class). ``forget_class`` = that target class.
``subclass``  every training sample of one *fine* class of a coarse-target dataset (CIFAR-20:
              forget "rocket" inside "vehicles_2"); the model predicts coarse labels.
              ``forget_class`` = the fine class.
``random``    ``n`` training samples drawn uniformly without replacement with ``seed``.

:func:`evaluation_sets` turns a split into the sets the metrics need, following the authors'
code (``reference/original-code.md`` section 2.1). Labels are always the dataset's *target* labels
(coarse labels for a coarse-target dataset, so for every sub-class split):

=================  =====================================  ==================================
key                class / subclass                       random
=================  =====================================  ==================================
``retain``         test images of the retained classes    the full test set
                   (subclass: of every other fine class)
``forget``         test images of the forgotten class     the forget *training* samples
                   (subclass: of the forgotten fine one)
``test``           the full test set                      the full test set
``retain_train``   training samples in ``retain_idx``     training samples in ``retain_idx``
``forget_train``   training samples in ``forget_idx``     training samples in ``forget_idx``
=================  =====================================  ==================================

D_r accuracy is measured on ``retain``, D_f accuracy on ``forget``. The membership-inference attack
trains on ``retain_train`` (members) against ``test`` (non-members) and scores ``forget_train``.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np

from jit_jax.data.dataset import Dataset

KINDS = ("class", "subclass", "random")
FORGET_SPECS = ("class:<name|index>", "subclass:<fine name|index>", "random:<n|fraction>")


@dataclasses.dataclass(frozen=True, eq=False)
class ForgetSplit:
    kind: str  # "class" | "subclass" | "random"
    forget_idx: np.ndarray  # sorted int64 indices into the training set
    retain_idx: np.ndarray  # sorted int64, the complement of forget_idx
    forget_class: int | None  # target class ("class"), fine class ("subclass"), None ("random")
    description: str  # e.g. "class:3 (cat)"
    seed: int | None = None  # the seed that drew a random split (None for class/subclass)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown forget split kind {self.kind!r}; accepted: {KINDS}")
        for f in ("forget_idx", "retain_idx"):
            a = np.sort(np.asarray(getattr(self, f), dtype=np.int64).ravel())
            a.setflags(write=False)
            object.__setattr__(self, f, a)
        if len(self.forget_idx) == 0:
            raise ValueError(f"{self.description}: the forget set is empty")
        if len(np.intersect1d(self.forget_idx, self.retain_idx)):
            raise ValueError(f"{self.description}: forget_idx and retain_idx overlap")

    @property
    def n_forget(self) -> int:
        return len(self.forget_idx)

    @property
    def n_train(self) -> int:
        return len(self.forget_idx) + len(self.retain_idx)

    def __repr__(self) -> str:
        return (
            f"ForgetSplit({self.description!r}, forget={self.n_forget}, "
            f"retain={len(self.retain_idx)})"
        )


def _from_mask(ds: Dataset, mask: np.ndarray, kind: str, cls, description: str, seed=None):
    if not mask.any():
        raise ValueError(f"{ds.name}: {description} has no training samples: nothing to forget")
    if mask.all():
        raise ValueError(
            f"{ds.name}: {description} is the whole training set: nothing would remain"
        )
    return ForgetSplit(
        kind=kind,
        forget_idx=np.flatnonzero(mask),
        retain_idx=np.flatnonzero(~mask),
        forget_class=cls,
        description=description,
        seed=seed,
    )


def _with_samples(y: np.ndarray, names: tuple[str, ...]) -> str:
    """The classes with training samples, for errors: ``"0 (a), 1 (b)"`` (at most 20 shown)."""
    present = np.unique(y).tolist()
    shown = ", ".join(f"{c} ({names[c]})" for c in present[:20])
    return shown + (f", ... ({len(present)} classes)" if len(present) > 20 else "")


def _no_samples(ds: Dataset, description: str, y: np.ndarray, names: tuple[str, ...], kind: str):
    raise ValueError(
        f"{ds.name}: {description} has no training samples, so there is nothing to forget; "
        f"accepted: {kind}:<name|index> of a class with training samples: "
        f"{_with_samples(y, names)}"
    )


def forget_class(ds: Dataset, cls: str | int) -> ForgetSplit:
    """Forget every training sample of target class ``cls`` (name or index; a coarse class on a
    coarse-target dataset)."""
    coarse = ds.target == "coarse"
    try:
        c = ds.class_index(cls, coarse=coarse)
    except ValueError as e:
        if coarse and str(cls) in ds.class_names:
            raise ValueError(
                f"{e}. {cls!r} is a fine class of {ds.name}, which is scored on its coarse "
                f"classes: forget it with subclass:{cls}"
            ) from None
        raise
    mask = ds.train_targets == c
    description = f"class:{c} ({ds.target_names[c]})"
    if not mask.any():
        _no_samples(ds, description, ds.train_targets, ds.target_names, "class")
    return _from_mask(ds, mask, "class", c, description)


def forget_subclass(ds: Dataset, fine_cls: str | int) -> ForgetSplit:
    """Forget every training sample of fine class ``fine_cls`` in a coarse-target dataset.

    The model is trained and scored on the coarse labels (CIFAR-20, or a dataset from
    :func:`~jit_jax.data.sources.group_classes` with ``target="coarse"``).
    """
    if ds.y_train_coarse is None or ds.coarse_names is None:
        raise ValueError(
            f"{ds.name} has no coarse labels: sub-class forgetting needs a dataset with fine and "
            "coarse labels (e.g. 'cifar20', or group_classes(ds, groups, target='coarse'))"
        )
    if ds.target != "coarse":
        raise ValueError(
            f"{ds.name} has target={ds.target!r}: sub-class forgetting scores a model trained on "
            "the coarse labels; use ds.with_target('coarse')"
        )
    f = ds.class_index(fine_cls)
    mask = ds.y_train == f
    if not mask.any():
        _no_samples(ds, f"subclass:{f} ({ds.class_names[f]})", ds.y_train, ds.class_names,
                    "subclass")
    parents = np.unique(ds.y_train_coarse[mask])
    inside = f" in {ds.coarse_names[parents[0]]}" if len(parents) == 1 else ""
    return _from_mask(ds, mask, "subclass", f, f"subclass:{f} ({ds.class_names[f]}{inside})")


def forget_random(ds: Dataset, n: int, seed: int = 0) -> ForgetSplit:
    """Forget ``n`` training samples drawn uniformly without replacement (numpy, ``seed``)."""
    total = len(ds.y_train)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise ValueError(f"random forget size must be an integer, got {n!r}")
    if not 1 <= n <= total - 1:
        raise ValueError(
            f"random forget size n={n} is out of range for {ds.name} with {total} training "
            f"samples: accepted 1..{total - 1}"
        )
    idx = np.random.default_rng(seed).choice(total, size=int(n), replace=False)
    mask = np.zeros(total, bool)
    mask[idx] = True
    return _from_mask(ds, mask, "random", None, f"random:{int(n)} (seed {seed})", seed=seed)


def fraction_count(p: float, total: int) -> int:
    """Size of the first part of ``torch.utils.data.random_split(data, [p, 1 - p])``: the floors of
    both parts, the remainder given to the first (0.00165 of 50 000 -> 83, as in the authors'
    CIFAR-10 random-forgetting runs)."""
    first = math.floor(total * p)
    return first + (1 if first + math.floor(total * (1 - p)) < total else 0)


def parse_forget(ds: Dataset, spec: str, seed: int = 0) -> ForgetSplit:
    """Build a split from a string: ``class:3``, ``class:airplane``, ``subclass:rocket``,
    ``random:100`` (n samples) or ``random:0.00165`` (a fraction of the training set, counted as
    :func:`fraction_count`). ``seed`` drives random splits."""
    kind, sep, arg = str(spec).partition(":")
    arg = arg.strip()
    if not sep or kind not in KINDS or not arg:
        raise ValueError(f"unknown forget spec {spec!r}; accepted: {', '.join(FORGET_SPECS)}")
    if kind == "class":
        return forget_class(ds, arg)
    if kind == "subclass":
        return forget_subclass(ds, arg)
    return forget_random(ds, _parse_count(arg, len(ds.y_train)), seed)


def _parse_count(arg: str, total: int) -> int:
    accepted = f"accepted: random:<n> with n in 1..{total - 1}, or random:<p> with 0 < p < 1"
    if arg.lstrip("+-").isdigit():
        return int(arg)
    try:
        p = float(arg)
    except ValueError:
        p = math.nan
    if not 0.0 < p < 1.0:
        raise ValueError(f"random forget size {arg!r} is not a count or a fraction; {accepted}")
    n = fraction_count(p, total)
    if n >= total:
        raise ValueError(
            f"random forget fraction {arg} is {n} of the {total} training samples, which leaves "
            f"nothing to retain; {accepted}"
        )
    return n


# -- evaluation sets ---------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class EvalSet:
    """Images (uint8 NHWC) and target labels of one evaluation set, with their provenance."""

    x: np.ndarray
    y: np.ndarray
    source: str  # "train" or "test": which split of the dataset the images come from
    idx: np.ndarray  # indices into that split

    def __len__(self) -> int:
        return len(self.y)

    def __repr__(self) -> str:
        return f"EvalSet({len(self)} {self.source} samples, x={self.x.shape})"


def _take(ds: Dataset, source: str, idx: np.ndarray) -> EvalSet:
    idx = np.asarray(idx, np.int64)
    x = ds.x_train if source == "train" else ds.x_test
    y = ds.train_targets if source == "train" else ds.test_targets
    return EvalSet(x=x[idx], y=np.asarray(y[idx], np.int32), source=source, idx=idx)


def evaluation_sets(ds: Dataset, split: ForgetSplit) -> dict[str, EvalSet]:
    """The sets of the unlearning protocol for ``split`` on ``ds`` (table in the module docstring).

    Keys: ``retain``, ``forget`` (D_r / D_f accuracy), ``test``, ``retain_train``,
    ``forget_train`` (membership-inference attack). Raises ValueError when ``split`` does not fit
    ``ds`` or when a class/sub-class has no test images (D_f accuracy would be undefined).
    """
    n = len(ds.y_train)
    lo = min(split.forget_idx[0], split.retain_idx[0] if len(split.retain_idx) else 0)
    if split.n_train != n or split.forget_idx[-1] >= n or lo < 0:
        raise ValueError(
            f"{split.description} was built for a training set of {split.n_train} samples, but "
            f"{ds.name} has {n}"
        )
    n_test = len(ds.y_test)
    if split.kind == "random":
        retain = _take(ds, "test", np.arange(n_test))
        forget = _take(ds, "train", split.forget_idx)
    else:
        if split.kind == "subclass":
            if ds.target != "coarse":
                raise ValueError(f"sub-class split on {ds.name} needs target='coarse'")
            mask = ds.y_test == split.forget_class
        else:
            mask = ds.test_targets == split.forget_class
        if not mask.any():
            raise ValueError(
                f"{ds.name}: {split.description} has no test images, so D_f accuracy is undefined"
            )
        retain = _take(ds, "test", np.flatnonzero(~mask))
        forget = _take(ds, "test", np.flatnonzero(mask))
    return {
        "retain": retain,
        "forget": forget,
        "test": _take(ds, "test", np.arange(n_test)),
        "retain_train": _take(ds, "train", split.retain_idx),
        "forget_train": _take(ds, "train", split.forget_idx),
    }
