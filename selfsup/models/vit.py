"""Vision Transformer (ViT-Ti/S/B) encoders in Flax NNX, NHWC: timm's `VisionTransformer` with
its defaults, for self-supervised pretraining.

Dosovitskiy et al. (2021) as timm builds it: a patch embedding (a conv whose kernel and stride
are the patch), a class token, learned absolute position embeddings for the class token and the
patch grid, pre-norm blocks (LayerNorm epsilon 1e-6; attention with a qkv bias; an exact-GELU
MLP 4x as wide), stochastic depth rising linearly over the blocks, and a final LayerNorm.
Parameter paths are timm's module names (`blocks/3/attn/qkv/kernel` is timm's
`blocks.3.attn.qkv.weight`), so `selfsup.models.timm` moves weights by renaming and transposing
leaves; initialisation is timm's default ("timm") scheme.

The position embeddings are made for one grid (`image_size // patch_size` per side); images of
another size get their patch part resampled as timm's `resample_abs_pos_embed` resamples it,
which is what timm computes with `dynamic_img_size=True`.

`dtype` is the compute dtype, as in `selfsup.models.resnet`: parameters (and so the optimizer
state) stay float32, softmax runs in float32, and the features come out in float32.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from selfsup.data.augment_jax import to_float

# (width, depth, heads).
SIZES = {"vit_tiny": (192, 12, 3), "vit_small": (384, 12, 6), "vit_base": (768, 12, 12)}
MLP_RATIO = 4
LN_EPSILON = 1e-6
# timm's trunc_normal_(std=.02) cuts at -2 and 2 absolute (100 standard deviations); jax's
# bounds are in standard deviations.
TRUNC_NORMAL = jax.nn.initializers.truncated_normal(0.02, lower=-100.0, upper=100.0)


def torch_uniform(fan_in: int) -> jax.nn.initializers.Initializer:
    """U[-1/sqrt(fan_in), 1/sqrt(fan_in)]: torch's default for a conv's kernel and bias, which
    timm's scheme leaves on the patch embedding."""
    bound = fan_in**-0.5

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Any = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def linear(in_dim: int, out_dim: int, *, dtype: Any, rngs: nnx.Rngs) -> nnx.Linear:
    """A Linear as timm initialises it: kernel trunc_normal(std .02), bias 0."""
    return nnx.Linear(in_dim, out_dim, kernel_init=TRUNC_NORMAL, dtype=dtype, rngs=rngs)


def layer_norm(width: int, *, dtype: Any, rngs: nnx.Rngs) -> nnx.LayerNorm:
    """timm's LayerNorm (epsilon 1e-6) with torch's two-pass variance: flax's default,
    E[x^2] - E[x]^2, loses digits where a channel's mean is large, as on the residual stream."""
    return nnx.LayerNorm(width, epsilon=LN_EPSILON, use_fast_variance=False, dtype=dtype, rngs=rngs)


