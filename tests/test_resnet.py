"""ResNet encoder: torchvision parameter counts, stage-prefixed paths, shapes for both stems,
explicit BatchNorm modes, zero-init residual blocks, frozen bottom stages, jit/sharding
behaviour, and the conv / norm / pool implementations it is given. The kernels themselves are
tested in test_xla_cpu.py and test_kernels.py."""

import collections

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from selfsup.config import ConfigError
from selfsup.models.encoders import encoder_from_config
from selfsup.models.resnet import (
    BN_EPSILON,
    STAGE_NAMES,
    BasicBlock,
    Bottleneck,
    ResNet,
    conv_def,
    norm_def,
)
from selfsup.train.state import split_model


def num_params(module: nnx.Module) -> int:
    return sum(x.size for x in jax.tree.leaves(nnx.state(module, nnx.Param)))


def paths(module: nnx.Module, kind=nnx.Param) -> set[str]:
    return {
        "/".join(str(k) for k in path) for path, _ in nnx.to_flat_state(nnx.state(module, kind))
    }


def batch_stats(module: nnx.Module):
    """A copy of the BatchNorm running averages (nnx.state shares the live variables)."""
    return jax.tree.map(np.array, nnx.state(module, nnx.BatchStat))


def rngs() -> nnx.Rngs:
    # XLA:CPU compiles threefry sampling in ~0.45 s per parameter shape; RBG keys take ~0.2 s.
    return nnx.Rngs(jax.random.key(0, impl="rbg"))


def images(n=8, size=16, channels=3) -> jax.Array:
    return jax.random.normal(jax.random.key(0), (n, size, size, channels))


