"""Optimizers against hand-computed updates: LARS as google-research/simclr defines it,
weight-decay masks, warmup + cosine schedule, batch-size scaling, learning-rate multiplier
groups and frozen groups. Then what DINO and SwAV need, against their own code transcribed:
dino's cosine_scheduler (learning rate and weight decay), clip_gradients and frozen last layer
with torch's AdamW and SGD stepping the same tensors (in a process of its own, TORCH_SIDE), and
SwAV's LARC, frozen and normalised prototypes in NumPy."""

import importlib.util
import math
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from selfsup.config import VALUE_RULES, ConfigError, check_values
from selfsup.train.optim import (
    clip_per_tensor,
    lr_multipliers,
    make_optimizer,
    make_schedule,
    path_mask,
    peak_learning_rate,
    weight_decay_schedule,
    with_lr_multipliers,
)


def optim_config(**overrides):
    config = dict(
        name="lars",
        learning_rate=0.5,
        lr_scaling="linear",
        momentum=0.9,
        weight_decay=1e-2,
        weight_decay_exclude=r"(^|/)(bias|scale)$",
        trust_coefficient=0.001,
        warmup_epochs=0.0,
        schedule="cosine",
        decay_epochs=[],
        decay_factor=0.1,
        param_groups=(),
        weight_decay_end=None,
        min_learning_rate=0.0,
        clip_per_tensor=0.0,
        frozen_first=(),
        normalize_after_step="",
    )
    return ml_collections.ConfigDict({**config, **overrides})


PARAMS = {
    "encoder": {"conv": {"kernel": jnp.array([[3.0, -4.0]])}, "bn": {"scale": jnp.array([2.0])}},
    "head": {"bias": jnp.array([1.0, 1.0])},
}
GRADS = {
    "encoder": {"conv": {"kernel": jnp.array([[0.3, 0.4]])}, "bn": {"scale": jnp.array([0.5])}},
    "head": {"bias": jnp.array([0.1, -0.2])},
}


def test_weight_decay_mask_excludes_batchnorm_and_biases():
    mask = path_mask(PARAMS, optim_config().weight_decay_exclude, match=False)
    assert mask == {
        "encoder": {"conv": {"kernel": True}, "bn": {"scale": False}},
        "head": {"bias": False},
    }


def test_lars_step_matches_simclr_definition():
    """simclr lars_optimizer.py: g += wd*w; trust = eeta*|w|/|g|; v = m*v + lr*trust*g."""
    config = optim_config()
    tx, schedule = make_optimizer(config, batch_size=256, total_steps=100, warmup_steps=0)
    state = tx.init(PARAMS)
    updates, state = tx.update(GRADS, state, PARAMS)
    lr = float(schedule(0))
    assert lr == pytest.approx(0.5)
    w, g = np.array([3.0, -4.0]), np.array([0.3, 0.4])
    g_decayed = g + 1e-2 * w
    trust = 0.001 * np.linalg.norm(w) / np.linalg.norm(g_decayed)
    np.testing.assert_allclose(
        updates["encoder"]["conv"]["kernel"][0], -lr * trust * g_decayed, rtol=1e-5
    )
    # Excluded parameters: plain momentum SGD, no decay, no trust ratio.
    np.testing.assert_allclose(updates["head"]["bias"], -lr * np.array([0.1, -0.2]), rtol=1e-6)
    np.testing.assert_allclose(updates["encoder"]["bn"]["scale"], [-lr * 0.5], rtol=1e-6)
    # Second step: momentum 0.9 on the (lr-scaled) velocity.
    updates2, _ = tx.update(GRADS, state, PARAMS)
    lr1 = float(schedule(1))
    np.testing.assert_allclose(
        updates2["head"]["bias"], -(0.9 * lr + lr1) * np.array([0.1, -0.2]), rtol=1e-5
    )


def test_sgd_step_decays_only_masked_parameters():
    tx, _ = make_optimizer(
        optim_config(name="sgd", momentum=0.0), batch_size=256, total_steps=10, warmup_steps=0
    )
    updates, _ = tx.update(GRADS, tx.init(PARAMS), PARAMS)
    np.testing.assert_allclose(
        updates["encoder"]["conv"]["kernel"][0],
        -0.5 * (np.array([0.3, 0.4]) + 1e-2 * np.array([3.0, -4.0])),
        rtol=1e-6,
    )
    np.testing.assert_allclose(updates["head"]["bias"], -0.5 * np.array([0.1, -0.2]), rtol=1e-6)


