"""The momentum teachers of BYOL and MoCo as the trainer runs them: the moving average after
each optimizer step against its closed form (BYOL's cosine schedule of the momentum, MoCo's
constant one), no gradient into the teacher, and kill-and-resume bit for bit with the teacher
and the queue included. The helpers build tiny runs of either task for test_byol/test_moco."""

import functools
import shutil
from pathlib import Path

import jax
import numpy as np
import optax
import pytest

from selfsup import parallel
from selfsup.config import load_config_file
from selfsup.pretext import get_task
from selfsup.pretext.teacher import cosine_momentum
from selfsup.train import loop
from selfsup.train.checkpoint import load_train_state
from selfsup.train.optim import make_optimizer
from selfsup.train.pretext_step import jit_train_step, pretrain_loss
from selfsup.train.state import create_train_state, model_graphdef, state_sharding

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def tiny_config(name: str, **overrides):
    """`configs/<name>_cifar10.py:runlocal` at 16 px, batch 16, float32, no online probe."""
    config = load_config_file(CONFIGS / f"{name}_cifar10.py", "runlocal")
    config.image_size = 16
    config.batch_size = 16
    config.model.dtype = "float32"
    config.online_probe_classes = 0
    if name == "moco":
        config.moco.queue_size = 32  # Two batches: the FIFO wraps on the third step.
    for key, value in overrides.items():
        config[key] = value
    return config


def mesh_of(devices: int) -> jax.sharding.Mesh:
    return jax.make_mesh(
        (devices,),
        (parallel.DATA_AXIS,),
        axis_types=(jax.sharding.AxisType.Auto,),
        devices=jax.devices()[:devices],
    )


