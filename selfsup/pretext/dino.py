"""DINO (Caron et al. 2021, "Emerging Properties in Self-Supervised Vision Transformers"):
self-distillation without labels. A student (encoder + DINO head) matches, by cross-entropy, a
momentum teacher's centred and sharpened output distribution over K prototypes, across every
pair of a teacher global crop and a different student crop (multi-crop: the teacher sees the
two global crops only, the student all).

Matches facebookresearch/dino `main_dino.py` and `vision_transformer.py`:
- `DINOHead`: Linear-GELU-Linear-GELU-Linear (2048, 2048, 256; trunc-normal std 0.02, zero
  bias), L2-normalise, then a weight-normalised bias-free linear layer to K (`weight_g` fixed to
  1 with `norm_last_layer`, else trained from 1; `weight_v` torch's default init). Its last layer
  is frozen for the first epoch(s) by the recipe's `optim.frozen_first`.
- `DINOLoss`: softmax((t - C) / tau_t) of the teacher against log_softmax(s / tau_s) of the
  student, averaged over the batch and over the 2 (V - 1) pairs (q, v != q); then the centre
  C <- m C + (1 - m) mean of the teacher outputs over the global batch (the step sees the
  global batch: the mean is the all-reduce). tau_t follows `teacher_temp_schedule` per epoch
  (linear from `warmup_teacher_temp` over `warmup_teacher_temp_epochs`, then `teacher_temp`).
- The teacher: a copy of the student at step 0 (`load_state_dict`), without stochastic depth,
  in training mode (its BatchNorm, in a ResNet, normalises by its own batch), moved by an EMA
  whose momentum rises from `momentum_teacher` to 1 on a cosine (`cosine_scheduler`), the same
  curve as BYOL's (`teacher.cosine_momentum`).
- Colours (`DataAugmentationDINO`), in the step: torchvision's jitter (0.4, 0.4, 0.2, 0.1) with
  p=0.8 and grayscale p=0.2 on every crop; blur p=1.0 on global crop 1, p=0.1 plus solarize
  p=0.2 on global crop 2, p=0.5 on local crops (`blur`, `solarize`). The blur is SimCLR's
  (sigma U(0.1, 2), a kernel a tenth of the crop), not PIL's radius.
Deviation: a ViT is timm's (its initialisation and position-embedding resampling), not DINO's
own `vision_transformer.py`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from selfsup.config import MAX_WIDTH, Rule, flag, integer, number, probability, sequence
from selfsup.data import augment_jax, multicrop
from selfsup.models.encoders import encoder_from_config, with_drop_path
from selfsup.models.heads import online_probe_head, torch_linear
from selfsup.models.vit import TRUNC_NORMAL
from selfsup.pretext import teacher

if TYPE_CHECKING:
    import tensorflow as tf


def default_config() -> ml_collections.ConfigDict:
    """`config.dino`: `main_dino.py`'s defaults (its ViT-S/16 ImageNet run)."""
    return ml_collections.ConfigDict(
        dict(
            out_dim=65536,  # K.
            hidden_dim=2048,
            bottleneck_dim=256,
            norm_last_layer=True,  # weight_g fixed to 1 (False: trained; safe with ViT-S).
            momentum_teacher=0.996,
            warmup_teacher_temp=0.04,
            teacher_temp=0.04,
            warmup_teacher_temp_epochs=0,
            student_temp=0.1,
            center_momentum=0.9,
            drop_path=0.1,  # The student ViT's stochastic depth (a ResNet's must be 0).
            # Per crop group (global crop 1, global crop 2, local crops): blur and solarize
            # probabilities (`DataAugmentationDINO`).
            blur=(1.0, 0.1, 0.5),
            solarize=(0.0, 0.2, 0.0),
            **multicrop.crop_keys(),
        )
    )


def _no_resnet_drop_path(drop_path, block, run) -> str | None:
    if drop_path and run.model.name == "resnet":
        return "0 (a ResNet has no stochastic depth; DINO's ResNet-50 recipe sets none)"
    return None


TEMPERATURE = number(
    0, 10, " (DINO: 0.04-0.07 for the teacher, 0.1 for the student)", open_low=True
)
# `config.dino`'s rules (`selfsup.config.check_values`).
VALUE_RULES = {
    "out_dim": integer(2, 1 << 20, " (DINO: 65536)"),
    "hidden_dim": MAX_WIDTH,
    "bottleneck_dim": MAX_WIDTH,
    "norm_last_layer": flag(),
    "momentum_teacher": probability(" (the teacher's starting momentum; DINO: 0.996)"),
    "warmup_teacher_temp": TEMPERATURE,
    "teacher_temp": TEMPERATURE,
    "warmup_teacher_temp_epochs": integer(0, 100_000, " (epochs)"),
    "student_temp": TEMPERATURE,
    "center_momentum": probability(" (DINO: 0.9)"),
    "blur": sequence(probability(), "(1.0, 0.1, 0.5)", min_len=3, max_len=3),
    "solarize": sequence(probability(), "(0.0, 0.2, 0.0)", min_len=3, max_len=3),
    "drop_path": Rule(
        number(0, 1, open_high=True).test, "a rate in [0, 1)", relation=_no_resnet_drop_path
    ),
    **multicrop.CROP_RULES,
}


