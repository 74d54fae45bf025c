"""SimSiam, Barlow Twins and VICReg: each loss against a float64 NumPy transcription of its
paper's pseudo-code (values, and gradients by central differences), SimSiam's stop-gradient,
the batch statistics global (1 vs 8 devices: the same loss, gradients and updated parameters;
a batch of 2N is not the mean of two batches of N), and a killed SimSiam run resumed bit for
bit, its optimizer's parameter groups included."""

import json
import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from test_teacher import first_step, tiny_config

from selfsup import parallel
from selfsup.pretext.barlow_twins import barlow_twins_loss
from selfsup.pretext.simsiam import simsiam_loss
from selfsup.pretext.vicreg import vicreg_loss
from selfsup.train import loop
from selfsup.train.checkpoint import load_pretrained_model

TASKS = ("simsiam", "barlow_twins", "vicreg")
VICREG = dict(sim_coeff=25.0, std_coeff=25.0, cov_coeff=1.0)


def off_diagonal(m: np.ndarray) -> np.ndarray:
    return m[~np.eye(len(m), dtype=bool)]


def simsiam_reference(p1, p2, z1, z2) -> float:
    """SimSiam's Algorithm 1: D(p, z) = -(normalize(p) * normalize(z.detach())).sum(1).mean(),
    L = D(p1, z2) / 2 + D(p2, z1) / 2."""

    def d(p, z):
        p = p / np.linalg.norm(p, axis=1, keepdims=True)
        z = z / np.linalg.norm(z, axis=1, keepdims=True)
        return -(p * z).sum(axis=1).mean()

    return d(p1, z2) / 2 + d(p2, z1) / 2


def barlow_twins_reference(z_a, z_b, lambd: float) -> float:
    """Barlow Twins' Algorithm 1, normalised as its `main.py` does (`BatchNorm1d(affine=False)`:
    biased standard deviation with epsilon 1e-5, where the pseudo-code writes `std(0)`)."""
    n, d = z_a.shape

    def normalize(z):
        return (z - z.mean(0)) / np.sqrt(z.var(0) + 1e-5)

    c = normalize(z_a).T @ normalize(z_b) / n
    c_diff = (c - np.eye(d)) ** 2
    c_diff[~np.eye(d, dtype=bool)] *= lambd
    return c_diff.sum()


def vicreg_reference(z_a, z_b, *, sim_coeff, std_coeff, cov_coeff) -> float:
    """VICReg's Algorithm 1 with the variance term halved, as its `main_vicreg.py` has it."""
    n, d = z_a.shape
    sim_loss = np.mean((z_a - z_b) ** 2)
    std_z_a = np.sqrt(z_a.var(0, ddof=1) + 1e-4)
    std_z_b = np.sqrt(z_b.var(0, ddof=1) + 1e-4)
    std_loss = (np.mean(np.maximum(1 - std_z_a, 0)) + np.mean(np.maximum(1 - std_z_b, 0))) / 2
    z_a, z_b = z_a - z_a.mean(0), z_b - z_b.mean(0)
    cov_z_a, cov_z_b = z_a.T @ z_a / (n - 1), z_b.T @ z_b / (n - 1)
    cov_loss = (off_diagonal(cov_z_a) ** 2).sum() / d + (off_diagonal(cov_z_b) ** 2).sum() / d
    return sim_coeff * sim_loss + std_coeff * std_loss + cov_coeff * cov_loss


def numerical_gradient(f, x: np.ndarray, h: float = 1e-6) -> np.ndarray:
    """Central differences of a float64 function of one array."""
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        step = np.zeros_like(x)
        step[i] = h
        grad[i] = (f(x + step) - f(x - step)) / (2 * h)
    return grad


def embeddings(seed: int, n: int = 8, d: int = 6) -> np.ndarray:
    """Two views' embeddings [2, n, d], the second correlated with the first; float64."""
    rng = np.random.default_rng(seed)
    z_a = rng.normal(size=(n, d)) * rng.uniform(0.3, 2.0, d)
    return np.stack([z_a, z_a + 0.5 * rng.normal(size=(n, d))])


def test_simsiam_loss_and_gradient_match_the_pseudo_code_and_stop_the_target():
    rng = np.random.default_rng(0)
    p, z = rng.normal(size=(2, 8, 2, 6))
    loss, (grad_p, grad_z) = jax.value_and_grad(simsiam_loss, argnums=(0, 1))(
        jnp.asarray(p, jnp.float32), jnp.asarray(z, jnp.float32)
    )
    np.testing.assert_allclose(loss, simsiam_reference(p[:, 0], p[:, 1], z[:, 0], z[:, 1]), 1e-6)

    def of_p(p):
        return simsiam_reference(p[:, 0], p[:, 1], z[:, 0], z[:, 1])

    np.testing.assert_allclose(grad_p, numerical_gradient(of_p, p), rtol=1e-4, atol=1e-6)
    # The projections are the target branch: no gradient reaches them through the loss.
    assert np.all(np.asarray(grad_z) == 0)
    assert float(simsiam_loss(jnp.asarray(z), jnp.asarray(z[:, ::-1]))) == pytest.approx(-1.0)


