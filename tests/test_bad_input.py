"""Bad input a user brings gives a clear error naming the value and what is accepted, and nothing
is written: through the library functions and through ``jit-jax`` (return code 2, the message on
stderr, no --out directory).

Cases: corrupt/truncated/ill-formed ``.npz`` files, image folders with mixed sizes or modes and
unreadable images, labels out of range, a checkpoint whose metadata's model spec no longer fits
its saved arrays, and forget requests that cannot be served.
"""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from npz_helpers import npz_arrays, write_npz
from PIL import Image

from jit_jax import checkpoint
from jit_jax.cli import main
from jit_jax.data import Dataset, group_classes, load_dataset, parse_forget
from jit_jax.models import ModelSpec


# -- helpers ------------------------------------------------------------------------------------
def _cli_fails(argv, out, capsys, *patterns):
    """``jit-jax argv`` returns 2, prints every pattern (regex) on stderr, and writes no ``out``."""
    capsys.readouterr()
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    for pat in patterns:
        assert re.search(pat, err), f"{pat!r} not in stderr: {err}"
    assert not out.exists(), f"{out} was written"
    return err


def _train_fails(dataset, tmp_path, capsys, *patterns, extra=()):
    return _cli_fails(["train", "--dataset", dataset, "--model", "mlp", "--epochs", "1",
                       "--no-progress", *extra], tmp_path / "run", capsys, *patterns)


def _image(path, size, mode):
    shape = size if mode == "L" else (*size, 3 if mode == "RGB" else 4)
    arr = np.random.default_rng(len(str(path))).integers(0, 256, shape, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr, mode=mode).save(path)


def _folder(root, spec):
    """``spec``: {class: [(size, mode), ...]} -> ``root/class/img<i>.png``."""
    for cls, images in spec.items():
        for i, (size, mode) in enumerate(images):
            _image(root / cls / f"img{i}.png", size, mode)
    return root