def test_warmup_then_cosine_schedule():
    _, schedule = make_optimizer(optim_config(), batch_size=512, total_steps=110, warmup_steps=10)
    peak = 0.5 * 512 / 256
    assert float(schedule(0)) == 0.0
    assert float(schedule(5)) == pytest.approx(peak / 2)
    assert float(schedule(10)) == pytest.approx(peak)
    assert float(schedule(60)) == pytest.approx(peak * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert float(schedule(110)) == pytest.approx(0.0, abs=1e-7)


def test_learning_rate_scaling_and_unknown_names():
    assert peak_learning_rate(optim_config(lr_scaling="sqrt"), 1024) == pytest.approx(0.5 * 32)
    with pytest.raises(ConfigError, match="lr_scaling"):
        peak_learning_rate(optim_config(lr_scaling="cubic"), 256)
    with pytest.raises(ConfigError, match="optim.name='adam'"):
        make_optimizer(optim_config(name="adam"), batch_size=256, total_steps=1, warmup_steps=0)


def test_piecewise_schedule_matches_revisiting_get_lr():
    """Revisiting's trainer.get_lr: step * peak / warmup_steps during warmup, then the peak times
    0.1**i after the i-th of decay_epochs (counted from step 0)."""
    config = optim_config(
        name="sgd", learning_rate=0.1, schedule="piecewise", decay_epochs=[15, 25], warmup_epochs=5
    )
    steps_per_epoch = 10.0
    _, schedule = make_optimizer(
        config, batch_size=512, total_steps=350, warmup_steps=50, steps_per_epoch=steps_per_epoch
    )
    peak = 0.1 * 512 / 256

    def get_lr(step):
        if step < 5 * steps_per_epoch:
            return step * peak / (5 * steps_per_epoch)
        return peak * 0.1 ** sum(step >= e * steps_per_epoch for e in (15, 25))

    for step in [0, 1, 25, 49, 50, 51, 149, 150, 151, 249, 250, 349]:
        assert float(schedule(step)) == pytest.approx(get_lr(step), rel=1e-5, abs=1e-9), step


def test_lr_multipliers_take_the_first_matching_rule_else_one():
    rules = [(r"^encoder/bn/", 0.0), (r"^encoder/", 0.1), (r"bias$", 3.0)]
    assert lr_multipliers(PARAMS, rules) == {
        "encoder": {"conv": {"kernel": 0.1}, "bn": {"scale": 0.0}},
        "head": {"bias": 3.0},
    }
    assert lr_multipliers(PARAMS, []) == jax.tree.map(lambda _: 1.0, PARAMS)
    with pytest.raises(ConfigError, match="multipliers must be >= 0"):
        lr_multipliers(PARAMS, [("head", -1.0)])


def test_one_sgd_step_scales_each_group_by_its_multiplier_and_freezes_zero():
    """SGD's first step is -lr * (g + wd * w) (the momentum buffer starts at zero); each
    group's update is that times its multiplier, and the frozen group's is exactly zero."""
    config = optim_config(name="sgd", weight_decay=1e-2)
    base, schedule = make_optimizer(config, batch_size=256, total_steps=100, warmup_steps=0)
    multipliers = {
        "encoder": {"conv": {"kernel": 0.1}, "bn": {"scale": 0.0}},
        "head": {"bias": 2.0},
    }
    tx = with_lr_multipliers(base, multipliers)
    state = tx.init(PARAMS)
    updates, state = tx.update(GRADS, state, PARAMS)
    lr = float(schedule(0))
    kernel = np.array([[3.0, -4.0]]), np.array([[0.3, 0.4]])
    np.testing.assert_allclose(
        updates["encoder"]["conv"]["kernel"], -lr * 0.1 * (kernel[1] + 1e-2 * kernel[0]), rtol=1e-6
    )
    # Biases are excluded from weight decay: -lr * 2 * g.
    np.testing.assert_allclose(
        updates["head"]["bias"], -lr * 2.0 * np.array([0.1, -0.2]), rtol=1e-6
    )
    assert np.all(np.asarray(updates["encoder"]["bn"]["scale"]) == 0)
    # The frozen group holds no optimizer state (no momentum buffer for it).
    frozen_state = [leaf for leaf in jax.tree.leaves(state) if getattr(leaf, "shape", None) == (1,)]
    assert not frozen_state


def test_param_groups_train_at_their_own_rate_scheduled_or_constant():
    """SGD without momentum: each step's update is -rate * g. With 4 warmup steps the schedule
    is 0, 1/4, 1/2 of the peak at steps 0-2; the constant group (SimSiam's predictor) has the
    peak from step 0, the scheduled one (Barlow Twins' biases) the schedule times 0.5, the
    rest the schedule; the first matching group wins."""
    groups = (("^head/", 1.0, "constant"), ("bias$|scale$", 0.5, "scheduled"))
    config = optim_config(name="sgd", momentum=0.0, weight_decay=0.0, param_groups=groups)
    tx, schedule = make_optimizer(config, batch_size=512, total_steps=100, warmup_steps=4)
    peak = 0.5 * 512 / 256
    state = tx.init(PARAMS)
    for step in range(3):
        updates, state = tx.update(GRADS, state, PARAMS)
        rate = float(schedule(step))
        assert rate == pytest.approx(peak * step / 4)
        expected = {
            "encoder": {"conv": {"kernel": rate}, "bn": {"scale": 0.5 * rate}},
            "head": {"bias": peak},
        }
        for u, g, r in zip(*map(jax.tree.leaves, (updates, GRADS, expected)), strict=True):
            np.testing.assert_allclose(u, -r * np.asarray(g), rtol=1e-6)


def test_param_groups_keep_lars_exclusions_within_each_group():
    """Barlow Twins' recipe: LARS at one rate for the weights and 0.024 of it for biases and
    BatchNorm parameters, which LARS also leaves out of decay and trust-ratio scaling."""
    config = optim_config(param_groups=((r"(^|/)(bias|scale)$", 0.024, "scheduled"),))
    tx, schedule = make_optimizer(config, batch_size=256, total_steps=100, warmup_steps=0)
    updates, _ = tx.update(GRADS, tx.init(PARAMS), PARAMS)
    lr = float(schedule(0))
    np.testing.assert_allclose(updates["head"]["bias"], -0.024 * lr * np.array([0.1, -0.2]), 1e-6)
    w, g = np.array([3.0, -4.0]), np.array([0.3, 0.4]) + 1e-2 * np.array([3.0, -4.0])
    trust = 0.001 * np.linalg.norm(w) / np.linalg.norm(g)
    np.testing.assert_allclose(updates["encoder"]["conv"]["kernel"][0], -lr * trust * g, 1e-5)


def dino_cosine_scheduler(
    base_value, final_value, epochs, niter_per_ep, warmup_epochs=0, start_warmup_value=0
):
    """facebookresearch/dino utils.cosine_scheduler, as written there."""
    warmup_schedule = np.array([])
    warmup_iters = warmup_epochs * niter_per_ep
    if warmup_epochs > 0:
        warmup_schedule = np.linspace(start_warmup_value, base_value, warmup_iters)
    iters = np.arange(epochs * niter_per_ep - warmup_iters)
    schedule = final_value + 0.5 * (base_value - final_value) * (
        1 + np.cos(np.pi * iters / len(iters))
    )
    schedule = np.concatenate((warmup_schedule, schedule))
    assert len(schedule) == epochs * niter_per_ep
    return schedule


def swav_lr_schedule(base_lr, final_lr, epochs, warmup_epochs, iters_per_epoch, start_warmup=0):
    """facebookresearch/swav main_swav.py's lr_schedule, as written there."""
    warmup_lr_schedule = np.linspace(start_warmup, base_lr, iters_per_epoch * warmup_epochs)
    iters = np.arange(iters_per_epoch * (epochs - warmup_epochs))
    cosine_lr_schedule = np.array(
        [
            final_lr
            + 0.5
            * (base_lr - final_lr)
            * (1 + math.cos(math.pi * t / (iters_per_epoch * (epochs - warmup_epochs))))
            for t in iters
        ]
    )
    return np.concatenate((warmup_lr_schedule, cosine_lr_schedule))


FLOAT32 = dict(rtol=1e-6, atol=1e-7)  # float32's resolution (6e-8 at 0.6, the peak below).


@pytest.mark.parametrize("epochs, niter, warmup_epochs", [(3, 4, 1), (6, 2, 0), (12, 1, 1)])
def test_cosine_linspace_is_dinos_and_swavs_schedule_and_cosine_differs_in_warmup_only(
    epochs, niter, warmup_epochs
):
    total, warmup = epochs * niter, warmup_epochs * niter
    config = optim_config(schedule="cosine_linspace", learning_rate=0.3, min_learning_rate=1e-3)
    lengths = dict(batch_size=512, total_steps=total, warmup_steps=warmup, steps_per_epoch=niter)
    ours = np.asarray(make_schedule(config, **lengths)(jnp.arange(total)))
    dino = dino_cosine_scheduler(0.6, 1e-3, epochs, niter, warmup_epochs=warmup_epochs)
    np.testing.assert_allclose(ours, dino, **FLOAT32)
    swav = swav_lr_schedule(0.6, 1e-3, epochs, warmup_epochs, niter)
    np.testing.assert_array_equal(swav, dino)
    # optax's warmup reaches the peak at step `warmup`, one step later than np.linspace.
    cosine = make_schedule(optim_config(learning_rate=0.3, min_learning_rate=1e-3), **lengths)
    np.testing.assert_allclose(cosine(jnp.arange(warmup, total)), dino[warmup:], **FLOAT32)
    assert float(cosine(total)) == pytest.approx(1e-3)
    if warmup > 1:
        assert float(cosine(warmup - 1)) == pytest.approx(0.6 * (warmup - 1) / warmup)
    # main_dino.py's wd_schedule: cosine_scheduler(weight_decay, weight_decay_end, ...).
    decay = weight_decay_schedule(optim_config(weight_decay=0.04, weight_decay_end=0.4), total)
    wd = dino_cosine_scheduler(0.04, 0.4, epochs, niter)
    np.testing.assert_allclose(decay(jnp.arange(total)), wd, **FLOAT32)
    assert weight_decay_schedule(optim_config(weight_decay=0.04), total) == 0.04


def dino_clip_gradients(grads: dict, clip: float) -> dict:
    """facebookresearch/dino utils.clip_gradients on NumPy gradients (float64)."""
    clipped = {}
    for name, g in grads.items():
        param_norm = np.linalg.norm(g.ravel(), 2)
        clip_coef = clip / (param_norm + 1e-6)
        clipped[name] = g * clip_coef if clip_coef < 1 else g
    return clipped


def test_clip_per_tensor_is_dinos_clip_gradients():
    rng = np.random.default_rng(0)
    grads = {
        "a/kernel": rng.normal(size=(3, 4)) * 2,  # Norm ~7: clipped.
        "a/bias": rng.normal(size=(4,)) * 0.5,  # Norm ~1: kept.
        "b/kernel": np.full((2, 2, 2), 1.5),  # Norm 4.24: clipped (ndim 3, all values).
    }
    ours, _ = clip_per_tensor(3.0).update(
        {k: jnp.asarray(v, jnp.float32) for k, v in grads.items()}, optax.EmptyState()
    )
    for name, theirs in dino_clip_gradients(grads, 3.0).items():
        np.testing.assert_allclose(ours[name], theirs, rtol=1e-6, err_msg=name)
    assert np.linalg.norm(ours["a/kernel"]) == pytest.approx(3.0, rel=1e-6)


# The torch side of the DINO tests: main_dino.py's train_one_epoch on given gradients, each
# parameter its own group (torch's update is per parameter either way) with the step's rate
# times its multiplier and, for the regularised, the step's weight decay.
TORCH_SIDE = """
import sys

import numpy as np
import torch


def clip_gradients(params, clip):  # dino utils.clip_gradients
    for p in params:
        if p.grad is not None:
            param_norm = p.grad.data.norm(2)
            clip_coef = clip / (param_norm + 1e-6)
            if clip_coef < 1:
                p.grad.data.mul_(clip_coef)


for path in sys.argv[1:]:
    case = np.load(path)
    names = [key.removeprefix("init/") for key in case if key.startswith("init/")]
    params = {n: torch.tensor(case[f"init/{n}"], requires_grad=True) for n in names}
    groups = [{"params": [params[n]], "name": n} for n in names]
    if str(case["optimizer"]) == "adamw":
        optimizer = torch.optim.AdamW(groups, betas=(0.9, 0.999), eps=1e-8)
    else:
        optimizer = torch.optim.SGD(groups, lr=0, momentum=0.9)
    trajectory = {n: [] for n in names}
    for it in range(len(case["lr"])):
        for group in optimizer.param_groups:
            n = group["name"]
            group["lr"] = float(case["lr"][it] * case[f"multiplier/{n}"])
            group["weight_decay"] = float(case["wd"][it]) if case[f"decayed/{n}"] else 0.0
        optimizer.zero_grad()
        for n in names:
            params[n].grad = torch.tensor(case[f"grads/{n}"][it])
        clip_gradients(params.values(), float(case["clip"]))
        for n in names:  # cancel_gradients_last_layer
            if it < case[f"frozen/{n}"]:
                params[n].grad = None
        optimizer.step()
        for n in names:
            trajectory[n].append(params[n].detach().numpy().copy())
    np.savez(path.replace(".npz", "_torch.npz"), **{n: np.stack(v) for n, v in trajectory.items()})
"""

# DINO's schedule in miniature: 3 epochs of 2 steps, 1 of warmup, the last layer frozen for 1.
EPOCHS, STEPS_PER_EPOCH, WARMUP_EPOCHS = 3, 2, 1
DINO_OPTIM = dict(
    learning_rate=0.1,
    min_learning_rate=1e-3,
    schedule="cosine_linspace",
    weight_decay=0.04,
    weight_decay_end=0.4,
    weight_decay_exclude=r"(^|/)bias$",
    clip_per_tensor=3.0,
    frozen_first=(("last_layer", 1.0),),
    param_groups=(("^head/", 0.5, "scheduled"),),
)
# Per parameter: its shape, gradient scale (the kernel's ~7 is clipped, the bias's ~1 not),
# learning-rate multiplier, whether it is decayed, and frozen steps.
DINO_PARAMS = {
    "backbone/kernel": ((3, 4), 2.0, 1.0, True, 0),
    "backbone/bias": ((4,), 0.5, 1.0, False, 0),
    "head/last_layer/kernel": ((4, 5), 1.0, 0.5, True, STEPS_PER_EPOCH),
}


def dino_case(optimizer: str) -> dict[str, np.ndarray]:
    """Initial parameters, each step's gradients and rates, for TORCH_SIDE."""
    rng = np.random.default_rng(1)
    steps = EPOCHS * STEPS_PER_EPOCH
    case = dict(
        optimizer=np.array(optimizer),
        clip=np.array(DINO_OPTIM["clip_per_tensor"]),
        lr=dino_cosine_scheduler(0.1, 1e-3, EPOCHS, STEPS_PER_EPOCH, WARMUP_EPOCHS),
        wd=dino_cosine_scheduler(0.04, 0.4, EPOCHS, STEPS_PER_EPOCH),
    )
    for name, (shape, scale, multiplier, decayed, frozen) in DINO_PARAMS.items():
        case[f"init/{name}"] = rng.normal(size=shape)
        case[f"grads/{name}"] = rng.normal(size=(steps, *shape)) * scale
        case[f"multiplier/{name}"] = np.array(multiplier)
        case[f"decayed/{name}"] = np.array(decayed)
        case[f"frozen/{name}"] = np.array(frozen)
    return case


@pytest.fixture(scope="module")
def torch_side(tmp_path_factory):
    """{optimizer: (case, torch's parameters after each step)} for AdamW and SGD."""
    root = tmp_path_factory.mktemp("torch")
    cases = {name: dino_case(name) for name in ("adamw", "sgd")}
    for name, case in cases.items():
        np.savez(root / f"{name}.npz", **case)
    run = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(TORCH_SIDE)]
        + [str(root / f"{name}.npz") for name in cases],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    return {name: (case, np.load(root / f"{name}_torch.npz")) for name, case in cases.items()}


