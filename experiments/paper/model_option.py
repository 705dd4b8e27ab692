"""Copy a checkpoint with a model option changed that adds or removes no parameters, e.g. a
dropout rate, so a method can run on the same weights with and without the option.

    python experiments/paper/model_option.py runs/paper/table2-vgg-s12/original \\
        runs/probes/t2vgg-drop-on --set dropout=0.5

Why. The authors run their unlearning methods with the model in train mode, so the dropout layers
of their torchvision VGG11 head are active during them; the twins' CIFAR-layout VGG11 has no
dropout. With this copy, ``jit-jax unlearn --checkpoint DST`` runs a method on the original's own
weights with dropout active in train mode (evaluation is in eval mode either way), and the effect
of dropout on the method is measured apart from the weights.

The copy holds the source's parameters (and BatchNorm statistics, if any) bit for bit; a change
that alters the parameter tree (names, shapes or dtypes; e.g. ``width``) is refused with the
arrays that differ. The metadata is the source's, with the new model options and a
``derived_from`` entry naming the source and the options changed. An existing destination is
refused (nothing is overwritten).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def derive(src: str | Path, dst: str | Path, changes: dict) -> Path:
    """Writes the copy of ``src`` with model options ``changes`` at ``dst``; returns ``dst``.
    The source's arrays are saved under the new spec, and :func:`jit_jax.checkpoint.restore`,
    which checks that saved arrays fit the spec they are restored with, then reads the copy
    back; a copy that does not fit is removed."""
    import shutil

    from jit_jax import checkpoint
    from jit_jax.models import ModelSpec

    if not changes:
        raise ValueError("no option to change; give at least one --set KEY=VALUE")
    dst = Path(dst)
    if dst.exists():
        raise FileExistsError(f"{dst} already exists; choose a new destination (nothing is "
                              f"overwritten)")
    model, meta = checkpoint.restore(src)
    spec = ModelSpec.from_dict(meta["model"])
    new_spec = ModelSpec(spec.name, spec.num_classes, spec.input_shape, {**spec.kwargs, **changes})
    extra = {k: v for k, v in meta.items() if k not in ("model", "jit_jax_version")}
    extra["derived_from"] = {"checkpoint": str(Path(src).absolute()), "model_options": changes}
    out = checkpoint.save(dst, model, new_spec, extra)
    try:
        checkpoint.restore(out)
    except checkpoint.CheckpointError as e:
        shutil.rmtree(out)
        raise ValueError(f"{changes} changes the model's Param arrays or its BatchNorm "
                         f"statistics; accepted: options that add or remove no parameters (e.g. "
                         f"dropout). {e}") from e
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("src", help="a jit-jax checkpoint")
    p.add_argument("dst", help="the new checkpoint (must not exist)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="a model option to change, repeatable (e.g. dropout=0.5)")
    a = p.parse_args(argv)
    from jit_jax import checkpoint, models
    from jit_jax.options import parse_options

    try:
        meta = checkpoint.load_metadata(a.src)
        changes = parse_options(a.set, "model", models.option_types(meta["model"]["name"]))
        out = derive(a.src, a.dst, changes)
    except (ValueError, FileExistsError, checkpoint.CheckpointError) as e:
        p.error(str(e))
    print(f"{out}: {a.src} with {changes}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
