"""Data parallelism: one mesh axis over devices, the batch split along it, everything else
replicated. The same step function runs on one device or many; XLA adds the cross-device sums.

Used by :func:`jit_jax.unlearn.jit.jit_unlearn` (``mesh=``) and :func:`jit_jax.train.train`
(``mesh=``), and by ``jit-jax train/unlearn --devices``.
"""

from __future__ import annotations

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
