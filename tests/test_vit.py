"""selfsup's ViT computes timm's `VisionTransformer` on the same weights, moved either way, at
its own grid and at others (timm's resampled position embeddings); stochastic depth and frozen
blocks behave as stated; the timm names, layouts, architectures and errors. timm runs in a
process of its own: importing it where TensorFlow was imported (the suite's workers) crashes."""

import importlib.util
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file

from selfsup import export, pretrained
from selfsup.config import ConfigError
from selfsup.models import timm
from selfsup.models.vit import SIZES, Block, ViT, resample_pos_embed
from selfsup.train.state import split_model

needs_timm = pytest.mark.skipif(
    importlib.util.find_spec("timm") is None, reason="needs torch and timm"
)
# One xdist worker for the module, so the session runs `timm_side`'s torch process (~14 CPU-s)
# once, not once per worker.
pytestmark = pytest.mark.xdist_group("timm_side")
TOLERANCE = 1e-4  # Max abs difference of fp32 features.
# A ViT-Ti with 8 px patches made for 32 px images (a 4x4 grid), run at its own size, larger
# (6x6: the position embeddings upsampled) and smaller (2x2: downsampled).
PATCH, IMAGE, SIZES_RUN = 8, 32, (32, 48, 16)
# (old grid, new grid) pairs for the position-embedding resampling on its own.
RESAMPLE = ((14, 6), (14, 16), (4, 8), (8, 4))
ARCHITECTURES = {
    "vit_tiny_patch16_224": ("vit_tiny", 16, 14),
    "vit_small_patch16_224": ("vit_small", 16, 14),
    "vit_base_patch16_224": ("vit_base", 16, 14),
}

TIMM_SIDE = """
import json, sys
from pathlib import Path

import numpy as np
import timm
import torch
from safetensors.torch import load_file, save_file
from timm.layers import resample_abs_pos_embed

root = Path(sys.argv[1])
case = json.loads((root / "case.json").read_text())
torch.manual_seed(0)
torch.set_num_threads(1)  # A second thread only spins on these tiny models (doubling CPU time).


def create(**kwargs):
    return timm.create_model(
        "vit_tiny_patch16_224", pretrained=False, num_classes=0, patch_size=case["patch"],
        img_size=case["image"], **kwargs,
    ).eval()


def perturbed(model):
    # Random LayerNorm scales, biases and class token: no mapping hides behind a 0 or 1.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "cls_token" or name.endswith("bias"):
                p.normal_(0.0, 0.1)
            elif p.ndim == 1:
                p.uniform_(0.5, 1.5)
    return model


def outputs(model, size, who):
    x = torch.from_numpy(np.load(root / f"images_{size}.npy")).permute(0, 3, 1, 2)
    with torch.no_grad():
        tokens = model.forward_features(x)
        blocks = model.get_intermediate_layers(
            x, n=len(model.blocks), return_prefix_tokens=True, norm=True
        )
    np.save(root / f"{who}_{size}_tokens.npy", tokens.numpy())
    np.save(root / f"{who}_{size}_blocks.npy", np.stack([p[:, 0].numpy() for _, p in blocks]))


theirs = perturbed(create(dynamic_img_size=True))
save_file({k: v.contiguous() for k, v in theirs.state_dict().items()}, root / "theirs.safetensors")
for size in case["sizes"]:
    outputs(theirs, size, "theirs")
ours = create()
ours.load_state_dict(load_file(root / "encoder.safetensors"), strict=True)
outputs(ours, case["image"], "ours")
for old, new in case["resample"]:
    posemb = torch.from_numpy(np.load(root / f"posemb_{old}.npy"))
    resampled = resample_abs_pos_embed(posemb, [new, new], num_prefix_tokens=1)
    np.save(root / f"resampled_{old}_{new}.npy", resampled.numpy())
models = {name: timm.create_model(name, num_classes=0) for name in case["architectures"]}
architectures = {
    name: {
        "shapes": {k: list(v.shape) for k, v in m.state_dict().items()},
        "size": [m.embed_dim, len(m.blocks), m.blocks[0].attn.num_heads],
    }
    for name, m in models.items()
}
(root / "architectures.json").write_text(json.dumps(architectures))
"""


def params_of(model: nnx.Module) -> dict[str, np.ndarray]:
    return {k: np.asarray(v) for k, v in pretrained.flatten(split_model(model)[1]).items()}


def vit_with(params: dict[str, np.ndarray], **kwargs) -> ViT:
    """A ViT of `kwargs` holding `params` (flax name -> array)."""
    graphdef, shapes, _ = split_model(nnx.eval_shape(lambda: ViT(**kwargs, rngs=nnx.Rngs(0))))
    filled = pretrained.filled(shapes, params, "test params")
    return nnx.merge(graphdef, jax.tree.map(jnp.asarray, filled))


