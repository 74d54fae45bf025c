"""SwAV: Sinkhorn-Knopp against a float64 transcription of swav's `distributed_sinkhorn` on
simulated GPUs, the loss and its gradients against a float64 transcription of `main_swav.py`'s
training loop (with and without the queue), the engine's first step against that transcription
and equal on 1 and 8 devices (a per-device Sinkhorn would not be), the queue's start rule and
FIFO against main_swav's, and the multi-crop groups' shapes and crop areas."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import tensorflow as tf
from flax import nnx
from test_noncontrastive import numerical_gradient
from test_teacher import CONFIGS, mesh_of

from selfsup import parallel
from selfsup.config import ConfigError, load_config_file
from selfsup.data.augment_jax import to_float
from selfsup.pretext import get_task, swav
from selfsup.train.optim import make_optimizer, path_mask
from selfsup.train.pretext_step import pretrain_loss
from selfsup.train.state import create_train_state, model_graphdef, state_sharding

EPSILON, ITERATIONS, TEMPERATURE = 0.05, 3, 0.1


def distributed_sinkhorn(outs: list[np.ndarray], epsilon=EPSILON, iterations=ITERATIONS):
    """swav main_swav.py `distributed_sinkhorn` on len(outs) GPUs, GPU g holding scores outs[g]
    [B_g, K], in float64; `dist.all_reduce` sums over the GPUs. Each GPU's assignments."""
    qs = [np.exp(np.asarray(out, np.float64) / epsilon).T for out in outs]  # K-by-B_g.
    b = sum(q.shape[1] for q in qs)  # `Q.shape[1] * args.world_size`.
    k = qs[0].shape[0]
    sum_q = sum(q.sum() for q in qs)
    qs = [q / sum_q for q in qs]
    for _ in range(iterations):
        sum_of_rows = sum(q.sum(axis=1, keepdims=True) for q in qs)
        qs = [q / sum_of_rows / k for q in qs]
        qs = [q / q.sum(axis=0, keepdims=True) / b for q in qs]
    return [(q * b).T for q in qs]


def main_swav_loss(output, prototypes, queue, *, bs, nmb_crops, q_from=None):
    """main_swav.py `train`'s loss in float64 loops: output [V*bs, K] (crops concatenated, as
    the model returns them), the prototypes [K, D] and the queue [2, Q, D] or None (used when its
    last rows are filled);
    `q_from`: the (output, queue scores) the no_grad assignments are computed from, so that a
    finite difference moves only what the gradient flows through."""
    output = np.asarray(output, np.float64)
    views = sum(nmb_crops)
    loss = 0.0
    for i, crop_id in enumerate([0, 1]):
        source = output if q_from is None else q_from[0]
        out = source[bs * crop_id : bs * (crop_id + 1)]
        if queue is not None and not np.all(queue[i, -1, :] == 0):
            queue_scores = queue[i] @ prototypes.T if q_from is None else q_from[1][i]
            out = np.concatenate([queue_scores, out])
        q = distributed_sinkhorn([out])[0][-bs:]
        subloss = 0.0
        for v in np.delete(np.arange(views), crop_id):
            x = output[bs * v : bs * (v + 1)] / TEMPERATURE
            log_softmax = x - x.max(1, keepdims=True)
            log_softmax -= np.log(np.exp(log_softmax).sum(1, keepdims=True))
            subloss -= np.mean(np.sum(q * log_softmax, axis=1))
        loss += subloss / (views - 1)
    return loss / 2


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_sinkhorn_is_distributed_sinkhorn_over_the_global_batch():
    rng = np.random.default_rng(0)
    scores = unit(rng.normal(size=(16, 6))) @ unit(rng.normal(size=(7, 6))).T  # Cosines.
    q = np.asarray(swav.sinkhorn(jnp.asarray(scores, jnp.float32), epsilon=0.05, iterations=3))
    np.testing.assert_allclose(q, distributed_sinkhorn([scores])[0], rtol=2e-5, atol=1e-7)
    # Four GPUs of 4 samples, their sums all-reduced: the same assignments.
    four = np.concatenate(distributed_sinkhorn(np.split(scores, 4)))
    np.testing.assert_allclose(q, four, rtol=2e-5, atol=1e-7)
    np.testing.assert_allclose(q.sum(axis=1), 1.0, rtol=1e-6)  # Each sample's q is a distribution.
    # Each GPU normalising its own 4 samples alone would assign otherwise.
    alone = np.concatenate([distributed_sinkhorn([s])[0] for s in np.split(scores, 4)])
    assert np.abs(alone - q).max() > 0.1


