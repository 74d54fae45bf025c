"""Kernel selection (`config.model.kernels`), and the two kernel sets computing the same encoder:
for one encoder per code path of the config files' encoders (each stem, each block type, every
conv arithmetic of the rewrites; fp32 and bf16), XLA's ops (what accelerators run) and the
XLA:CPU rewrites agree on the CPU in every feature map, running average and gradient,
parameters and input alike."""

import functools
from pathlib import Path
from unittest import mock

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from selfsup.config import load_config_file
from selfsup.models import kernels as kernel_choices
from selfsup.models.kernels import CPU, XLA, kernels_for, xla_cpu
from selfsup.models.resnet import BLOCKS, from_config
from selfsup.train.state import split_model

ROOT = Path(__file__).resolve().parents[1]
# One encoder per code path: the CIFAR stem with basic blocks at 16 px, the ImageNet stem (7x7
# conv, max pool) with bottleneck blocks at 32 px. Between them every conv arithmetic of the
# rewrites runs, forward and backward: XLA's conv, strided, im2col, pixel-pair and 1x1 matmul
# (at 32 px the ImageNet stem's maps shrink from 16 to 1; larger inputs only add larger maps on
# XLA's conv). Other depths and sizes repeat these paths. The bottleneck encoder is ResNet-50
# with 1, 1, 2, 2 blocks per stage (not 3, 4, 6, 3): each stage's first block (stride 1, then 2,
# with a projection shortcut), and an identity block in stage3 and stage4, whose 2 px and 1 px
# maps are smaller than the 3x3 kernel (stage1 and stage2's identity blocks are XLA's conv, as
# stage1's first block is). ResNet-50's other blocks only repeat these.
ENCODERS = [(18, "cifar", 16, (2, 2, 2, 2)), (50, "imagenet", 32, (1, 1, 2, 2))]


def test_auto_takes_the_rewrites_on_a_cpu_and_xla_ops_elsewhere(monkeypatch):
    assert kernels_for("auto") is CPU and jax.default_backend() == "cpu"
    assert kernels_for("cpu") is CPU and kernels_for("xla") is XLA
    assert CPU.conv is xla_cpu.conv_general_dilated and XLA.conv is jax.lax.conv_general_dilated
    for backend in ("gpu", "tpu"):
        monkeypatch.setattr(jax, "default_backend", lambda backend=backend: backend)
        assert kernels_for("auto") is XLA and kernels_for("cpu") is CPU
    with pytest.raises(ValueError, match="'auto', 'xla', 'cpu'"):
        kernels_for("cuda")
    assert kernel_choices.KERNEL_NAMES == ("auto", "xla", "cpu")


def test_the_compared_encoders_take_every_stem_and_block_of_the_configs():
    """Every config file's encoder, full size and runlocal, is made of a stem and a block type
    that `ENCODERS` compares."""
    found = set()
    for path in sorted((ROOT / "configs").glob("*.py")):
        if "def get_config(" not in path.read_text():
            continue  # configs/common.py: pieces, no config.
        for arg in (None, "runlocal"):
            config = load_config_file(path, arg)
            runs = [t.pretrain for t in config.tasks.values()] if "tasks" in config else [config]
            found |= {(r.model.stem, BLOCKS[r.model.depth][0]) for r in runs if "model" in r}
    compared = {(stem, BLOCKS[depth][0]) for depth, stem, _, _ in ENCODERS}
    assert {stem for stem, _ in found} <= {stem for stem, _ in compared}
    assert {block for _, block in found} <= {block for _, block in compared}
    assert len(found) >= 2


