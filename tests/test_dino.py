"""DINO against facebookresearch/dino: the loss and centre update against a float64 NumPy
transcription of `DINOLoss` (values and gradients), the head against `DINOHead`, the teacher
temperature and momentum schedules against their formulas, multi-crop's groups and area ranges,
the teacher on global crops only, and loss, gradients, centre and teacher equal on 1 and 8
devices (the centre is a mean over the global batch)."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow as tf
from flax import nnx
from test_noncontrastive import numerical_gradient
from test_teacher import first_step, tiny_config

from selfsup.data import multicrop
from selfsup.models.encoders import with_drop_path
from selfsup.pretext import dino, get_task
from selfsup.pretext.teacher import cosine_momentum


def log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def dino_loss_reference(student, teacher, center, *, student_temp, teacher_temp) -> float:
    """`DINOLoss.forward`: student [V * N, K] and teacher [2 * N, K] outputs, crop by crop."""
    student_out = np.split(student / student_temp, len(student) // len(teacher) * 2)
    teacher_out = np.split(np.exp(log_softmax((teacher - center) / teacher_temp)), 2)
    total, terms = 0.0, 0
    for iq, q in enumerate(teacher_out):
        for v, s in enumerate(student_out):
            if v == iq:
                continue
            total += np.sum(-q * log_softmax(s), axis=-1).mean()
            terms += 1
    return total / terms


def test_loss_gradient_and_centre_match_dino_loss():
    rng = np.random.default_rng(0)
    v, n, k = 4, 3, 5
    student, teacher = rng.normal(size=(v, n, k)), rng.normal(size=(2, n, k))
    center = rng.normal(size=k) * 0.3
    temps = dict(student_temp=0.1, teacher_temp=0.04)

    def reference(s):
        return dino_loss_reference(s.reshape(v * n, k), teacher.reshape(2 * n, k), center, **temps)

    def loss(s, t):
        return dino.dino_loss(s, t, jnp.asarray(center, jnp.float32), **temps)

    f32 = [jnp.asarray(a, jnp.float32) for a in (student, teacher)]
    value, (grad_s, grad_t) = jax.value_and_grad(loss, argnums=(0, 1))(*f32)
    np.testing.assert_allclose(value, reference(student), rtol=1e-5)
    np.testing.assert_allclose(grad_s, numerical_gradient(reference, student), rtol=1e-3, atol=1e-5)
    assert np.all(np.asarray(grad_t) == 0)  # The teacher's outputs pass no gradient.
    # update_center: C m + (1 - m) * (sum of the 2N teacher rows / 2N).
    new = dino.updated_center(jnp.asarray(center), f32[1], 0.9)
    np.testing.assert_allclose(new, center * 0.9 + teacher.reshape(-1, k).mean(0) * 0.1, 1e-6)


def test_teacher_temperature_and_momentum_follow_their_schedules():
    c = ml_collections.ConfigDict(
        dict(warmup_teacher_temp=0.04, teacher_temp=0.07, warmup_teacher_temp_epochs=30)
    )
    schedule = np.concatenate((np.linspace(0.04, 0.07, 30), np.ones(70) * 0.07))
    for epoch in (0, 1, 17, 29, 30, 99):
        assert float(dino.teacher_temperature(jnp.asarray(epoch), c)) == pytest.approx(
            schedule[epoch], rel=1e-6
        )
    c.warmup_teacher_temp_epochs = 0
    assert float(dino.teacher_temperature(jnp.asarray(0), c)) == pytest.approx(0.07)
    # utils.cosine_scheduler(0.996, 1, epochs, niter_per_ep)[it], no warmup.
    total = 500
    dino_schedule = 1 + 0.5 * (0.996 - 1) * (1 + np.cos(np.pi * np.arange(total) / total))
    for it in (0, 1, 250, 499):
        assert float(cosine_momentum(it, total, 0.996)) == pytest.approx(dino_schedule[it], 1e-7)


@pytest.mark.parametrize("norm_last_layer", [True, False])
def test_the_head_is_dino_head(norm_last_layer):
    """MLP with exact GELUs, L2 normalisation, weight-normalised last layer (torch's
    `weight_norm`, dim 0: each output unit's weights over their norm, times g)."""
    c = ml_collections.ConfigDict(
        dict(hidden_dim=16, bottleneck_dim=8, out_dim=12, norm_last_layer=norm_last_layer)
    )
    head = dino.DINOHead(6, c, rngs=nnx.Rngs(0))
    assert (head.g is None) == norm_last_layer
    if head.g is not None:
        head.g[...] = jnp.linspace(0.5, 2.0, 12)[None]
    x = np.random.default_rng(1).normal(size=(5, 6))
    h = x
    for i, layer in enumerate(head.mlp):
        h = h @ np.asarray(layer.kernel[...], np.float64) + np.asarray(layer.bias[...])
        if i < 2:
            h = 0.5 * h * (1 + np.vectorize(math.erf)(h / np.sqrt(2)))
    h /= np.linalg.norm(h, axis=-1, keepdims=True)
    v = np.asarray(head.last_layer.kernel[...], np.float64)
    w = v / np.linalg.norm(v, axis=0)
    if head.g is not None:
        w = w * np.asarray(head.g[...])
    np.testing.assert_allclose(head(jnp.asarray(x, jnp.float32)), h @ w, rtol=1e-4, atol=1e-6)
    # Initialisation: trunc-normal std 0.02 in the MLP, torch's U(+-1/sqrt(256)) last layer.
    assert np.std(head.mlp[1].kernel[...]) == pytest.approx(0.02, rel=0.2)
    assert np.abs(v).max() <= 8**-0.5


def test_multi_crop_groups_their_sizes_and_area_ranges():
    """Crops of an image whose red and green channels are its column and row: each crop's
    value range is its box, so its area fraction is measured, not assumed."""
    c = ml_collections.ConfigDict(multicrop.crop_keys(local_crops_number=6, local_crops_size=24))
    side = 200
    cols, rows = np.meshgrid(np.arange(side), np.arange(side))
    image = tf.constant(np.stack([cols, rows, cols], -1).astype(np.uint8))

    @tf.function
    def crops(i):
        return multicrop.host_crops(image, tf.stack([i, 0]), c, size=48)

    draws = [crops(tf.constant(i)) for i in range(40)]
    assert draws[0]["global"].shape == (2, 48, 48, 3) and draws[0]["global"].dtype == tf.uint8
    assert draws[0]["local"].shape == (6, 24, 24, 3)

    def areas(group):
        views = np.concatenate([d[group].numpy() for d in draws]).astype(float)
        width = views[..., 0].max((1, 2)) - views[..., 0].min((1, 2)) + 1
        height = views[..., 1].max((1, 2)) - views[..., 1].min((1, 2)) + 1
        return width * height / side**2

    for group, (low, high) in (("global", (0.4, 1.0)), ("local", (0.05, 0.4))):
        a = areas(group)
        assert low * 0.9 <= a.min() < low + 0.15 and high - 0.2 < a.max() <= high * 1.1, group


def test_the_teacher_sees_the_global_crops_only():
    """A change to the local crops changes the student's loss but not the teacher's outputs
    (through them, the updated centre)."""
    config = tiny_config("dino")
    config.dino.update(local_crops_number=2, local_crops_size=8)
    task = get_task(config)
    model = task.build_model(nnx.Rngs(0))
    _, params, stats = nnx.split(model, nnx.Param, nnx.BatchStat)
    extra = task.init_extra(nnx.to_pure_dict(params), nnx.to_pure_dict(stats), jax.random.key(1))
    rng = np.random.default_rng(0)
    batch = {
        "global": rng.uniform(size=(4, 2, 16, 16, 3)).astype(np.float32),
        "local": rng.uniform(size=(4, 2, 8, 8, 3)).astype(np.float32),
    }
    other = {**batch, "local": rng.uniform(size=(4, 2, 8, 8, 3)).astype(np.float32)}
    outs = [task.loss(model, b, jax.random.key(0), train=True, extra=extra) for b in (batch, other)]
    assert float(outs[0][0]) != float(outs[1][0])
    np.testing.assert_array_equal(outs[0][3]["center"], outs[1][3]["center"])
    assert float(jnp.abs(outs[0][3]["center"]).max()) > 0


@pytest.mark.slow  # Compiles the step for two meshes.
def test_loss_gradients_centre_and_teacher_equal_on_1_and_8_devices():
    """Equal up to rounding (test_simclr.py says why the bound is 1e-3 relative); a centre from
    each device's rows, or per-device BatchNorm statistics, would differ by O(1)."""
    options = dict(local_crops_number=2, local_crops_size=8)
    one, eight = first_step("dino", 1, **options), first_step("dino", 8, **options)
    np.testing.assert_allclose(one["loss"], eight["loss"], rtol=1e-5)
    for key in ("grads", "params", "batch_stats", "extra"):
        flat1, flat8 = jax.tree.leaves(one[key]), jax.tree.leaves(eight[key])
        assert len(flat1) == len(flat8) > 10
        scale = max(np.abs(a).max() for a in flat1)
        for a, b in zip(flat1, flat8):
            atol = max(1e-4 * np.abs(a).max(), 1e-6 * scale)
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=atol)
    center = one["extra"]["center"]
    assert np.abs(center).max() > 0  # Moved from zeros by the teacher's batch mean.


def test_fine_tuning_sets_its_own_stochastic_depth_on_a_dino_student():
    """A DINO ViT student is built with drop path 0.1; its encoder, fine-tuned at
    `finetune.drop_path=0`, drops nothing (training mode then equals inference mode)."""
    config = tiny_config("dino")
    config.model.update(name="vit_tiny", patch_size=8, image_size=16)
    config.dino.drop_path = 0.1
    student = get_task(config).build_model(nnx.Rngs(0)).encoder
    assert student.drop_path == 0.1
    plain = with_drop_path(student, 0.0)
    assert plain.drop_path == 0.0 and student.drop_path == 0.1
    x = np.random.default_rng(0).uniform(size=(2, 16, 16, 3)).astype(np.float32)
    np.testing.assert_array_equal(plain(x, train=True), plain(x, train=False))
    with pytest.raises(ValueError, match="drop_path_rng is required"):
        student(x, train=True)
