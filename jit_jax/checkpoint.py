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


def _this_process_only() -> ocp.options.MultiprocessingOptions:
    """orbax options for a checkpoint that this process writes or reads on its own, without
    waiting for the others of a multi-process run (there, process 0 alone writes: jit_jax.cli)."""
    me = jax.process_index()
    return ocp.options.MultiprocessingOptions(primary_host=me, active_processes={me})


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
        ckptr = ocp.StandardCheckpointer(multiprocessing_options=_this_process_only())
        state = _state_dicts(model)
        if jax.process_count() > 1:  # orbax refuses process-local jax arrays there; numpy it takes
            state = jax.tree.map(np.asarray, state)
        ckptr.save(tmp / STATE, state)
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
    """Rebuild the model saved at ``path`` and return ``(model in eval mode, metadata)``.

    Raises ``CheckpointError`` when the checkpoint is missing, corrupt, or when its saved arrays do
    not fit the model its metadata describes (the error names each mismatching array and both
    shapes, e.g. after ``metadata.json``'s model entry was edited).
    """
    path = Path(path)
    meta = load_metadata(path)
    try:
        spec = ModelSpec.from_dict(meta["model"])
        model = spec.build(seed=int(meta.get("seed", 0)))
    except (TypeError, ValueError, KeyError) as e:
        raise CheckpointError(f"corrupt checkpoint {path}: bad model spec {meta['model']!r} ({e})") from e
    state_dir = path / STATE
    if not state_dir.is_dir():
        raise CheckpointError(f"corrupt checkpoint {path}: the {STATE}/ directory is missing")
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, _state_dicts(model))

    def arrays(tree) -> dict[str, tuple[tuple[int, ...], str]]:
        flat, _ = jax.tree_util.tree_flatten_with_path(tree)
        return {"/".join(str(getattr(k, "key", k)) for k in kp):
                (tuple(leaf.shape), str(np.dtype(leaf.dtype))) for kp, leaf in flat}

    ckptr = ocp.StandardCheckpointer(multiprocessing_options=_this_process_only())
    try:
        try:  # the saved arrays' shapes and dtypes, read from orbax's metadata (no array data)
            saved = arrays(ckptr.metadata(state_dir.absolute()).item_metadata.tree)
        except Exception:  # unreadable metadata: the restore below reports the checkpoint as corrupt
            saved = None
        if saved is not None:
            wanted = arrays(target)
            problems = [f"{k}: saved {saved[k][0]} {saved[k][1]}, spec builds {v[0]} {v[1]}"
                        for k, v in wanted.items() if k in saved and saved[k] != v]
            for names, where in ((sorted(set(wanted) - set(saved)), "missing from the checkpoint"),
                                 (sorted(set(saved) - set(wanted)), "not in the spec's model")):
                if names:
                    problems.append(f"{len(names)} array(s) {where}: {', '.join(names[:4])}"
                                    + (f" and {len(names) - 4} more" if len(names) > 4 else ""))
            if problems:
                shown = "; ".join(problems[:6]) + (f"; and {len(problems) - 6} more"
                                                   if len(problems) > 6 else "")
                raise CheckpointError(
                    f"checkpoint {path}: the saved state does not match the model spec in its "
                    f"{METADATA} (name={spec.name!r}, num_classes={spec.num_classes}, "
                    f"input_shape={spec.input_shape}, options={spec.kwargs}): {shown}. Was the "
                    f"{METADATA} 'model' entry edited, or {STATE}/ copied from another run? "
                    f"Restore the spec the checkpoint was saved with.")
        try:
            restored = ckptr.restore(state_dir.absolute(), target)
        except Exception as e:  # orbax raises many types for truncated / mismatched files
            raise CheckpointError(f"corrupt or incompatible checkpoint {path}: could not restore "
                                  f"{STATE}/ ({type(e).__name__}: {e})") from e
    finally:
        ckptr.close()
    params, stats = nnx.state(model, nnx.Param, nnx.BatchStat)
    nnx.replace_by_pure_dict(params, restored["params"])
    nnx.replace_by_pure_dict(stats, restored["batch_stats"])
    nnx.update(model, params, stats)
    model.eval()
    return model, meta


