"""Dataset sources: a spec string -> an in-memory :class:`~jit_jax.data.dataset.Dataset`.

This module is the only place in ``jit_jax.data`` that reads files.
``load_dataset(spec, **options)`` accepts the specs listed in :data:`DATASETS`:

``digits``
    scikit-learn's bundled 8x8 handwritten digits (1797 images, no download). Pixel values 0..16
    are scaled to uint8 by ``round(v * 255 / 16)``; images are (8, 8, 1). Train/test is a fixed
    stratified split (``test_fraction=0.2``, ``seed=0``: 1438/359 images), so results are
    reproducible. Class names ``"0"``..``"9"``; mean/std from the training split.

``cifar10``, ``cifar100``, ``cifar20``
    Read through ``tfds.data_source`` (ArrayRecord, random access, no TensorFlow needed). The data
    must already be prepared in ``data_dir`` (``download=False`` by default; pass ``download=True``
    on a machine with internet). ``cifar20`` is CIFAR-100 with ``target="coarse"`` (the 20
    super-classes) and the fine labels kept, as in the authors' sub-class experiments.
    Normalisation: the CIFAR-100 statistics mean (0.5071, 0.4865, 0.4409), std (0.2673, 0.2564,
    0.2762) for all three, as the authors' code (``datasets.py``) uses for every dataset.

``npz:PATH``
    A numpy ``.npz`` archive (loaded with ``allow_pickle=False``) with

    ================= ========================================= ==========
    key               content                                   required
    ================= ========================================= ==========
    ``x_train``       uint8 images, NHWC; greyscale may be NHW  yes
    ``y_train``       integer fine labels, shape (N,)            yes
    ``x_test``        uint8 images, same H, W, C as x_train      yes
    ``y_test``        integer fine labels                        yes
    ``class_names``   str array, one name per fine class         no (``"0"``..``"K-1"``)
    ``coarse_names``  str array, one name per coarse class       no
    ``y_train_coarse`` integer coarse labels (needs y_test_coarse) no
    ``y_test_coarse`` integer coarse labels                      no
    ``mean``, ``std`` float per channel, [0, 1] pixel scale      no (train-set statistics)
    ================= ========================================= ==========

    Other keys (e.g. the provenance keys ``src_*``, ``idx_*``) are ignored. Without
    ``class_names`` the number of classes is ``max(label) + 1``.

``folder:PATH``
    One sub-folder per class (``PATH/<class>/<image>``, nested folders allowed), like
    torchvision's ``ImageFolder``: the class index is the position of the folder name in sorted
    order (the PinsFaceRecognition layout). Images are read with Pillow, optionally resized to
    ``image_size=(H, W)`` (bilinear), greyscale when ``grayscale=True`` (or automatically when
    every image is single-channel, ``grayscale=None``). Mixed sizes without ``image_size``, and
    mixed greyscale/colour images with ``grayscale=None``, are errors that name the files; on the
    command line the options are ``jit-jax train --data-opt image_size=HxW --data-opt
    grayscale=true|false``. Train/test is a seeded stratified split
    (``test_fraction=0.2``, ``seed=0``); ``test_fraction=0`` makes the test set equal to the
    training set, which is what the authors' code does for PinsFaceRecognition (no test split).

:func:`group_classes` adds coarse labels to any dataset from a grouping of its fine classes;
:data:`CIFAR10_SUPERCLASSES` is the fixed two-group split of CIFAR-10 (vehicles / animals) used to
exercise sub-class forgetting without CIFAR-100 pixels.
"""

from __future__ import annotations

import dataclasses
import inspect
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from jit_jax.data.dataset import Dataset, channel_stats

# The authors' normalisation (CIFAR-100 statistics), used for every dataset in their code.
CIFAR_MEAN = (0.5071, 0.4865, 0.4409)
CIFAR_STD = (0.2673, 0.2564, 0.2762)

