"""Data parallelism: one mesh axis over devices, the batch split along it, everything else
replicated. The same step function runs on one device or many; XLA adds the cross-device sums.

Used by :func:`jit_jax.unlearn.jit.jit_unlearn` (``mesh=``) and :func:`jit_jax.train.train`
(``mesh=``), and by ``jit-jax train/unlearn --devices``.

Beyond one machine: :func:`initialize_distributed` joins a ``jax.distributed`` run of several
processes (``jit-jax train/unlearn --distributed``), after which the mesh spans every process's
devices; :func:`replicate`, :func:`shard_batch` and :func:`host_local` move state and batches
between process-local and global arrays (docs/distributed.md).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec


def data_mesh(devices: Any = None, axis: str = "data") -> Mesh:
    """A one-axis mesh: ``devices`` is None (all of ``jax.devices()``), a count (the first
    ``devices`` of them) or a sequence of devices."""
    avail = jax.devices()
    if devices is None:
        devs = avail
    elif isinstance(devices, int) and not isinstance(devices, bool):
        if not 1 <= devices <= len(avail):
            raise ValueError(f"devices={devices}: accepted 1..{len(avail)} (the {len(avail)} "
                             f"{avail[0].platform} device(s) jax sees)")
        devs = avail[:devices]
    else:
        devs = list(devices)
        if not devs:
            raise ValueError("devices is an empty sequence; give None (all), a count or devices")
    return Mesh(np.asarray(devs), (axis,))


def mesh_from_flag(value: str) -> Mesh:
    """The command line's ``--devices N|all``."""
    if value == "all":
        return data_mesh()
    if value.isdigit():
        return data_mesh(int(value))
    raise ValueError(f"--devices {value!r}; accepted: a device count or 'all'")


def data_shardings(mesh: Mesh, axis: str = "data") -> tuple[NamedSharding, NamedSharding]:
    """``(replicated, batch)``: the sharding of state that every device holds whole, and of arrays
    split along their first axis over ``axis`` (``mesh.shape[axis]`` ways)."""
    if axis not in mesh.axis_names:
        raise ValueError(f"data_axis={axis!r} is not an axis of the mesh; accepted: "
                         f"{list(mesh.axis_names)}")
    return NamedSharding(mesh, PartitionSpec()), NamedSharding(mesh, PartitionSpec(axis))


# ------------------------------------------------------------------------------------------------
# Many processes (jax.distributed): one per host, or per accelerator, each with its local devices
# ------------------------------------------------------------------------------------------------
#: The environment variables :func:`initialize_distributed` reads (jax itself reads only the first).
ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"


def _int_setting(value: Any, env: str, name: str) -> int | None:
    """``value``, else the environment variable ``env``, as an integer >= 0 (None when unset)."""
    source = name
    if value is None:
        value = os.environ.get(env, "").strip()
        if not value:
            return None
        source = f"{env}={value!r}"
    try:
        number = None if isinstance(value, bool) else int(str(value).strip())
    except ValueError:
        number = None
    if number is None or number < 0:
        raise ValueError(f"{source}: accepted: an integer >= 0")
    return number


def initialize_distributed(coordinator: str | None = None, num_processes: int | None = None,
                           process_id: int | None = None, **options: Any) -> dict:
    """Join a multi-process jax run (``jax.distributed.initialize``); call it before any other jax
    use (device queries, arrays, computation). Afterwards ``jax.devices()`` lists every process's
    devices, so :func:`data_mesh` spans them all.

    Each setting left None is read from the environment (``JAX_COORDINATOR_ADDRESS`` ``host:port``
    of process 0, ``JAX_NUM_PROCESSES``, ``JAX_PROCESS_ID``); what is still unset is left to jax's
    cluster auto-detection (Cloud TPU pod slices, SLURM, Open MPI), which fills all three there.
    Outside such a cluster all three are needed, and a partial setting raises ``ValueError``
    naming what is missing. ``options`` go to ``jax.distributed.initialize`` (e.g.
    ``initialization_timeout=60``, ``local_device_ids=[0]``). On CPUs the cross-process
    collectives are gloo's (jax's ``jax_cpu_collectives_implementation``, set to ``"gloo"``
    unless already chosen). Calling it again once initialised does nothing.

    Returns ``{"process_id", "num_processes", "local_devices", "devices"}``.
    """
    if not jax.distributed.is_initialized():
        coordinator = coordinator or os.environ.get(ENV_COORDINATOR, "").strip() or None
        num_processes = _int_setting(num_processes, ENV_NUM_PROCESSES, "num_processes")
        process_id = _int_setting(process_id, ENV_PROCESS_ID, "process_id")
        if num_processes is not None and num_processes < 1:
            raise ValueError(f"num_processes={num_processes}; accepted: an integer >= 1")
        if num_processes is not None and process_id is not None and process_id >= num_processes:
            raise ValueError(f"process_id={process_id} with num_processes={num_processes}; "
                             f"accepted: 0..{num_processes - 1}")
        settings = {"coordinator": (coordinator, ENV_COORDINATOR),
                    "num_processes": (num_processes, ENV_NUM_PROCESSES),
                    "process_id": (process_id, ENV_PROCESS_ID)}
        if not jax.config.jax_cpu_collectives_implementation:
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        try:
            jax.distributed.initialize(coordinator, num_processes, process_id, **options)
        except ValueError as e:  # what jax's auto-detection could not fill in
            given = [f"{k}={v!r}" for k, (v, _) in settings.items() if v is not None]
            missing = [f"{k} ({env})" for k, (v, env) in settings.items() if v is None]
            if not missing:
                raise
            raise ValueError(
                f"cannot start a distributed run ({e}): "
                + (f"given {', '.join(given)} but " if given else "")
                + f"missing {', '.join(missing)}, and no cluster jax detects (Cloud TPU, SLURM, "
                "Open MPI) supplied it; set all three on every process (the coordinator is "
                "process 0's host:port)") from e
        except RuntimeError as e:
            if "before any JAX" in str(e) or "must be called before" in str(e):
                raise RuntimeError("initialize_distributed() must come before any other jax use "
                                   f"in the process (devices, arrays, computation): {e}") from e
            raise
    return {"process_id": jax.process_index(), "num_processes": jax.process_count(),
            "local_devices": jax.local_device_count(), "devices": jax.device_count()}