def run_steps(config, params: dict, grads: dict, *, total: int, warmup: int, steps_per_epoch):
    """Our parameters after each step of `make_optimizer(config)` on `grads` (name: [steps,
    ...]), with flat `params` (a name with slashes is the parameter path)."""
    tx, _ = make_optimizer(
        config,
        batch_size=256,
        total_steps=total,
        warmup_steps=warmup,
        steps_per_epoch=steps_per_epoch,
    )
    params = {k: jnp.asarray(v) for k, v in params.items()}
    state, update = tx.init(params), jax.jit(tx.update)
    trajectory = []
    for it in range(len(next(iter(grads.values())))):
        updates, state = update({k: jnp.asarray(g[it]) for k, g in grads.items()}, state, params)
        params = optax.apply_updates(params, updates)
        trajectory.append(params)
    return {k: np.stack([p[k] for p in trajectory]) for k in params}


@pytest.mark.slow  # ~10 CPU-s for both: torch's process (~4.5, mostly its import), two jits.
@pytest.mark.xdist_group("torch_side")  # One worker: the session runs torch's process once.
@pytest.mark.skipif(importlib.util.find_spec("torch") is None, reason="needs torch")
@pytest.mark.parametrize("name", ["adamw", "sgd"])
def test_dinos_optimizer_steps_as_torch_steps_it(torch_side, name):
    """DINO's recipe: the learning rate by cosine_scheduler (linspace warmup, min_lr), the
    decay of the regularised parameters by its cosine to weight_decay_end, gradients clipped
    per tensor, and the last layer (at half the rate, a param group) frozen for the first
    epoch: torch skips a parameter whose grad is None, so its AdamW state, bias correction
    included, starts at step 2. Torch's AdamW and momentum SGD, 6 steps, both sides in float64
    (in float32 optax's bias correction 1 - 0.999**t alone differs from torch's by ~1e-5)."""
    case, theirs = torch_side[name]
    config = optim_config(name=name, beta2=0.999, **DINO_OPTIM)
    with jax.enable_x64(True):
        ours = run_steps(
            config,
            {n: case[f"init/{n}"] for n in DINO_PARAMS},
            {n: case[f"grads/{n}"] for n in DINO_PARAMS},
            total=EPOCHS * STEPS_PER_EPOCH,
            warmup=WARMUP_EPOCHS * STEPS_PER_EPOCH,
            steps_per_epoch=float(STEPS_PER_EPOCH),
        )
    for n in DINO_PARAMS:
        np.testing.assert_allclose(ours[n], theirs[n], rtol=1e-12, atol=1e-14, err_msg=n)
    frozen, start = ours["head/last_layer/kernel"], case["init/head/last_layer/kernel"]
    np.testing.assert_array_equal(frozen[:STEPS_PER_EPOCH], [start] * STEPS_PER_EPOCH)
    assert np.all(frozen[STEPS_PER_EPOCH] != start)