def test_loss_and_gradients_match_main_swav_with_and_without_the_queue():
    """V = 2 global + 2 local crops of 6 images; the gradients of main_swav's loss by central
    differences with its no_grad assignments held, against jax.grad of the task's."""
    rng = np.random.default_rng(1)
    bs, views, dim, k = 6, 4, 5, 7
    z = unit(rng.normal(size=(views * bs, dim)))
    kernel = unit(rng.normal(size=(k, dim))).T  # [D, K]: the prototypes' Linear kernel.
    losses = []
    for queue in (None, unit(rng.normal(size=(12, 2, dim)))):

        def task_loss(z, kernel, queue=queue):
            scores = (z @ kernel).reshape(views, bs, k)
            q = swav.crop_assignments(scores, queue, kernel, epsilon=EPSILON, iterations=ITERATIONS)
            return swav.swapped_prediction_loss(scores, q, TEMPERATURE)

        as_f32 = [jnp.asarray(a, jnp.float32) for a in (z, kernel)]
        loss, (grad_z, grad_kernel) = jax.jit(jax.value_and_grad(task_loss, argnums=(0, 1)))(
            *as_f32
        )
        torch_queue = None if queue is None else np.swapaxes(queue, 0, 1)  # [2, Q, D].
        queue_scores = None if queue is None else torch_queue @ kernel
        held = (z @ kernel, queue_scores)

        def reference(z, kernel, torch_queue=torch_queue, held=held):
            return main_swav_loss(
                z @ kernel, kernel.T, torch_queue, bs=bs, nmb_crops=(2, 2), q_from=held
            )

        np.testing.assert_allclose(float(loss), reference(z, kernel), rtol=1e-5)
        losses.append(float(loss))
        expected_z = numerical_gradient(lambda x: reference(x, kernel), z)
        expected_kernel = numerical_gradient(lambda w: reference(z, w), kernel)
        np.testing.assert_allclose(grad_z, expected_z, rtol=1e-3, atol=1e-6)
        np.testing.assert_allclose(grad_kernel, expected_kernel, rtol=1e-3, atol=1e-6)
    assert abs(losses[1] - losses[0]) > 1e-3  # The queue changed the assignments: it was used.


def simulate_main_swav_queue(embeddings, *, queue_length, batch, steps_per_epoch, starts):
    """main_swav's queue over the steps of `embeddings` [steps, batch, 2, D]: None before epoch
    `starts`, then zeros, used (`use_the_queue`) once its last row is filled, and filled
    newest-first. Per step: (whether it was used, the queue after the step, or zeros)."""
    queue, used, after = None, [], []
    for step, e in enumerate(embeddings):
        epoch, it = divmod(step, steps_per_epoch)
        if it == 0:
            use_the_queue = False
            if epoch >= starts and queue is None:
                queue = np.zeros((2, queue_length, e.shape[-1]))
        use = False
        if queue is not None:
            use = use_the_queue = use_the_queue or not np.all(queue[0, -1, :] == 0)
            queue[:, batch:] = queue[:, :-batch].copy()
            queue[:, :batch] = np.swapaxes(e, 0, 1)
        used.append(use)
        after.append(np.zeros((2, queue_length, e.shape[-1])) if queue is None else queue.copy())
    return used, after