CIFAR10_NAMES = (
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
)  # fmt: skip
CIFAR100_FINE_NAMES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle",
    "bottle", "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar",
    "cattle", "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile",
    "cup", "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster",
    "house", "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster",
    "man", "maple_tree", "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange",
    "orchid", "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy",
    "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal",
    "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider", "squirrel", "streetcar",
    "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor",
    "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman",
    "worm",
)  # fmt: skip
CIFAR100_COARSE_NAMES = (
    "aquatic_mammals", "fish", "flowers", "food_containers", "fruit_and_vegetables",
    "household_electrical_devices", "household_furniture", "insects", "large_carnivores",
    "large_man-made_outdoor_things", "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores", "medium_mammals", "non-insect_invertebrates", "people",
    "reptiles", "small_mammals", "trees", "vehicles_1", "vehicles_2",
)  # fmt: skip
_CIFAR100_FINE_TO_COARSE = (
    4, 1, 14, 8, 0, 6, 7, 7, 18, 3, 3, 14, 9, 18, 7, 11, 3, 9, 7, 11, 6, 11, 5, 10, 7, 6, 13, 15,
    3, 15, 0, 11, 1, 10, 12, 14, 16, 9, 11, 5, 5, 19, 8, 8, 15, 13, 14, 17, 18, 10, 16, 4, 17, 4,
    2, 0, 17, 4, 18, 17, 10, 3, 2, 12, 12, 16, 12, 1, 9, 19, 2, 10, 0, 1, 16, 12, 9, 13, 15, 13,
    16, 19, 2, 4, 6, 19, 5, 5, 8, 19, 18, 1, 2, 15, 6, 0, 17, 8, 14, 13,
)  # fmt: skip

#: The 20 CIFAR-100 super-classes as a grouping of fine class names (for :func:`group_classes`,
#: e.g. on a CIFAR-100 ``.npz`` that lacks coarse labels).
CIFAR100_SUPERCLASSES: dict[str, list[str]] = {
    coarse: [
        f for f, c in zip(CIFAR100_FINE_NAMES, _CIFAR100_FINE_TO_COARSE, strict=True) if c == i
    ]
    for i, coarse in enumerate(CIFAR100_COARSE_NAMES)
}

#: Two super-classes of CIFAR-10, so that sub-class forgetting (forget "airplane", score with the
#: coarse labels) can be run on CIFAR-10 (``../shared/data/README.md``).
CIFAR10_SUPERCLASSES: dict[str, list[str]] = {
    "vehicles": ["airplane", "automobile", "ship", "truck"],
    "animals": ["bird", "cat", "deer", "dog", "frog", "horse"],
}

#: Accepted dataset specs and what they load (for CLI help).
DATASETS: dict[str, str] = {
    "digits": "scikit-learn's bundled 8x8 digits, 10 classes, (8,8,1), fixed 80/20 split; no files",
    "cifar10": "CIFAR-10 via tfds.data_source (prepared data_dir; download=False by default)",
    "cifar100": "CIFAR-100, 100 fine classes (coarse labels kept) via tfds.data_source",
    "cifar20": "CIFAR-100 scored on its 20 coarse super-classes (fine labels kept)",
    "npz:PATH": "a .npz with x_train, y_train, x_test, y_test (+ optional class_names, coarse "
    "labels, mean, std)",
    "folder:PATH": "an image folder, one sub-folder per class (ImageFolder layout), seeded "
    "stratified train/test split; images of mixed sizes or of mixed greyscale/colour are an "
    "error unless converted with --data-opt image_size=HxW (bilinear resize) and/or "
    "--data-opt grayscale=true|false",
}

_IMAGE_SUFFIXES = (
    ".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm",
)  # fmt: skip


def datasets_help() -> str:
    """One line per accepted spec, for ``--help`` texts."""
    width = max(map(len, DATASETS))
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in DATASETS.items())


# -- entry point ------------------------------------------------------------------------------
def load_dataset(spec: str, **options) -> Dataset:
    """Load a dataset by spec (see :data:`DATASETS` and the module docstring).

    ``options`` go to the source's loader (:func:`load_digits`, :func:`load_tfds`,
    :func:`load_npz`, :func:`load_folder`); an option the source does not take raises ValueError.
    """
    if not isinstance(spec, str):
        raise ValueError(f"dataset spec must be a string, got {spec!r}")
    if spec == "digits":
        return _call(load_digits, spec, options)
    if spec in ("cifar10", "cifar100", "cifar20"):
        return _call(load_tfds, spec, options, spec)
    kind, sep, rest = spec.partition(":")
    if sep and kind == "npz" and rest:
        return _call(load_npz, spec, options, rest)
    if sep and kind == "folder" and rest:
        return _call(load_folder, spec, options, rest)
    raise ValueError(
        f"unknown dataset spec {spec!r}; accepted: {', '.join(DATASETS)} "
        "(PATH is a file or folder path)"
    )


