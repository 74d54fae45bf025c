"""Optimizers and schedules: SGD-momentum and LARS; linear warmup, then cosine decay to zero
(SimCLR) or piecewise-constant steps (`decay_factor` at each of `decay_epochs`, as
Revisiting-SSL trains its patch models).

Weight decay and LARS trust-ratio scaling skip parameters whose path matches a regex
(by default BatchNorm scales and all biases, as google-research/simclr excludes
`batch_normalization` and `bias`). The peak learning rate scales with the batch size
(`linear`: lr * B / 256, `sqrt`: lr * sqrt(B)), as in SimCLR. Parameter groups selected by
regex scale the learning rate per group, and a multiplier of 0 freezes a group (big_vision
`optax.py`: lr multipliers, "no schedule means frozen"). A pretraining recipe names its groups
in `config.param_groups`: each its own rate (the schedule times a multiplier, or that times the
peak at every step), as Barlow Twins' rates for biases and BatchNorm and SimSiam's predictor
without decay need.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import jax
import ml_collections
import optax

from selfsup.config import ConfigError


def param_path(path: tuple) -> str:
    """A parameter's path as `encoder/stage1/0/conv1/kernel`."""
    return jax.tree_util.keystr(path, simple=True, separator="/")


def path_mask(params, regex: str, *, match: bool):
    """A pytree of bools: whether each parameter path matches `regex` (or does not)."""
    pattern = re.compile(regex)
    return jax.tree_util.tree_map_with_path(
        lambda path, _: bool(pattern.search(param_path(path))) == match, params
    )


def peak_learning_rate(config: ml_collections.ConfigDict, batch_size: int) -> float:
    if config.lr_scaling == "linear":
        return config.learning_rate * batch_size / 256
    if config.lr_scaling == "sqrt":
        return config.learning_rate * math.sqrt(batch_size)
    raise ConfigError(
        f"unknown config.optim.lr_scaling={config.lr_scaling!r}: use 'linear' or 'sqrt'."
    )


def make_schedule(
    config: ml_collections.ConfigDict,
    *,
    batch_size: int,
    total_steps: int,
    warmup_steps: int,
    steps_per_epoch: float | None,
) -> optax.Schedule:
    peak = peak_learning_rate(config, batch_size)
    if config.schedule == "cosine":
        return optax.warmup_cosine_decay_schedule(
            init_value=0.0,
            peak_value=peak,
            warmup_steps=warmup_steps,
            decay_steps=max(total_steps, warmup_steps + 1),
            end_value=0.0,
        )
    if config.schedule == "piecewise":
        # Revisiting's get_lr: linear warmup from 0, then the peak times decay_factor**i after
        # the i-th boundary (boundaries count from step 0, not from the end of warmup).
        boundaries = {round(e * steps_per_epoch): config.decay_factor for e in config.decay_epochs}
        return optax.join_schedules(
            [
                optax.linear_schedule(0.0, peak, max(warmup_steps, 1)),
                lambda step: optax.piecewise_constant_schedule(peak, boundaries)(
                    step + warmup_steps
                ),
            ],
            [warmup_steps],
        )
    raise ConfigError(
        f"unknown config.optim.schedule={config.schedule!r}: use 'cosine' or 'piecewise'."
    )


def make_optimizer(
    config: ml_collections.ConfigDict,
    *,
    batch_size: int,
    total_steps: int,
    warmup_steps: int,
    steps_per_epoch: float | None = None,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimizer for `config.optim` and its learning-rate schedule (`steps_per_epoch` places
    the piecewise schedule's `decay_epochs`). `config.param_groups`, ((regex, multiplier,
    "scheduled" | "constant"), ...): a parameter whose path a group's regex matches first
    (`re.search`) trains at the schedule times the multiplier, or with "constant" at the peak
    rate times it at every step (no warmup, no decay); the others at the schedule."""
    schedule = make_schedule(
        config,
        batch_size=batch_size,
        total_steps=total_steps,
        warmup_steps=warmup_steps,
        steps_per_epoch=steps_per_epoch,
    )
    if not config.param_groups:
        return _transform(config, schedule), schedule
    peak = peak_learning_rate(config, batch_size)

    def rate(multiplier: float, mode: str) -> optax.Schedule:
        if mode == "constant":
            return optax.constant_schedule(peak * multiplier)
        return lambda step: schedule(step) * multiplier

    transforms = {"rest": _transform(config, schedule)} | {
        f"group{i}": _transform(config, rate(multiplier, mode))
        for i, (_, multiplier, mode) in enumerate(config.param_groups)
    }
    patterns = [re.compile(regex) for regex, _, _ in config.param_groups]

    def label(path, _):
        name = param_path(path)
        return next((f"group{i}" for i, p in enumerate(patterns) if p.search(name)), "rest")

    return optax.multi_transform(
        transforms, lambda params: jax.tree_util.tree_map_with_path(label, params)
    ), schedule


def _transform(config: ml_collections.ConfigDict, schedule: optax.Schedule):
    """`config.name`'s optimizer at the learning rate `schedule`."""

    def decay_mask(params):
        return path_mask(params, config.weight_decay_exclude, match=False)

    if config.name == "lars":
        tx = optax.lars(
            schedule,
            weight_decay=config.weight_decay,
            weight_decay_mask=decay_mask,
            trust_coefficient=config.trust_coefficient,
            trust_ratio_mask=decay_mask,
            momentum=config.momentum,
        )
    elif config.name == "sgd":
        tx = optax.chain(
            optax.add_decayed_weights(config.weight_decay, mask=decay_mask),
            optax.sgd(schedule, momentum=config.momentum),
        )
    elif config.name == "adamw":  # torch's AdamW: eps 1e-8, decay decoupled and scaled by lr.
        tx = optax.adamw(
            schedule,
            b1=config.momentum,
            b2=config.beta2,
            weight_decay=config.weight_decay,
            mask=decay_mask,
        )
    else:
        raise ConfigError(
            f"unknown config.optim.name={config.name!r}: use 'lars', 'sgd' or 'adamw'."
        )
    return tx


def lr_multipliers(params, rules: Sequence[tuple[str, float]]):
    """A pytree of floats: per parameter, the multiplier of the first rule whose regex matches
    its path (`re.search`), 1.0 if none does."""
    compiled = [(re.compile(regex), float(multiplier)) for regex, multiplier in rules]
    for _, multiplier in compiled:
        if not multiplier >= 0:
            raise ConfigError(f"learning-rate multipliers must be >= 0, got {multiplier}.")

    def multiplier_of(path, _):
        name = param_path(path)
        return next((m for pattern, m in compiled if pattern.search(name)), 1.0)

    return jax.tree_util.tree_map_with_path(multiplier_of, params)


def with_lr_multipliers(
    tx: optax.GradientTransformation, multipliers
) -> optax.GradientTransformation:
    """`tx` per parameter group of equal multiplier m (a pytree from `lr_multipliers`), its
    updates scaled by m; a group with m = 0 is frozen: zero updates and no optimizer state."""

    def label(m: float) -> str:
        return "frozen" if m == 0 else f"x{m!r}"

    transforms = {
        label(m): optax.set_to_zero() if m == 0 else optax.chain(tx, optax.scale(m))
        for m in set(jax.tree.leaves(multipliers))
    }
    return optax.multi_transform(transforms, jax.tree.map(label, multipliers))
