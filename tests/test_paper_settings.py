"""The authors' per-table settings (``jit_jax.unlearn.paper``) and the preset fallback.

Expected values are transcribed from the authors' ``*_main.py`` files as summarised in
``reference/original-code.md`` section 1.4 (JiT) and section 3 (the peers' batch sizes)."""

import pytest

from jit_jax import unlearn
from jit_jax.unlearn import paper
from jit_jax.unlearn.jit import PRESETS, JiTConfig, preset

# (task, model) -> (sigma, lr, forget batch) in the authors' code
AUTHORS_JIT = {
    ("class", "vit_b16"): (0.8, 1.5, 128), ("class", "vgg11_torchvision"): (0.5, 3e-4, 128),
    ("subclass", "vit_b16"): (1.5, 0.5, 64), ("subclass", "vgg11_torchvision"): (0.01, 3e-4, 64),
    ("random", "vit_b16"): (0.5, 0.1, 128), ("random", "vgg11_torchvision"): (0.01, 3e-4, 128),
}


@pytest.mark.parametrize("task,model", list(AUTHORS_JIT), ids=str)
def test_paper_jit_is_the_authors_run(task, model):
    cfg = paper.jit_config(task, model)
    assert (cfg.sigma, cfg.lr, cfg.batch_size) == AUTHORS_JIT[(task, model)]
    assert cfg.reference_quirks  # accumulated gradients and train mode, as their code runs
    assert cfg.num_samples == 25 and cfg.passes == 1 and cfg.p == 1
    opts = paper.options(task, model, "jit")
    assert JiTConfig().replace(**opts) == cfg


def test_other_models_get_the_authors_cnn_row_of_the_same_task():
    for task in paper.TASKS:
        for model in ("resnet18", "vgg11", "cnn", "mlp"):
            assert preset(task, model) == PRESETS[(task, "vgg11_torchvision")], (task, model)
            assert paper.jit_config(task, model) == paper.jit_config(task, "vgg11_torchvision")
    assert preset("subclass", "resnet18").sigma == 0.01  # was the full-class 0.5 before
    assert preset("random", "vit_s16") == PRESETS[("random", "vit")]
    with pytest.raises(ValueError, match="unknown task 'pairs'"):
        preset("pairs", "resnet18")


def test_peer_options_are_the_authors_and_accepted_by_the_methods():
    sub = paper.options("subclass", "vgg11_torchvision", "ssd")
    assert sub == {"batch_size": 64, "full_order": "retain_then_forget"}
    assert paper.options("subclass", "vit_b16", "scrub") == {"batch_size": 64}
    assert paper.options("subclass", "resnet18", "fntn") == {"batch_size": 64}
    assert paper.options("class", "vit_b16", "bt") == {"batch_size": 128, "teacher": "random_head"}
    assert paper.options("class", "vgg11_torchvision", "bt") == {}
    assert paper.options("random", "vgg11_torchvision", "ssd") == {}
    for (task, fam), methods in paper.PEERS.items():
        for method, opts in methods.items():
            accepted = unlearn.option_types(method)
            assert set(opts) <= set(accepted), (task, fam, method, opts, accepted)
    with pytest.raises(ValueError, match="unknown method 'sgd'"):
        paper.options("class", "vgg11", "sgd")
    with pytest.raises(ValueError, match="unknown task"):
        paper.jit_config("everything", "vgg11")
    # every table names a task the settings cover
    for task, _, models in paper.TABLES.values():
        for model in models:
            paper.jit_config(task, model)
