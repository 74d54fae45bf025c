"""Which implementations of conv, BatchNorm and max-pool the encoder computes with
(`config.model.kernels`): XLA's own ops ("xla"), or the rewrites in `xla_cpu` ("cpu", this
package's one module), which compute the same sums in forms XLA:CPU runs fast. "auto" takes the
rewrites where JAX's default backend is a CPU and XLA's ops elsewhere. Both give the same
parameters, so a checkpoint moves between them, and tests check that they compute the same
outputs and gradients.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
from flax import nnx

from selfsup.models.kernels import xla_cpu

KERNEL_NAMES = ("auto", "xla", "cpu")


@dataclasses.dataclass(frozen=True)
class Kernels:
    """conv: `jax.lax.conv_general_dilated`'s signature (what `nnx.Conv` calls); norm: a module
    class with `nnx.BatchNorm`'s constructor and call; pool: `nnx.max_pool`'s signature."""

    conv: Callable[..., jax.Array]
    norm: type[nnx.BatchNorm]
    pool: Callable[..., jax.Array]


XLA = Kernels(conv=jax.lax.conv_general_dilated, norm=nnx.BatchNorm, pool=nnx.max_pool)
CPU = Kernels(conv=xla_cpu.conv_general_dilated, norm=xla_cpu.BatchNorm, pool=xla_cpu.max_pool)


def kernels_for(name: str) -> Kernels:
    """The kernels `name` (one of KERNEL_NAMES) selects; "auto" asks JAX's default backend."""
    if name not in KERNEL_NAMES:
        raise ValueError(f"kernels must be one of {KERNEL_NAMES}, got {name!r}")
    if name == "auto":
        name = "cpu" if jax.default_backend() == "cpu" else "xla"
    return CPU if name == "cpu" else XLA