def perturbed_tiny() -> dict[str, np.ndarray]:
    """A fresh ViT-Ti's params with random LayerNorm scales, biases and class token (as
    TIMM_SIDE perturbs timm's)."""
    params = params_of(ViT("vit_tiny", patch_size=PATCH, image_size=IMAGE, rngs=nnx.Rngs(1)))
    rng = np.random.default_rng(1)
    for name, value in params.items():
        if name == "cls_token" or name.endswith("/bias"):
            params[name] = rng.normal(0.0, 0.1, value.shape).astype(np.float32)
        elif name.endswith("/scale"):
            params[name] = rng.uniform(0.5, 1.5, value.shape).astype(np.float32)
    return params


def shapes_of(size: str, *, patch_size: int, image_size: int) -> dict[str, tuple[int, ...]]:
    model = nnx.eval_shape(
        lambda: ViT(size, patch_size=patch_size, image_size=image_size, rngs=nnx.Rngs(0))
    )
    return {k: v.shape for k, v in pretrained.flatten(split_model(model)[1]).items()}


def zeros(shapes: dict[str, tuple[int, ...]]) -> dict[str, np.ndarray]:
    """Arrays of `shapes` that take no memory (read-only views of one zero)."""
    return {k: np.broadcast_to(np.float32(0), tuple(s)) for k, s in shapes.items()}


def exported(params: dict[str, np.ndarray], workdir: Path) -> None:
    """`export --config.format=timm`'s files in `workdir`, for a run whose encoder is the ViT-Ti
    of `params`."""
    model = dict(name="vit_tiny", patch_size=PATCH, image_size=IMAGE, dtype="float32")
    model |= dict(depth=50, stem="imagenet", width=1.0, kernels="auto")
    config = ml_collections.ConfigDict(dict(model=model))
    run = pretrained.RunVariables(config, 3, {"encoder": params}, {"encoder": {}})
    export_config = ml_collections.ConfigDict(dict(checkpoint="run", step=0, format="timm"))
    export._export(export_config, workdir, run, ("encoder",), start=0.0)


@pytest.fixture(scope="module")
def timm_side(tmp_path_factory) -> SimpleNamespace:
    """timm's outputs for the cases above, in one process: its own perturbed ViT-Ti (state dict
    and features), selfsup's perturbed ViT-Ti loaded strictly (features), resampled position
    embeddings, and the state-dict shapes and sizes of ARCHITECTURES (built on the CPU: timm
    1.0.3 cannot build a ViT on the meta device, its drop-path rates call `.item()`)."""
    root = tmp_path_factory.mktemp("timm")
    rng = np.random.default_rng(0)
    for size in SIZES_RUN:
        np.save(root / f"images_{size}.npy", rng.random((2, size, size, 3), np.float32))
    for old in {old for old, _ in RESAMPLE}:
        np.save(root / f"posemb_{old}.npy", rng.normal(size=(1, 1 + old * old, 8)).astype("f4"))
    ours = perturbed_tiny()
    exported(ours, root)
    case = dict(patch=PATCH, image=IMAGE, sizes=SIZES_RUN, resample=RESAMPLE)
    (root / "case.json").write_text(json.dumps({**case, "architectures": list(ARCHITECTURES)}))
    run = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(TIMM_SIDE), str(root)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    architectures = json.loads((root / "architectures.json").read_text())
    return SimpleNamespace(root=root, ours=ours, architectures=architectures)


def compare(model: ViT, root: Path, who: str, size: int) -> dict[str, float]:
    """Max |difference| of each feature of `model` from timm's (`who`'s weights) at image `size`,
    asserted within TOLERANCE."""
    images = np.load(root / f"images_{size}.npy")
    features = model.features(images, train=False)
    tokens, blocks = (np.load(root / f"{who}_{size}_{k}.npy") for k in ("tokens", "blocks"))
    diffs = {
        "cls": np.abs(features["cls"] - tokens[:, 0]).max(),
        "pooled": np.abs(features["pooled"] - tokens[:, 0]).max(),
        "patch_mean": np.abs(features["patch_mean"] - tokens[:, 1:].mean(1)).max(),
        "tokens": np.abs(features["tokens"] - tokens).max(),
        "blocks": max(
            np.abs(features[f"block{i + 1}"] - block).max() for i, block in enumerate(blocks)
        ),
        # DINO's linear-probe inputs: the last 4 blocks' class tokens; class token + patch mean.
        "cls_last4": np.abs(features["cls_last4"] - np.concatenate(blocks[-4:], -1)).max(),
        "cls_patch_mean": np.abs(
            features["cls_patch_mean"] - np.concatenate([tokens[:, 0], tokens[:, 1:].mean(1)], -1)
        ).max(),
    }
    assert max(diffs.values()) <= TOLERANCE, diffs
    return diffs


