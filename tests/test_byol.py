"""BYOL: the loss against a float64 transcription of DeepMind's, its gradient against the
hand-derived one, the online gradient against a hand-written loss, 1 vs 8 devices, LARS's
exclusions and the asymmetric views."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_augment import seed
from test_teacher import first_step, tiny_config

from selfsup.config import ConfigError
from selfsup.data import augment
from selfsup.data.augment_jax import ColorJitter, augment_colors_per_view
from selfsup.pretext import byol, get_task
from selfsup.train.optim import path_mask
from selfsup.train.state import model_graphdef


def deepmind_loss(predictions: np.ndarray, targets: np.ndarray) -> float:
    """deepmind-research byol: `helpers.l2_normalize` and `regression_loss`, the two orders
    summed (`repr_loss = regression_loss(p1, t2) + regression_loss(p2, t1)`), then
    `jnp.mean`, in float64 loops."""

    def l2_normalize(x):
        return x / np.sqrt(max(np.sum(x * x), 1e-12))

    total = 0.0
    for p, t in zip(predictions.astype(np.float64), targets.astype(np.float64)):
        for a, b in ((p[0], t[1]), (p[1], t[0])):
            total += np.sum((l2_normalize(a) - l2_normalize(b)) ** 2)
    return total / len(predictions)


def test_loss_matches_a_float64_transcription_of_deepminds():
    rng = np.random.default_rng(0)
    predictions, targets = rng.normal(size=(2, 12, 2, 9)).astype(np.float32)
    predictions[3, 1] *= 1e-7  # A tiny prediction: the normalisation's epsilon matters.
    loss = byol.byol_loss(jnp.asarray(predictions), jnp.asarray(targets))
    np.testing.assert_allclose(float(loss), deepmind_loss(predictions, targets), rtol=1e-6)
    # Summed over both orders, not averaged: orthogonal pairs cost 2 + 2, opposite ones 4 + 4.
    e = np.eye(2, dtype=np.float32)
    views = jnp.asarray(e[None])  # View 1 along x, view 2 along y.
    assert float(byol.byol_loss(views, views)) == 4.0  # Each against the other view: 2 + 2.
    assert float(byol.byol_loss(views, -views[:, ::-1])) == 8.0


def test_loss_gradient_is_the_hand_derived_one():
    """d/dp (2 - 2 p.t / (|p||t|)) = -2 (t / (|p||t|) - (p.t) p / (|p|^3 |t|)), per order,
    divided by N for the mean."""
    rng = np.random.default_rng(1)
    predictions, targets = rng.normal(size=(2, 6, 2, 5))
    grad = jax.grad(byol.byol_loss)(jnp.asarray(predictions, jnp.float32), targets)
    expected = np.zeros_like(predictions)
    for view, other in ((0, 1), (1, 0)):
        p, t = predictions[:, view], targets[:, other]
        norm_p = np.linalg.norm(p, axis=1, keepdims=True)
        norm_t = np.linalg.norm(t, axis=1, keepdims=True)
        dot = np.sum(p * t, axis=1, keepdims=True)
        expected[:, view] = -2 * (t / (norm_p * norm_t) - dot * p / (norm_p**3 * norm_t))
    np.testing.assert_allclose(grad, expected / len(predictions), rtol=1e-5, atol=1e-7)


def hand_written_loss(graphdef, params, batch_stats, target, views):
    """BYOL's loss written out from the networks' parts: each view through the online encoder,
    projector and predictor; each view through the target's encoder and projector; the
    prediction of one view against the stop-gradient target projection of the other."""
    online = nnx.merge(graphdef, params, batch_stats)
    net = nnx.merge(graphdef, target["params"], target["batch_stats"])
    total = 0.0
    for view, other in ((0, 1), (1, 0)):
        h = online.encoder(views[:, view], train=True)
        p = online.predictor(online.projector(h, train=True), train=True)
        z = net.projector(net.encoder(views[:, other], train=True), train=True)
        z = jax.lax.stop_gradient(z)
        cosine = jnp.sum(p * z, axis=1) / (jnp.linalg.norm(p, axis=1) * jnp.linalg.norm(z, axis=1))
        total = total + jnp.mean(2 - 2 * cosine)
    return total


@pytest.mark.slow  # Compiles the reference with its gradient; the task's is first_step's.
def test_online_gradient_equals_that_of_a_hand_written_loss():
    config = tiny_config("byol")
    assert config.byol.color_on_device  # The recipe's: views coloured in the step.
    task = get_task(config)
    graphdef = model_graphdef(task.build_model)
    one = first_step("byol", 1)  # The task's loss and gradients on one device.
    state, batch = one["state"], one["batch"]

    def reference(params, batch_stats, target, views):
        # The step colours the views with its own key (byol.py), so the reference does too.
        colors = byol.view_colors(config.byol)
        views = augment_colors_per_view(views, jax.random.key(0), colors)
        return hand_written_loss(graphdef, params, batch_stats, target, views)

    ref_loss, ref_grads = jax.jit(jax.value_and_grad(reference))(
        state.params, state.batch_stats, state.extra["target"], batch["views"]
    )
    np.testing.assert_allclose(one["loss"], ref_loss, rtol=1e-5)
    flat, ref_flat = jax.tree.leaves(one["grads"]), jax.tree.leaves(ref_grads)
    assert len(flat) == len(ref_flat) > 20
    scale = max(np.abs(g).max() for g in ref_flat)
    for g, r in zip(flat, ref_flat):
        np.testing.assert_allclose(g, r, rtol=1e-4, atol=1e-5 * scale)


@pytest.mark.slow  # Compiles BYOL's step for two meshes (the one-device one is the above's).
def test_loss_gradients_and_target_statistics_equal_on_1_and_8_devices():
    one, eight = first_step("byol", 1), first_step("byol", 8)
    np.testing.assert_allclose(one["loss"], eight["loss"], rtol=1e-5)
    for key in ("grads", "batch_stats", "extra"):
        flat1, flat8 = jax.tree.leaves(one[key]), jax.tree.leaves(eight[key])
        assert len(flat1) == len(flat8) > 10
        # Rounding only (test_simclr.py says why the bound is 1e-3); per-device BatchNorm
        # statistics would differ by O(1). The projector's and predictor's hidden biases sit
        # before a BatchNorm, which removes them: their gradients are zero up to rounding.
        scale = max(np.abs(a).max() for a in flat1)
        for a, b in zip(flat1, flat8):
            atol = max(1e-4 * np.abs(a).max(), 1e-6 * scale)
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=atol)


def test_lars_skips_exactly_biases_and_batchnorm_parameters_as_byol_does():
    """DeepMind's `exclude_bias_and_norm`: a parameter named `b` (a bias) or inside a
    normalisation module; the recipe's regex must pick the same set here."""
    config = tiny_config("byol", online_probe_classes=10)
    model = nnx.eval_shape(lambda: get_task(config).build_model(nnx.Rngs(0)))
    norm_paths = {path for path, node in nnx.iter_graph(model) if isinstance(node, nnx.BatchNorm)}
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    excluded = path_mask(params, config.optim.weight_decay_exclude, match=True)

    def expected(path, _):
        keys = tuple(getattr(k, "key", k) for k in path)
        return keys[-1] == "bias" or keys[:-1] in norm_paths

    by_byol = jax.tree_util.tree_map_with_path(expected, params)
    assert excluded == by_byol
    assert sum(jax.tree.leaves(by_byol)) > 20 and not all(jax.tree.leaves(by_byol))