def teacher_temperature(epoch: jax.Array, c: ml_collections.ConfigDict) -> jax.Array:
    """`DINOLoss.teacher_temp_schedule[epoch]`: np.linspace(warmup_teacher_temp, teacher_temp,
    warmup_teacher_temp_epochs), then teacher_temp."""
    warmup = c.warmup_teacher_temp_epochs
    if warmup == 0:
        return jnp.asarray(c.teacher_temp, jnp.float32)
    ramp = jnp.asarray(np.linspace(c.warmup_teacher_temp, c.teacher_temp, warmup), jnp.float32)
    return jnp.where(epoch < warmup, ramp[jnp.minimum(epoch, warmup - 1)], c.teacher_temp)


def dino_loss(
    student: jax.Array, teacher_out: jax.Array, center: jax.Array, *, student_temp, teacher_temp
) -> jax.Array:
    """`DINOLoss.forward`: student logits [V, N, K] (crops 0, 1 global), teacher logits
    [2, N, K]: the mean over pairs (q, v), v != q, of the batch mean of
    -sum_k softmax((t_q - C) / tau_t)_k log_softmax(s_v / tau_s)_k."""
    targets = jax.lax.stop_gradient(jax.nn.softmax((teacher_out - center) / teacher_temp, -1))
    log_probs = jax.nn.log_softmax(student / student_temp, axis=-1)
    cross = -jnp.einsum("qnk,vnk->qv", targets, log_probs) / student.shape[1]
    pairs = ~np.eye(2, len(student), dtype=bool)  # v == q pairs a crop with itself.
    return jnp.sum(jnp.where(pairs, cross, 0.0)) / pairs.sum()


def updated_center(center: jax.Array, teacher_out: jax.Array, momentum: float) -> jax.Array:
    """`DINOLoss.update_center`: C m + (1 - m) mean of the teacher's [2, N, K] outputs."""
    batch_center = jnp.mean(jax.lax.stop_gradient(teacher_out), axis=(0, 1))
    return center * momentum + batch_center * (1 - momentum)


