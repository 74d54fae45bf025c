"""VICReg (Bardes et al. 2022): two views' embeddings are pulled together (invariance) while a
hinge keeps each dimension's standard deviation over the batch near 1 (variance) and the
dimensions are decorrelated (covariance).

Matches facebookresearch/vicreg `main_vicreg.py`: each view goes through the encoder and the
expander as its own batch (8192-8192-8192: Linear, BatchNorm, ReLU twice, then a bias-free
Linear); the loss is `sim_coeff * mse(x, y) + std_coeff * (mean relu(1 - std_x) + mean
relu(1 - std_y)) / 2 + cov_coeff * (off-diagonal cov_x^2 + off-diagonal cov_y^2).sum() / D`,
with `std = sqrt(var + 1e-4)` (unbiased variance) and `cov = x_c.T @ x_c / (N - 1)` over the
batch. The reference gathers the embeddings of every GPU (`FullGatherLayer`) for the variance
and covariance terms; here the batch axis of one jitted program spans every device, so they are
over the global batch by construction (tests/test_noncontrastive.py checks 1 against 8
devices). The paper's pseudo-code omits the `/ 2` of the variance term that the reference
code, whose results the paper reports, has. The views are Barlow Twins' (BYOL's asymmetric
pair, `byol.asymmetric_views`), as VICReg's `augmentations.py`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import ml_collections

from selfsup.config import number
from selfsup.pretext import barlow_twins, byol
from selfsup.pretext.barlow_twins import TwinsModel


def default_config() -> ml_collections.ConfigDict:
    """`config.vicreg`: facebookresearch/vicreg's ImageNet defaults (`main_vicreg.py`)."""
    return ml_collections.ConfigDict(
        dict(
            proj_hidden_dim=8192,
            proj_out_dim=8192,
            proj_layers=3,
            sim_coeff=25.0,  # lambda: invariance.
            std_coeff=25.0,  # mu: variance.
            cov_coeff=1.0,  # nu: covariance.
            **barlow_twins.asymmetric_view_config(),
        )
    )


_COEFF = number(0, 1e4, " (VICReg: 25, 25, 1)")
# `config.vicreg`'s rules (`selfsup.config.check_values`); `min_crop_area` is a shared one.
VALUE_RULES = {
    **{key: barlow_twins.VALUE_RULES[key] for key in ("proj_hidden_dim", "proj_out_dim")},
    "proj_layers": barlow_twins.VALUE_RULES["proj_layers"],
    "sim_coeff": _COEFF,
    "std_coeff": _COEFF,
    "cov_coeff": _COEFF,
    **byol.VIEW_RULES,
}


def vicreg_loss(
    x: jax.Array, y: jax.Array, *, sim_coeff: float, std_coeff: float, cov_coeff: float
) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Embeddings `x`, `y` [N, D] of two views of the same N images: (the loss, metrics with its
    three unweighted terms)."""
    n, d = x.shape
    invariance = jnp.mean(jnp.square(x - y))
    x = x - jnp.mean(x, axis=0)
    y = y - jnp.mean(y, axis=0)
    std_x = jnp.sqrt(jnp.sum(jnp.square(x), axis=0) / (n - 1) + 1e-4)
    std_y = jnp.sqrt(jnp.sum(jnp.square(y), axis=0) / (n - 1) + 1e-4)
    variance = (jnp.mean(jax.nn.relu(1 - std_x)) + jnp.mean(jax.nn.relu(1 - std_y))) / 2

    def covariance(z):
        # Full fp32 precision: on TPU/GPU the default matmul precision would round to bf16.
        cov = jnp.matmul(z.T, z, precision=jax.lax.Precision.HIGHEST) / (n - 1)
        return barlow_twins.off_diagonal_square_sum(cov) / d

    covariance_term = covariance(x) + covariance(y)
    loss = sim_coeff * invariance + std_coeff * variance + cov_coeff * covariance_term
    metrics = {"invariance": invariance, "variance": variance, "covariance": covariance_term}
    return loss, metrics


class VICReg(barlow_twins.BarlowTwins):
    """The pretext task: Barlow Twins' views and model, VICReg's loss."""

    block = "vicreg"

    def loss(
        self, model: TwinsModel, batch: dict[str, jax.Array], rng: jax.Array, *, train: bool
    ) -> tuple[jax.Array, dict[str, jax.Array], jax.Array]:
        c = self.config.vicreg
        x, y, features = self.embed(model, batch, rng, train=train)
        coeffs = dict(sim_coeff=c.sim_coeff, std_coeff=c.std_coeff, cov_coeff=c.cov_coeff)
        return *vicreg_loss(x, y, **coeffs), features