def swav_steps(params: dict, grads: dict, lr, *, wd: float, frozen_steps: int) -> list[dict]:
    """facebookresearch/swav main_swav.py's train loop on given gradients (float64): the
    prototypes normalised at each iteration's start (F.normalize of weight [out, in] along
    dim 1: our kernel is [in, out], axis 0), their grad None in the first `frozen_steps`
    (freeze_prototypes_niters); then apex LARC.step (clip=False) and torch's SGD (momentum
    0.9, its weight decay 0 while LARC applies it)."""
    params, buffers, trajectory = dict(params), {}, []
    for it in range(len(lr)):
        w = params["prototypes/kernel"]
        params["prototypes/kernel"] = w / np.maximum(np.linalg.norm(w, axis=0), 1e-12)
        for name, p in params.items():
            if name == "prototypes/kernel" and it < frozen_steps:
                continue
            g = grads[name][it]
            param_norm, grad_norm = np.linalg.norm(p), np.linalg.norm(g)
            if param_norm != 0 and grad_norm != 0:
                adaptive_lr = 0.001 * param_norm / (grad_norm + param_norm * wd + 1e-8)
                g = (g + wd * p) * adaptive_lr
            buffers[name] = 0.9 * buffers[name] + g if name in buffers else g
            params[name] = p - lr[it] * buffers[name]
        trajectory.append(dict(params))
    return trajectory


