"""What every classic pretext task (rotation, jigsaw, exemplar) must do through the unchanged
engine: the same loss and gradients on 1 and 8 devices, a trivially solvable variant learnt to
near 100% held-out pretext accuracy, and a killed run resumed bit for bit."""

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
from test_relpatch import grid_image

from selfsup.config import load_config_file
from selfsup.data import pipeline
from selfsup.data.sources import open_source
from selfsup.pretext import get_task
from selfsup.train import loop
from selfsup.train.checkpoint import load_pretrained_model
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


def blocks(rng: np.random.Generator) -> np.ndarray:
    """A 20 px image of 4x4 random-colour blocks: shifted copies of it share most blocks."""
    return np.repeat(np.repeat(rng.integers(0, 256, (4, 4, 3)), 5, 0), 5, 1).astype(np.uint8)


def bar_on_top(rng: np.random.Generator) -> np.ndarray:
    """A random dark colour with a white bar along the top: its turns are plain to see."""
    image = np.broadcast_to(rng.integers(0, 160, (1, 1, 3)), (20, 20, 3)).copy()
    image[:5] = 255
    return (image + rng.normal(0, 8, image.shape)).clip(0, 255).astype(np.uint8)


def coloured_cells(rng: np.random.Generator) -> np.ndarray:
    """test_relpatch's grid: each cell of the 3x3 grid its own colour, so a puzzle shows its
    permutation."""
    return grid_image(noise=0.05, seed=int(rng.integers(1 << 30)))


# Per task: the images, the settings that make the variant trivially solvable (no grey, which
# hides colours; jigsaw: a greedy set of 10 permutations; exemplar: copies that differ by a
# shift alone), and the steps it needs at batch 16 (lr 0.8 x 16/256 = 0.05, constant).
SOLVABLE = {
    "rotation": (bar_on_top, {}, 60),
    "jigsaw": (
        coloured_cells,
        dict(
            permutations="greedy",
            num_permutations=10,
            perms_per_image=4,
            resize_size=72,
            grayscale_probability=0.0,
            embed_dim=16,
            fusion_hidden_dim=32,
        ),
        80,
    ),  # fmt: skip
    "exemplar": (
        blocks,
        dict(grayscale_probability=0.0, crop="padded", crop_padding=2, color=False),
        100,
    ),
}


def heldout_accuracy(task, config) -> float:
    """The pretext accuracy of the model as initialised, on the held-out batches the trainer
    measures (inference-mode BatchNorm)."""
    ds = pipeline.heldout_dataset(
        open_source(config.data), config.eval_split, task.train_example,
        local_batch_size=config.batch_size, seed=config.seed,
    )  # fmt: skip
    model = task.build_model(nnx.Rngs(config.seed))
    return float(
        np.mean([
            task.loss(model, jax.tree.map(jnp.asarray, b), jax.random.key(0), train=False)[1][
                "pretext_accuracy"
            ]
            for b in ds.as_numpy_iterator()
        ])
    )  # fmt: skip


@pytest.mark.slow  # 60-100 training steps each.
@pytest.mark.parametrize("name", TASKS)
def test_learns_a_trivially_solvable_variant_to_near_100_percent(name, tmp_path):
    """Held-out images whose pretext answer is plain to see: a correctly wired task learns them
    from an untrained model's low accuracy to ~100%; wrong labels, pairs or positives would not."""
    make, settings, steps = SOLVABLE[name]
    for split, count in (("train", 64), ("test", 32)):
        (tmp_path / "data" / split).mkdir(parents=True)
        for i in range(count):
            image = make(np.random.default_rng(i + 1000 * (split == "test")))
            (tmp_path / "data" / split / f"{i}.png").write_bytes(tf.io.encode_png(image).numpy())
    config = runlocal(name)
    config[name].update(settings)
    config.update(
        data=f"folder:{tmp_path / 'data'}", eval_split="test", batch_size=16, total_steps=steps,
        eval_every_steps=steps, log_every_steps=steps, checkpoint_every_steps=steps,
    )  # fmt: skip
    config.optim.update(learning_rate=0.8, decay_epochs=())
    assert heldout_accuracy(get_task(config), config) < 0.6
    summary = loop.pretrain(config, tmp_path / "run")
    assert summary["pretrain/heldout/pretext_accuracy"] > 0.95


def state_and_log(workdir: Path):
    """The run's final parameters and BatchNorm statistics, and metrics.jsonl without timings."""
    _, step, model = load_pretrained_model(workdir, loop.parallel.make_mesh())
    arrays = jax.device_get(nnx.to_pure_dict(nnx.state(model, (nnx.Param, nnx.BatchStat))))
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").open()]
    return step, arrays, [{k: v for k, v in r.items() if k != "images_per_second"} for r in records]


@pytest.mark.slow  # Three short runs per task.
@pytest.mark.parametrize("name", TASKS)
def test_a_killed_run_resumes_bit_for_bit(name, image_folder, tmp_path):
    config = runlocal(name)
    config.update(
        data=image_folder, batch_size=16, total_steps=4, log_every_steps=1,
        checkpoint_every_steps=2, eval_every_steps=0,
    )  # fmt: skip
    if "image_size" in config:
        config.image_size = 16
    loop.pretrain(config, tmp_path / "full")
    shutil.copytree(tmp_path / "full", tmp_path / "killed")  # The same run, until its kill.
    shutil.rmtree(tmp_path / "killed" / "checkpoints" / "4")  # Killed before step 4's save.
    loop.pretrain(config, tmp_path / "killed")
    step_full, full, log_full = state_and_log(tmp_path / "full")
    step_killed, killed, log_killed = state_and_log(tmp_path / "killed")
    assert step_full == step_killed == 4 and log_killed == log_full
    assert [r["step"] for r in log_full] == [1, 2, 3, 4]
    leaves_full, leaves_killed = jax.tree.leaves(full), jax.tree.leaves(killed)
    assert len(leaves_full) == len(leaves_killed) > 10
    for a, b in zip(leaves_full, leaves_killed):
        np.testing.assert_array_equal(a, b)