def is_multiprocess() -> bool:
    """True in a run of several jax processes (after :func:`initialize_distributed`)."""
    return jax.process_count() > 1


def _is_key(x: Any) -> bool:
    return isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key)


def replicate(tree: Any, sharding: NamedSharding) -> Any:
    """``tree`` placed whole on every device of ``sharding`` (a replicated sharding).

    In one process this is ``jax.device_put``. Across processes each array is built from this
    process's copy with ``jax.make_array_from_callback``, after the values of process 0 have been
    broadcast to all (bit for bit), so that every process starts from the same state even if they
    built it differently (typed PRNG keys included)."""
    if not is_multiprocess():
        return jax.device_put(tree, sharding)
    from jax.experimental import multihost_utils

    leaves, treedef = jax.tree.flatten(tree)
    impls = [jax.random.key_impl(x) if _is_key(x) else None for x in leaves]
    host = [np.asarray(jax.random.key_data(x) if _is_key(x) else x) for x in leaves]
    # broadcast as raw bytes: exact for every dtype (a float sum with zeros would turn -0.0 into 0.0)
    sent = multihost_utils.broadcast_one_to_all(
        [np.ascontiguousarray(h).reshape(-1).view(np.uint8) for h in host])
    host = [np.asarray(b).view(h.dtype).reshape(h.shape) for b, h in zip(sent, host, strict=True)]
    out = []
    for h, impl in zip(host, impls, strict=True):
        arr = jax.make_array_from_callback(h.shape, sharding, lambda index, h=h: h[index])
        out.append(arr if impl is None else jax.random.wrap_key_data(arr, impl=impl))
    return jax.tree.unflatten(treedef, out)


def shard_batch(data: np.ndarray, sharding: NamedSharding,
                rows: np.ndarray | None = None) -> jax.Array:
    """The global batch ``data[rows]`` (``data`` whole with ``rows=None``) split along its first
    axis as ``sharding`` says.

    In one process this is ``jax.device_put(data[rows], sharding)``. Across processes every
    process calls it with the same ``rows`` (a seeded permutation is the same everywhere) and
    reads only the rows its own devices hold (``jax.make_array_from_callback``), so the host
    memory traffic per step is this process's share of the batch."""
    data = np.asarray(data)
    if not is_multiprocess():
        return jax.device_put(data if rows is None else data[rows], sharding)
    rows = np.arange(len(data)) if rows is None else np.asarray(rows)

    def local(index):
        return data[rows[index[0]]][(slice(None), *index[1:])]

    return jax.make_array_from_callback((len(rows), *data.shape[1:]), sharding, local)


def host_local(tree: Any) -> Any:
    """``tree`` with every array that spans other processes' devices replaced by a process-local
    copy (on this process's default device), so that code after a multi-process run (evaluation,
    saving) works on plain local arrays. Replicated arrays are copied from a local shard;
    sharded ones are gathered (``process_allgather``: a collective, so every process must call
    this at the same point). Arrays this process holds whole are returned as they are."""
    from jax.experimental import multihost_utils

    def local(x):
        if not isinstance(x, jax.Array) or x.is_fully_addressable:
            return x
        if _is_key(x):
            return jax.random.wrap_key_data(local(jax.random.key_data(x)),
                                            impl=jax.random.key_impl(x))
        if x.is_fully_replicated:
            value = np.asarray(x.addressable_data(0))
        else:
            value = np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return jax.numpy.asarray(value)

    return jax.tree.map(local, tree)