# ------------------------------------------------------------------------------------------------
# training state, for resuming an interrupted run
# ------------------------------------------------------------------------------------------------
TRAIN_STATE_KEEP = 2  # saved epochs kept in a training-state directory


def _is_key(x) -> bool:
    return jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def _key_data(tree):
    """``tree`` with its typed PRNG keys replaced by their raw key data (what orbax can write)."""
    return jax.tree.map(lambda x: jax.random.key_data(x) if _is_key(x) else x, tree)


class TrainingState:
    """The full state of a training run, saved every few epochs so that an interrupted run can
    continue (``jit_jax.train.train(..., state_dir=...)``).

    ``directory`` is an orbax ``CheckpointManager`` directory with one sub-directory per saved
    epoch (the last ``max_to_keep`` are kept), each holding ``arrays/`` (a pytree of arrays; typed
    PRNG keys are written as their key data and wrapped again on restore) and ``info/`` (JSON).
    Saves are synchronous, and orbax writes each into a temporary directory renamed when complete,
    so a process killed at any moment leaves the earlier epochs readable and never a partial one.
    Nothing is created on disk before the first save.
    """

    def __init__(self, directory: str | Path, *, max_to_keep: int = TRAIN_STATE_KEEP):
        self.directory = Path(directory).absolute()
        if self.directory.exists() and not self.directory.is_dir():
            raise CheckpointError(f"training-state path {self.directory} is not a directory")
        self._manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, create=False, enable_async_checkpointing=False))

    def epochs(self) -> list[int]:
        """The saved epochs, oldest first."""
        return sorted(self._manager.all_steps())

    def latest_epoch(self) -> int | None:
        return self._manager.latest_step()

    def save(self, epoch: int, arrays: Any, info: dict) -> None:
        """Write epoch ``epoch``: ``arrays`` (a pytree of arrays) and ``info`` (JSON-able)."""
        self._manager.save(epoch, args=ocp.args.Composite(
            arrays=ocp.args.StandardSave(_key_data(arrays)),
            info=ocp.args.JsonSave(_jsonable(info))))
        self._manager.wait_until_finished()

    def info(self, epoch: int) -> dict:
        """The JSON part of a saved epoch (cheap: no arrays are read)."""
        try:
            return dict(self._manager.restore(
                epoch, args=ocp.args.Composite(info=ocp.args.JsonRestore())).info)
        except Exception as e:  # orbax raises many types for missing / truncated files
            raise CheckpointError(f"corrupt training state {self.directory}, epoch {epoch}: "
                                  f"could not read its info ({type(e).__name__}: {e})") from e

    def restore(self, like: Any, epoch: int) -> Any:
        """The arrays of a saved epoch, with the structure, shapes, dtypes and shardings of
        ``like`` (typed PRNG keys in ``like`` come back as keys of the same implementation)."""
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, _key_data(like))
        try:
            arrays = self._manager.restore(epoch, args=ocp.args.Composite(
                arrays=ocp.args.StandardRestore(target))).arrays
        except Exception as e:
            raise CheckpointError(f"corrupt or incompatible training state {self.directory}, "
                                  f"epoch {epoch}: could not restore its arrays "
                                  f"({type(e).__name__}: {e})") from e

        def fit(ref, x):
            if not getattr(ref, "committed", True):  # as created by computation: a committed copy
                x = jax.numpy.asarray(np.asarray(x))  # would make jitted functions recompile
            return jax.random.wrap_key_data(x, impl=jax.random.key_impl(ref)) if _is_key(ref) else x

        return jax.tree.map(fit, like, arrays)

    def close(self) -> None:
        self._manager.close()

    def __enter__(self) -> TrainingState:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def saved_epochs(directory: str | Path) -> list[int]:
    """The epochs saved in a training-state directory ([] when it does not exist)."""
    if not Path(directory).is_dir():
        return []
    with TrainingState(directory) as state:
        return state.epochs()
