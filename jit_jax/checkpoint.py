"""Checkpoints: a model's state (parameters and BatchNorm statistics) plus JSON metadata, via orbax.

Layout of a checkpoint directory::

    RUN/
      metadata.json   model spec (name, num_classes, input_shape, options), dataset, class names,
                      normalisation, training config, metrics, jit-jax version, anything else given
      state/          orbax StandardCheckpointer of {"params": ..., "batch_stats": ...} (pure dicts)

A checkpoint is written to a temporary sibling directory and renamed into place, so a crash never
leaves a half-written checkpoint under the final name, and an existing checkpoint is never replaced
unless ``overwrite=True``. Restoring rebuilds the model from its spec and loads the arrays bit-exactly.
Dropout RNG streams are not saved: they are re-seeded from the metadata's seed.
"""

from __future__ import annotations

import json
import shutil
import uuid
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

import jit_jax
from jit_jax.models import ModelSpec

METADATA = "metadata.json"
STATE = "state"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete or unreadable."""


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    return obj


def _state_dicts(model: nnx.Module) -> dict:
    params, stats = nnx.state(model, nnx.Param, nnx.BatchStat)
    return {"params": nnx.to_pure_dict(params), "batch_stats": nnx.to_pure_dict(stats)}


def save(path: str | Path, model: nnx.Module, spec: ModelSpec, metadata: dict | None = None, *,
         overwrite: bool = False) -> Path:
    """Save ``model`` (built from ``spec``) and ``metadata`` to the directory ``path``.

    Raises ``FileExistsError`` if ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path).absolute()
    if path.exists() and not overwrite:
        raise FileExistsError(f"checkpoint {path} already exists; choose a new path or pass "
                              "overwrite=True (--overwrite) to replace it")
    meta = dict(metadata or {})
    meta["model"] = spec.to_dict()
    meta["jit_jax_version"] = jit_jax.__version__
    text = json.dumps(_jsonable(meta), indent=2, allow_nan=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        tmp.mkdir()
        ckptr = ocp.StandardCheckpointer()
        ckptr.save(tmp / STATE, _state_dicts(model))
        ckptr.wait_until_finished()
        ckptr.close()
        (tmp / METADATA).write_text(text)
        if path.exists():  # overwrite=True: swap only once the new checkpoint is complete
            old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
            path.rename(old)
            tmp.rename(path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(path)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return path


def load_metadata(path: str | Path) -> dict:
    """The metadata of the checkpoint at ``path`` (raises ``CheckpointError`` with the reason)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"no checkpoint at {path}: the path does not exist")
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a checkpoint directory (expected {METADATA} and "
                              f"{STATE}/ inside)")
    meta_file = path / METADATA
    if not meta_file.is_file():
        raise CheckpointError(f"{path} is not a jit-jax checkpoint: {METADATA} is missing")
    try:
        meta = json.loads(meta_file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"corrupt checkpoint {path}: {METADATA} is not valid JSON ({e})") from e
    if not isinstance(meta, dict) or "model" not in meta:
        raise CheckpointError(f"corrupt checkpoint {path}: {METADATA} has no 'model' entry")
    return meta


def restore(path: str | Path) -> tuple[nnx.Module, dict]:
    """Rebuild the model saved at ``path`` and return ``(model in eval mode, metadata)``."""
    path = Path(path)
    meta = load_metadata(path)
    try:
        spec = ModelSpec.from_dict(meta["model"])
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"corrupt checkpoint {path}: bad model spec {meta['model']!r} ({e})") from e
    state_dir = path / STATE
    if not state_dir.is_dir():
        raise CheckpointError(f"corrupt checkpoint {path}: the {STATE}/ directory is missing")
    model = spec.build(seed=int(meta.get("seed", 0)))
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, _state_dicts(model))
    try:
        ckptr = ocp.StandardCheckpointer()
        restored = ckptr.restore(state_dir.absolute(), target)
        ckptr.close()
    except Exception as e:  # orbax raises many types for truncated / mismatched files
        raise CheckpointError(f"corrupt or incompatible checkpoint {path}: could not restore "
                              f"{STATE}/ ({type(e).__name__}: {e})") from e
    params, stats = nnx.state(model, nnx.Param, nnx.BatchStat)
    nnx.replace_by_pure_dict(params, restored["params"])
    nnx.replace_by_pure_dict(stats, restored["batch_stats"])
    nnx.update(model, params, stats)
    model.eval()
    return model, meta
