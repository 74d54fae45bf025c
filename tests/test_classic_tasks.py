"""What every classic pretext task (rotation, jigsaw, exemplar) must do through the unchanged
engine: the same loss and gradients on 1 and 8 devices. That each learns a variant it can solve
by looking is a study (`experiments/learnability/`); that its examples follow from their seeds,
which a bit-for-bit resume needs, the contract test (`test_pretext.py`) checks for every task."""

from pathlib import Path

import jax
import numpy as np
import pytest
import tensorflow as tf
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from selfsup.config import load_config_file
from selfsup.pretext import get_task
from selfsup.train.pretext_step import pretrain_loss
from selfsup.train.state import split_model

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TASKS = ("rotation", "jigsaw", "exemplar")


def runlocal(name: str):
    config = load_config_file(CONFIGS / f"{name}_builtin.py", "runlocal")
    config.model.dtype = "float32"  # "auto" is resolved by pretraining.
    config.online_probe_classes = 0
    return config


def host_batch(task, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    """n training examples of random images, as the input pipeline makes them."""
    rng = np.random.default_rng(seed)
    examples = [
        task.train_example(
            tf.constant(rng.integers(0, 256, (36, 36, 3), np.uint8)), tf.constant([i, 0])
        )
        for i in range(n)
    ]
    batch = {k: np.stack([e[k].numpy() for e in examples]) for k in examples[0]}
    return {**batch, "label": np.zeros(n, np.int32)}


def loss_and_grads(task, mesh, batch):
    graphdef, params, stats = split_model(task.build_model(nnx.Rngs(0)))
    params, stats = jax.device_put((params, stats), NamedSharding(mesh, P()))
    batch = jax.device_put(batch, NamedSharding(mesh, P("data")))
    loss_fn = pretrain_loss(task, graphdef)  # What the engine differentiates.
    value_and_grad = jax.jit(jax.value_and_grad(loss_fn, has_aux=True))
    (loss, _), grads = value_and_grad(params, stats, {}, batch, jax.random.key(3))
    return jax.device_get((loss, grads))


def relative_differences(grads_a, grads_b) -> dict[str, float]:
    """max |a - b| / max |a| per parameter, leaving out those whose gradient is zero up to
    rounding in both (a bias before a BatchNorm)."""
    flat_a = dict(jax.tree_util.tree_flatten_with_path(grads_a)[0])
    flat_b = dict(jax.tree_util.tree_flatten_with_path(grads_b)[0])
    assert flat_a.keys() == flat_b.keys() and len(flat_a) > 10
    scale = max(np.abs(g).max() for g in flat_a.values())
    return {
        jax.tree_util.keystr(path, simple=True, separator="/"): float(
            np.abs(a - flat_b[path]).max() / np.abs(a).max()
        )
        for path, a in flat_a.items()
        if max(np.abs(a).max(), np.abs(flat_b[path]).max()) > 1e-5 * scale
    }


@pytest.mark.slow  # Compiles each model's loss and gradients for two meshes.
@pytest.mark.parametrize("name", TASKS)
def test_loss_and_gradients_equal_on_1_and_8_devices(name):
    """Equal up to rounding, whose size here is measured: the same batch in another order on
    one device (the same function, its sums in another order) moves these float32 gradients by
    up to ~0.5% of a parameter's largest. Per-device BatchNorm statistics, negatives or
    normalisation would change the loss and gradients by O(1)."""
    config = runlocal(name)
    if name == "jigsaw":
        config.jigsaw.dropout = 0.0  # Dropout masks follow batch positions, not images.
    task = get_task(config)
    batch = host_batch(task, 16)
    order = np.random.default_rng(1).permutation(16)
    mesh1 = jax.make_mesh(
        (1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:1]
    )
    mesh8 = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    loss1, grads1 = loss_and_grads(task, mesh1, batch)
    loss8, grads8 = loss_and_grads(task, mesh8, batch)
    reordered, grads_reordered = loss_and_grads(
        task, mesh1, {k: v[order] for k, v in batch.items()}
    )
    np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
    np.testing.assert_allclose(reordered, loss1, rtol=1e-5)
    rounding = max(relative_differences(grads1, grads_reordered).values())
    devices = relative_differences(grads1, grads8)
    worst = max(devices, key=devices.get)
    assert devices[worst] <= 3 * rounding + 1e-4, (worst, devices[worst], rounding)