@pytest.mark.parametrize("size", [16, 15])
def test_imagenet_stem_max_pool_pads_one_pixel_on_each_side_as_torchvision(size):
    # torchvision's MaxPool2d(3, stride=2, padding=1); "SAME" would pad an even size on the far
    # side only, shifting every window by a pixel.
    model = ResNet(18, stem="imagenet", width=0.125, rngs=rngs())
    x = images(2, 2 * size)
    stem = np.asarray(nnx.relu(model.stem(x, train=False)))
    padded = np.pad(stem, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
    out = (size + 1) // 2
    expected = np.stack(
        [
            np.stack(
                [
                    padded[:, 2 * i : 2 * i + 3, 2 * j : 2 * j + 3].max(axis=(1, 2))
                    for j in range(out)
                ],
                axis=1,
            )
            for i in range(out)
        ],
        axis=1,
    )
    np.testing.assert_array_equal(model.features(x, train=False)["stem"], expected)


@pytest.mark.parametrize("depth, expected", [(18, 11_689_512), (34, 21_797_672), (50, 25_557_032)])
def test_param_count_matches_torchvision(depth, expected):
    model = nnx.eval_shape(
        lambda: ResNet(depth, stem="imagenet", num_classes=1000, rngs=nnx.Rngs(0))
    )
    assert num_params(model) == expected


def test_param_paths_are_stage_prefixed():
    model = nnx.eval_shape(lambda: ResNet(18, num_classes=10, rngs=nnx.Rngs(0)))
    names = paths(model)
    assert {
        "stem/conv/kernel",
        "stem/bn/scale",
        "stage1/0/conv1/kernel",
        "stage3/1/bn2/scale",
        "stage2/0/shortcut/conv/kernel",
        "classifier/kernel",
    } <= names
    assert all(n.split("/")[0] in (*STAGE_NAMES, "classifier") for n in names)
    # Only the first block of stages 2-4 changes shape in ResNet-18 with a CIFAR stem.
    assert {n.split("/shortcut")[0] for n in names if "shortcut" in n} == {
        "stage2/0",
        "stage3/0",
        "stage4/0",
    }
    assert not any(n.startswith("stem/bn/") and n.endswith("mean") for n in names)
    assert "stem/bn/mean" in paths(model, nnx.BatchStat)


@pytest.fixture(scope="module")
def resnet18() -> ResNet:
    """One tiny initialised ResNet-18; tests that change it work on an `nnx.clone`."""
    return ResNet(18, width=0.125, num_classes=5, rngs=rngs())


@pytest.mark.parametrize(
    "depth, stem, width, size, spatial, channels",
    [
        (18, "cifar", 0.125, 32, (32, 32, 16, 8, 4), (8, 8, 16, 32, 64)),
        (18, "cifar", 0.25, 16, (16, 16, 8, 4, 2), (16, 16, 32, 64, 128)),
        (18, "imagenet", 0.125, 64, (16, 16, 8, 4, 2), (8, 8, 16, 32, 64)),
        (34, "cifar", 0.0625, 16, (16, 16, 8, 4, 2), (4, 4, 8, 16, 32)),
        (50, "cifar", 0.125, 32, (32, 32, 16, 8, 4), (8, 32, 64, 128, 256)),
        (50, "imagenet", 0.125, 32, (8, 8, 4, 2, 1), (8, 32, 64, 128, 256)),
        (18, "cifar", 0.001, 16, (16, 16, 8, 4, 2), (1, 1, 1, 1, 1)),
    ],
)
def test_feature_shapes(depth, stem, width, size, spatial, channels):
    model = nnx.eval_shape(
        lambda: ResNet(depth, stem=stem, width=width, num_classes=3, rngs=nnx.Rngs(0))
    )
    x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
    feats = nnx.eval_shape(lambda m, x: m.features(x, train=True), model, x)
    for name, s, c in zip(STAGE_NAMES, spatial, channels, strict=True):
        assert feats[name].shape == (2, s, s, c), name
    assert feats["pooled"].shape == (2, channels[-1]) and model.feature_dim == channels[-1]
    assert nnx.eval_shape(lambda m, x: m(x, train=False), model, x).shape == (2, 3)


def test_logits_are_the_classifier_on_globally_pooled_features(resnet18):
    x = images()
    feats = resnet18.features(x, train=False)
    np.testing.assert_allclose(feats["pooled"], feats["stage4"].mean(axis=(1, 2)), rtol=1e-6)
    c = resnet18.classifier
    np.testing.assert_allclose(
        resnet18(x, train=False),
        feats["pooled"] @ c.kernel[...] + c.bias[...],
        rtol=1e-5,
        atol=1e-6,
    )


def test_uint8_images_are_scaled_on_the_device_as_the_host_scales_them(resnet18):
    # As the host pipeline sends a view made by geometric ops alone.
    pixels = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3)).astype(np.uint8)
    from selfsup.data.augment import to_float  # TF's uint8 -> [0, 1], as the host converts.

    as_host = to_float(pixels).numpy()
    forward = jax.jit(lambda x: resnet18.features(x, train=False))
    for name, value in forward(pixels).items():
        np.testing.assert_array_equal(value, forward(as_host)[name], err_msg=name)


def test_train_mode_normalises_with_batch_statistics_and_updates_running_averages(resnet18):
    model = nnx.clone(resnet18)
    x = images()
    conv_out = np.asarray(model.stem.conv(x), np.float64)
    stem_out = np.asarray(model.stem(x, train=True))
    # Train mode: per-channel zero mean, unit variance over (N, H, W) at init (scale 1, bias 0).
    np.testing.assert_allclose(stem_out.mean(axis=(0, 1, 2)), 0.0, atol=1e-5)
    batch_var = conv_out.var(axis=(0, 1, 2))
    np.testing.assert_allclose(
        stem_out.var(axis=(0, 1, 2)), batch_var / (batch_var + BN_EPSILON), rtol=1e-4
    )
    # Running averages moved by (1 - momentum) = 0.1 from (0, 1) towards the batch statistics.
    bn = model.stem.bn
    np.testing.assert_allclose(
        bn.mean[...], 0.1 * conv_out.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6
    )
    np.testing.assert_allclose(bn.var[...], 0.9 + 0.1 * batch_var, rtol=1e-4)


