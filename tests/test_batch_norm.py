"""The encoder's BatchNorm against a float64 NumPy reference (output and every gradient) and
against nnx.BatchNorm (running averages, inference mode, bf16), on both reduction paths."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from selfsup.models.batch_norm import BatchNorm, batch_norm_train, channel_sum

EPS = 1e-5


def reference(x, scale, bias, dy):
    """Textbook BatchNorm over all axes but the last, and its gradients, in float64."""
    x, scale, bias, dy = (np.asarray(a, np.float64) for a in (x, scale, bias, dy))
    axes = tuple(range(x.ndim - 1))
    mean, var = x.mean(axes), x.var(axes)
    xhat = (x - mean) / np.sqrt(var + EPS)
    n = x.size // x.shape[-1]
    dbias, dscale = dy.sum(axes), (dy * xhat).sum(axes)
    dx = scale / np.sqrt(var + EPS) / n * (n * dy - dbias - xhat * dscale)
    return scale * xhat + bias, mean, var, dx, dscale, dbias


@pytest.fixture(params=["cpu", "gpu"], ids=["matmul sums", "jnp.sum"])
def backend(request, monkeypatch):
    """Both ways of summing per channel: XLA:CPU's matmul and every other backend's reduce."""
    monkeypatch.setattr(jax, "default_backend", lambda: request.param)


def inputs(shape=(6, 5, 4, 3), offset=3.0, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal(shape).astype(np.float32) * 2.0 + offset
    scale = rng.uniform(0.5, 1.5, shape[-1]).astype(np.float32)
    bias = rng.standard_normal(shape[-1]).astype(np.float32)
    dy = rng.standard_normal(shape).astype(np.float32)
    return x, scale, bias, dy


@pytest.mark.usefixtures("backend")
def test_output_statistics_and_gradients_match_float64_reference():
    x, scale, bias, dy = inputs()
    (y, mean, var), vjp = jax.vjp(lambda *a: batch_norm_train(*a, EPS), x, scale, bias)
    dx, dscale, dbias = vjp((jnp.asarray(dy), jnp.zeros_like(mean), jnp.zeros_like(var)))
    expected = reference(x, scale, bias, dy)
    for got, want in zip((y, mean, var, dx, dscale, dbias), expected, strict=True):
        np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-5)


@pytest.mark.usefixtures("backend")
def test_gradient_matches_autodiff_of_nnx_batchnorm_under_jit():
    x, scale, bias, dy = inputs(shape=(16, 8, 8, 32), seed=1)

    def loss(cls, x, scale, bias):
        bn = cls(32, epsilon=EPS, rngs=nnx.Rngs(0))
        bn.scale[...], bn.bias[...] = scale, bias
        return jnp.sum(jax.nn.relu(bn(x, use_running_average=False)) * dy)

    ours = jax.jit(jax.grad(lambda *a: loss(BatchNorm, *a), argnums=(0, 1, 2)))(x, scale, bias)
    theirs = jax.jit(jax.grad(lambda *a: loss(nnx.BatchNorm, *a), argnums=(0, 1, 2)))(
        x, scale, bias
    )
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)


def test_running_averages_inference_mode_and_variables_equal_nnx():
    x, scale, bias, _ = inputs()
    ours, theirs = (
        cls(3, momentum=0.9, epsilon=EPS, rngs=nnx.Rngs(0)) for cls in (BatchNorm, nnx.BatchNorm)
    )
    for bn in (ours, theirs):
        bn.scale[...], bn.bias[...] = scale, bias
    for _ in range(2):
        np.testing.assert_allclose(
            ours(x, use_running_average=False), theirs(x, use_running_average=False), atol=1e-5
        )
    np.testing.assert_allclose(ours.mean[...], theirs.mean[...], rtol=1e-6)
    np.testing.assert_allclose(ours.var[...], theirs.var[...], rtol=1e-5)
    _, _, var = reference(x, scale, bias, x)[:3]
    np.testing.assert_allclose(ours.var[...], (1 - 0.9**2) * var + 0.9**2, rtol=1e-5)
    np.testing.assert_allclose(
        ours(x, use_running_average=True), theirs(x, use_running_average=True), atol=1e-6
    )
    assert jax.tree.structure(nnx.state(ours)) == jax.tree.structure(nnx.state(theirs))


def test_bfloat16_inputs_give_bfloat16_outputs_and_float32_statistics():
    x, scale, bias, dy = inputs(offset=0.0)
    bn = BatchNorm(3, epsilon=EPS, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    bn.scale[...], bn.bias[...] = scale, bias
    y = bn(jnp.asarray(x, jnp.bfloat16), use_running_average=False)
    assert y.dtype == jnp.bfloat16 and bn.mean[...].dtype == jnp.float32
    np.testing.assert_allclose(np.float32(y), reference(x, scale, bias, dy)[0], atol=0.05)
    grads = jax.grad(lambda s: jnp.sum(batch_norm_train(x.astype(jnp.bfloat16), s, bias, EPS)[0]))
    assert grads(scale).dtype == jnp.float32


def test_a_cpu_sums_by_matmul_and_other_backends_by_reduce(monkeypatch):
    for backend, matmul in (("cpu", True), ("gpu", False), ("tpu", False)):
        monkeypatch.setattr(jax, "default_backend", lambda backend=backend: backend)
        text = (
            jax.jit(lambda x: channel_sum(x)).lower(jnp.ones((4, 3, 2))).as_text()
        )  # Traced anew.
        assert ("dot_general" in text) == matmul and ("reduce" in text) != matmul
