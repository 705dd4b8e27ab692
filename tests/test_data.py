"""Tests for jit_jax.data: sources, forget splits, evaluation sets, transforms.

No test downloads anything: tfds sources run under ``tfds.testing.mock_data``; npz and folder
sources run on files written to ``tmp_path``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from npz_helpers import npz_arrays, write_npz

from jit_jax.data import (
    CIFAR10_NAMES,
    CIFAR10_SUPERCLASSES,
    CIFAR100_COARSE_NAMES,
    CIFAR100_FINE_NAMES,
    CIFAR100_SUPERCLASSES,
    CIFAR_MEAN,
    CIFAR_STD,
    DATASETS,
    Dataset,
    batches,
    channel_stats,
    datasets_help,
    evaluation_sets,
    forget_class,
    forget_random,
    forget_subclass,
    fraction_count,
    group_classes,
    load_dataset,
    normalize,
    parse_forget,
    random_crop_flip,
    resize,
    transforms,
)

REAL_SUBSET = Path(__file__).parents[2] / "shared/data/cifar10_subset_10k_2k.npz"


# -- helpers ------------------------------------------------------------------------------------
def _toy(n_train=40, n_test=20, names=CIFAR10_NAMES, shape=(4, 4, 3)) -> Dataset:
    a = npz_arrays(n_train, n_test, shape, len(names))
    return Dataset(
        name="toy",
        x_train=a["x_train"],
        y_train=a["y_train"].astype(np.int32),
        x_test=a["x_test"],
        y_test=a["y_test"].astype(np.int32),
        class_names=tuple(names),
        mean=(0.5,) * shape[-1],
        std=(0.25,) * shape[-1],
    )


def _write_folder(root: Path, classes, per_class, size, mode="RGB", seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    for name in classes:
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            shape = (size[0], size[1]) if mode == "L" else (size[0], size[1], 3)
            arr = rng.integers(0, 256, shape, dtype=np.uint8)
            Image.fromarray(arr, mode=mode).save(root / name / f"img{i}.png")
    return root


# -- digits -------------------------------------------------------------------------------------
def test_digits():
    ds = load_dataset("digits")
    assert ds.image_shape == (8, 8, 1) and ds.x_train.dtype == np.uint8
    assert len(ds.x_train) + len(ds.x_test) == 1797
    assert ds.x_train.max() == 255 and ds.x_train.min() == 0
    assert ds.class_names == tuple(str(i) for i in range(10)) and ds.num_classes == 10
    # stratified: every class has ~20% of its images in the test set
    frac = np.bincount(ds.y_test) / (np.bincount(ds.y_train) + np.bincount(ds.y_test))
    assert np.all(np.abs(frac - 0.2) < 0.02)
    mean, std = channel_stats(ds.x_train)
    assert np.allclose(ds.mean, mean) and np.allclose(ds.std, std)
    again = load_dataset("digits")  # fixed split: identical on every load
    assert np.array_equal(ds.x_test, again.x_test) and np.array_equal(ds.y_train, again.y_train)


def test_unknown_spec_and_option():
    with pytest.raises(ValueError, match="unknown dataset spec 'mnist'.*digits.*npz:PATH"):
        load_dataset("mnist")
    with pytest.raises(ValueError, match="unknown dataset spec"):
        load_dataset("npz:")
    with pytest.raises(ValueError, match="unknown option.*foo.*accepted: test_fraction, seed"):
        load_dataset("digits", foo=1)
    assert set(DATASETS) == {"digits", "cifar10", "cifar100", "cifar20", "npz:PATH", "folder:PATH"}
    assert "folder:PATH" in datasets_help()


# -- tfds (mock only) ---------------------------------------------------------------------------
@pytest.fixture
def tfds_mock():
    tfds = pytest.importorskip("tensorflow_datasets")
    with tfds.testing.mock_data(num_examples=12):
        yield


def test_cifar10_mock(tfds_mock):
    ds = load_dataset("cifar10")
    assert ds.image_shape == (32, 32, 3) and len(ds.x_train) == 12 and len(ds.x_test) == 12
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int32
    assert ds.class_names == CIFAR10_NAMES and ds.num_classes == 10
    assert ds.mean == CIFAR_MEAN and ds.std == CIFAR_STD
    assert ds.y_train_coarse is None and ds.target == "fine"
    assert "tensorflow" not in sys.modules  # the path works without TensorFlow


def test_cifar100_and_cifar20_mock(tfds_mock):
    c100 = load_dataset("cifar100")
    assert c100.num_classes == 100 and c100.class_names == CIFAR100_FINE_NAMES
    assert c100.coarse_names == CIFAR100_COARSE_NAMES and c100.y_train_coarse.shape == (12,)
    c20 = load_dataset("cifar20")
    assert c20.target == "coarse" and c20.num_classes == 20
    assert c20.target_names == CIFAR100_COARSE_NAMES
    assert np.array_equal(c20.train_targets, c20.y_train_coarse)
    assert c20.y_train.max() < 100 and c20.mean == CIFAR_MEAN


def test_cifar_not_prepared_fails_clearly(tmp_path):
    pytest.importorskip("tensorflow_datasets")
    with pytest.raises(FileNotFoundError, match="(?s)not prepared.*internet.*download=True"):
        load_dataset("cifar10", data_dir=tmp_path)  # download=False: no network access


def test_cifar100_superclasses_match_the_paper():
    assert len(CIFAR100_SUPERCLASSES) == 20
    assert all(len(v) == 5 for v in CIFAR100_SUPERCLASSES.values())
    # the paper's sub-class targets (reference/original-code.md section 5)
    for fine, coarse in [
        ("rocket", "vehicles_2"),
        ("mushroom", "fruit_and_vegetables"),
        ("baby", "people"),
        ("lamp", "household_electrical_devices"),
        ("sea", "large_natural_outdoor_scenes"),
    ]:
        assert fine in CIFAR100_SUPERCLASSES[coarse]


# -- npz ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "shape,stored",
    [((8, 8, 1), (8, 8, 1)), ((64, 64, 1), (64, 64)), ((224, 224, 3), (224, 224, 3))],
)
def test_npz_shapes(tmp_path, shape, stored):
    a = npz_arrays(6, 4, stored, 3)
    p = write_npz(tmp_path / "d.npz", **a, src_train=np.array(["a"] * 6), idx_train=np.arange(6))
    ds = load_dataset(f"npz:{p}")
    assert ds.image_shape == shape and ds.name == "d"
    assert ds.class_names == ("0", "1", "2")
    assert np.array_equal(ds.x_train.reshape(a["x_train"].shape), a["x_train"])
    assert np.allclose(ds.mean, channel_stats(ds.x_train)[0])


def test_npz_optional_keys(tmp_path):
    a = npz_arrays(8, 4, (4, 4, 3), 4)
    p = write_npz(
        tmp_path / "d.npz",
        **a,
        class_names=np.array(["a", "b", "c", "d"]),
        y_train_coarse=a["y_train"] // 2,
        y_test_coarse=a["y_test"] // 2,
        coarse_names=np.array(["ab", "cd"]),
        mean=np.array([0.1, 0.2, 0.3]),
        std=np.array([0.4, 0.5, 0.6]),
    )
    ds = load_dataset(f"npz:{p}")
    assert ds.class_names == ("a", "b", "c", "d") and ds.coarse_names == ("ab", "cd")
    assert ds.mean == (0.1, 0.2, 0.3) and ds.std == (0.4, 0.5, 0.6)
    coarse = load_dataset(f"npz:{p}", target="coarse", mean=CIFAR_MEAN, std=CIFAR_STD)
    assert coarse.num_classes == 2 and coarse.mean == CIFAR_MEAN
    assert np.array_equal(coarse.train_targets, a["y_train"] // 2)


def test_npz_errors(tmp_path):
    a = npz_arrays(6, 4, (4, 4, 3), 3)
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        load_dataset(f"npz:{tmp_path / 'nope.npz'}")
    bad = tmp_path / "corrupt.npz"
    bad.write_bytes(b"this is not a zip archive")
    with pytest.raises(ValueError, match="not a readable .npz"):
        load_dataset(f"npz:{bad}")
    npy = tmp_path / "single.npy"
    np.save(npy, a["x_train"])
    with pytest.raises(ValueError, match="not a readable .npz"):
        load_dataset(f"npz:{npy}")
    p = write_npz(tmp_path / "nokey.npz", x_train=a["x_train"], y_train=a["y_train"])
    with pytest.raises(ValueError, match="missing required key.*x_test, y_test"):
        load_dataset(f"npz:{p}")
    p = write_npz(tmp_path / "float.npz", **{**a, "x_train": a["x_train"] / 255.0})
    with pytest.raises(ValueError, match="x_train has dtype float64; accepted: uint8"):
        load_dataset(f"npz:{p}")
    p = write_npz(tmp_path / "range.npz", **a, class_names=np.array(["a", "b"]))
    with pytest.raises(ValueError, match="label 2, out of range.*accepted 0..1"):
        load_dataset(f"npz:{p}")
    p = write_npz(tmp_path / "neg.npz", **{**a, "y_test": -a["y_test"] - 1})
    with pytest.raises(ValueError, match="y_test contains label -"):
        load_dataset(f"npz:{p}")
    p = write_npz(tmp_path / "len.npz", **{**a, "y_train": a["y_train"][:3]})
    with pytest.raises(ValueError, match=r"y_train has shape \(3,\); expected \(6,\)"):
        load_dataset(f"npz:{p}")
    nchw = {k: np.zeros((len(a[k]), 3, 8, 8), np.uint8) for k in ("x_train", "x_test")}
    p = write_npz(tmp_path / "nchw.npz", **{**a, **nchw})
    with pytest.raises(ValueError, match="looks like NCHW"):
        load_dataset(f"npz:{p}")
    p = write_npz(tmp_path / "obj.npz", **a, class_names=np.array(["a", 1, None], dtype=object))
    with pytest.raises(ValueError, match="not a readable .npz"):
        load_dataset(f"npz:{p}")
    p = write_npz(tmp_path / "ok.npz", **a)
    with pytest.raises(ValueError, match="target='coarse' needs"):
        load_dataset(f"npz:{p}", target="coarse")


@pytest.mark.skipif(not REAL_SUBSET.exists(), reason=f"{REAL_SUBSET} is not on this machine")
def test_real_cifar10_subset():
    ds = load_dataset(f"npz:{REAL_SUBSET}")
    assert ds.x_train.shape == (10000, 32, 32, 3) and ds.x_test.shape == (2000, 32, 32, 3)
    assert ds.class_names == CIFAR10_NAMES
    assert np.array_equal(np.bincount(ds.y_train), [1000] * 10)
    grouped = group_classes(ds, CIFAR10_SUPERCLASSES, target="coarse")
    split = parse_forget(grouped, "subclass:airplane")
    assert split.n_forget == 1000 and "airplane in vehicles" in split.description


# -- folder -------------------------------------------------------------------------------------
def test_folder_rgb_split(tmp_path):
    root = _write_folder(tmp_path / "faces", ["zoe", "adam", "mia"], 10, (12, 10))
    ds = load_dataset(f"folder:{root}")
    assert ds.class_names == ("adam", "mia", "zoe")  # sorted folder order, like ImageFolder
    assert ds.image_shape == (12, 10, 3) and ds.name == "faces"
    assert np.array_equal(np.bincount(ds.y_train), [8, 8, 8])
    assert np.array_equal(np.bincount(ds.y_test), [2, 2, 2])
    again = load_dataset(f"folder:{root}")
    assert np.array_equal(ds.x_test, again.x_test)
    other = load_dataset(f"folder:{root}", seed=1)
    assert not np.array_equal(ds.x_test, other.x_test)
    # the pixels are the saved ones (PNG is lossless)
    from PIL import Image

    first_adam = np.asarray(Image.open(root / "adam" / "img0.png"))
    every = np.concatenate([ds.x_train, ds.x_test])
    assert any(np.array_equal(first_adam, im) for im in every)
    same = load_dataset(f"folder:{root}", test_fraction=0)  # Pins-style: test = train
    assert np.array_equal(same.x_train, same.x_test) and len(same.x_train) == 30


def test_folder_grayscale_and_resize(tmp_path):
    root = _write_folder(tmp_path / "g", ["a", "b"], 3, (64, 64), mode="L")
    ds = load_dataset(f"folder:{root}")
    assert ds.image_shape == (64, 64, 1) and len(ds.mean) == 1
    rgb = load_dataset(f"folder:{root}", grayscale=False)
    assert rgb.image_shape == (64, 64, 3)
    big = _write_folder(tmp_path / "big", ["a", "b"], 2, (224, 224))
    assert load_dataset(f"folder:{big}").image_shape == (224, 224, 3)
    small = load_dataset(f"folder:{big}", image_size=32, grayscale=True)
    assert small.image_shape == (32, 32, 1)


def test_folder_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="image folder not found"):
        load_dataset(f"folder:{tmp_path / 'missing'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class sub-folders"):
        load_dataset(f"folder:{tmp_path / 'empty'}")
    root = _write_folder(tmp_path / "r", ["a"], 2, (8, 8))
    (root / "b").mkdir()
    (root / "b" / "notes.txt").write_text("no image here")
    with pytest.raises(ValueError, match="class folder.*with no images: b"):
        load_dataset(f"folder:{root}")
    mixed = _write_folder(tmp_path / "m", ["a"], 2, (8, 8))
    _write_folder(tmp_path / "m2", ["b"], 2, (9, 8))
    (tmp_path / "m2" / "b").rename(mixed / "b")
    with pytest.raises(ValueError, match="pass image_size"):
        load_dataset(f"folder:{mixed}")
    assert load_dataset(f"folder:{mixed}", image_size=(8, 8)).image_shape == (8, 8, 3)
    with pytest.raises(ValueError, match="test_fraction"):
        load_dataset(f"folder:{mixed}", image_size=8, test_fraction=1.0)


# -- group_classes ------------------------------------------------------------------------------
def test_group_classes():
    ds = _toy()
    g = group_classes(ds, CIFAR10_SUPERCLASSES)
    assert g.target == "fine" and g.coarse_names == ("vehicles", "animals")
    vehicles = np.isin(ds.y_train, [0, 1, 8, 9])
    assert np.array_equal(g.y_train_coarse == 0, vehicles)
    assert group_classes(ds, CIFAR10_SUPERCLASSES, target="coarse").num_classes == 2
    by_index = group_classes(ds, {"low": list(range(5)), "high": [5, 6, 7, 8, "truck"]})
    assert np.array_equal(by_index.y_test_coarse, (ds.y_test >= 5).astype(int))
    with pytest.raises(ValueError, match="in no group: truck"):
        animals = CIFAR10_SUPERCLASSES["animals"]
        group_classes(ds, {"v": ["airplane", "automobile", "ship"], "a": animals})
    with pytest.raises(ValueError, match="'cat' is in two groups"):
        group_classes(ds, {**CIFAR10_SUPERCLASSES, "pets": ["cat"]})
    with pytest.raises(ValueError, match="unknown class 'plane'"):
        group_classes(ds, {"v": ["plane"]})


# -- forget splits ------------------------------------------------------------------------------
def _check_partition(split, n):
    assert split.forget_idx.dtype == np.int64 and split.retain_idx.dtype == np.int64
    assert np.all(np.diff(split.forget_idx) > 0) and np.all(np.diff(split.retain_idx) > 0)
    assert np.array_equal(np.union1d(split.forget_idx, split.retain_idx), np.arange(n))
    assert len(np.intersect1d(split.forget_idx, split.retain_idx)) == 0


def test_forget_class():
    ds = _toy()
    s = forget_class(ds, "cat")
    assert s.kind == "class" and s.forget_class == 3 and s.description == "class:3 (cat)"
    assert np.all(ds.y_train[s.forget_idx] == 3) and np.all(ds.y_train[s.retain_idx] != 3)
    _check_partition(s, len(ds.y_train))
    assert np.array_equal(forget_class(ds, 3).forget_idx, s.forget_idx)
    assert np.array_equal(parse_forget(ds, "class:3").forget_idx, s.forget_idx)
    # on a coarse-target dataset the class is a coarse class
    g = group_classes(ds, CIFAR10_SUPERCLASSES, target="coarse")
    v = parse_forget(g, "class:vehicles")
    assert v.forget_class == 0 and np.all(np.isin(ds.y_train[v.forget_idx], [0, 1, 8, 9]))
    with pytest.raises(ValueError, match="unknown class 'plane'.*accepted names: airplane"):
        parse_forget(ds, "class:plane")
    with pytest.raises(ValueError, match="class index 10 is out of range.*accepted 0..9"):
        forget_class(ds, 10)
    with pytest.raises(ValueError, match="class index -1 is out of range"):
        parse_forget(ds, "class:-1")


def test_forget_class_without_samples():
    ds = _toy(names=("a", "b", "c"))
    ds = Dataset(**{**ds.__dict__, "y_train": ds.y_train % 2, "y_test": ds.y_test % 2})
    with pytest.raises(ValueError, match="class:2 \\(c\\) has no training samples"):
        forget_class(ds, "c")
    one = _toy(names=("only",))
    with pytest.raises(ValueError, match="whole training set"):
        forget_class(one, 0)


def test_forget_subclass():
    ds = _toy()
    g = group_classes(ds, CIFAR10_SUPERCLASSES, target="coarse")
    s = parse_forget(g, "subclass:airplane")
    assert s.kind == "subclass" and s.forget_class == 0
    assert s.description == "subclass:0 (airplane in vehicles)"
    assert np.all(ds.y_train[s.forget_idx] == 0) and np.all(ds.y_train[s.retain_idx] != 0)
    _check_partition(s, len(ds.y_train))
    with pytest.raises(ValueError, match="has no coarse labels"):
        forget_subclass(ds, "airplane")
    with pytest.raises(ValueError, match="with_target\\('coarse'\\)"):
        forget_subclass(group_classes(ds, CIFAR10_SUPERCLASSES), "airplane")
    with pytest.raises(ValueError, match="unknown class 'rocket'"):
        forget_subclass(g, "rocket")


def test_forget_random():
    ds = _toy()
    s = forget_random(ds, 7, seed=3)
    assert s.kind == "random" and s.n_forget == 7 and s.seed == 3 and s.forget_class is None
    _check_partition(s, len(ds.y_train))
    assert np.array_equal(forget_random(ds, 7, seed=3).forget_idx, s.forget_idx)
    assert not np.array_equal(forget_random(ds, 7, seed=4).forget_idx, s.forget_idx)
    assert np.array_equal(parse_forget(ds, "random:7", seed=3).forget_idx, s.forget_idx)
    assert parse_forget(ds, "random:0.25").n_forget == 10
    assert fraction_count(0.00165, 50000) == 83  # torch random_split, as the authors' runs
    assert fraction_count(0.1, 1000) == 100
    for bad in ("random:0", "random:40", "random:-3"):
        with pytest.raises(ValueError, match="out of range.*accepted 1..39"):
            parse_forget(ds, bad)
    with pytest.raises(ValueError, match="not a count or a fraction"):
        parse_forget(ds, "random:lots")
    with pytest.raises(ValueError, match="not a count or a fraction"):
        parse_forget(ds, "random:1.5")
    with pytest.raises(ValueError, match="out of range"):
        forget_random(ds, 0)


def test_parse_forget_unknown_kind():
    ds = _toy()
    for bad in ("sample:3", "class", "class:", "3"):
        with pytest.raises(ValueError, match="unknown forget spec.*class:<name\\|index>"):
            parse_forget(ds, bad)


# -- evaluation sets ----------------------------------------------------------------------------
def test_evaluation_sets_class():
    ds = _toy()
    s = forget_class(ds, "cat")
    ev = evaluation_sets(ds, s)
    assert set(ev) == {"retain", "forget", "test", "retain_train", "forget_train"}
    assert ev["forget"].source == "test" and np.all(ev["forget"].y == 3)
    assert len(ev["forget"]) == np.sum(ds.y_test == 3)
    assert np.all(ev["retain"].y != 3) and len(ev["retain"]) + len(ev["forget"]) == len(ds.y_test)
    assert np.array_equal(ev["retain"].x, ds.x_test[ds.y_test != 3])
    assert len(ev["test"]) == len(ds.y_test)
    assert np.array_equal(ev["forget_train"].x, ds.x_train[s.forget_idx])
    assert np.array_equal(ev["retain_train"].y, ds.y_train[s.retain_idx])
    # coarse-target class forgetting: labels are coarse
    g = group_classes(ds, CIFAR10_SUPERCLASSES, target="coarse")
    ev = evaluation_sets(g, parse_forget(g, "class:animals"))
    assert np.all(ev["forget"].y == 1) and np.all(ev["retain"].y == 0)


def test_evaluation_sets_subclass():
    ds = _toy()
    g = group_classes(ds, CIFAR10_SUPERCLASSES, target="coarse")
    ev = evaluation_sets(g, forget_subclass(g, "airplane"))
    assert np.array_equal(ev["forget"].idx, np.flatnonzero(ds.y_test == 0))
    assert np.all(ev["forget"].y == 0)  # coarse label of airplane: vehicles
    assert np.array_equal(ev["retain"].idx, np.flatnonzero(ds.y_test != 0))
    assert np.array_equal(ev["retain"].y, g.y_test_coarse[ds.y_test != 0])
    assert set(np.unique(ev["retain"].y)) == {0, 1}  # other vehicles stay in D_r
    assert np.array_equal(ev["test"].y, g.y_test_coarse)


def test_evaluation_sets_random():
    ds = _toy()
    s = forget_random(ds, 5, seed=0)
    ev = evaluation_sets(ds, s)
    assert ev["forget"].source == "train" and np.array_equal(ev["forget"].idx, s.forget_idx)
    assert np.array_equal(ev["forget"].x, ds.x_train[s.forget_idx])
    assert ev["retain"].source == "test" and len(ev["retain"]) == len(ds.y_test)
    with pytest.raises(ValueError, match="built for a training set of 40"):
        evaluation_sets(_toy(n_train=30), s)


def test_evaluation_sets_no_test_images():
    ds = _toy(names=("a", "b", "c"))
    ds = Dataset(**{**ds.__dict__, "y_test": ds.y_test % 2})
    with pytest.raises(ValueError, match="no test images"):
        evaluation_sets(ds, forget_class(ds, "c"))


# -- transforms ---------------------------------------------------------------------------------
def test_normalize_jnp_matches_numpy():
    x = np.random.default_rng(0).integers(0, 256, (2, 4, 4, 3), dtype=np.uint8)
    a = transforms.normalize(x, CIFAR_MEAN, CIFAR_STD)
    assert a.dtype == jnp.float32
    # float32, three ops ((x / 255 - m) / s), each rounded once or, as a multiply by a rounded
    # reciprocal, twice: per route |err| <= 2u (1 + 2 max|x/255 - m|) / min s; two routes.
    u, shift = 2.0**-24, max(max(CIFAR_MEAN), 1 - min(CIFAR_MEAN))
    atol = 2 * 2 * u * (1 + 2 * shift) / min(CIFAR_STD)
    np.testing.assert_allclose(np.asarray(a), normalize(x, CIFAR_MEAN, CIFAR_STD), atol=atol)


def test_random_crop_flip():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(32, 6, 5, 2)), jnp.float32)
    key = jax.random.key(0)
    out = random_crop_flip(key, x)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert np.array_equal(random_crop_flip(key, x), out)  # deterministic for a key
    assert not np.array_equal(random_crop_flip(jax.random.key(1), x), out)
    assert np.array_equal(random_crop_flip(key, x, pad=0, flip=False), x)
    # flips really flip, per image, both outcomes occur
    flipped = np.asarray(random_crop_flip(key, x, pad=0))
    is_flip = [np.array_equal(f, xi[:, ::-1]) for f, xi in zip(flipped, np.asarray(x), strict=True)]
    is_same = [np.array_equal(f, xi) for f, xi in zip(flipped, np.asarray(x), strict=True)]
    assert all(a or b for a, b in zip(is_flip, is_same, strict=True))
    assert 0 < sum(is_flip) < len(x)
    # crop keeps the content, shifted by an offset in [-pad, pad]; the rest is the fill value
    pad = 2
    crops = np.asarray(jax.jit(random_crop_flip, static_argnums=(2, 3))(key, x, pad, False))
    padded = np.pad(np.asarray(x), ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    offsets = set()
    for c, p in zip(crops, padded, strict=True):
        hits = [
            (i, j)
            for i in range(2 * pad + 1)
            for j in range(2 * pad + 1)
            if np.array_equal(c, p[i : i + 6, j : j + 5])
        ]
        assert hits
        offsets.add(hits[0])
    assert len(offsets) > 3  # offsets differ between images
    filled = random_crop_flip(key, jnp.zeros((8, 4, 4, 2)), pad=2, flip=False, fill=(1.0, 2.0))
    assert set(np.unique(np.asarray(filled)[..., 1])) <= {0.0, 2.0}


def test_resize():
    x = jnp.ones((2, 8, 8, 1)) * 3.0
    y = resize(x, 16)
    assert y.shape == (2, 16, 16, 1)
    # per axis a length-8 contraction with weights normalised to sum 1 (rel err <= gamma_8 +
    # gamma_3, u = 2^-24); two axes
    u = 2.0**-24
    gamma = lambda n: n * u / (1 - n * u)  # noqa: E731
    np.testing.assert_allclose(np.asarray(y), 3.0, rtol=2 * (gamma(8) + gamma(3)))
    assert resize(jnp.zeros((1, 32, 32, 3), jnp.uint8), (224, 224)).shape == (1, 224, 224, 3)
    with pytest.raises(ValueError, match="positive int"):
        resize(x, 0)


def test_batches():
    plain = list(batches(10, 4))
    assert [b.tolist() for b in plain] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert [len(b) for b in batches(10, 4, drop_last=True)] == [4, 4]
    shuffled = np.concatenate(list(batches(10, 3, key_or_seed=0)))
    assert sorted(shuffled.tolist()) == list(range(10)) and shuffled.tolist() != list(range(10))
    again = np.concatenate(list(batches(10, 3, key_or_seed=0)))
    assert np.array_equal(shuffled, again)
    keyed = np.concatenate(list(batches(10, 3, key_or_seed=jax.random.key(1))))
    assert sorted(keyed.tolist()) == list(range(10)) and keyed.dtype == np.int64
    with pytest.raises(ValueError, match="batch_size must be positive"):
        next(batches(10, 0))


def test_npz_image_size(tmp_path):
    """image_size resizes (bilinear, half-pixel centres: a row [0, 200] becomes [0, 50, 150, 200]
    at twice the width), RGB and greyscale; labels untouched; a bad size is a clear error."""
    a = npz_arrays(4, 2, (2, 2, 3), 2)
    row = np.array([0, 200], np.uint8)
    a["x_train"][:] = row[None, None, :, None]
    grey = npz_arrays(4, 2, (2, 2), 2)
    grey["x_train"][:] = row[None, None, :]
    for arrays, c in ((a, 3), (grey, 1)):
        p = write_npz(tmp_path / f"d{c}.npz", **arrays)
        ds = load_dataset(f"npz:{p}", image_size="4x4")
        assert ds.image_shape == (4, 4, c) and ds.x_test.shape == (2, 4, 4, c)
        np.testing.assert_array_equal(ds.x_train[..., 0],
                                      np.broadcast_to([0, 50, 150, 200], (4, 4, 4)))
        assert np.array_equal(ds.y_train, arrays["y_train"])
        assert load_dataset(f"npz:{p}", image_size=2).image_shape == (2, 2, c)  # unchanged
    with pytest.raises(ValueError, match="image_size must be a positive int"):
        load_dataset(f"npz:{p}", image_size="big")