def test_views_are_byols_asymmetric_pair():
    c = tiny_config("byol").byol
    assert c.blur == (0.0, 0.0) and c.solarize == (0.0, 0.2)  # solo-learn's CIFAR recipe.
    imagenet = byol.default_config()
    first, second = byol.view_colors(imagenet)
    jitter = ColorJitter(0.4, 0.4, 0.2, 0.1, additive_brightness=True)
    assert first == dict(jitter=jitter, blur_p=1.0, solarize_p=0.0)
    assert second == dict(jitter=jitter, blur_p=0.1, solarize_p=0.2)


def test_with_color_on_device_the_host_only_crops_and_flips():
    config = tiny_config("byol")
    config.byol.color_on_device = True
    image = np.random.default_rng(2).integers(0, 256, (40, 48, 3)).astype(np.uint8)
    views = get_task(config).train_example(image, seed(5))["views"].numpy()
    plain = dict(size=16, crop_sampler="byol", jitter=None, blur_p=0.0, solarize_p=0.0)
    for view, view_seed in zip(views, augment.split_seed(seed(5), 2)):
        np.testing.assert_array_equal(view, augment.augmented_view(image, view_seed, **plain))


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("blur", (1.0,), r"config\.byol\.blur=\(1\.0,\) is invalid: .* a tuple of 2 values"),
        ("blur", (0.5, "x"), r"--config\.byol\.blur to a tuple of 2 values, each a number in"),
        ("solarize", (0.0, 1.5), r"\[0, 1\], e\.g\. '\(0\.0, 0\.2\)'\.$"),
        ("base_momentum", 1.2, r"--config\.byol\.base_momentum to a number in \[0, 1\]"),
        ("proj_out_dim", -5, r"--config\.byol\.proj_out_dim to an integer in \[1, 16384\]"),
        ("proj_hidden_dim", 0, r"--config\.byol\.proj_hidden_dim to an integer in \[1, 16384\]"),
    ],
)
def test_bad_settings_are_config_errors(key, value, message):
    config = tiny_config("byol")
    config.byol[key] = value
    with pytest.raises(ConfigError, match=message):
        get_task(config)
