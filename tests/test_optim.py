"""Optimizers against hand-computed updates: LARS as google-research/simclr defines it,
weight-decay masks, warmup + cosine schedule, batch-size scaling, learning-rate multiplier
groups and frozen groups."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from selfsup.config import ConfigError
from selfsup.train.optim import (
    lr_multipliers,
    make_optimizer,
    path_mask,
    peak_learning_rate,
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