def test_barlow_twins_loss_and_gradient_match_the_pseudo_code():
    z = embeddings(1)
    (loss, metrics), grad = jax.value_and_grad(barlow_twins_loss, argnums=(0, 1), has_aux=True)(
        jnp.asarray(z[0], jnp.float32), jnp.asarray(z[1], jnp.float32), 0.0051
    )
    np.testing.assert_allclose(loss, barlow_twins_reference(z[0], z[1], 0.0051), rtol=1e-5)
    for view, g in enumerate(grad):

        def of_view(x, view=view):
            pair = [x, z[1]] if view == 0 else [z[0], x]
            return barlow_twins_reference(*pair, 0.0051)

        np.testing.assert_allclose(g, numerical_gradient(of_view, z[view]), rtol=2e-3, atol=1e-5)
    # Identical views: the diagonal of c is 1 (up to the epsilon), only the off-diagonal costs.
    same, _ = barlow_twins_loss(jnp.asarray(z[0]), jnp.asarray(z[0]), 0.0)
    assert float(same) < 1e-4 < float(metrics["off_diagonal"])


def test_vicreg_loss_and_gradient_match_the_pseudo_code():
    z = embeddings(2)
    (loss, metrics), grad = jax.value_and_grad(vicreg_loss, argnums=(0, 1), has_aux=True)(
        jnp.asarray(z[0], jnp.float32), jnp.asarray(z[1], jnp.float32), **VICREG
    )
    np.testing.assert_allclose(loss, vicreg_reference(z[0], z[1], **VICREG), rtol=1e-5)
    assert float(metrics["variance"]) > 0  # Some dimensions' std is below 1: the hinge acts.
    for view, g in enumerate(grad):

        def of_view(x, view=view):
            pair = [x, z[1]] if view == 0 else [z[0], x]
            return vicreg_reference(*pair, **VICREG)

        np.testing.assert_allclose(g, numerical_gradient(of_view, z[view]), rtol=2e-3, atol=1e-5)


@pytest.mark.parametrize(
    "loss", [lambda a, b: barlow_twins_loss(a, b, 0.0051), lambda a, b: vicreg_loss(a, b, **VICREG)]
)
def test_a_batch_of_2n_is_not_the_mean_of_two_batches_of_n(loss):
    """What a per-device statistic computes: the loss of each device's rows, averaged. Barlow
    Twins' and VICReg's statistics are over the whole batch, so that is another number."""
    z = jnp.asarray(embeddings(3, n=16), jnp.float32)
    whole = float(loss(z[0], z[1])[0])
    halves = np.mean([float(loss(z[0, s], z[1, s])[0]) for s in (slice(0, 8), slice(8, 16))])
    assert abs(whole - halves) > 0.05 * abs(whole)


@pytest.mark.slow  # Compiles each task's step for two meshes.
@pytest.mark.parametrize("name", TASKS)
def test_loss_gradients_and_updated_parameters_equal_on_1_and_8_devices(name):
    """Equal up to rounding (test_simclr.py says why the bound is 1e-3 relative); per-device
    BatchNorm statistics or per-device Barlow Twins / VICReg statistics would differ by O(1)."""
    one, eight = first_step(name, 1), first_step(name, 8)
    np.testing.assert_allclose(one["loss"], eight["loss"], rtol=1e-5, atol=1e-6)  # SimSiam's ~0.
    for key in ("grads", "params", "batch_stats"):
        flat1, flat8 = jax.tree.leaves(one[key]), jax.tree.leaves(eight[key])
        assert len(flat1) == len(flat8) > 10
        # A bias before a BatchNorm has a zero gradient up to rounding: bounded by the scale.
        scale = max(np.abs(a).max() for a in flat1)
        for a, b in zip(flat1, flat8):
            atol = max(1e-4 * np.abs(a).max(), 1e-6 * scale)
            np.testing.assert_allclose(a, b, rtol=1e-3, atol=atol)


def state_and_log(workdir: Path):
    """The run's final parameters and BatchNorm statistics, and metrics.jsonl without timings."""
    _, step, model = load_pretrained_model(workdir, parallel.make_mesh())
    arrays = jax.device_get(nnx.to_pure_dict(nnx.state(model, (nnx.Param, nnx.BatchStat))))
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").open()]
    return step, arrays, [{k: v for k, v in r.items() if k != "images_per_second"} for r in records]


@pytest.mark.slow  # Three short runs.
def test_a_killed_run_resumes_bit_for_bit_its_parameter_groups_included(image_folder, tmp_path):
    """SimSiam's: its predictor's group makes the optimizer state a per-group one. Barlow Twins
    and VICReg keep no state the engine does not already resume for every task."""
    config = tiny_config("simsiam", data=image_folder, eval_split="train")
    assert config.optim.param_groups
    config.update(total_steps=4, log_every_steps=1, checkpoint_every_steps=2, eval_every_steps=0)
    loop.pretrain(config, tmp_path / "full")
    shutil.copytree(tmp_path / "full", tmp_path / "killed")  # The same run, until its kill.
    shutil.rmtree(tmp_path / "killed" / "checkpoints" / "4")  # Killed before step 4's save.
    loop.pretrain(config, tmp_path / "killed")
    step_full, full, log_full = state_and_log(tmp_path / "full")
    step_killed, killed, log_killed = state_and_log(tmp_path / "killed")
    assert step_full == step_killed == 4 and log_killed == log_full
    assert [r["step"] for r in log_full] == [1, 2, 3, 4]
    assert all(np.isfinite(r["loss"]) for r in log_full)
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(killed), strict=True):
        np.testing.assert_array_equal(a, b)
