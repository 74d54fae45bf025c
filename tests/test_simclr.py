"""NT-Xent against a float64 NumPy reference, SimCLR loss/gradients on 1 vs 8 devices, and the
bfloat16 encoder against float32."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from selfsup.pretext.simclr import SimCLRModel, nt_xent_loss
from selfsup.train.state import split_model


def nt_xent_reference(z1: np.ndarray, z2: np.ndarray, temperature: float) -> float:
    """Chen et al. 2020, eq. 1, summed over all 2N anchors, float64 loops.

    google-research/simclr returns mean_i(loss_a_i + loss_b_i) = (1/N) sum over 2N anchors.
    """
    z = np.concatenate([z1, z2]).astype(np.float64)
    z /= np.linalg.norm(z, axis=1, keepdims=True)
    n2 = len(z)
    n = n2 // 2
    total = 0.0
    for k in range(n2):
        positive = (k + n) % n2
        sims = np.array([z[k] @ z[j] / temperature for j in range(n2)])
        others = [j for j in range(n2) if j != k]
        total += -sims[positive] + np.log(np.sum(np.exp(sims[others])))
    return total / n


def contrast_accuracy_reference(z1: np.ndarray, z2: np.ndarray) -> float:
    """google-research/simclr's contrast accuracy in float64: the fraction of images i whose
    most similar second view (cosine, among all N second views) is their own."""
    a, b = (
        z / np.linalg.norm(z, axis=1, keepdims=True)
        for z in (z1.astype(np.float64), z2.astype(np.float64))
    )
    return float(np.mean(np.argmax(a @ b.T, axis=1) == np.arange(len(a))))


@pytest.mark.parametrize("temperature", [0.1, 0.5, 1.0])
def test_nt_xent_matches_float64_reference(temperature):
    rng = np.random.default_rng(0)
    z1, noise = rng.normal(size=(2, 12, 7)).astype(np.float32)
    z2 = z1 + noise  # Noisy second views: some images find their pair, some do not.
    loss, metrics = nt_xent_loss(jnp.asarray(z1), jnp.asarray(z2), temperature)
    np.testing.assert_allclose(float(loss), nt_xent_reference(z1, z2, temperature), rtol=1e-5)
    expected = contrast_accuracy_reference(z1, z2)
    assert 0.0 < expected < 1.0  # Neither all nor none: a wrong count shows.
    assert float(metrics["contrast_accuracy"]) == pytest.approx(expected, abs=1e-6)


def test_nt_xent_identical_views_low_loss_and_full_accuracy():
    z = np.eye(8, dtype=np.float32) * 3  # Orthogonal embeddings: each image its own direction.
    loss, metrics = nt_xent_loss(jnp.asarray(z), jnp.asarray(z), 0.1)
    assert float(metrics["contrast_accuracy"]) == 1.0
    # Positive logit 10, 14 negatives at 0: per direction -10 + log(e^10 + 14).
    np.testing.assert_allclose(float(loss), 2 * np.log1p(14 * np.exp(-10)), atol=1e-6)


def _tiny_config(dtype="float32"):
    config = ml_collections.ConfigDict()
    config.model = dict(
        name="resnet", depth=18, stem="cifar", width=0.125, dtype=dtype, kernels="auto"
    )
    config.simclr = dict(temperature=0.5, proj_hidden_dim=32, proj_out_dim=16, proj_layers=2)
    config.online_probe_classes = 0
    return config


def _loss_and_grads(mesh, views):
    model = SimCLRModel(_tiny_config(), rngs=nnx.Rngs(0))
    graphdef, params, stats = split_model(model)
    replicated = NamedSharding(mesh, P())
    params, stats = jax.device_put((params, stats), replicated)
    views = jax.device_put(views, NamedSharding(mesh, P("data")))

    @jax.jit
    def loss_fn(params, stats, views):
        def f(params):
            z1, z2, _ = nnx.merge(graphdef, params, stats)(views, train=True)
            return nt_xent_loss(z1, z2, 0.5)[0]

        return jax.value_and_grad(f)(params)

    return jax.device_get(loss_fn(params, stats, views))


@pytest.mark.slow
def test_loss_and_gradients_equal_on_1_and_8_devices():
    views = np.random.default_rng(1).uniform(size=(16, 2, 16, 16, 3)).astype(np.float32)
    mesh1 = jax.make_mesh(
        (1,), ("data",), axis_types=(jax.sharding.AxisType.Auto,), devices=jax.devices()[:1]
    )
    mesh8 = jax.make_mesh((8,), ("data",), axis_types=(jax.sharding.AxisType.Auto,))
    loss1, grads1 = _loss_and_grads(mesh1, views)
    loss8, grads8 = _loss_and_grads(mesh8, views)
    np.testing.assert_allclose(loss1, loss8, rtol=1e-5)
    flat1, flat8 = jax.tree.leaves(grads1), jax.tree.leaves(grads8)
    assert len(flat1) == len(flat8) > 10
    # XLA:CPU's own convolutions sum a 2-image shard in another order than a 16-image batch,
    # and BatchNorm's backward amplifies it: up to 1.6e-4 relative on a few BatchNorm biases,
    # whichever BatchNorm (YNNPACK's kernels: 2e-5). Per-shard statistics would be off by O(1).
    for g1, g8 in zip(flat1, flat8):
        np.testing.assert_allclose(g1, g8, rtol=1e-3, atol=1e-4 * np.abs(g1).max())


@pytest.mark.slow
def test_bfloat16_encoder_stays_close_to_float32_with_float32_params_and_loss():
    """Same initial weights: bf16 compute changes the projections by at most 3% of their range
    and the loss by under 0.5%, and everything the optimizer and loss see is float32."""
    views = jnp.asarray(np.random.default_rng(2).uniform(size=(16, 2, 16, 16, 3)), jnp.float32)
    outputs, losses = {}, {}
    for dtype in ("float32", "bfloat16"):
        model = SimCLRModel(_tiny_config(dtype), rngs=nnx.Rngs(0))
        _, params, stats = split_model(model)
        assert {x.dtype for x in jax.tree.leaves((params, stats))} == {np.dtype("float32")}
        outputs[dtype] = model(views, train=True)
        assert {x.dtype for x in outputs[dtype]} == {np.dtype("float32")}
        losses[dtype] = float(nt_xent_loss(*outputs[dtype][:2], 0.5)[0])
    for ref, low in zip(outputs["float32"], outputs["bfloat16"]):
        np.testing.assert_allclose(low, ref, atol=0.03 * np.ptp(ref))
    np.testing.assert_allclose(losses["bfloat16"], losses["float32"], rtol=5e-3)
