"""The pretext-task contract (`selfsup.pretext.PretextTask`), checked for every registered task on
its `configs/<task>_builtin.py:runlocal` config: what the trainer, the evaluators and
`show-augmentations` rely on, so a new task that passes here works with all of them."""

import inspect
from pathlib import Path

import jax
import numpy as np
import pytest
import tensorflow as tf
from flax import nnx

from selfsup.config import ConfigError, load_config_file
from selfsup.pretext import TASKS, PretextTask, StatefulTask, get_task, stateful
from selfsup.train.pretext_step import pretrain_loss
from selfsup.train.state import split_model

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def task_config(name: str):
    config = load_config_file(CONFIGS / f"{name}_builtin.py", "runlocal")
    config.model.dtype = "float32"  # "auto" is resolved by pretraining.
    config.online_probe_classes = 3
    return config


def images(n: int) -> list[tf.Tensor]:
    """Images of other sizes than any task's input, so every task must resize."""
    rng = np.random.default_rng(0)
    return [tf.constant(rng.integers(0, 256, (40 + 3 * i, 50, 3), np.uint8)) for i in range(n)]


# Over ~10 CPU-s: SwAV's two crop groups (their eager colour ops), MAE's ViT.
SLOW_CONTRACTS = ("mae", "swav")


@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_CONTRACTS else n for n in sorted(TASKS)],
)
def test_every_task_meets_the_contract(name):
    config = task_config(name)
    task = get_task(config)
    assert isinstance(task, PretextTask)
    methods = ["train_example", "eval_views", "display_views", "build_model", "loss"]
    contract = StatefulTask if isinstance(task, StatefulTask) else PretextTask
    if contract is StatefulTask:  # A task with extra state (a momentum teacher, a queue).
        methods += ["init_extra", "update_extra"]
    for method in methods:
        expected = inspect.signature(getattr(contract, method)).parameters
        assert list(inspect.signature(getattr(task, method)).parameters) == list(expected)[1:]

    examples = [task.train_example(image, tf.constant([i, 0])) for i, image in enumerate(images(4))]
    examples = [{k: v.numpy() for k, v in example.items()} for example in examples]
    # A killed run resumes bit for bit only if an example follows from its image and seed alone:
    # a task built afresh makes the same ones.
    again = get_task(config).train_example(images(4)[3], tf.constant([3, 0]))
    assert again.keys() == examples[3].keys()
    for key, array in again.items():
        np.testing.assert_array_equal(array.numpy(), examples[3][key], err_msg=key)
    for picture in task.display_views(examples[0]):
        assert picture.ndim == 3 and picture.shape[-1] == 3
        assert picture.dtype == np.uint8 or (picture.min() >= 0 and picture.max() <= 1)

    model = task.build_model(nnx.Rngs(0))
    batch = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
    batch["label"] = np.array([0, 1, 2, 0])
    graphdef, params, stats = split_model(task.build_model(nnx.Rngs(0)))
    extra = stateful(task).init_extra(params, stats, jax.random.key(1))
    loss, metrics, features, new_extra = stateful(task).loss(
        model, batch, jax.random.key(0), train=True, extra=extra
    )
    assert loss.shape == () and np.isfinite(loss)
    assert all(np.shape(v) == () for v in metrics.values())
    assert features.shape == (4, model.encoder.feature_dim)
    assert jax.tree.structure(new_extra) == jax.tree.structure(extra)
    # The trainer's loss: the task's, and the online probe's on the same features.
    total, (logged, _, _) = pretrain_loss(task, graphdef)(
        params, stats, extra, batch, jax.random.key(0)
    )
    assert logged["loss"] == pytest.approx(float(loss), rel=1e-6) and total > logged["loss"]


@pytest.mark.slow  # A ViT-Tiny's forward and backward, op by op: 1-12 CPU-s a task.
@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_trains_a_vit(name):
    """Every task takes `config.model.name=vit_tiny` (MAE only that): its loss and the online
    probe's features come out of a ViT-Tiny with 8 px patches."""
    config = task_config(name)
    config.model.update(name="vit_tiny", patch_size=8, image_size=32)
    task = get_task(config)
    examples = [task.train_example(image, tf.constant([i, 0])) for i, image in enumerate(images(4))]
    batch = {k: np.stack([e[k].numpy() for e in examples]) for k in examples[0]}
    batch["label"] = np.array([0, 1, 2, 0])
    graphdef, params, stats = split_model(task.build_model(nnx.Rngs(0)))
    extra = stateful(task).init_extra(params, stats, jax.random.key(1))
    total, (logged, _, _) = pretrain_loss(task, graphdef)(
        params, stats, extra, batch, jax.random.key(0)
    )
    assert np.isfinite(total) and np.isfinite(logged["loss"])
    assert logged["online_probe/accuracy"] in (0, 0.25, 0.5, 0.75, 1)
    config.model.patch_size = 5
    with pytest.raises(ConfigError, match="config.model.patch_size=5 is invalid: set .* a divisor"):
        get_task(config)


# Relative patch position compiles its encoder for 72 px inputs and for patches: slow.
@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n == "relpatch" else n for n in TASKS]
)
def test_every_task_offers_the_whole_image_and_named_inputs_the_encoder_takes(name):
    task = get_task(task_config(name))
    views = task.eval_views(crop_proportion=0.875)
    assert "image" in views
    encoder = task.build_model(nnx.Rngs(0)).encoder
    for view_name, view in views.items():
        inputs = np.stack([view(image).numpy() for image in images(2)])
        assert inputs.dtype in (np.uint8, np.float32) and inputs.shape[-1] == 3, view_name
        assert inputs.ndim in (4, 5), view_name  # Images, or groups of images to average.
        flat = inputs.reshape((-1, *inputs.shape[-3:]))
        assert encoder(flat, train=False).shape == (len(flat), encoder.feature_dim)


def test_an_unknown_task_is_named_with_the_known_ones():
    config = task_config("simclr")
    config.task = "rotate"
    with pytest.raises(ConfigError, match=r"unknown config.task='rotate': use one of \["):
        get_task(config)