@needs_timm
def test_timm_weights_compute_timms_features_here(timm_side):
    theirs = load_file(str(timm_side.root / "theirs.safetensors"))
    assert timm.timm_architecture(theirs, "timm's") == ("vit_tiny", PATCH, IMAGE // PATCH)
    shapes = shapes_of("vit_tiny", patch_size=PATCH, image_size=IMAGE)
    model = vit_with(
        timm.from_timm(theirs, shapes, "timm's"),
        size="vit_tiny",
        patch_size=PATCH,
        image_size=IMAGE,
    )
    print({size: compare(model, timm_side.root, "theirs", size) for size in SIZES_RUN})
    images = (np.load(timm_side.root / f"images_{IMAGE}.npy") * 255).astype(np.uint8)
    np.testing.assert_array_equal(
        model(images, train=False),
        model(images.astype(np.float32) * np.float32(1 / 255), train=False),
    )


@needs_timm
def test_an_export_loads_strictly_into_timm_and_computes_the_same(timm_side):
    """`export --config.format=timm` of a run: timm loads it with strict=True (TIMM_SIDE), and
    it and `load_encoder` of the file compute the run's features."""
    model = vit_with(timm_side.ours, size="vit_tiny", patch_size=PATCH, image_size=IMAGE)
    print(compare(model, timm_side.root, "ours", IMAGE))
    loaded = pretrained.load_encoder(timm_side.root / "encoder.safetensors")
    images = np.load(timm_side.root / f"images_{IMAGE}.npy")
    np.testing.assert_array_equal(loaded(images, train=False), model(images, train=False))
    summary = json.loads((timm_side.root / "summary.json").read_text())
    assert summary["model/name"] == "vit_tiny" and summary["export/format"] == "timm"


@needs_timm
@pytest.mark.parametrize("old, new", RESAMPLE)
def test_position_embeddings_resample_as_timm_resamples_them(timm_side, old, new):
    posemb = np.load(timm_side.root / f"posemb_{old}.npy")
    theirs = np.load(timm_side.root / f"resampled_{old}_{new}.npy")
    ours = resample_pos_embed(jnp.asarray(posemb[0, 1:].reshape(old, old, -1)), (new, new))
    np.testing.assert_allclose(ours.reshape(-1, posemb.shape[-1]), theirs[0, 1:], atol=1e-5)
    np.testing.assert_array_equal(theirs[0, 0], posemb[0, 0])  # The class token's is kept.


@needs_timm
@pytest.mark.parametrize("name", ARCHITECTURES)
def test_timm_architectures_are_read_from_their_state_dicts(timm_side, name):
    architecture = timm_side.architectures[name]
    size, patch, grid = timm.timm_architecture(zeros(architecture["shapes"]), name)
    assert (size, patch, grid) == ARCHITECTURES[name]
    assert list(SIZES[size]) == architecture["size"]  # (width, depth, heads)


@needs_timm
def test_to_timm_gives_exactly_timms_keys_and_shapes(timm_side):
    ours = timm.to_timm(zeros(shapes_of("vit_small", patch_size=16, image_size=224)))
    theirs = timm_side.architectures["vit_small_patch16_224"]["shapes"]
    assert {k: list(v.shape) for k, v in ours.items()} == theirs


def test_from_timm_inverts_to_timm_and_ignores_classifier_and_mae_decoder():
    rng = np.random.default_rng(0)
    shapes = shapes_of("vit_tiny", patch_size=PATCH, image_size=IMAGE)
    params = {k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    state = timm.to_timm(params)
    np.testing.assert_array_equal(
        state["blocks.0.mlp.fc1.weight"], params["blocks/0/mlp/fc1/kernel"].T
    )
    np.testing.assert_array_equal(
        state["patch_embed.proj.weight"][5, 1, 2, 3], params["patch_embed/proj/kernel"][2, 3, 1, 5]
    )
    extra = ("head.weight", "fc_norm.weight", "decoder_embed.weight", "decoder_pos_embed")
    state.update({key: np.zeros(3) for key in extra + ("mask_token",)})
    back = timm.from_timm(state, shapes, "state")
    assert back.keys() == params.keys()
    for name, value in params.items():
        np.testing.assert_array_equal(back[name], value)


def test_from_timm_names_missing_extra_and_misshapen_keys():
    shapes = shapes_of("vit_tiny", patch_size=PATCH, image_size=IMAGE)
    state = timm.to_timm(zeros(shapes))
    del state["norm.weight"]
    state["norm_pre.weight"] = np.zeros(192)
    state["pos_embed"] = np.zeros((1, 50, 192))
    with pytest.raises(ConfigError) as error:
        timm.from_timm(state, shapes, "vit.pth")
    for part in ("missing norm.weight", "unexpected norm_pre.weight", "pos_embed has shape"):
        assert part in str(error.value)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s.pop("cls_token"), "with a class token"),
        (lambda s: s.update(reg_token=np.zeros((1, 4, 192))), "register tokens"),
        (lambda s: s.update(pos_embed=np.zeros((1, 16, 192))), "square grid"),
        (lambda s: [s.pop(k) for k in list(s) if k.startswith("blocks.11.")], "depth 11"),
    ],
    ids=["no class token", "register tokens", "no_embed_class", "depth 11"],
)
def test_timm_architecture_refuses_other_vits(change, message):
    state = timm.to_timm(zeros(shapes_of("vit_tiny", patch_size=PATCH, image_size=IMAGE)))
    change(state)
    with pytest.raises(ConfigError, match=message):
        timm.timm_architecture(state, "vit.pth")