@functools.cache
def encoder_outputs(depth: int, stem: str, size: int, blocks: tuple, dtype: str, kernels: str):
    """Feature maps, running averages and gradients (params, input) of a training-mode encoder
    with `blocks` blocks per stage and BatchNorm scales and biases drawn at random (so that no
    residual branch is zero) under a random linear loss on every feature map, as float64 NumPy
    arrays; and the parameters."""
    model = ml_collections.ConfigDict(
        dict(depth=depth, stem=stem, width=0.125, dtype=dtype, kernels=kernels)
    )
    with mock.patch.dict(BLOCKS, {depth: (BLOCKS[depth][0], blocks)}):
        encoder = from_config(model, rngs=nnx.Rngs(jax.random.key(0, impl="rbg")))
    graphdef, params, stats = split_model(encoder)
    init = params
    params = {**params}  # Zero-initialised BatchNorm scales would hide the residual branches.
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.key(1), len(leaves))
    params = jax.tree.unflatten(
        treedef,
        [
            p if p.ndim > 1 else jax.random.uniform(k, p.shape, minval=0.5, maxval=1.5)
            for p, k in zip(leaves, keys)
        ],
    )
    # Enough images that every BatchNorm normalises at least 16 values per channel.
    smallest_map = -(-size // (32 if stem == "imagenet" else 8))
    x = jax.random.normal(jax.random.key(2), (max(4, 16 // smallest_map**2), size, size, 3))

    def loss(params, x):
        model = nnx.merge(graphdef, params, stats)
        features = model.features(x, train=True)
        total = sum(
            jnp.sum(
                features[name].astype(jnp.float32) * jax.random.normal(key, features[name].shape)
            )
            for name, key in zip(sorted(features), jax.random.split(jax.random.key(3), 6))
        )
        return total, (features, nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)))

    grads, (features, stats) = jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))(params, x)
    arrays = {"features": features, "running averages": stats, "gradients": grads}
    return jax.tree.map(np.asarray, arrays), init


def distance(a, b) -> float:
    """|a - b| / |b| in the 2-norm over all arrays of two trees of the same structure."""
    assert jax.tree.structure(a) == jax.tree.structure(b)
    pairs = [
        (x.astype(np.float64), y.astype(np.float64)) for x, y in zip(*map(jax.tree.leaves, (a, b)))
    ]
    diff = sum(np.sum((x - y) ** 2) for x, y in pairs)
    norm = sum(np.sum(y**2) for _, y in pairs)
    return float(np.sqrt(diff / norm)) if norm else float(diff > 0) * np.inf


def arrays_by_name(tree) -> dict:
    return {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_flatten_with_path(tree)[0]}


def encoder_id(encoder: tuple[int, str, int, tuple]) -> str:
    depth, stem, size, blocks = encoder
    return f"resnet{depth}-blocks{''.join(map(str, blocks))}-{stem}-{size}px"


@pytest.mark.slow
@pytest.mark.parametrize("depth, stem, size, blocks", ENCODERS, ids=map(encoder_id, ENCODERS))
def test_xla_ops_and_cpu_rewrites_compute_the_same_encoder(depth, stem, size, blocks):
    """Same parameters (so checkpoints move between kernel sets), and the same outputs and
    gradients up to rounding: `check_float32` and `check_bfloat16`."""
    xla, xla_init = encoder_outputs(depth, stem, size, blocks, "float32", "xla")
    cpu, cpu_init = encoder_outputs(depth, stem, size, blocks, "float32", "cpu")
    jax.tree.map(np.testing.assert_array_equal, cpu_init, xla_init)
    check_float32(xla, cpu)
    xla_bf16, _ = encoder_outputs(depth, stem, size, blocks, "bfloat16", "xla")
    cpu_bf16, _ = encoder_outputs(depth, stem, size, blocks, "bfloat16", "cpu")
    check_bfloat16(xla, xla_bf16, cpu_bf16)


def check_float32(xla: dict, cpu: dict) -> None:
    """Both kernel sets compute the same sums in other orders: float32 rounding (6e-8) grows to
    about 1e-5 through 20 layers of BatchNorm, while a wrong sum is off by order 1."""
    xla, cpu = arrays_by_name(xla), arrays_by_name(cpu)
    assert {name: a.dtype for name, a in cpu.items()} == {name: a.dtype for name, a in xla.items()}
    errors = {name: distance(cpu[name], xla[name]) for name in xla}
    assert max(errors.values()) < 1e-4, sorted(errors.items(), key=lambda kv: -kv[1])[:3]


def check_bfloat16(float32: dict, xla: dict, cpu: dict) -> None:
    """In bfloat16 every layer rounds to 8 significant bits, and the network amplifies that:
    XLA's own bf16 gradients differ from its float32 ones by tens of percent here (BatchNorm
    over few values, max-pool windows whose maximum moves). So the rewrites must be as close to
    float32 as XLA's ops are: the two differ by no more than twice bf16's own error."""
    assert jax.tree.map(lambda a: a.dtype, cpu) == jax.tree.map(lambda a: a.dtype, xla)
    assert {a.dtype for a in jax.tree.leaves(xla["features"])} == {
        np.dtype(jnp.bfloat16),
        np.dtype(np.float32),  # Pooled features.
    }
    for group in xla:
        bf16_error = distance(xla[group], float32[group])
        assert distance(cpu[group], xla[group]) <= 2 * bf16_error + 2**-8, (group, bf16_error)