def drop_path(x: jax.Array, rate: float, rng: jax.Array | None) -> jax.Array:
    """timm's `DropPath`: each example of `x` [B, ...] zeroed with probability `rate`, the rest
    scaled by 1 / (1 - rate) so the expectation is unchanged; `x` itself without `rng`."""
    if rng is None or rate == 0:
        return x
    keep = jax.random.bernoulli(rng, 1.0 - rate, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(keep, x / (1.0 - rate), 0.0).astype(x.dtype)


def resample_pos_embed(grid_embed: jax.Array, grid: tuple[int, int]) -> jax.Array:
    """Position embeddings of a patch grid [h, w, width] resampled to `grid` as timm's
    `resample_abs_pos_embed` does (torch's antialiased bicubic: Keys' kernel with a = -0.5 on
    half-pixel centres, widened by the factor when shrinking, weights normalised at the edges,
    which `jax.image.resize` computes too); unchanged at their own size."""
    if grid_embed.shape[:2] == tuple(grid):
        return grid_embed
    shape = (*grid, grid_embed.shape[-1])
    return jax.image.resize(grid_embed.astype(jnp.float32), shape, "cubic", antialias=True)


class PatchEmbed(nnx.Module):
    """Non-overlapping patches mapped linearly to `width` channels: [B, H, W, 3] ->
    [B, H / patch, W / patch, width]."""

    def __init__(self, patch_size: int, width: int, *, dtype: Any, rngs: nnx.Rngs):
        fan_in = 3 * patch_size**2
        self.proj = nnx.Conv(
            3,
            width,
            (patch_size, patch_size),
            strides=patch_size,
            padding="VALID",
            kernel_init=torch_uniform(fan_in),
            bias_init=torch_uniform(fan_in),
            dtype=dtype,
            rngs=rngs,
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.proj(x)


class Attention(nnx.Module):
    """Multi-head self-attention over tokens [B, N, width], timm's layout of q, k, v in `qkv`."""

    def __init__(self, width: int, heads: int, *, dtype: Any, rngs: nnx.Rngs):
        self.heads = heads
        self.qkv = linear(width, 3 * width, dtype=dtype, rngs=rngs)
        self.proj = linear(width, width, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, n, width = x.shape
        head_dim = width // self.heads
        qkv = self.qkv(x).reshape(b, n, 3, self.heads, head_dim).transpose(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * head_dim**-0.5, qkv[1], qkv[2]
        weights = jax.nn.softmax((q @ k.swapaxes(-1, -2)).astype(jnp.float32), axis=-1)
        y = (weights.astype(v.dtype) @ v).transpose(0, 2, 1, 3).reshape(b, n, width)
        return self.proj(y)


class Mlp(nnx.Module):
    """timm's `Mlp`: Linear, exact (erf) GELU as torch's `nn.GELU`, Linear."""

    def __init__(self, width: int, hidden: int, *, dtype: Any, rngs: nnx.Rngs):
        self.fc1 = linear(width, hidden, dtype=dtype, rngs=rngs)
        self.fc2 = linear(hidden, width, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(jax.nn.gelu(self.fc1(x), approximate=False))


class Block(nnx.Module):
    """Pre-norm transformer block; each residual branch is dropped per example at
    `drop_path_rate` (stochastic depth)."""

    def __init__(
        self, width: int, heads: int, drop_path_rate: float, *, dtype: Any, rngs: nnx.Rngs
    ):
        self.norm1 = layer_norm(width, dtype=dtype, rngs=rngs)
        self.attn = Attention(width, heads, dtype=dtype, rngs=rngs)
        self.norm2 = layer_norm(width, dtype=dtype, rngs=rngs)
        self.mlp = Mlp(width, MLP_RATIO * width, dtype=dtype, rngs=rngs)
        self.drop_path_rate = drop_path_rate

    def __call__(self, x: jax.Array, *, drop_path_rng: jax.Array | None) -> jax.Array:
        """`drop_path_rng` None: no stochastic depth (evaluation, or a frozen block)."""
        rngs = (None, None) if drop_path_rng is None else jax.random.split(drop_path_rng)
        x = x + drop_path(self.attn(self.norm1(x)), self.drop_path_rate, rngs[0])
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_path_rate, rngs[1])


class ViT(nnx.Module):
    """ViT encoder of a size in SIZES; `model(x, train=...)` gives the final-normed class token.

    `image_size` fixes the position embeddings' grid (`image_size // patch_size` per side);
    any image whose sides are multiples of `patch_size` runs, other grids resampling them.
    Block i (0-based) drops its residual branches at `drop_path * i / (depth - 1)`, timm's rule.
    """

    def __init__(
        self,
        size: str,
        *,
        patch_size: int,
        image_size: int,
        drop_path: float = 0.0,
        dtype: Any = jnp.float32,
        rngs: nnx.Rngs,
    ):
        if size not in SIZES:
            raise ValueError(f"ViT size must be one of {sorted(SIZES)}, got {size!r}")
        if image_size % patch_size:
            raise ValueError(f"image_size {image_size} is no multiple of patch_size {patch_size}")
        width, depth, heads = SIZES[size]
        self.patch_size, self.grid = patch_size, image_size // patch_size
        self.patch_embed = PatchEmbed(patch_size, width, dtype=dtype, rngs=rngs)
        # timm's `init_weights`: class token N(0, 1e-6^2), position embeddings trunc_normal.
        self.cls_token = nnx.Param(jax.random.normal(rngs.params(), (1, 1, width)) * 1e-6)
        self.pos_embed = nnx.Param(TRUNC_NORMAL(rngs.params(), (1, 1 + self.grid**2, width)))
        self.blocks = nnx.List(
            [Block(width, heads, 0.0, dtype=dtype, rngs=rngs) for _ in range(depth)]
        )
        self.norm = layer_norm(width, dtype=dtype, rngs=rngs)
        self.feature_dim, self.depth = width, depth
        self.set_drop_path(drop_path)
        embeddings = "(patch_embed/|cls_token$|pos_embed$)"
        self.depth_paths = (embeddings, *(f"blocks/{i}/" for i in range(depth)))

    def set_drop_path(self, drop_path: float) -> None:
        """Stochastic depth from now on: block i (0-based) drops its residual branches at
        `drop_path * i / (depth - 1)`, timm's rule (e.g. to fine-tune a ViT pretrained without
        it)."""
        if not 0 <= drop_path < 1:
            raise ValueError(f"drop_path must be in [0, 1), got {drop_path}")
        self.drop_path = drop_path
        for block, rate in zip(self.blocks, np.linspace(0.0, drop_path, self.depth).tolist()):
            block.drop_path_rate = rate

    def embed(self, x: jax.Array) -> jax.Array:
        """Patch tokens [B, h * w, width], row by row, each plus its position embedding, of
        images `x` [B, H, W, 3] (float in [0, 1], or uint8 as they leave the host) whose sides
        are multiples of the patch size: h, w = H / patch, W / patch."""
        if x.shape[1] % self.patch_size or x.shape[2] % self.patch_size:
            raise ValueError(
                f"image size {x.shape[1:3]} is no multiple of the patch size {self.patch_size}"
            )
        patches = self.patch_embed(to_float(x))
        b, h, w, width = patches.shape
        grid_embed = self.pos_embed[0, 1:].reshape(self.grid, self.grid, width)
        patches = patches + resample_pos_embed(grid_embed, (h, w)).astype(patches.dtype)
        return patches.reshape(b, h * w, width)

    def encode(
        self,
        tokens: jax.Array,
        *,
        train: bool,
        frozen_stages: int = 0,
        drop_path_rng: jax.Array | None = None,
    ) -> list[jax.Array]:
        """Every block's output after the final norm, [B, 1 + K, width] each, the class token
        first, for patch tokens [B, K, width] from `embed` (all of them, or a subset such as
        MAE's visible patches).

        `frozen_stages=n` (0..depth) freezes the embeddings (patch_embed, cls_token, pos_embed)
        and blocks 1..n: no gradient flows back through block n's output, and those blocks never
        drop a branch; n = depth leaves only the final norm trainable. `drop_path_rng` is
        required in training when drop_path > 0 (explicit, so the jitted step draws it from the
        step's key rather than from hidden module state).
        """
        if not 0 <= frozen_stages <= self.depth:
            raise ValueError(f"frozen_stages must be in 0..{self.depth}, got {frozen_stages}")
        dropping = train and self.drop_path > 0
        if dropping and drop_path_rng is None:
            raise ValueError("drop_path_rng is required when train=True and drop_path > 0")
        cls = (self.cls_token[...] + self.pos_embed[:, :1]).astype(tokens.dtype)
        x = jnp.concatenate([jnp.broadcast_to(cls, (len(tokens), *cls.shape[1:])), tokens], 1)
        outputs = []
        for i, block in enumerate(self.blocks):
            rng = jax.random.fold_in(drop_path_rng, i) if dropping and i >= frozen_stages else None
            x = block(x, drop_path_rng=rng)
            if i + 1 == frozen_stages:
                x = jax.lax.stop_gradient(x)
            outputs.append(self.norm(x))
        return outputs

    def features(
        self,
        x: jax.Array,
        *,
        train: bool,
        frozen_stages: int = 0,
        drop_path_rng: jax.Array | None = None,
    ) -> dict[str, jax.Array]:
        """Float32 features of images `x` (as `embed` takes them), by name: "block1".."blockN",
        the class token of each block's output after the final norm (DINO's
        `get_intermediate_layers`); "cls" (= "blockN") and "pooled" (= "cls"), the default
        feature; "patch_mean", the mean of the last block's normed patch tokens; "cls_last4",
        the class tokens of the last 4 blocks concatenated, and "cls_patch_mean", "cls" and
        "patch_mean" concatenated (DINO's linear probes of ViT-S and ViT-B); "tokens", the last
        block's normed output [B, 1 + P, width]. `frozen_stages` and `drop_path_rng` as in
        `encode`."""
        outputs = self.encode(
            self.embed(x), train=train, frozen_stages=frozen_stages, drop_path_rng=drop_path_rng
        )
        out = {f"block{i}": y[:, 0].astype(jnp.float32) for i, y in enumerate(outputs, start=1)}
        tokens = outputs[-1].astype(jnp.float32)
        out.update(cls=tokens[:, 0], pooled=tokens[:, 0], tokens=tokens)
        out["patch_mean"] = jnp.mean(tokens[:, 1:], axis=1)
        # The linear probes of DINO's `eval_linear.py`: ViT-S's `n_last_blocks=4`, ViT-B's
        # `avgpool_patchtokens` (its features interleaved there, a permutation).
        last4 = [out[f"block{i}"] for i in range(max(self.depth - 3, 1), self.depth + 1)]
        out["cls_last4"] = jnp.concatenate(last4, axis=-1)
        out["cls_patch_mean"] = jnp.concatenate([out["cls"], out["patch_mean"]], axis=-1)
        return out

    def __call__(
        self,
        x: jax.Array,
        *,
        train: bool,
        frozen_stages: int = 0,
        drop_path_rng: jax.Array | None = None,
    ) -> jax.Array:
        return self.features(
            x, train=train, frozen_stages=frozen_stages, drop_path_rng=drop_path_rng
        )["pooled"]