class DINOHead(nnx.Module):
    """`vision_transformer.DINOHead` (nlayers 3, no BatchNorm)."""

    def __init__(self, in_dim: int, c: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        dims = (in_dim, c.hidden_dim, c.hidden_dim, c.bottleneck_dim)
        self.mlp = nnx.List(
            [nnx.Linear(a, b, kernel_init=TRUNC_NORMAL, rngs=rngs) for a, b in zip(dims, dims[1:])]
        )
        self.last_layer = torch_linear(c.bottleneck_dim, c.out_dim, use_bias=False, rngs=rngs)
        # weight_norm's g, one per output unit, 2-D as torch's (so weight decay applies to it).
        self.g = None if c.norm_last_layer else nnx.Param(jnp.ones((1, c.out_dim)))

    def __call__(self, x: jax.Array) -> jax.Array:
        for i, layer in enumerate(self.mlp):
            x = layer(x) if i == len(self.mlp) - 1 else jax.nn.gelu(layer(x), approximate=False)
        x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
        v = self.last_layer.kernel[...]
        w = v / jnp.linalg.norm(v, axis=0, keepdims=True)  # Each output unit's weights.
        return x @ (w if self.g is None else w * self.g[...])


class DINOModel(nnx.Module):
    """Encoder (the student's; what transfers) and DINO head; the teacher is a copy in
    `TrainState.extra`."""

    def __init__(self, config: ml_collections.ConfigDict, *, rngs: nnx.Rngs):
        encoder = encoder_from_config(config.model, rngs=rngs)
        self.encoder = with_drop_path(encoder, config.dino.drop_path)
        self.head = DINOHead(self.encoder.feature_dim, config.dino, rngs=rngs)
        self.online_probe = online_probe_head(self.encoder.feature_dim, config, rngs=rngs)

    def __call__(
        self, groups: list[jax.Array], *, train: bool, rng: jax.Array
    ) -> tuple[jax.Array, jax.Array]:
        """Crop groups [N, V_g, h, w, 3] -> (logits [V, N, K], crops in group order, global
        first; encoder features of global crop 1 [N, F]). The encoder runs once per group; a
        ViT's stochastic depth draws from `rng`."""
        n, features = len(groups[0]), []
        dropping = train and getattr(self.encoder, "drop_path", 0.0) > 0
        for g, views in enumerate(groups):
            kwargs = {"drop_path_rng": jax.random.fold_in(rng, g)} if dropping else {}
            features.append(self.encoder(multicrop.view_major(views), train=train, **kwargs))
        features = jnp.concatenate(features)
        return self.head(features).reshape(-1, n, self.head.last_layer.out_features), features[:n]

    def teacher_logits(self, global_crops: jax.Array, *, train: bool) -> jax.Array:
        """The teacher's logits [2, N, K] of the global crops: the network without stochastic
        depth (DINO builds its teacher ViT without it)."""
        if hasattr(self.encoder, "set_drop_path"):
            self.encoder.set_drop_path(0.0)
        return self([global_crops], train=train, rng=jax.random.key(0))[0]


class DINO:
    """The pretext task: multi-crop views (TF side), student, teacher, centre and loss."""

    sharded_extra = ()  # Teacher and centre are replicated like the student.

    def __init__(self, config: ml_collections.ConfigDict):
        self.config = config

    def train_example(self, image: tf.Tensor, seed: tf.Tensor) -> dict[str, tf.Tensor]:
        return multicrop.host_crops(image, seed, self.config.dino, size=self.config.image_size)

    def display_views(self, example: dict[str, np.ndarray]) -> list[np.ndarray]:
        """What the network sees of one `train_example`, before colour: its crops."""
        return [*example["global"], *example.get("local", [])]

    def eval_views(self, *, crop_proportion: float) -> dict[str, Callable[[tf.Tensor], tf.Tensor]]:
        """`image`: the central crop resized, simclr's evaluation view (`eval_view`)."""
        from selfsup.data import augment

        size = self.config.image_size
        return {"image": lambda x: augment.eval_view(x, size=size, crop_proportion=crop_proportion)}

    def build_model(self, rngs: nnx.Rngs) -> DINOModel:
        return DINOModel(self.config, rngs=rngs)

    def init_extra(self, params: dict, batch_stats: dict, rng: jax.Array) -> dict[str, Any]:
        """The teacher (a copy of the student), the centre (zeros) and the first epoch's
        teacher temperature."""
        c = self.config.dino
        return {
            "teacher": teacher.copy_of(params, batch_stats),
            "center": jnp.zeros((c.out_dim,), jnp.float32),
            "teacher_temp": teacher_temperature(jnp.asarray(0), c),
        }

    def colored(self, batch: dict[str, jax.Array], rng: jax.Array) -> list[jax.Array]:
        """The crop groups coloured as `DataAugmentationDINO` colours them: torchvision's
        jitter with p=0.8 and grayscale p=0.2 on every crop, then `config.dino`'s per-crop blur
        and solarize."""
        c = self.config.dino
        jitter = augment_jax.ColorJitter(0.4, 0.4, 0.2, 0.1, additive_brightness=False)
        crops = [dict(jitter=jitter, blur_p=b, solarize_p=s) for b, s in zip(c.blur, c.solarize)]
        per_view = [crops[:2], crops[2:] * c.local_crops_number]
        return [
            augment_jax.augment_colors_per_view(views, jax.random.fold_in(rng, g), per_view[g])
            for g, views in enumerate(multicrop.groups(batch))
        ]

    def loss(
        self,
        model: DINOModel,
        batch: dict[str, jax.Array],
        rng: jax.Array,
        *,
        train: bool,
        extra: dict[str, Any],
    ) -> tuple[jax.Array, dict[str, jax.Array], jax.Array, dict[str, Any]]:
        c = self.config.dino
        color_key, drop_key = jax.random.split(rng)
        groups = self.colored(batch, color_key)
        student, features = model(groups, train=train, rng=drop_key)
        teacher_out, teacher_state = teacher.run(
            model, extra["teacher"], lambda net: net.teacher_logits(groups[0], train=train)
        )
        loss = dino_loss(
            student,
            teacher_out,
            extra["center"],
            student_temp=c.student_temp,
            teacher_temp=extra["teacher_temp"],
        )
        center = updated_center(extra["center"], teacher_out, c.center_momentum)
        return loss, {}, features, {**extra, "teacher": teacher_state, "center": center}

    def update_extra(
        self,
        extra: dict[str, Any],
        params: dict,
        step: jax.Array,
        *,
        total_steps: int,
        steps_per_epoch: float,
    ) -> tuple[dict[str, Any], dict[str, jax.Array]]:
        """The teacher's EMA at this step's momentum; the next step's teacher temperature."""
        c = self.config.dino
        momentum = teacher.cosine_momentum(step, total_steps, c.momentum_teacher)
        epoch = jnp.floor((step + 1) / steps_per_epoch).astype(jnp.int32)
        extra = {
            **extra,
            "teacher": teacher.moving_average(extra["teacher"], params, momentum),
            "teacher_temp": teacher_temperature(epoch, c),
        }
        return extra, {"momentum": momentum, "teacher_temp": extra["teacher_temp"]}