def test_the_queue_starts_at_its_epoch_fills_newest_first_and_is_used_once_full():
    """The task's enqueue, full test and update_extra, step by step, against main_swav's loop:
    3 steps an epoch, the queue from epoch 2 (step 6), 3 batches long (used from step 9)."""
    config = load_config_file(CONFIGS / "swav_cifar10.py", "runlocal")
    config.batch_size = 2
    config.swav.update(queue_length=6, epoch_queue_starts=2.0, feat_dim=3)
    task = get_task(config)
    embeddings = unit(np.random.default_rng(2).normal(size=(12, 2, 2, 3)))
    used, after = simulate_main_swav_queue(
        embeddings, queue_length=6, batch=2, steps_per_epoch=3, starts=2
    )
    assert used == [False] * 9 + [True] * 3
    extra = task.init_extra({}, {}, jax.random.key(0))
    for step, e in enumerate(embeddings):
        assert bool(swav.queue_is_full(extra["queue"])) == used[step]
        extra = {"queue": swav.enqueue(extra["queue"], jnp.asarray(e, jnp.float32))}
        extra, _ = task.update_extra(
            extra, {}, jnp.int32(step), total_steps=12, steps_per_epoch=3.0
        )
        np.testing.assert_allclose(np.swapaxes(extra["queue"], 0, 1), after[step], rtol=1e-6)


def tiny_config():
    """configs/swav_cifar10.py:runlocal at 16 px with two 8 px local crops, batch 16, 24
    prototypes of 8 dims, a queue of two batches from the start; float32, no online probe,
    prototypes never frozen (so that the first step updates them)."""
    config = load_config_file(CONFIGS / "swav_cifar10.py", "runlocal")
    config.update(image_size=16, batch_size=16, online_probe_classes=0)
    config.model.dtype = "float32"
    config.swav.update(
        local_crops_number=2,
        local_crops_size=8,
        nmb_prototypes=24,
        feat_dim=8,
        hidden_mlp=16,
        queue_length=32,
        epoch_queue_starts=0.0,
    )
    config.optim.frozen_first = ()
    return config


@functools.cache
def initial_state():
    """tiny_config's task, optimizer, initial state (made once, on 8 devices) with a full
    queue of random unit embeddings, and a batch of random crops. The task colours no crop:
    the colour ops draw from each crop's position in the batch on any device count (BYOL's
    1-vs-8-device test runs them), and compiling them would double this file's cost."""
    config = tiny_config()
    task = get_task(config)
    task.colored = lambda batch, rng: [to_float(batch["global"]), to_float(batch["local"])]
    tx, _ = make_optimizer(config.optim, batch_size=16, total_steps=10, warmup_steps=0)
    state = jax.device_get(create_train_state(task, tx, seed=0, mesh=mesh_of(8)))
    rng = np.random.default_rng(3)
    state = state.replace(extra={"queue": unit(rng.normal(size=(32, 2, 8))).astype(np.float32)})
    batch = {
        "global": rng.integers(0, 256, (16, 2, 16, 16, 3), np.uint8),
        "local": rng.integers(0, 256, (16, 2, 8, 8, 3), np.uint8),
        "label": np.zeros(16, np.int32),
    }
    return task, tx, state, batch


@functools.cache
def first_step(devices: int) -> dict:
    """Host copies of the engine's loss, gradients and first update on the first `devices`
    devices: loss, metrics, gradients, parameters, BatchNorm statistics and extra state."""
    task, tx, state, batch = initial_state()
    mesh = mesh_of(devices)
    state = jax.device_put(state, state_sharding(task, state, mesh))
    loss_fn = pretrain_loss(task, model_graphdef(task.build_model))

    @jax.jit
    def step(state, batch):
        def total(params):
            return loss_fn(params, state.batch_stats, state.extra, batch, jax.random.key(0))

        (loss, (metrics, stats, extra)), grads = jax.value_and_grad(total, has_aux=True)(
            state.params
        )
        updates, _ = tx.update(grads, state.opt_state, state.params)
        return loss, metrics, grads, optax.apply_updates(state.params, updates), stats, extra

    outputs = jax.device_get(step(state, parallel.to_global(batch, mesh)))
    return dict(zip(("loss", "metrics", "grads", "params", "batch_stats", "extra"), outputs))