def test_eval_mode_uses_running_averages_and_leaves_them_alone(resnet18):
    model = nnx.clone(resnet18)
    x = images()
    before = batch_stats(model)
    # Fresh running averages are mean 0, var 1, so eval-mode BN only divides by sqrt(1 + eps).
    np.testing.assert_allclose(
        model.stem(x, train=False),
        model.stem.conv(x) / np.sqrt(1 + BN_EPSILON),
        rtol=1e-5,
        atol=1e-6,
    )
    model(x, train=False)
    jax.tree.map(np.testing.assert_array_equal, before, batch_stats(model))
    # Eval mode treats examples independently; train mode couples them through batch statistics.
    np.testing.assert_allclose(
        model(x[:2], train=False), model(x, train=False)[:2], rtol=1e-5, atol=1e-6
    )
    model(x, train=True)
    after = batch_stats(model)
    assert not np.allclose(before["stage4"][1]["bn2"]["mean"], after["stage4"][1]["bn2"]["mean"])
    assert not np.allclose(model(x[:2], train=True), model(x, train=True)[:2], atol=1e-3)


def check_blocks_are_relu_of_shortcut(blocks, x, train):
    for block in blocks:
        shortcut = x if block.shortcut is None else block.shortcut(x, train=train)
        y = block(x, train=train)
        np.testing.assert_allclose(y, nnx.relu(shortcut), rtol=1e-6, atol=1e-6)
        x = y


@pytest.mark.parametrize("train", [True, False])
def test_zero_init_residual_resnet18_blocks_are_relu_of_shortcut(resnet18, train):
    model = nnx.clone(resnet18)
    x = model.features(images(), train=train)["stem"]
    blocks = [b for stage in STAGE_NAMES[1:] for b in getattr(model, stage)]
    assert sum(b.shortcut is not None for b in blocks) == 3
    check_blocks_are_relu_of_shortcut(blocks, x, train)


def layers(r: nnx.Rngs) -> dict:
    """Block arguments: float32 convs and BatchNorms of XLA's ops."""
    return {
        "conv": conv_def(jax.lax.conv_general_dilated, dtype=jnp.float32, rngs=r),
        "norm": norm_def(nnx.BatchNorm, dtype=jnp.float32, rngs=r),
    }


def bottlenecks(zero_init_residual: bool) -> list[Bottleneck]:
    """A strided block with a projection shortcut, then one with an identity shortcut."""
    kwargs = {"zero_init_residual": zero_init_residual, **layers(rngs())}
    return [Bottleneck(8, 4, 2, **kwargs), Bottleneck(16, 4, 1, **kwargs)]


@pytest.mark.parametrize("train", [True, False])
def test_zero_init_residual_bottlenecks_are_relu_of_shortcut(train):
    blocks = bottlenecks(zero_init_residual=True)
    assert blocks[0].shortcut is not None and blocks[1].shortcut is None
    check_blocks_are_relu_of_shortcut(blocks, nnx.relu(images(4, 8, channels=8)), train)


def test_without_zero_init_residual_blocks_use_their_residual_branch():
    basic = BasicBlock(8, 8, 1, zero_init_residual=False, **layers(rngs()))
    x = nnx.relu(images(4, 8, channels=8))
    assert basic.shortcut is None
    assert not np.allclose(basic(x, train=False), x, atol=1e-3)
    first, second = bottlenecks(zero_init_residual=False)
    y = first(x, train=False)
    assert not np.allclose(second(y, train=False), y, atol=1e-3)


def test_jit_forward_matches_eager_and_is_deterministic(resnet18):
    graphdef, state = nnx.split(resnet18)
    forward = jax.jit(lambda state, x: nnx.merge(graphdef, state)(x, train=False))
    x = images()
    first, second = forward(state, x), forward(state, x)
    np.testing.assert_array_equal(first, second)
    np.testing.assert_allclose(first, resnet18(x, train=False), rtol=1e-5, atol=1e-6)


def test_batchnorm_statistics_are_global_over_a_sharded_batch(resnet18):
    graphdef, state = nnx.split(resnet18)

    @jax.jit
    def forward(state, x):
        model = nnx.merge(graphdef, state)
        return model(x, train=True), nnx.state(model, nnx.BatchStat)

    x = images()  # One example per device: per-device statistics would be far off.
    mesh = Mesh(np.array(jax.devices()), ("data",))
    out, stats = forward(state, jax.device_put(x, NamedSharding(mesh, PartitionSpec("data"))))
    reference = nnx.clone(resnet18)
    np.testing.assert_allclose(out, reference(x, train=True), rtol=1e-4, atol=1e-5)
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
        stats,
        batch_stats(reference),
    )


