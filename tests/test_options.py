"""KEY=VALUE option parsing: each value converted by its target's declared type."""

from __future__ import annotations

import pytest

from jit_jax import unlearn
from jit_jax.models import option_types as model_option_types
from jit_jax.options import convert, option_types, parse_options
from jit_jax.train import TrainConfig
from jit_jax.unlearn.jit import JiTConfig


def test_enum_string_none_stays_a_string():
    opts = parse_options(["augment=none", "optimizer=adam"], "training", TrainConfig)
    assert opts == {"augment": "none", "optimizer": "adam"}
    assert TrainConfig().replace(**opts).augment == "none"


def test_optional_none_becomes_none():
    assert parse_options(["grad_clip=none"], "training", TrainConfig) == {"grad_clip": None}
    assert parse_options(["grad_clip=1.5"], "training", TrainConfig) == {"grad_clip": 1.5}
    # int | None | str: "none" -> None, "auto" stays a string, "8" an int
    assert parse_options(["images_per_forward=None"], "JiT", JiTConfig) == {
        "images_per_forward": None}
    assert parse_options(["images_per_forward=auto"], "JiT", JiTConfig) == {
        "images_per_forward": "auto"}
    assert parse_options(["images_per_forward=8"], "JiT", JiTConfig) == {"images_per_forward": 8}


def test_bool_int_float():
    out = parse_options(["stop_gradient=false", "clip=Yes", "batch_size=32", "lr=1e-3",
                         "sigma=1"], "JiT", JiTConfig)
    assert out == {"stop_gradient": False, "clip": True, "batch_size": 32, "lr": 1e-3, "sigma": 1.0}
    assert type(out["sigma"]) is float and type(out["batch_size"]) is int


@pytest.mark.parametrize("pair, what", [("batch_size=3.5", "int"), ("stop_gradient=maybe", "bool"),
                                        ("lr=fast", "float"), ("sigma=none", "float")])
def test_wrong_type_names_value_and_type(pair, what):
    with pytest.raises(ValueError, match=rf"{pair.split('=')[0]}=.*accepted: {what}"):
        parse_options([pair], "JiT", JiTConfig)


def test_tuple_option():
    assert convert("image_size", "64,48", tuple[int, ...]) == (64, 48)


def test_untyped_and_malformed():
    assert parse_options(["a=3", "b=0.5", "c=true", "d=none", "e=x"], "x") == {
        "a": 3, "b": 0.5, "c": True, "d": "none", "e": "x"}
    with pytest.raises(ValueError, match="key=value"):
        parse_options(["width16"], "model")


def test_method_and_model_types():
    assert option_types(JiTConfig)["sigma"] is float
    assert unlearn.option_types("jit")["batch_size"] is int
    assert unlearn.option_types("rtrn")["augment"] is str
    ssd = unlearn.option_types("ssd")
    assert set(ssd) >= {"lam", "alpha"}
    assert parse_options(["lam=none"], "method", ssd) == {"lam": None}
    assert model_option_types("resnet18") == {"width": int, "stem": str}
    assert parse_options(["width=8", "stem=cifar"], "model", model_option_types("resnet18")) == {
        "width": 8, "stem": "cifar"}
    with pytest.raises(ValueError, match="unknown method"):
        unlearn.option_types("nope")