def _call(fn, spec, options, *args):
    params = inspect.signature(fn).parameters
    accepted = [p for p, v in params.items() if v.kind == inspect.Parameter.KEYWORD_ONLY]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(
            f"unknown option(s) {', '.join(unknown)} for dataset {spec!r}; "
            f"accepted: {', '.join(accepted) or '(none)'}"
        )
    return fn(*args, **options)


# -- stratified split (shared by digits and folders) ------------------------------------------
def _stratified_split(y: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, ...]:
    """Per class, a seeded shuffle and round(test_fraction * n_c) test samples (at least one
    test and one train sample where the class has two or more). Returns sorted index arrays."""
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"test_fraction must lie in [0, 1), got {test_fraction}")
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(y):
        idx = rng.permutation(np.flatnonzero(y == c))
        n_test = int(round(test_fraction * len(idx)))
        if test_fraction > 0 and len(idx) >= 2:
            n_test = min(max(n_test, 1), len(idx) - 1)
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


# -- digits -----------------------------------------------------------------------------------
def load_digits(*, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
    """scikit-learn's 8x8 digits as uint8 (8, 8, 1) images with a fixed stratified split."""
    from sklearn.datasets import load_digits as _sk_digits

    d = _sk_digits()
    x = np.round(d.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)[..., None]
    y = d.target.astype(np.int32)
    tr, te = _stratified_split(y, test_fraction, seed)
    if test_fraction == 0:
        te = tr
    mean, std = channel_stats(x[tr])
    return Dataset(
        name="digits",
        x_train=x[tr],
        y_train=y[tr],
        x_test=x[te],
        y_test=y[te],
        class_names=tuple(str(i) for i in range(10)),
        mean=mean,
        std=std,
    )


# -- tfds -------------------------------------------------------------------------------------
_TFDS = {  # spec -> (tfds name, target)
    "cifar10": ("cifar10", "fine"),
    "cifar100": ("cifar100", "fine"),
    "cifar20": ("cifar100", "coarse"),
}


def load_tfds(name: str, *, data_dir: str | Path | None = None, download: bool = False) -> Dataset:
    """CIFAR-10/100/20 through ``tfds.data_source`` (no TensorFlow needed).

    With ``download=False`` (the default) the dataset must already be prepared in ArrayRecord
    format under ``data_dir`` (tfds' default ``~/tensorflow_datasets`` when None); otherwise a
    FileNotFoundError explains how to prepare it.
    """
    if name not in _TFDS:
        raise ValueError(f"unknown tfds dataset {name!r}; accepted: {', '.join(_TFDS)}")
    import tensorflow_datasets as tfds

    tfds_name, target = _TFDS[name]
    data_dir = None if data_dir is None else str(data_dir)
    arrays = {}
    info = None
    for split in ("train", "test"):
        try:
            src = tfds.data_source(tfds_name, split=split, data_dir=data_dir, download=download)
        except Exception as e:  # tfds raises several types for "not prepared here"
            where = data_dir or "~/tensorflow_datasets (tfds' default data_dir)"
            raise FileNotFoundError(
                f"{name}: the tfds dataset {tfds_name!r} (split {split!r}) is not prepared in "
                f"ArrayRecord format under {where}. Prepare it on a machine with internet access "
                f"(this one may have none) with\n"
                f"    tfds.data_source({tfds_name!r}, data_dir=DIR, download=True)\n"
                f"  or `tfds build {tfds_name} --file_format=array_record --data_dir=DIR`, "
                f"copy DIR here and pass data_dir=DIR; or pass download=True; or convert the "
                f"data to a .npz and use 'npz:PATH'. (tfds said: {type(e).__name__}: {e})"
            ) from e
        info = src.dataset_info
        arrays[split] = _read_source(src, with_coarse=tfds_name == "cifar100")
    feats = info.features
    if tfds_name == "cifar10":
        names = _class_names(feats["label"], CIFAR10_NAMES)
        coarse_names = None
    else:
        names = _class_names(feats["label"], CIFAR100_FINE_NAMES)
        coarse_names = _class_names(feats["coarse_label"], CIFAR100_COARSE_NAMES)
    (x_tr, y_tr, yc_tr), (x_te, y_te, yc_te) = arrays["train"], arrays["test"]
    return Dataset(
        name=name,
        x_train=x_tr,
        y_train=y_tr,
        x_test=x_te,
        y_test=y_te,
        class_names=names,
        mean=CIFAR_MEAN,
        std=CIFAR_STD,
        y_train_coarse=yc_tr,
        y_test_coarse=yc_te,
        coarse_names=coarse_names,
        target=target,
    )


def _class_names(feature, canonical: tuple[str, ...]) -> tuple[str, ...]:
    """The ClassLabel names tfds recorded when preparing the data; tfds only learns CIFAR's names
    from the downloaded files, so an unprepared/mock info has "0".."K-1": use the official ones."""
    names = tuple(getattr(feature, "names", None) or ())
    if len(names) == len(canonical) and names != tuple(str(i) for i in range(len(names))):
        return names
    return canonical


def _read_source(src, *, with_coarse: bool):
    n = len(src)
    x = y = yc = None
    for i in range(n):  # one record at a time: works for every tfds random-access source
        ex = src[i]
        img = np.asarray(ex["image"], dtype=np.uint8)
        if x is None:
            x = np.empty((n, *img.shape), np.uint8)
            y = np.empty(n, np.int32)
            yc = np.empty(n, np.int32) if with_coarse else None
        x[i] = img
        y[i] = int(ex["label"])
        if with_coarse:
            yc[i] = int(ex["coarse_label"])
    if x is None:
        raise ValueError(f"tfds source {src!r} is empty")
    return x, y, yc


# -- npz --------------------------------------------------------------------------------------
_NPZ_REQUIRED = ("x_train", "y_train", "x_test", "y_test")
_NPZ_OPTIONAL = (
    "class_names", "coarse_names", "y_train_coarse", "y_test_coarse", "mean", "std",
)  # fmt: skip


def load_npz(
    path: str | Path,
    *,
    target: str = "fine",
    name: str | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    image_size: int | Sequence[int] | str | None = None,
) -> Dataset:
    """A ``.npz`` archive with the schema in the module docstring.

    ``mean``/``std`` override the file's statistics (e.g. ``CIFAR_MEAN``/``CIFAR_STD`` to match the
    authors); ``target="coarse"`` scores on the coarse labels (which the file must contain).
    ``image_size`` (int, (H, W), or "N" / "HxW") resizes every image (bilinear, as the folder
    loader), e.g. 224 for the paper's ViT on CIFAR (the authors upsample to 224x224; per-channel
    normalisation commutes with the resize up to the uint8 rounding of the resized pixels).
    """
    size = _image_size(image_size)
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"npz dataset file not found: {path}")
    try:
        z = np.load(path, allow_pickle=False)
        if not isinstance(z, np.lib.npyio.NpzFile):
            raise ValueError(f"found a single {type(z).__name__} (a .npy file), not an archive")
        with z:
            missing = [k for k in _NPZ_REQUIRED if k not in z.files]
            if missing:
                raise _SchemaError(
                    f"{path}: missing required key(s) {', '.join(missing)}; the file has "
                    f"{', '.join(z.files) or '(no arrays)'}; required: {', '.join(_NPZ_REQUIRED)}; "
                    f"optional: {', '.join(_NPZ_OPTIONAL)}"
                )
            arrays = {k: z[k] for k in (*_NPZ_REQUIRED, *_NPZ_OPTIONAL) if k in z.files}
    except _SchemaError as e:
        raise ValueError(str(e)) from None
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error, AttributeError) as e:
        raise ValueError(
            f"{path} is not a readable .npz archive of plain arrays (a zip written by "
            f"np.savez/np.savez_compressed, no pickled objects; store names as str arrays); the "
            f"file may be truncated or corrupt ({path.stat().st_size} bytes): "
            f"{'zlib.error' if isinstance(e, zlib.error) else type(e).__name__}: {e}"
        ) from e

    def images(key):
        x = arrays[key]
        if x.dtype != np.uint8:
            hint = " (convert floats in [0, 1] with np.round(x * 255).astype(np.uint8))"
            raise ValueError(f"{path}: {key} has dtype {x.dtype}; accepted: uint8{hint}")
        if x.ndim == 3:
            x = x[..., None]
        if x.ndim != 4:
            raise ValueError(
                f"{path}: {key} has shape {x.shape}; accepted: (N, H, W, C) or greyscale (N, H, W)"
            )
        if x.shape[1] in (1, 3) and x.shape[3] not in (1, 3):
            raise ValueError(
                f"{path}: {key} has shape {x.shape}, which looks like NCHW; accepted: NHWC "
                "(transpose with x.transpose(0, 2, 3, 1))"
            )
        if 0 in x.shape:
            raise ValueError(
                f"{path}: {key} has shape {x.shape}; accepted: at least one image of at least "
                "1x1 pixel and one channel"
            )
        return x

    def labels(key, n, k=None):
        y = arrays[key]
        if not np.issubdtype(y.dtype, np.integer):
            hint = ""
            if y.dtype.kind == "f" and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
                hint = " (the values are whole numbers: store y.astype(np.int64))"
            raise ValueError(
                f"{path}: {key} has dtype {y.dtype}; accepted: an integer dtype (class indices "
                f"0..K-1){hint}"
            )
        if y.shape != (n,):
            raise ValueError(
                f"{path}: {key} has shape {y.shape}; expected ({n},), one label per image of "
                f"x_{key.split('_')[1]} ({n} images)"
            )
        if n and y.min() < 0:
            raise ValueError(
                f"{path}: {key} contains label {y.min()} (at index {int(y.argmin())}); "
                "labels must be >= 0"
            )
        if n and y.max() > np.iinfo(np.int32).max:
            raise ValueError(
                f"{path}: {key} contains label {y.max()}; labels must fit int32 (class indices "
                "0..K-1)"
            )
        if k is not None and n and y.max() >= k:
            bad = np.flatnonzero(y >= k)
            raise ValueError(
                f"{path}: {key} contains label {y.max()}, out of range for {k} class names: "
                f"accepted 0..{k - 1} ({len(bad)} label(s) out of range, first at index "
                f"{int(bad[0])})"
            )
        return y.astype(np.int32)

    def names(key):
        v = arrays[key]
        if v.ndim != 1 or v.dtype.kind not in "US":
            raise ValueError(f"{path}: {key} must be a 1-D str array, got {v.dtype} {v.shape}")
        out = tuple(str(s.decode() if isinstance(s, bytes) else s) for s in v.tolist())
        dup = sorted({s for s in out if out.count(s) > 1})
        if dup:
            raise ValueError(
                f"{path}: {key} names a class twice: {', '.join(map(repr, dup))}; accepted: "
                "distinct names"
            )
        return out

    x_tr, x_te = images("x_train"), images("x_test")
    if x_tr.shape[1:] != x_te.shape[1:]:
        raise ValueError(
            f"{path}: x_train images {x_tr.shape[1:]} and x_test images {x_te.shape[1:]} differ"
        )
    if size is not None and x_tr.shape[1:3] != size:
        x_tr, x_te = _resize_images(x_tr, size), _resize_images(x_te, size)
    class_names = names("class_names") if "class_names" in arrays else None
    k = None if class_names is None else len(class_names)
    y_tr = labels("y_train", len(x_tr), k)
    y_te = labels("y_test", len(x_te), k)
    if class_names is None:
        n_cls = int(max(y_tr.max(initial=-1), y_te.max(initial=-1))) + 1
        class_names = tuple(str(i) for i in range(n_cls))

    has_c = ("y_train_coarse" in arrays, "y_test_coarse" in arrays)
    yc_tr = yc_te = coarse_names = None
    if any(has_c):
        if not all(has_c):
            raise ValueError(f"{path}: y_train_coarse and y_test_coarse must be given together")
        coarse_names = names("coarse_names") if "coarse_names" in arrays else None
        kc = None if coarse_names is None else len(coarse_names)
        yc_tr = labels("y_train_coarse", len(x_tr), kc)
        yc_te = labels("y_test_coarse", len(x_te), kc)
        if coarse_names is None:
            kc = int(max(yc_tr.max(initial=-1), yc_te.max(initial=-1))) + 1
            coarse_names = tuple(str(i) for i in range(kc))
    elif "coarse_names" in arrays:
        raise ValueError(f"{path}: coarse_names given without y_train_coarse/y_test_coarse")
    if target not in ("fine", "coarse"):
        raise ValueError(f"target must be 'fine' or 'coarse', got {target!r}")
    if target == "coarse" and yc_tr is None:
        raise ValueError(f"{path}: target='coarse' needs y_train_coarse/y_test_coarse in the file")

    c = x_tr.shape[-1]
    if mean is None and std is None and "mean" in arrays and "std" in arrays:
        for key in ("mean", "std"):
            if arrays[key].dtype.kind not in "fiu":
                raise ValueError(
                    f"{path}: {key} has dtype {arrays[key].dtype}; accepted: {c} float(s), one "
                    "per channel, in the [0, 1] pixel scale"
                )
        mean, std = arrays["mean"].tolist(), arrays["std"].tolist()
    if mean is None or std is None:
        m, s = channel_stats(x_tr)
        mean = m if mean is None else mean
        std = s if std is None else std
    mean, std = _check_stats(mean, std, c, str(path))

    return Dataset(
        name=name or path.stem,
        x_train=x_tr,
        y_train=y_tr,
        x_test=x_te,
        y_test=y_te,
        class_names=class_names,
        mean=mean,
        std=std,
        y_train_coarse=yc_tr,
        y_test_coarse=yc_te,
        coarse_names=coarse_names,
        target=target,
    )