def synthetic_batches(config, steps: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """Random images as the task's examples hold them: two views each, one image (MAE), or
    multi-crop groups (DINO: two global crops and the block's local ones)."""
    rng = np.random.default_rng(seed)
    s, n = config.image_size, config.batch_size
    shapes = {"views": (n, 2, s, s, 3)}
    if config.task == "mae":
        shapes = {"image": (n, s, s, 3)}
    elif config.task == "dino":
        c = config.dino
        shapes = {"global": (n, 2, s, s, 3)}
        if c.local_crops_number:
            shapes["local"] = (n, c.local_crops_number, c.local_crops_size, c.local_crops_size, 3)
    return [
        {
            **{key: rng.uniform(size=shape).astype(np.float32) for key, shape in shapes.items()},
            "label": np.zeros(n, np.int32),
        }
        for _ in range(steps)
    ]


def train(config, mesh, batches, *, total_steps: int = 10):
    """Runs the pretraining step over `batches`; (host copies of the state before each step
    and after the last, metrics of each step)."""
    task = get_task(config)
    tx, schedule = make_optimizer(
        config.optim,
        batch_size=config.batch_size,
        total_steps=total_steps,
        warmup_steps=0,
        steps_per_epoch=1.0,
    )
    state = create_train_state(task, tx, seed=config.seed, mesh=mesh)
    step = jit_train_step(
        task,
        model_graphdef(task.build_model),
        tx,
        schedule,
        seed=config.seed,
        mesh=mesh,
        total_steps=total_steps,
        steps_per_epoch=1.0,
    )
    states, metrics = [jax.device_get(state)], []
    for batch in batches:
        state, m = step(state, parallel.to_global(batch, mesh))
        states.append(jax.device_get(state))
        metrics.append(jax.device_get(m))
    return states, metrics


@functools.cache
def first_step(name: str, devices: int, **options) -> dict:
    """Host copies of the engine's first optimizer step on one batch (seed 3) on the first
    `devices` devices, from one initial state for every device count: the state before it,
    the batch, the loss, its gradients, the updated parameters, BatchNorm statistics and extra
    state, and the shardings of the state's extra arrays. `options` set `config.<name>`'s keys.
    Cached: test_byol reads BYOL's steps twice."""
    config, tx, state = initial_state(name, **options)
    task = get_task(config)
    [batch] = synthetic_batches(config, 1, seed=3)
    mesh = mesh_of(devices)
    state = jax.device_put(state, state_sharding(task, state, mesh))
    loss_fn = pretrain_loss(task, model_graphdef(task.build_model))

    @jax.jit
    def step(state, batch):
        def total(params):
            return loss_fn(params, state.batch_stats, state.extra, batch, jax.random.key(0))

        (loss, (_, stats, extra)), grads = jax.value_and_grad(total, has_aux=True)(state.params)
        updates, _ = tx.update(grads, state.opt_state, state.params)
        return loss, grads, optax.apply_updates(state.params, updates), stats, extra

    outputs = jax.device_get(step(state, parallel.to_global(batch, mesh)))
    keys = ("loss", "grads", "params", "batch_stats", "extra")
    shardings = jax.tree.map(lambda a: a.sharding, state.extra)
    return dict(zip(keys, outputs), state=jax.device_get(state), batch=batch, shardings=shardings)


@functools.cache
def initial_state(name: str, **options):
    """`first_step`'s config, optimizer and initial state, the state made once on 8 devices (its
    initialisation compiles for each mesh: 6 CPU-s a ResNet)."""
    config = tiny_config(name)
    config[name].update(options)
    tx, _ = make_optimizer(
        config.optim, batch_size=16, total_steps=10, warmup_steps=0, steps_per_epoch=5.0
    )
    return config, tx, create_train_state(get_task(config), tx, seed=0, mesh=mesh_of(8))


TEACHER = {"byol": "target", "moco": "key_encoder"}


@pytest.mark.slow  # Compiles both tasks' steps.
@pytest.mark.parametrize("name", ["byol", "moco"])
def test_the_teacher_is_the_closed_form_moving_average_of_the_online_weights(name):
    """t_n = prod_k m_k t_0 + sum_k (1 - m_k) prod_{j>k} m_j p_{k+1} in float64, where p_k
    are the online weights after step k and m_k the momentum of step k: BYOL's cosine from
    base_momentum over total_steps (DeepMind's `target_ema`), MoCo's constant."""
    config = tiny_config(name)
    total = 10
    states, metrics = train(config, parallel.make_mesh(), synthetic_batches(config, 4))
    if name == "byol":
        base = config.byol.base_momentum
        momenta = [1 - (1 - base) * (np.cos(np.pi * k / total) + 1) / 2 for k in range(4)]
        np.testing.assert_allclose([m["momentum"] for m in metrics], momenta, rtol=1e-6)
    else:
        momenta = [config.moco.momentum] * 4
    first = jax.tree.map(np.float64, states[0].extra[TEACHER[name]]["params"])
    for n in range(1, 5):
        decay = np.prod(momenta[:n])
        expected = jax.tree.map(lambda t, d=decay: d * t, first)
        for k in range(n):
            weight = (1 - momenta[k]) * np.prod(momenta[k + 1 : n])
            online = jax.tree.map(np.float64, states[k + 1].params)
            expected = jax.tree.map(lambda e, p, w=weight: e + w * p, expected, online)
        actual = states[n].extra[TEACHER[name]]["params"]
        for a, e in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
            np.testing.assert_allclose(a, e, rtol=2e-5, atol=2e-6 * np.abs(e).max())
    # The teacher's BatchNorm statistics are its own forward passes', not the online ones'.
    teacher_stats = jax.tree.leaves(states[4].extra[TEACHER[name]]["batch_stats"])
    online_stats = jax.tree.leaves(states[4].batch_stats)
    assert any(not np.allclose(t, o) for t, o in zip(teacher_stats, online_stats))


def test_cosine_momentum_is_deepminds_target_ema():
    steps = np.array([0, 1, 7, 50, 99, 100, 130])
    expected = 1 - (1 - 0.996) * (np.cos(np.pi * np.minimum(steps, 100) / 100) + 1) / 2
    actual = jax.vmap(lambda s: cosine_momentum(s, 100, 0.996))(steps)
    np.testing.assert_allclose(actual, expected, rtol=1e-7)
    assert float(actual[0]) == pytest.approx(0.996) and float(actual[-1]) == 1.0


@pytest.mark.slow
@pytest.mark.parametrize("name", ["byol", "moco"])
def test_the_teacher_gets_exactly_zero_gradient(name):
    config = tiny_config(name)
    task = get_task(config)
    [batch] = synthetic_batches(config, 1)
    mesh = parallel.make_mesh()
    tx, _ = make_optimizer(config.optim, batch_size=16, total_steps=1, warmup_steps=0)
    state = jax.device_get(create_train_state(task, tx, seed=0, mesh=mesh))
    loss = pretrain_loss(task, model_graphdef(task.build_model))

    def total(params, batch_stats, extra):
        return loss(params, batch_stats, extra, batch, jax.random.key(0))[0]

    grad_of_extra = jax.jit(jax.grad(total, argnums=2, allow_int=True))
    grads = grad_of_extra(state.params, state.batch_stats, state.extra)
    teacher = grads[TEACHER[name]]
    assert len(jax.tree.leaves(teacher["params"])) > 10
    for g in jax.tree.leaves(teacher):
        assert not np.any(np.asarray(g)), "the teacher got a gradient"


def full_state(workdir):
    return jax.device_get(load_train_state(workdir, parallel.make_mesh())[2])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["byol", "moco"])
def test_a_killed_run_resumes_bit_for_bit_teacher_and_queue_included(name, image_folder, tmp_path):
    config = tiny_config(
        name,
        data=image_folder,
        total_steps=4,
        log_every_steps=1,
        checkpoint_every_steps=2,
        eval_every_steps=0,
    )
    if name == "moco":
        config.moco.queue_size = 48  # Three batches: a resume mid-queue.
    loop.pretrain(config, tmp_path / "full")
    shutil.copytree(tmp_path / "full", tmp_path / "killed")  # The same run, until its kill.
    shutil.rmtree(tmp_path / "killed" / "checkpoints" / "4")  # Killed after step 2's save.
    loop.pretrain(config, tmp_path / "killed")
    full, resumed = full_state(tmp_path / "full"), full_state(tmp_path / "killed")
    assert int(full.step) == int(resumed.step) == 4
    assert TEACHER[name] in full.extra
    flat_full = jax.tree_util.tree_leaves_with_path(full)
    flat_resumed = jax.tree_util.tree_leaves_with_path(resumed)
    assert [p for p, _ in flat_full] == [p for p, _ in flat_resumed]
    for (path, a), (_, b) in zip(flat_full, flat_resumed):
        np.testing.assert_array_equal(a, b, err_msg=jax.tree_util.keystr(path))
    if name == "moco":  # The queue moved on by 4 batches of 16 in a queue of 48.
        assert int(full.extra["queue_pointer"]) == 64 % 48