def test_a_block_drops_whole_examples_at_its_rate_and_keeps_the_expectation():
    """A block whose MLP outputs zero adds only its attention branch: each example's branch is
    either zero (dropped) or the evaluation branch / (1 - rate)."""
    rate, n = 0.3, 5000
    block = Block(192, 3, rate, dtype=jnp.float32, rngs=nnx.Rngs(0))
    block.mlp.fc2.kernel[...] = jnp.zeros_like(block.mlp.fc2.kernel[...])
    token = np.random.default_rng(0).normal(size=(1, 1, 192)).astype(np.float32)
    x = jnp.broadcast_to(token, (n, 1, 192))  # One example, n times: one evaluation branch.
    branch = np.asarray(block(x, drop_path_rng=jax.random.key(0)) - x)[:, 0]
    expected = np.asarray(block(x, drop_path_rng=None) - x)[0, 0]
    kept = np.any(branch != 0, axis=1)
    np.testing.assert_allclose(
        branch[kept], np.broadcast_to(expected / (1 - rate), branch[kept].shape), rtol=1e-5
    )
    # Five binomial standard deviations (0.032 here): a wrong rate lies far outside.
    assert abs(np.mean(~kept) - rate) < 5 * np.sqrt(rate * (1 - rate) / n), np.mean(~kept)
    np.testing.assert_allclose(branch.mean(0), expected, rtol=5 * np.sqrt(rate / (1 - rate) / n))


def test_stochastic_depth_rises_over_blocks_and_runs_only_in_training():
    model = ViT("vit_tiny", patch_size=PATCH, image_size=16, drop_path=0.2, rngs=nnx.Rngs(0))
    rates = [block.drop_path_rate for block in model.blocks]
    np.testing.assert_allclose(rates, 0.2 * np.arange(12) / 11)  # timm's linspace(0, rate).
    x = np.random.default_rng(0).random((2, 16, 16, 3), np.float32)
    key = jax.random.key(0)
    plain = model(x, train=False)
    np.testing.assert_array_equal(model(x, train=False, drop_path_rng=key), plain)
    assert np.abs(model(x, train=True, drop_path_rng=key) - plain).max() > 1e-3
    frozen = model(x, train=True, frozen_stages=model.depth, drop_path_rng=key)
    np.testing.assert_array_equal(frozen, plain)  # Frozen blocks drop nothing.
    with pytest.raises(ValueError, match="drop_path_rng"):
        model(x, train=True)


def test_frozen_stages_stop_the_gradient_after_block_n():
    model = ViT("vit_tiny", patch_size=PATCH, image_size=16, rngs=nnx.Rngs(0))
    x = np.random.default_rng(0).random((2, 16, 16, 3), np.float32)
    n = 2
    grads = nnx.grad(lambda m: jnp.sum(m(x, train=True, frozen_stages=n) ** 2))(model)
    flat = pretrained.flatten(nnx.to_pure_dict(grads))

    def largest(prefix: str) -> float:
        return max(float(np.abs(g).max()) for k, g in flat.items() if k.startswith(prefix))

    for frozen in ("patch_embed/", "cls_token", "pos_embed", "blocks/0/", f"blocks/{n - 1}/"):
        assert largest(frozen) == 0, frozen
    assert largest(f"blocks/{n}/") > 0 and largest("norm/") > 0
