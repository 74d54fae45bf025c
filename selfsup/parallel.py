"""Processes, device mesh and shardings for data-parallel training on 1 device, 8 devices or
many hosts.

Everything is sharded over one `("data",)` mesh axis: batches along their leading axis,
parameters and optimizer state replicated. The mesh uses `AxisType.Auto`, so code written for
the global batch (BatchNorm statistics, NT-Xent negatives) stays global under `jax.jit` and XLA
inserts the collectives.
"""

from __future__ import annotations

import ctypes
import platform

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from selfsup.config import ConfigError

DATA_AXIS = "data"
# What jax.distributed.initialize raises when no address is given and no cluster is detected.
_NO_CLUSTER = "coordinator_address should be defined"
# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def initialize_distributed(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
) -> None:
    """Joins this process to a multi-process run before anything touches devices.

    With an explicit coordinator (`127.0.0.1:PORT` plus the process count and this process's
    id) it connects to that. Otherwise JAX's cluster detection fills everything in on a Cloud
    TPU pod, under SLURM (`srun`), Open MPI (`mpirun`) or Kubernetes; where none is detected
    this is a single-process run and nothing happens. CPU processes talk over gloo, JAX's
    default CPU collectives.
    """
    explicit = (coordinator_address, num_processes, process_id)
    if any(v is not None for v in explicit) and None in explicit:
        raise ConfigError(
            "a multi-process run needs all of --coordinator_address=HOST:PORT, "
            "--num_processes=N and --process_id=I (or none of them, to auto-detect)."
        )
    try:
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    except ValueError as e:
        if coordinator_address is None and _NO_CLUSTER in str(e):
            return  # No cluster around: one process.
        raise


def reuse_step_memory() -> None:
    """On a CPU, lets every step reuse the memory the step before it freed, instead of having
    the kernel fault in and zero fresh pages; the commands call it before JAX starts a backend.

    XLA:CPU allocates a step's buffers afresh in every step, and glibc's malloc maps blocks that
    large from the kernel and unmaps them when they are freed, so each step faults in every
    page again. Two settings let the blocks be reused, as XLA's GPU and TPU allocators reuse
    theirs: single-device CPU steps run on the calling thread
    (`jax_cpu_enable_async_dispatch=False`), whose blocks come from glibc's main heap (a runtime
    thread's blocks this large are always mapped afresh), and `keep_freed_host_memory`
    (measurements: `experiments/bench/RESULTS.md`, change 9). Only the CPU client reads the
    first setting; the second is made only when the default backend is the CPU. Computations
    over several CPU devices still run on runtime threads and still fault.
    Code that runs `pretrain` or `evaluate` itself can call it first, as the commands do.
    """
    jax.config.update("jax_cpu_enable_async_dispatch", False)
    if jax.default_backend() == "cpu":
        keep_freed_host_memory()


def keep_freed_host_memory() -> None:
    """glibc's malloc serves large blocks from its heap and keeps what is freed there for reuse
    (`mallopt`: no mmap, no trim), as a caching allocator would: the process keeps the most
    memory it needed until it exits. Does nothing on other C libraries."""
    if platform.libc_ver()[0] != "glibc":
        return
    libc = ctypes.CDLL(None)  # The process's own symbols, glibc's among them.
    libc.mallopt(_M_MMAP_MAX, 0)
    libc.mallopt(_M_TRIM_THRESHOLD, -1)


def return_freed_host_memory() -> None:
    """Gives the free memory inside glibc's heaps back to the kernel (`malloc_trim`), whatever
    `keep_freed_host_memory` set. For work that streams a dataset through the heap (feature
    extraction): the holes its batches leave stay resident otherwise, and add up with the
    data. Does nothing on other C libraries."""
    if platform.libc_ver()[0] == "glibc":
        ctypes.CDLL(None).malloc_trim(0)


def any_process(flag: bool) -> bool:
    """True if `flag` is set on any process. Every process must call it at the same point:
    decisions taken on host-local facts (a SIGTERM that reached one host) must be agreed on,
    or the processes stop at different steps and the rest hang in the next collective."""
    if jax.process_count() == 1:
        return flag
    return bool(multihost_utils.process_allgather(np.asarray(flag)).any())


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


def padded_batch_size(global_batch_size: int, mesh: Mesh) -> int:
    """`global_batch_size` rounded up to a multiple of the device count, for evaluation, whose
    batches are padded and masked: any configured size then runs on any number of devices."""
    num_devices = mesh.devices.size
    return -(-global_batch_size // num_devices) * num_devices


def to_global(host_batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
    """Assembles per-process batches into global arrays sharded along the batch axis."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in host_batch.items()}