def test_swavs_larc_with_frozen_normalised_prototypes_steps_as_swav_does():
    """SwAV's recipe: LARC around momentum SGD on every parameter (weight_decay_exclude
    matching no path), the linspace-then-cosine schedule to final_lr, prototypes frozen for
    the first epoch (2 steps) and normalised at every step. The zero-initialised bias has no
    norm: LARC leaves its gradient as it is (no decay), while the others' are scaled."""
    rng = np.random.default_rng(2)
    prototypes = rng.normal(size=(4, 5))
    params = {
        "backbone/kernel": rng.normal(size=(3, 4)),
        "backbone/bias": np.zeros(4),
        "prototypes/kernel": prototypes / np.linalg.norm(prototypes, axis=0),
    }
    grads = {name: rng.normal(size=(6, *p.shape)) for name, p in params.items()}
    config = optim_config(
        name="larc",
        learning_rate=0.3,
        min_learning_rate=0.003,
        schedule="cosine_linspace",
        weight_decay=0.01,
        weight_decay_exclude="^$",
        frozen_first=(("^prototypes/", 1.0),),
        normalize_after_step="^prototypes/kernel$",
    )
    with jax.enable_x64(True):
        ours = run_steps(config, params, grads, total=6, warmup=2, steps_per_epoch=2.0)
    lr = swav_lr_schedule(0.3, 0.003, epochs=3, warmup_epochs=1, iters_per_epoch=2)
    for it, theirs in enumerate(swav_steps(params, grads, lr, wd=0.01, frozen_steps=2)):
        w = theirs["prototypes/kernel"]  # As SwAV's next iteration starts with it.
        theirs["prototypes/kernel"] = w / np.linalg.norm(w, axis=0)
        for name, p in theirs.items():
            np.testing.assert_allclose(ours[name][it], p, rtol=1e-12, atol=1e-14, err_msg=name)
        np.testing.assert_allclose(np.linalg.norm(ours["prototypes/kernel"][it], axis=0), 1.0)
    np.testing.assert_allclose(ours["prototypes/kernel"][1], params["prototypes/kernel"])
    assert np.all(ours["prototypes/kernel"][2] != params["prototypes/kernel"])
    # The bias's first step at a non-zero rate is plain momentum SGD: -lr * (0.9 g0 + g1).
    np.testing.assert_allclose(
        ours["backbone/bias"][1],
        -lr[1] * (0.9 * grads["backbone/bias"][0] + grads["backbone/bias"][1]),
    )


