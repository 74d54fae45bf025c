"""Heads: the SimCLR projection MLP against a NumPy re-implementation of google-research/simclr's
layer recipe, its BatchNorm modes, and the online probe's masked, stop-gradient loss."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

from selfsup.models.heads import ProjectionHead, online_probe_head, online_probe_loss
from selfsup.models.resnet import BN_EPSILON


def param_paths(module: nnx.Module) -> set[str]:
    flat = nnx.to_flat_state(nnx.state(module, nnx.Param))
    return {"/".join(str(k) for k in path) for path, _ in flat}


def features(n=16, dim=12) -> jax.Array:
    return jax.random.normal(jax.random.key(1), (n, dim))


def head(num_layers: int, out_dim=6) -> ProjectionHead:
    return ProjectionHead(
        12, hidden_dim=10, out_dim=out_dim, num_layers=num_layers, rngs=nnx.Rngs(0)
    )


def normalise(h: np.ndarray) -> np.ndarray:
    """Train-mode BatchNorm at init (scale 1, offset 0): batch mean and biased variance."""
    return (h - h.mean(axis=0)) / np.sqrt(h.var(axis=0) + BN_EPSILON)


@pytest.mark.parametrize(
    "num_layers, dims",
    [(1, [(12, 6)]), (2, [(12, 10), (10, 6)]), (3, [(12, 10), (10, 10), (10, 6)])],
)
def test_shapes_and_layer_count(num_layers, dims):
    model = head(num_layers)
    assert [(layer.linear.in_features, layer.linear.out_features) for layer in model.layers] == dims
    assert model(features(), train=True).shape == (16, 6)


def test_only_middle_layers_have_a_batchnorm_offset_and_no_dense_has_a_bias():
    assert param_paths(head(2)) == {
        "layers/0/linear/kernel",
        "layers/0/bn/scale",
        "layers/0/bn/bias",
        "layers/1/linear/kernel",
        "layers/1/bn/scale",
    }


def test_dense_init_is_normal_with_stddev_0_01():
    kernel = (
        ProjectionHead(256, hidden_dim=256, out_dim=128, num_layers=2, rngs=nnx.Rngs(0))
        .layers[0]
        .linear.kernel[...]
    )
    assert abs(float(kernel.std()) - 0.01) < 0.0005 and abs(float(kernel.mean())) < 0.0005


def test_single_layer_is_a_normalised_linear_map_without_relu():
    model = head(1)
    x = features()
    expected = normalise(np.asarray(x) @ np.asarray(model.layers[0].linear.kernel[...]))
    out = model(x, train=True)
    np.testing.assert_allclose(out, expected, rtol=1e-4, atol=1e-5)
    assert (out < 0).any()


def test_relu_sits_between_layers_and_not_after_the_last():
    model = head(3)
    x = np.asarray(features())
    kernels = [np.asarray(layer.linear.kernel[...]) for layer in model.layers]
    h1 = np.maximum(normalise(x @ kernels[0]), 0)
    h2 = np.maximum(normalise(h1 @ kernels[1]), 0)
    np.testing.assert_allclose(
        model(x, train=True), normalise(h2 @ kernels[2]), rtol=1e-4, atol=1e-5
    )


def test_train_mode_updates_running_averages_and_eval_mode_uses_them():
    model = head(1)
    x = features()
    h = np.asarray(x) @ np.asarray(model.layers[0].linear.kernel[...])
    bn = model.layers[0].bn
    # Fresh running averages (0, 1): eval mode only divides by sqrt(1 + eps) and changes nothing.
    np.testing.assert_allclose(
        model(x, train=False), h / np.sqrt(1 + BN_EPSILON), rtol=1e-5, atol=1e-6
    )
    np.testing.assert_array_equal(bn.mean[...], 0.0)
    model(x, train=True)
    mean, var = 0.1 * h.mean(axis=0), 0.9 + 0.1 * h.var(axis=0)  # momentum 0.9
    np.testing.assert_allclose(bn.mean[...], mean, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(bn.var[...], var, rtol=1e-4)
    np.testing.assert_allclose(
        model(x, train=False), (h - mean) / np.sqrt(var + BN_EPSILON), rtol=1e-4, atol=1e-5
    )


def test_rejects_zero_layers():
    with pytest.raises(ValueError, match="num_layers"):
        head(0)


def test_online_probe_loss_is_masked_cross_entropy_that_never_reaches_the_features():
    config = ml_collections.ConfigDict(dict(online_probe_classes=3))
    probe = online_probe_head(4, config, rngs=nnx.Rngs(0))
    features = jnp.asarray(np.random.default_rng(0).normal(size=(5, 4)), jnp.float32)
    labels = jnp.array([0, 2, -1, 1, -1])  # -1: unlabeled, left out.

    loss, metrics = online_probe_loss(probe, features, labels)
    logits = np.asarray(probe(features))
    log_p = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    labelled = [0, 1, 3]
    np.testing.assert_allclose(
        float(loss), -np.mean([log_p[i, int(labels[i])] for i in labelled]), rtol=1e-5
    )
    expected_accuracy = np.mean([logits[i].argmax() == labels[i] for i in labelled])
    assert float(metrics["online_probe/accuracy"]) == pytest.approx(expected_accuracy)
    grad = jax.grad(lambda f: online_probe_loss(probe, f, labels)[0])(features)
    np.testing.assert_array_equal(grad, 0.0)  # stop_gradient: the encoder is not trained by it.
    assert (
        online_probe_head(
            4, ml_collections.ConfigDict(dict(online_probe_classes=0)), rngs=nnx.Rngs(0)
        )
        is None
    )
