"""Device mesh and shardings for data-parallel training on 1 device, 8 devices or many hosts.

Everything is sharded over one `("data",)` mesh axis: batches along their leading axis,
parameters and optimizer state replicated. The mesh uses `AxisType.Auto`, so code written for
the global batch (BatchNorm statistics, NT-Xent negatives) stays global under `jax.jit` and XLA
inserts the collectives.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from selfsup.config import ConfigError

DATA_AXIS = "data"


def make_mesh() -> Mesh:
    """A 1-D mesh over every device of every process."""
    return jax.make_mesh(
        (jax.device_count(),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,)
    )


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split over devices."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def local_batch_size(global_batch_size: int, mesh: Mesh, *, what: str = "batch_size") -> int:
    """This process's share of a global batch; errors if it does not divide over devices."""
    num_devices = mesh.devices.size
    if global_batch_size <= 0 or global_batch_size % num_devices:
        raise ConfigError(
            f"config.{what}={global_batch_size} does not divide over {num_devices} devices: "
            f"set --config.{what} to a positive multiple of {num_devices}."
        )
    return global_batch_size // jax.process_count()


def to_global(host_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles per-process batches into global arrays sharded along the batch axis."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in host_batch.items()}