def test_new_keys_at_their_defaults_leave_the_optimizer_state_as_before():
    """Old checkpoints restore: with every new key at its default the optimizer state has the
    tree it had before those keys (the transforms built here as make_optimizer built them)."""
    mask = lambda params: path_mask(params, r"(^|/)(bias|scale)$", match=False)  # noqa: E731
    rate = optax.constant_schedule(0.5)
    before = {
        "lars": optax.lars(
            rate, weight_decay=1e-2, weight_decay_mask=mask, trust_ratio_mask=mask, momentum=0.9
        ),
        "sgd": optax.chain(
            optax.add_decayed_weights(1e-2, mask=mask), optax.sgd(rate, momentum=0.9)
        ),
        "adamw": optax.adamw(rate, b1=0.9, b2=0.999, weight_decay=1e-2, mask=mask),
    }
    for name, tx in before.items():
        ours, _ = make_optimizer(
            optim_config(name=name, beta2=0.999), batch_size=256, total_steps=10, warmup_steps=0
        )
        assert jax.tree.structure(ours.init(PARAMS)) == jax.tree.structure(tx.init(PARAMS))


def test_fine_tuning_refuses_frozen_first_and_normalize_and_piecewise_a_min_learning_rate():
    piecewise = ml_collections.ConfigDict(
        {"optim": optim_config(schedule="piecewise", min_learning_rate=1e-3)}
    )
    with pytest.raises(ConfigError, match=r"min_learning_rate to 0 \(a piecewise schedule"):
        check_values(piecewise, VALUE_RULES)
    for key, value in [("frozen_first", (("^head/", 1.0),)), ("normalize_after_step", "kernel")]:
        check_values(
            ml_collections.ConfigDict({"optim": optim_config(**{key: value})}), VALUE_RULES
        )
        finetune = ml_collections.ConfigDict({"finetune": {"optim": optim_config(**{key: value})}})
        with pytest.raises(
            ConfigError, match=rf"--config.finetune.optim.{key} to .*pretraining only"
        ):
            check_values(finetune, VALUE_RULES)