# -- 1. corrupt, truncated or ill-formed .npz ---------------------------------------------------
def test_npz_truncated_and_not_a_zip(tmp_path, capsys):
    good = write_npz(tmp_path / "good.npz", **npz_arrays())
    data = good.read_bytes()
    cases = {"truncated.npz": data[: len(data) // 2], "empty.npz": b"",
             "text.npz": b"x_train,y_train\n1,2\n"}
    # damaged inside a compressed member: zlib, not zipfile, complains
    compressed = tmp_path / "c.npz"
    np.savez_compressed(compressed, **npz_arrays())
    flipped = bytearray(compressed.read_bytes())
    for i in range(200, 260):
        flipped[i] ^= 0xFF
    cases["flipped.npz"] = bytes(flipped)
    for name, content in cases.items():
        p = tmp_path / name
        p.write_bytes(content)
        with pytest.raises(ValueError, match=rf"{name} is not a readable \.npz archive.*"
                                             "truncated or corrupt"):
            load_dataset(f"npz:{p}")
    _train_fails(f"npz:{tmp_path / 'truncated.npz'}", tmp_path, capsys,
                 r"truncated\.npz is not a readable \.npz", r"np\.savez")


def test_npz_schema_errors(tmp_path, capsys):
    a = npz_arrays()
    cases = [
        ({"x_train": a["x_train"], "y_train": a["y_train"]},
         r"missing required key\(s\) x_test, y_test; the file has x_train, y_train; required: "
         "x_train, y_train, x_test, y_test"),
        ({**a, "x_train": a["x_train"].astype(np.float32) / 255},
         "x_train has dtype float32; accepted: uint8"),
        ({**a, "x_train": a["x_train"].reshape(6, -1)},
         r"x_train has shape \(6, 16\); accepted: \(N, H, W, C\)"),
        ({**a, "x_train": a["x_train"][:0], "y_train": a["y_train"][:0]},
         r"x_train has shape \(0, 4, 4, 1\); accepted: at least one image"),
        ({**a, "x_test": np.zeros((3, 5, 4, 1), np.uint8)},
         r"x_train images \(4, 4, 1\) and x_test images \(5, 4, 1\) differ"),
        ({**a, "x_train": a["x_train"][:5]},
         r"y_train has shape \(6,\); expected \(5,\), one label per image of x_train \(5 images\)"),
        ({**a, "y_test": a["y_test"][:, None]}, r"y_test has shape \(3, 1\); expected \(3,\)"),
        ({**a, "mean": np.array(["a"]), "std": np.array([0.2])},
         "mean has dtype <U1; accepted: 1 float"),
        ({**a, "mean": np.array([np.nan]), "std": np.array([0.2])}, "mean/std must be finite"),
        ({**a, "class_names": np.array(["a", "b", "a"])}, "class_names names a class twice: 'a'"),
    ]
    for i, (arrays, pattern) in enumerate(cases):
        p = write_npz(tmp_path / f"bad{i}.npz", **arrays)
        with pytest.raises(ValueError, match=rf"bad{i}\.npz: {pattern}"):
            load_dataset(f"npz:{p}")
    _train_fails(f"npz:{tmp_path / 'bad0.npz'}", tmp_path, capsys, "missing required key",
                 "required: x_train, y_train, x_test, y_test")
    _train_fails(f"npz:{tmp_path / 'bad5.npz'}", tmp_path, capsys,
                 r"y_train has shape \(6,\); expected \(5,\)")


# -- 3. labels out of range, non-integer labels -------------------------------------------------
def test_npz_labels_out_of_range_or_not_integers(tmp_path, capsys):
    a = npz_arrays()
    names = np.array(["cat", "dog", "emu"])
    cases = [
        ({**a, "class_names": names, "y_train": np.array([0, 1, 2, 3, 0, 1])},
         r"y_train contains label 3, out of range for 3 class names: accepted 0..2 "
         r"\(1 label\(s\) out of range, first at index 3\)"),
        ({**a, "class_names": names, "y_test": np.array([0, 7, 1])},
         "y_test contains label 7, out of range for 3 class names: accepted 0..2"),
        ({**a, "y_train": np.array([0, 1, -1, 2, 0, 1])},
         r"y_train contains label -1 \(at index 2\); labels must be >= 0"),
        ({**a, "y_train": a["y_train"] + 2**40},
         "y_train contains label 1099511627778; labels must fit int32"),
        ({**a, "y_train": a["y_train"].astype(np.float64)},
         r"y_train has dtype float64; accepted: an integer dtype .*whole numbers: store "
         r"y\.astype\(np\.int64\)"),
        ({**a, "y_test": np.array([0.5, 1.0, 2.0])}, "y_test has dtype float64; accepted: an "
                                                     "integer dtype"),
        ({**a, "y_train": a["y_train"].astype(str)}, "y_train has dtype <U21; accepted: an integer"),
        ({**a, "y_train_coarse": a["y_train"] % 2, "y_test_coarse": a["y_test"] % 2,
          "coarse_names": np.array(["one"])},
         "y_train_coarse contains label 1, out of range for 1 class names: accepted 0..0"),
    ]
    for i, (arrays, pattern) in enumerate(cases):
        p = write_npz(tmp_path / f"lab{i}.npz", **arrays)
        with pytest.raises(ValueError, match=rf"lab{i}\.npz: {pattern}"):
            load_dataset(f"npz:{p}")
    _train_fails(f"npz:{tmp_path / 'lab0.npz'}", tmp_path, capsys,
                 "y_train contains label 3, out of range for 3 class names: accepted 0..2")
    _train_fails(f"npz:{tmp_path / 'lab4.npz'}", tmp_path, capsys,
                 "y_train has dtype float64; accepted: an integer dtype")
    # a Dataset built in code checks every label array against its names
    with pytest.raises(ValueError, match=r"y_test labels must lie in \[0, 3\).*got \[0, 5\]"):
        Dataset("d", a["x_train"], a["y_train"], a["x_test"], np.array([0, 5, 1]),
                ("a", "b", "c"), (0.5,), (0.2,))


# -- 2. image folders: mixed sizes, mixed modes, unreadable files -------------------------------
def test_folder_mixed_modes(tmp_path, capsys):
    root = _folder(tmp_path / "faces", {
        "ann": [((8, 8), "RGB"), ((8, 8), "RGB"), ((8, 8), "L")],
        "bob": [((8, 8), "RGBA"), ((8, 8), "RGB"), ((8, 8), "RGB")],
    })
    with pytest.raises(ValueError, match=r"faces: the images mix greyscale and colour: greyscale "
                       r"mode L: 1 file\(s\) \(ann/img2\.png\); colour mode RGB/RGBA: 5 file\(s\) "
                       r"\(ann/img0\.png, ann/img1\.png, bob/img0\.png, \.\.\.\); pass "
                       "grayscale=False .* or grayscale=True"):
        load_dataset(f"folder:{root}")
    assert load_dataset(f"folder:{root}", grayscale=False).image_shape == (8, 8, 3)
    assert load_dataset(f"folder:{root}", grayscale=True).image_shape == (8, 8, 1)
    with pytest.raises(ValueError, match="grayscale must be True .* got 'rgb'"):
        load_dataset(f"folder:{root}", grayscale="rgb")
    _train_fails(f"folder:{root}", tmp_path, capsys, "mix greyscale and colour",
                 "--data-opt grayscale=false")


def test_folder_mixed_sizes(tmp_path, capsys):
    root = _folder(tmp_path / "pets", {
        "cat": [((8, 8), "RGB")] * 3,
        "dog": [((8, 8), "RGB"), ((10, 6), "RGB"), ((8, 8), "RGB")],
    })
    with pytest.raises(ValueError, match=r"pets: the images differ in size \(HxW\): 8x8: "
                       r"5 file\(s\) \(cat/img0\.png, cat/img1\.png, cat/img2\.png, \.\.\.\); "
                       r"10x6: 1 file\(s\) \(dog/img1\.png\); pass image_size=\(H, W\)"):
        load_dataset(f"folder:{root}")
    for size in (8, (8, 8), "8", "8x8"):
        assert load_dataset(f"folder:{root}", image_size=size).image_shape == (8, 8, 3)
    for bad in (0, "8y", (8, 8, 3), True, "x"):
        with pytest.raises(ValueError, match="image_size must be a positive int N .* got"):
            load_dataset(f"folder:{root}", image_size=bad)
    _train_fails(f"folder:{root}", tmp_path, capsys, "differ in size", r"10x6: 1 file\(s\)",
                 "--data-opt image_size=HxW")
    _train_fails(f"folder:{root}", tmp_path, capsys, "image_size must be a positive int",
                 extra=["--data-opt", "image_size=big"])


def test_folder_unreadable_images_are_all_named(tmp_path, capsys):
    root = _folder(tmp_path / "f", {"a": [((16, 16), "RGB")] * 2, "b": [((16, 16), "RGB")] * 2})
    (root / "a" / "notes.png").write_bytes(b"not an image")
    (root / "b" / "empty.jpg").write_bytes(b"")
    whole = (root / "b" / "img0.png").read_bytes()
    (root / "b" / "img0.png").write_bytes(whole[: len(whole) // 2])  # header reads, pixels don't
    with pytest.raises(ValueError) as e:
        load_dataset(f"folder:{root}")
    msg = str(e.value)
    assert "cannot read 3 image file(s)" in msg and "remove or replace them" in msg
    for name in ("a/notes.png", "b/empty.jpg", "b/img0.png"):
        assert str(root / name) in msg, name
    assert "img1.png" not in msg
    _train_fails(f"folder:{root}", tmp_path, capsys, "cannot read 3 image file", "notes.png",
                 "empty.jpg", "truncated")


def test_folder_conversion_options_travel_with_the_checkpoint(tmp_path, capsys):
    """``--data-opt`` converts a mixed folder at train time, and evaluate/unlearn reload the
    dataset with the same options from the checkpoint."""
    root = _folder(tmp_path / "mixed", {
        "a": [((8, 8), "RGB"), ((6, 10), "L"), ((8, 8), "RGB"), ((8, 8), "RGB")],
        "b": [((8, 8), "RGB")] * 4,
    })
    out = tmp_path / "run"
    assert main(["train", "--dataset", f"folder:{root}", "--data-opt", "grayscale=false",
                 "--data-opt", "image_size=8x8", "--model", "mlp", "--epochs", "1",
                 "--no-progress", "--out", str(out)]) == 0
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["dataset"]["options"] == {"grayscale": False, "image_size": "8x8"}
    assert meta["model"]["input_shape"] == [8, 8, 3]
    capsys.readouterr()
    assert main(["evaluate", "--checkpoint", str(out)]) == 0


# -- 4. a checkpoint whose metadata's model spec does not fit its arrays ------------------------
@pytest.fixture
def saved_cnn(tmp_path):
    spec = ModelSpec("cnn", 3, (4, 4, 1), {"width": 4})
    path = checkpoint.save(tmp_path / "ckpt", spec.build(0), spec, {
        "dataset": {"spec": f"npz:{write_npz(tmp_path / 'd.npz', **npz_arrays())}"}, "seed": 0})
    return path


def _edit_spec(path, **changes):
    meta = json.loads((path / "metadata.json").read_text())
    for k, v in changes.items():
        if k == "width":
            meta["model"]["options"]["width"] = v
        else:
            meta["model"][k] = v
    (path / "metadata.json").write_text(json.dumps(meta))


def test_checkpoint_spec_mismatch_names_arrays_and_shapes(saved_cnn, tmp_path, capsys):
    _edit_spec(saved_cnn, num_classes=5)
    with pytest.raises(checkpoint.CheckpointError, match=(
            r"ckpt: the saved state does not match the model spec in its metadata\.json "
            r"\(name='cnn', num_classes=5, input_shape=\(4, 4, 1\), options=\{'width': 4\}\): "
            r"params/head/bias: saved \(3,\) float32, spec builds \(5,\) float32; "
            r"params/head/kernel: saved \(8, 3\) float32, spec builds \(8, 5\) float32\. "
            r"Was the metadata\.json 'model' entry edited")) as e:
        checkpoint.restore(saved_cnn)
    assert "conv1" not in str(e.value)  # only the arrays that differ
    _edit_spec(saved_cnn, num_classes=3, width=8)
    with pytest.raises(checkpoint.CheckpointError, match=(
            r"options=\{'width': 8\}\): params/conv1/bias: saved \(4,\) float32, spec builds "
            r"\(8,\) float32; .*; and 1 more\.")):
        checkpoint.restore(saved_cnn)
    _edit_spec(saved_cnn, name="mlp", options={})
    with pytest.raises(checkpoint.CheckpointError, match=(
            r"name='mlp'.*params/head/kernel: saved \(8, 3\) float32, spec builds \(256, 3\) "
            r"float32; 4 array\(s\) missing from the checkpoint: params/layers/0/bias, .*; "
            r"6 array\(s\) not in the spec's model: params/conv1/bias, params/conv1/kernel, "
            r"params/conv2/bias, params/conv2/kernel and 2 more\. Was")):
        checkpoint.restore(saved_cnn)
    _edit_spec(saved_cnn, name="cnn", width=8)
    expected = ("saved state does not match the model spec",
                r"params/conv1/kernel: saved \(3, 3, 1, 4\) float32, spec builds \(3, 3, 1, 8\) "
                "float32")
    _cli_fails(["unlearn", "--checkpoint", str(saved_cnn), "--forget", "class:0"],
               tmp_path / "new", capsys, *expected)
    assert main(["evaluate", "--checkpoint", str(saved_cnn)]) == 2
    err = capsys.readouterr().err
    assert all(re.search(pat, err) for pat in expected), err


# -- 5. forget requests that cannot be served ---------------------------------------------------
def _three_names_two_used():
    a = npz_arrays(12, 6, k=2)  # labels 0 and 1 only; class 2 ("emu") has no samples
    return Dataset("zoo", a["x_train"], a["y_train"].astype(np.int32), a["x_test"],
                   a["y_test"].astype(np.int32), ("cat", "dog", "emu"), (0.5,), (0.2,))


def test_forget_requests(tmp_path):
    ds = _three_names_two_used()
    empty = (r"zoo: class:2 \(emu\) has no training samples, so there is nothing to forget; "
             r"accepted: class:<name\|index> of a class with training samples: 0 \(cat\), "
             r"1 \(dog\)")
    for req in ("class:emu", "class:2"):
        with pytest.raises(ValueError, match=empty):
            parse_forget(ds, req)
    g = group_classes(ds, {"pets": ["cat", "dog"], "birds": ["emu"]}, target="coarse")
    with pytest.raises(ValueError, match=r"class:1 \(birds\) has no training samples.*0 \(pets\)"):
        parse_forget(g, "class:birds")
    with pytest.raises(ValueError, match=r"zoo: subclass:2 \(emu\) has no training samples.* "
                       r"subclass:<name\|index> of a class with training samples: 0 \(cat\), "
                       r"1 \(dog\)"):
        parse_forget(g, "subclass:emu")
    with pytest.raises(ValueError, match=r"unknown class 'cat' for zoo; accepted names: pets, "
                       r"birds\. 'cat' is a fine class .* forget it with subclass:cat"):
        parse_forget(g, "class:cat")
    cases = {
        "class:3": r"class index 3 is out of range for zoo: accepted 0..2 \(cat, dog, emu\)",
        "class:-1": "class index -1 is out of range",
        "class:lion": "unknown class 'lion' for zoo; accepted names: cat, dog, emu",
        "subclass:cat": "zoo has no coarse labels: sub-class forgetting needs",
        "random:0": "random forget size n=0 is out of range for zoo with 12 training samples: "
                    "accepted 1..11",
        "random:12": "n=12 is out of range .* accepted 1..11",
        "random:500": "n=500 is out of range .* accepted 1..11",
        "random:0.99": r"random forget fraction 0.99 is 12 of the 12 training samples, which "
                       r"leaves nothing to retain; accepted: random:<n> with n in 1..11, or "
                       r"random:<p> with 0 < p < 1",
        "random:1.5": "random forget size '1.5' is not a count or a fraction",
        "random:many": "random forget size 'many' is not a count or a fraction",
        "random:": re.escape("unknown forget spec 'random:'; accepted: class:<name|index>, "
                             "subclass:<fine name|index>, random:<n|fraction>"),
        "class 2": "unknown forget spec 'class 2'",
        "forget:2": "unknown forget spec 'forget:2'",
        "": "unknown forget spec ''",
    }
    for req, pattern in cases.items():
        with pytest.raises(ValueError, match=pattern):
            parse_forget(ds, req)


def test_forget_requests_cli(tmp_path, capsys):
    a = npz_arrays(12, 6, k=2)
    data = write_npz(tmp_path / "zoo.npz", **a, class_names=np.array(["cat", "dog", "emu"]))
    spec = ModelSpec("mlp", 3, (4, 4, 1), {})
    ckpt = checkpoint.save(tmp_path / "ckpt", spec.build(0), spec,
                           {"dataset": {"spec": f"npz:{data}"}, "seed": 0})
    for req, pattern in [
        ("class:emu", r"class:2 \(emu\) has no training samples.*0 \(cat\), 1 \(dog\)"),
        ("class:7", r"class index 7 is out of range for zoo: accepted 0..2"),
        ("class:lion", "unknown class 'lion'"),
        ("random:0", "n=0 is out of range .* accepted 1..11"),
        ("random:99", "n=99 is out of range"),
        ("rnd:3", "unknown forget spec 'rnd:3'"),
    ]:
        _cli_fails(["unlearn", "--checkpoint", str(ckpt), "--forget", req], tmp_path / "out",
                   capsys, pattern)
        capsys.readouterr()
        assert main(["evaluate", "--checkpoint", str(ckpt), "--forget", req]) == 2
        assert re.search(pattern, capsys.readouterr().err)