class _SchemaError(Exception):
    pass


def _check_stats(mean, std, c: int, where: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    mean = tuple(float(v) for v in np.ravel(mean))
    std = tuple(float(v) for v in np.ravel(std))
    if len(mean) != c or len(std) != c:
        raise ValueError(f"{where}: mean/std need {c} values (one per channel), got {mean}/{std}")
    if not np.all(np.isfinite(mean + std)):
        raise ValueError(f"{where}: mean/std must be finite, got {mean}/{std}")
    if min(std) <= 0:
        raise ValueError(f"{where}: std must be positive, got {std}")
    return mean, std


# -- image folder -----------------------------------------------------------------------------
def load_folder(
    path: str | Path,
    *,
    image_size: int | Sequence[int] | None = None,
    grayscale: bool | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    name: str | None = None,
) -> Dataset:
    """An ImageFolder-style directory: ``path/<class>/<image files>``.

    Class index = sorted folder-name order. ``image_size`` (int, (H, W), or the strings "N" /
    "HxW") resizes every image (bilinear); without it every image must have the same size, else a
    ValueError lists the sizes found with example files. ``grayscale``: True -> 1 channel,
    False -> RGB, None -> 1 channel if every image is single-channel, RGB if none is, and a
    ValueError listing the files of each kind if greyscale and colour images are mixed.
    Unreadable image files are listed in a ValueError (every one, not only the first).
    ``test_fraction`` in [0, 1) with ``seed`` drives a stratified split (0: test set = training set,
    as the authors' PinsFaceRecognition setup). ``mean``/``std`` default to training statistics.
    """
    from PIL import Image

    root = Path(path).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"image folder not found: {root}")
    class_dirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not class_dirs:
        raise ValueError(
            f"{root} has no class sub-folders; expected the layout {root}/<class name>/<images> "
            f"with images ending in {', '.join(_IMAGE_SUFFIXES)}"
        )
    files, labels, empty = [], [], []
    for ci, d in enumerate(class_dirs):
        found = sorted(
            p for p in d.rglob("*")
            if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES and not p.name.startswith(".")
        )  # fmt: skip
        if not found:
            empty.append(d.name)
        files += found
        labels += [ci] * len(found)
    if empty:
        raise ValueError(
            f"{root}: class folder(s) with no images: {', '.join(empty)}; accepted image files end "
            f"in {', '.join(_IMAGE_SUFFIXES)}"
        )
    size = _image_size(image_size)
    if grayscale not in (None, True, False):
        raise ValueError(
            f"grayscale must be True (1 channel), False (RGB) or None (1 channel only if every "
            f"image is single-channel), got {grayscale!r}"
        )

    # Pass 1: headers only (Pillow decodes lazily): unreadable files, modes and sizes.
    modes, sizes, bad = [], [], []
    for f in files:
        try:
            with Image.open(f) as im:
                modes.append(im.mode)
                sizes.append((im.size[1], im.size[0]))  # (H, W)
        except Exception as e:
            bad.append((f, e))
    if bad:  # also find the files whose header reads but whose pixels do not, to name them all
        unreadable = {f for f, _ in bad}
        for f in files:
            if f not in unreadable:
                try:
                    with Image.open(f) as im:
                        im.load()
                except Exception as e:
                    bad.append((f, e))
        _raise_unreadable(root, sorted(bad, key=lambda fe: fe[0]))
    grey = [m in _GREY_MODES for m in modes]
    if grayscale is None:
        if any(grey) and not all(grey):
            raise ValueError(
                f"{root}: the images mix greyscale and colour: "
                + "; ".join(
                    _examples(root, files, [g == want for g in grey], label, modes)
                    for want, label in ((True, "greyscale"), (False, "colour"))
                )
                + "; pass grayscale=False to convert every image to RGB or grayscale=True to "
                "convert every image to 1 channel (jit-jax train: --data-opt grayscale=false)"
            )
        grayscale = all(grey)
    if size is None and len(set(sizes)) > 1:
        by_size = sorted(set(sizes), key=lambda hw: -sizes.count(hw))
        raise ValueError(
            f"{root}: the images differ in size (HxW): "
            + "; ".join(
                _examples(root, files, [s == hw for s in sizes], f"{hw[0]}x{hw[1]}")
                for hw in by_size[:6]
            )
            + ("; ..." if len(by_size) > 6 else "")
            + "; pass image_size=(H, W) to resize every image (bilinear) "
            "(jit-jax train: --data-opt image_size=HxW)"
        )

    # Pass 2: decode, convert, resize.
    mode = "L" if grayscale else "RGB"
    arrays = []
    for f in files:
        try:
            with Image.open(f) as im:
                im = im.convert(mode)
                if size is not None and im.size != (size[1], size[0]):
                    im = im.resize((size[1], size[0]), Image.Resampling.BILINEAR)
                a = np.asarray(im, dtype=np.uint8)
        except Exception as e:
            bad.append((f, e))
            continue
        arrays.append(a[..., None] if a.ndim == 2 else a)
    _raise_unreadable(root, bad)
    x = np.stack(arrays)
    y = np.asarray(labels, np.int32)
    tr, te = _stratified_split(y, test_fraction, seed)
    if test_fraction == 0:
        te = tr
    if mean is None or std is None:
        m, s = channel_stats(x[tr])
        mean = m if mean is None else mean
        std = s if std is None else std
    mean, std = _check_stats(mean, std, x.shape[-1], str(root))
    return Dataset(
        name=name or root.name,
        x_train=x[tr],
        y_train=y[tr],
        x_test=x[te],
        y_test=y[te],
        class_names=tuple(d.name for d in class_dirs),
        mean=mean,
        std=std,
    )


