"""`import selfsup` turns XLA:CPU's single-threaded YNNPACK kernels off, unless the user chose."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import pytest

from selfsup import YNN_FLAG as YNN


def xla_flags_after_import(xla_flags: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    if xla_flags is not None:
        env["XLA_FLAGS"] = xla_flags
    code = "import os, selfsup; print(os.environ['XLA_FLAGS'])"
    return subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    ).stdout.strip()


@pytest.mark.parametrize(
    "given, expected",
    [
        (None, f"{YNN}="),
        ("--xla_cpu_enable_fast_math=false", f"--xla_cpu_enable_fast_math=false {YNN}="),
        (f"{YNN}=+dot", f"{YNN}=+dot"),  # The user's choice wins.
    ],
)  # fmt: skip
def test_import_sets_the_flag_unless_the_user_did(given, expected):
    assert xla_flags_after_import(given) == expected


def test_compiled_convolutions_and_matmuls_are_xla_own_kernels():
    """The flag reached this session's backend: no YNNPACK fusion in a compiled conv + dot
    (under XLA's defaults, `XLA_FLAGS={YNN}=+dot`, the conv is one)."""

    def f(x, kernel, w):
        y = jax.lax.conv_general_dilated(
            x, kernel, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")
        )
        return y.reshape(y.shape[0], -1) @ w

    args = (jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 4)), jnp.ones((256, 3)))
    hlo = jax.jit(f).lower(*args).compile().as_text()
    assert " convolution(" in hlo and " dot(" in hlo
    assert "__ynn_fusion" not in hlo