def test_bfloat16_compute_keeps_float32_params():
    model = nnx.eval_shape(
        lambda: ResNet(18, width=0.125, num_classes=3, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    )
    x = jax.ShapeDtypeStruct((2, 16, 16, 3), jnp.float32)
    assert nnx.eval_shape(lambda m, x: m(x, train=True), model, x).dtype == jnp.bfloat16
    # Heads and losses on the pooled features run in float32.
    features = nnx.eval_shape(lambda m, x: m.features(x, train=True), model, x)
    assert features["stage4"].dtype == jnp.bfloat16 and features["pooled"].dtype == jnp.float32
    assert {x.dtype for x in jax.tree.leaves(nnx.state(model, nnx.Param))} == {np.dtype("float32")}


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("dtype", "float16", r"config.model.dtype='float16'.*bfloat16"),
        ("kernels", "gpu", r"config.model.kernels='gpu'.*'auto', 'xla', 'cpu'"),
    ],
)
def test_encoder_from_config_names_an_unknown_value(key, value, message):
    model = dict(
        name="resnet", depth=18, stem="cifar", width=0.125, dtype="float32", kernels="auto"
    )
    with pytest.raises(ConfigError, match=message):
        encoder_from_config(ml_collections.ConfigDict({**model, key: value}), rngs=nnx.Rngs(0))


@pytest.mark.parametrize("stem, pools", [("imagenet", 1), ("cifar", 0)])
def test_every_layer_computes_with_the_kernels_it_is_given(stem, pools):
    calls = collections.Counter()

    def conv(*args, **kwargs):
        calls["conv"] += 1
        return jax.lax.conv_general_dilated(*args, **kwargs)

    class Norm(nnx.BatchNorm):
        def __call__(self, x, use_running_average=None, **kwargs):
            calls["norm"] += 1
            return super().__call__(x, use_running_average, **kwargs)

    def pool(*args, **kwargs):
        calls["pool"] += 1
        return nnx.max_pool(*args, **kwargs)

    model = nnx.eval_shape(
        lambda: ResNet(18, stem=stem, conv=conv, norm=Norm, pool=pool, rngs=nnx.Rngs(0))
    )
    x = jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)
    nnx.eval_shape(lambda m, x: m(x, train=True), model, x)
    # ResNet-18: the stem's conv, 2 per block in 8 blocks, 3 projection shortcuts.
    assert calls == collections.Counter(conv=20, norm=20, pool=pools)


def test_rejects_unknown_depth_and_stem():
    with pytest.raises(ValueError, match="depth"):
        ResNet(101, rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="stem"):
        ResNet(18, stem="tiny", rngs=nnx.Rngs(0))


@pytest.mark.slow
@pytest.mark.parametrize("frozen_stages", [1, 3])
def test_frozen_stages_keep_their_statistics_and_pass_no_gradient(resnet18, frozen_stages):
    """`frozen_stages=n`: stem..stage<n> in inference mode and cut from the gradient; the
    stages above train as usual."""
    frozen = STAGE_NAMES[: frozen_stages + 1]
    model = nnx.clone(resnet18)
    before = batch_stats(model)
    x = images()
    model(x, train=True, frozen_stages=frozen_stages)
    after = batch_stats(model)
    for name in STAGE_NAMES:
        same = jax.tree.all(jax.tree.map(np.array_equal, before[name], after[name]))
        assert same == (name in frozen), name

    graphdef, params, stats = split_model(nnx.clone(resnet18))

    def loss(params):
        return nnx.merge(graphdef, params, stats)(x, train=True, frozen_stages=frozen_stages).sum()

    grads = jax.grad(loss)(params)
    for name in STAGE_NAMES:
        norm = float(optax.tree.norm(grads[name]))
        assert (norm == 0.0) == (name in frozen), (name, norm)
    # Frozen stages compute what inference mode computes.
    reference = resnet18.features(x, train=False)[frozen[-1]]
    np.testing.assert_allclose(
        model.features(x, train=True, frozen_stages=frozen_stages)[frozen[-1]],
        reference,
        rtol=1e-5,
        atol=1e-6,
    )
    with pytest.raises(ValueError, match="frozen_stages must be in 0..4"):
        model(x, train=True, frozen_stages=5)