# Pillow modes that hold one channel (converted to "L" for a greyscale dataset).
_GREY_MODES = ("1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F")


def _resize_images(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """uint8 NHWC images resized to ``size`` (H, W), bilinear (PIL), one at a time."""
    from PIL import Image

    out = np.empty((len(x), *size, x.shape[-1]), np.uint8)
    for i, a in enumerate(x):
        im = Image.fromarray(a[..., 0] if a.shape[-1] == 1 else a)
        r = np.asarray(im.resize((size[1], size[0]), Image.Resampling.BILINEAR), np.uint8)
        out[i] = r[..., None] if r.ndim == 2 else r
    return out


def _image_size(image_size) -> tuple[int, int] | None:
    """``image_size`` as (H, W): an int, (H, W), or a string "N" / "HxW" (from the command line)."""
    if image_size is None:
        return None
    v = image_size
    try:
        if isinstance(v, str):
            parts = v.lower().replace(",", "x").split("x")
            v = [int(p) for p in parts] if len(parts) > 1 else int(parts[0])
        if isinstance(v, bool):
            raise TypeError
        size = (int(v),) * 2 if np.isscalar(v) else tuple(int(p) for p in v)
    except (TypeError, ValueError):
        size = ()
    if len(size) != 2 or min(size) <= 0:
        raise ValueError(
            f"image_size must be a positive int N (N x N) or (H, W) (command line: N or HxW), got "
            f"{image_size!r}"
        )
    return size


def _examples(root: Path, files, mask, label: str, modes=None) -> str:
    """``"label: n files (a/1.png, a/2.png, ...)"`` for the files where ``mask`` holds."""
    picked = [i for i, m in enumerate(mask) if m]
    names = ", ".join(str(files[i].relative_to(root)) for i in picked[:3])
    kinds = ""
    if modes is not None:
        kinds = " mode " + "/".join(sorted({modes[i] for i in picked}))
    return f"{label}{kinds}: {len(picked)} file(s) ({names}{', ...' if len(picked) > 3 else ''})"


def _raise_unreadable(root: Path, bad) -> None:
    if not bad:
        return
    shown = "; ".join(f"{f} ({type(e).__name__}: {e})" for f, e in bad[:5])
    more = f"; and {len(bad) - 5} more" if len(bad) > 5 else ""
    raise ValueError(
        f"{root}: cannot read {len(bad)} image file(s): {shown}{more}; remove or replace them "
        f"(accepted: images Pillow can open, ending in {', '.join(_IMAGE_SUFFIXES)})"
    )


# -- coarse groupings -------------------------------------------------------------------------
def group_classes(
    ds: Dataset, groups: Mapping[str, Sequence[str | int]], *, target: str | None = None
) -> Dataset:
    """Add coarse labels from a grouping of the fine classes: ``{coarse name: [fine classes]}``.

    Fine classes are given by name or index; every fine class must be in exactly one group. The
    coarse index is the group's position in ``groups``. Existing coarse labels are replaced.
    ``target`` stays as it is unless given (``"coarse"`` to train/score on the groups).
    """
    if not groups:
        raise ValueError("groups is empty; expected {coarse name: [fine class names or indices]}")
    fine_to_coarse = np.full(len(ds.class_names), -1, np.int32)
    for gi, (gname, members) in enumerate(groups.items()):
        if isinstance(members, (str, int)) or not len(members):
            raise ValueError(
                f"group {gname!r} must be a non-empty list of classes, got {members!r}"
            )
        for m in members:
            f = ds.class_index(m)
            if fine_to_coarse[f] != -1:
                other = list(groups)[fine_to_coarse[f]]
                raise ValueError(
                    f"fine class {ds.class_names[f]!r} is in two groups: {other!r} and {gname!r}"
                )
            fine_to_coarse[f] = gi
    missing = [ds.class_names[i] for i in np.flatnonzero(fine_to_coarse < 0)]
    if missing:
        raise ValueError(f"fine class(es) in no group: {', '.join(missing)}")
    return dataclasses.replace(
        ds,
        y_train_coarse=fine_to_coarse[ds.y_train],
        y_test_coarse=fine_to_coarse[ds.y_test],
        coarse_names=tuple(str(g) for g in groups),
        target=ds.target if target is None else target,
    )


# -- validation hold-out ----------------------------------------------------------------------
def holdout(ds: Dataset, fraction: float = 0.1, seed: int = 0) -> tuple[Dataset, Dataset]:
    """Carve a stratified validation part out of the training set.

    Returns ``(fit, val)``: both train on the remaining training samples; ``fit`` keeps the real
    test set, ``val`` has the held-out training samples as its "test" set. Hyperparameters are
    chosen on ``val`` and reported on ``fit``, so the test set never informs a choice.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"holdout fraction must lie in (0, 1), got {fraction}")
    keep, held = _stratified_split(ds.y_train, fraction, seed)

    def part(idx):
        return (ds.x_train[idx], ds.y_train[idx],
                None if ds.y_train_coarse is None else ds.y_train_coarse[idx])

    x, y, yc = part(keep)
    xv, yv, yvc = part(held)
    fit = dataclasses.replace(ds, name=ds.name, x_train=x, y_train=y, y_train_coarse=yc)
    val = dataclasses.replace(fit, x_test=xv, y_test=yv, y_test_coarse=yvc)
    return fit, val
