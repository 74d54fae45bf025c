"""Optimizers and schedules: SGD-momentum, LARS, LARC and AdamW; linear warmup, then cosine
decay (SimCLR; `cosine_linspace`: as DINO and SwAV build it) or piecewise-constant steps
(`decay_factor` at each of `decay_epochs`, as Revisiting-SSL trains its patch models).

Weight decay and LARS trust-ratio scaling skip parameters whose path matches a regex
(by default BatchNorm scales and all biases, as google-research/simclr excludes
`batch_normalization` and `bias`). The peak learning rate scales with the batch size
(`linear`: lr * B / 256, `sqrt`: lr * sqrt(B)), as in SimCLR. Parameter groups selected by
regex scale the learning rate per group, and a multiplier of 0 freezes a group (big_vision
`optax.py`: lr multipliers, "no schedule means frozen"). A pretraining recipe names its groups
in `config.param_groups`: each its own rate (the schedule times a multiplier, or that times the
peak at every step), as Barlow Twins' rates for biases and BatchNorm and SimSiam's predictor
without decay need. DINO and SwAV need the rest: a cosine weight-decay schedule, per-tensor
gradient clipping, parameters held for the first epochs, and prototypes kept normalised.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
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
            end_value=config.min_learning_rate,
        )
    if config.schedule == "cosine_linspace":
        return linspace_cosine_schedule(
            peak, config.min_learning_rate, total_steps=total_steps, warmup_steps=warmup_steps
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
        f"unknown config.optim.schedule={config.schedule!r}: use 'cosine', 'cosine_linspace' or "
        "'piecewise'."
    )


def cosine_schedule(start: float, end: float, steps: int) -> optax.Schedule:
    """end + (start - end) (1 + cos(pi k / steps)) / 2 at step k, held at `end` after `steps`:
    facebookresearch/dino utils.cosine_scheduler without warmup."""
    steps = max(steps, 1)
    return lambda k: (
        end + 0.5 * (start - end) * (1 + jnp.cos(jnp.pi * jnp.minimum(k, steps) / steps))
    )


def linspace_cosine_schedule(
    peak: float, end: float, *, total_steps: int, warmup_steps: int
) -> optax.Schedule:
    """dino utils.cosine_scheduler and swav main_swav.py's lr_schedule: warmup
    np.linspace(0, peak, W), which reaches the peak at step W - 1 (optax's warmup, at step W),
    then `cosine_schedule(peak, end, K - W)` from step W."""
    decay = cosine_schedule(peak, end, total_steps - warmup_steps)
    return lambda k: jnp.where(
        k < warmup_steps, peak * k / max(warmup_steps - 1, 1), decay(k - warmup_steps)
    )


def weight_decay_schedule(config: ml_collections.ConfigDict, total_steps: int):
    """`config.weight_decay`, or with `weight_decay_end` its cosine to that over the run (no
    warmup), as dino main_dino.py's wd_schedule sets the regularised group's decay each step."""
    if config.weight_decay_end is None:
        return config.weight_decay
    return cosine_schedule(config.weight_decay, config.weight_decay_end, total_steps)


def make_optimizer(
    config: ml_collections.ConfigDict,
    *,
    batch_size: int,
    total_steps: int,
    warmup_steps: int,
    steps_per_epoch: float | None = None,
) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimizer for `config.optim` and its learning-rate schedule (`steps_per_epoch` places
    the piecewise schedule's `decay_epochs` and ends `frozen_first`). In order: each gradient
    tensor clipped to `clip_per_tensor`; the parameters of `frozen_first` held for their epochs;
    `config.param_groups`, ((regex, multiplier, "scheduled" | "constant"), ...): a parameter
    whose path a group's regex matches first (`re.search`) trains at the schedule times the
    multiplier, or with "constant" at the peak rate times it at every step (no warmup, no
    decay), the others at the schedule; weight decay by `weight_decay_schedule`; last,
    `normalize_after_step`'s parameters normalised. A key at its default adds nothing: the
    optimizer state is what it was before the key existed, so older checkpoints restore."""
    schedule = make_schedule(
        config,
        batch_size=batch_size,
        total_steps=total_steps,
        warmup_steps=warmup_steps,
        steps_per_epoch=steps_per_epoch,
    )
    decay = weight_decay_schedule(config, total_steps)
    peak = peak_learning_rate(config, batch_size)

    def grouped(shift: int) -> optax.GradientTransformation:
        return _grouped(config, _shifted(schedule, shift), _shifted(decay, shift), peak)

    tx = _frozen_first(config, grouped, steps_per_epoch)
    if config.clip_per_tensor:
        tx = optax.chain(clip_per_tensor(config.clip_per_tensor), tx)
    if config.normalize_after_step:
        tx = optax.chain(tx, normalize_after_step(config.normalize_after_step))
    return tx, schedule


def _shifted(schedule, shift: int):
    """`schedule` (or a constant) `shift` steps on: what a transform whose count starts at
    global step `shift` must see."""
    if not callable(schedule) or shift == 0:
        return schedule
    return lambda step: schedule(step + shift)


def _first_match(regexes: Sequence[str], prefix: str, default: str):
    """A labelling of parameters: `prefix` + the index of the first of `regexes` that its path
    matches (`re.search`), else `default`."""
    patterns = [re.compile(regex) for regex in regexes]

    def label(path, _):
        name = param_path(path)
        return next((f"{prefix}{i}" for i, p in enumerate(patterns) if p.search(name)), default)

    return lambda params: jax.tree_util.tree_map_with_path(label, params)


def _grouped(config: ml_collections.ConfigDict, schedule, decay, peak: float):
    """`_transform` per parameter group of `config.param_groups` (one if none)."""
    if not config.param_groups:
        return _transform(config, schedule, decay)

    def rate(multiplier: float, mode: str) -> optax.Schedule:
        if mode == "constant":
            return optax.constant_schedule(peak * multiplier)
        return lambda step: schedule(step) * multiplier

    transforms = {"rest": _transform(config, schedule, decay)} | {
        f"group{i}": _transform(config, rate(multiplier, mode), decay)
        for i, (_, multiplier, mode) in enumerate(config.param_groups)
    }
    regexes = [regex for regex, _, _ in config.param_groups]
    return optax.multi_transform(transforms, _first_match(regexes, "group", "rest"))


def _frozen_first(config: ml_collections.ConfigDict, grouped, steps_per_epoch: float | None):
    """`grouped(0)`; but a parameter whose path a `config.frozen_first` regex matches first
    (before any param group) gets no update in its first round(epochs * steps_per_epoch) steps,
    as torch skips a parameter whose grad dino's cancel_gradients_last_layer or swav's
    freeze_prototypes_niters set to None: no decay, no optimizer state change. Its `grouped(n)`
    starts its state at step n (Adam's bias correction counts from there) and sees the global
    step's learning rate and decay."""
    if not config.frozen_first:
        return grouped(0)
    frozen = [round(epochs * steps_per_epoch) for _, epochs in config.frozen_first]
    transforms = {"trained": grouped(0)} | {
        f"frozen{i}": optax.transforms.conditionally_mask(grouped(n), lambda k, n=n: k >= n)
        for i, n in enumerate(frozen)
    }
    regexes = [regex for regex, _ in config.frozen_first]
    return optax.multi_transform(transforms, _first_match(regexes, "frozen", "trained"))


def _transform(config: ml_collections.ConfigDict, schedule: optax.Schedule, decay):
    """`config.name`'s optimizer at the learning rate `schedule` and weight decay `decay` (a
    number or a schedule)."""

    def decay_mask(params):
        return path_mask(params, config.weight_decay_exclude, match=False)

    if config.name == "lars":
        tx = optax.lars(
            schedule,
            weight_decay=decay,
            weight_decay_mask=decay_mask,
            trust_coefficient=config.trust_coefficient,
            trust_ratio_mask=decay_mask,
            momentum=config.momentum,
        )
    elif config.name == "larc":
        tx = larc(
            schedule,
            weight_decay=decay,
            mask=decay_mask,
            trust_coefficient=config.trust_coefficient,
            momentum=config.momentum,
        )
    elif config.name == "sgd":
        tx = optax.chain(
            optax.add_decayed_weights(decay, mask=decay_mask),
            optax.sgd(schedule, momentum=config.momentum),
        )
    elif config.name == "adamw":  # torch's AdamW: eps 1e-8, decay decoupled and scaled by lr.
        tx = optax.adamw(
            schedule,
            b1=config.momentum,
            b2=config.beta2,
            weight_decay=decay,
            mask=decay_mask,
        )
    else:
        raise ConfigError(
            f"unknown config.optim.name={config.name!r}: use 'lars', 'larc', 'sgd' or 'adamw'."
        )
    return tx


def larc(
    learning_rate: optax.Schedule,
    *,
    weight_decay,
    mask,
    trust_coefficient: float,
    momentum: float,
) -> optax.GradientTransformation:
    """apex LARC(SGD(momentum, weight_decay), trust_coefficient, clip=False, eps=1e-8), as swav
    main_swav.py wraps SGD. apex/parallel/LARC.py `step`: a parameter whose norm and gradient's
    norm are both non-zero gets g <- (g + wd p) trust ||p|| / (||g|| + wd ||p|| + eps), then
    torch's SGD without decay: buf = momentum buf + g, p -= lr buf. A parameter outside `mask`
    (`weight_decay_exclude`, as lars's) gets plain momentum SGD; SwAV wraps every parameter:
    give it a `weight_decay_exclude` that matches no path, e.g. '^$'."""
    decay = weight_decay if callable(weight_decay) else optax.constant_schedule(weight_decay)
    return optax.chain(
        optax.masked(_scale_by_larc(decay, trust_coefficient), mask),
        optax.sgd(learning_rate, momentum=momentum),
    )


class ScaleByLarcState(NamedTuple):
    count: jax.Array  # Steps taken: where the weight-decay schedule is.


def _scale_by_larc(decay: optax.Schedule, trust_coefficient: float):
    """LARC's gradient scaling (see `larc`)."""

    def init(params):
        del params
        return ScaleByLarcState(jnp.zeros([], jnp.int32))

    def update(updates, state, params):
        wd = decay(state.count)

        def scale(g, p):
            p_norm, g_norm = _norm(p), _norm(g)
            adaptive = trust_coefficient * p_norm / (g_norm + p_norm * wd + 1e-8)
            return jnp.where((p_norm != 0) & (g_norm != 0), (g + wd * p) * adaptive, g)

        updates = jax.tree.map(scale, updates, params)
        return updates, ScaleByLarcState(optax.safe_increment(state.count))

    return optax.GradientTransformation(init, update)


def clip_per_tensor(max_norm: float) -> optax.GradientTransformation:
    """dino utils.clip_gradients: each gradient tensor whose L2 norm n has
    max_norm / (n + 1e-6) < 1 is scaled by that (per tensor, not by the global norm)."""

    def clip(g):
        coef = max_norm / (_norm(g) + 1e-6)
        return jnp.where(coef < 1, g * coef, g)

    return optax.stateless(lambda updates, params: jax.tree.map(clip, updates))


def normalize_after_step(regex: str) -> optax.GradientTransformation:
    """The parameters whose path matches `regex` L2-normalised along axis 0 after each step (a
    Dense kernel [in, out]: each output unit's weights), as swav main_swav.py normalises
    `prototypes.weight` ([out, in], dim=1) before each step: the same, given the task
    initialises them normalised. As the last transform the update is normalize(p + u) - p, so
    the engine's p + update is the normalised parameter (up to rounding)."""

    def normalize(updates, params):
        def one(u, p, matches: bool):
            if not matches:
                return u
            new = p + u
            return new / jnp.maximum(jnp.linalg.norm(new, axis=0, keepdims=True), 1e-12) - p

        return jax.tree.map(one, updates, params, path_mask(params, regex, match=True))

    return optax.stateless(normalize)


def _norm(x: jax.Array) -> jax.Array:
    """The L2 norm of all of `x`'s values (torch.norm)."""
    return jnp.sqrt(jnp.sum(jnp.square(x)))


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