@pytest.mark.slow  # Compiles SwAV's step for two meshes.
def test_first_step_is_main_swavs_and_the_same_on_1_and_8_devices():
    """The step's loss and prototype gradient are main_swav's (float64, its assignments over
    the full queue and the whole batch) on the embeddings and prototypes the step saw; it
    enqueues the global crops' embeddings; 1 and 8 devices agree up to rounding, where each
    device normalising its own 2 images and 4 queue rows alone would differ by far more."""
    task, _, state, batch = initial_state()
    one, eight = first_step(1), first_step(8)
    graphdef = model_graphdef(task.build_model)

    @jax.jit
    def embeddings(params, batch_stats, batch):  # The step's forward pass, apart from its loss.
        model = nnx.merge(graphdef, params, batch_stats)
        return model(task.colored(batch, jax.random.key(0)), train=True)[0]

    z = embeddings(state.params, state.batch_stats, batch)
    z = np.asarray(z, np.float64)  # [4 crops, 16, 8].
    kernel = np.asarray(state.params["prototypes"]["kernel"], np.float64)  # [8, 24].
    queue = np.swapaxes(state.extra["queue"], 0, 1).astype(np.float64)  # main_swav's [2, Q, D].
    flat = z.reshape(-1, 8)
    held = (flat @ kernel, queue @ kernel)

    def reference(kernel):
        return main_swav_loss(flat @ kernel, kernel.T, queue, bs=16, nmb_crops=(2, 2), q_from=held)

    assert float(one["metrics"]["queue_used"]) == 1.0
    np.testing.assert_allclose(one["loss"], reference(kernel), rtol=1e-4)
    np.testing.assert_allclose(
        one["grads"]["prototypes"]["kernel"],
        numerical_gradient(reference, kernel),
        rtol=2e-3,
        atol=1e-5,
    )
    # The prototypes stay unit vectors (`optim.normalize_after_step`), as main_swav keeps them.
    np.testing.assert_allclose(
        np.linalg.norm(one["params"]["prototypes"]["kernel"], axis=0), 1, 1e-6
    )
    new_queue = one["extra"]["queue"]
    np.testing.assert_allclose(new_queue[:16], np.swapaxes(z[:2], 0, 1), atol=1e-5)
    np.testing.assert_array_equal(new_queue[16:], state.extra["queue"][:16])

    np.testing.assert_allclose(one["loss"], eight["loss"], rtol=1e-5)
    for key in ("grads", "params", "batch_stats", "extra"):
        flat1, flat8 = jax.tree.leaves(one[key]), jax.tree.leaves(eight[key])
        assert len(flat1) == len(flat8) > 0
        scale = max(np.abs(a).max() for a in flat1)
        for a, b in zip(flat1, flat8):  # Rounding only, as in test_noncontrastive.py.
            np.testing.assert_allclose(
                a, b, rtol=1e-3, atol=max(1e-4 * np.abs(a).max(), 1e-6 * scale)
            )
    # What 8 devices would compute normalising alone: each its 2 images and 4 queue rows.
    alone = np.mean(
        [
            main_swav_loss(
                z[:, 2 * d : 2 * d + 2].reshape(-1, 8) @ kernel,
                kernel.T,
                queue[:, 4 * d : 4 * d + 4],
                bs=2,
                nmb_crops=(2, 2),
            )
            for d in range(8)
        ]
    )
    assert abs(alone - float(one["loss"])) > 100 * 1e-5 * float(one["loss"])


def ramp_image(side: int = 256) -> tf.Tensor:
    """Red = the column, green = the row: a crop's extent reads off its pixel values."""
    rows, cols = np.mgrid[:side, :side]
    return tf.constant(np.stack([cols, rows, np.zeros_like(rows)], -1).astype(np.uint8))


def crop_areas(crops: np.ndarray) -> np.ndarray:
    """The area fraction of a 256 px ramp image that each resized crop [C, s, s, 3] covers: a
    box of w pixels resized to s puts its outer pixel centres w (s - 1) / s apart, which its
    values' span shows."""
    s = crops.shape[1]
    spans = crops[..., :2].max(axis=(1, 2)).astype(float) - crops[..., :2].min(axis=(1, 2))
    sides = spans * s / (s - 1)
    return sides[:, 0] * sides[:, 1] / 256**2


def test_multicrop_groups_have_their_shapes_and_crop_areas():
    """SwAV's 2 global crops of 14-100% of the image and 6 local crops of 5-14% (at 32 and 16
    px here), uint8, from one tf.function over 8 seeds."""
    config = load_config_file(CONFIGS / "swav_imagenet.py", "runlocal")
    config.image_size = 32
    config.swav.update(local_crops_number=6, local_crops_size=16)
    task = get_task(config)
    example = tf.function(task.train_example)
    image = ramp_image()
    examples = [example(image, tf.constant([i, 0])) for i in range(8)]
    assert {k: (v.shape, v.dtype) for k, v in examples[0].items()} == {
        "global": ((2, 32, 32, 3), tf.uint8),
        "local": ((6, 16, 16, 3), tf.uint8),
    }
    global_areas = crop_areas(np.concatenate([e["global"].numpy() for e in examples]))
    local_areas = crop_areas(np.concatenate([e["local"].numpy() for e in examples]))
    assert 0.14 * 0.95 <= global_areas.min() < 0.5 and global_areas.max() <= 1.02
    assert 0.05 * 0.95 <= local_areas.min() < 0.08 and 0.11 < local_areas.max() <= 0.14 * 1.05
    assert len(task.display_views({k: v.numpy() for k, v in examples[0].items()})) == 8


def test_the_recipes_normalise_and_freeze_the_prototypes_and_nothing_else():
    """main_swav normalises `prototypes.weight` before each step and drops its gradient for
    `freeze_prototypes_niters`: each recipe's `optim.normalize_after_step` and `frozen_first`
    select the prototypes' kernel alone (the model's parameter names are every recipe's)."""
    configs = [
        load_config_file(CONFIGS / f"swav_{n}.py") for n in ("imagenet", "cifar10", "builtin")
    ]
    config = load_config_file(CONFIGS / "swav_builtin.py", "runlocal")
    config.model.dtype = "float32"  # "auto" is resolved by pretraining.
    task = get_task(config)
    model = nnx.eval_shape(lambda: task.build_model(nnx.Rngs(0)))
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    for c in configs:
        for regex in [c.optim.normalize_after_step] + [r for r, _ in c.optim.frozen_first]:
            selected = jax.tree_util.tree_flatten_with_path(path_mask(params, regex, match=True))[0]
            paths = [jax.tree_util.keystr(p, simple=True, separator="/") for p, m in selected if m]
            assert paths == ["prototypes/kernel"], regex
    assert [c.optim.frozen_first[0][1] for c in configs] == [1.0, 2.0, 1.0]  # Epochs.


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("queue_length", 40, r"queue_length=40 is invalid: .* config\.batch_size=64 .* e\.g\. 64"),
        ("epsilon", 0.01, r"--config\.swav\.epsilon to a number in \[0\.02, 10\]"),
        ("local_crops_scale", (0.05,), r"local_crops_scale=\(0\.05,\) is invalid"),
        ("nmb_prototypes", 0, r"--config\.swav\.nmb_prototypes to an integer in \[1, 65536\]"),
    ],
)
def test_bad_settings_are_config_errors(key, value, message):
    config = load_config_file(CONFIGS / "swav_cifar10.py", "runlocal")
    config.swav[key] = value
    with pytest.raises(ConfigError, match=message):
        get_task(config)
