"""Frozen-feature extraction: sharded, padded, masked batches give exactly one feature row per
example, equal to running the encoder on all images at once, at every depth from one pass; the
shallower stages pooled as Revisiting-SSL's linear evaluation pools them (its sizes, and
TensorFlow's fractional max-pooling that it runs)."""

import math
from pathlib import Path
from types import SimpleNamespace

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import tensorflow as tf
from flax import nnx

from selfsup import parallel
from selfsup.config import ConfigError
from selfsup.data import pipeline
from selfsup.data.sources import open_source
from selfsup.evaluate.features import (
    MAX_IN_FLIGHT,
    cell_edges,
    extract_features,
    max_pool_cells,
    pooled_grid,
    pooled_layers,
    resolve_layers,
    revisiting_pool,
)
from selfsup.models.resnet import STAGE_NAMES, ResNet

RESNET = ml_collections.ConfigDict(dict(name="resnet"))


def image_folder(tmp_path: Path) -> tuple[np.ndarray, list[int]]:
    """13 random 8x8 images (not a multiple of 8 devices) in two classes; returns them and the
    order the folder lists them in (class by class)."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (13, 8, 8, 3), np.uint8)
    for i, image in enumerate(images):
        path = tmp_path / "test" / f"c{i % 2}" / f"{i:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(tf.io.encode_png(image).numpy())
    return images, sorted(range(13), key=lambda i: (i % 2, i))


def to_float(image):
    return tf.cast(tf.reshape(image, [8, 8, 3]), tf.float32) / 255


@pytest.mark.slow
def test_features_match_direct_forward_with_padding(tmp_path: Path):
    images, order = image_folder(tmp_path)
    source = open_source(f"folder:{tmp_path}")
    encoder = ResNet(18, stem="cifar", width=0.125, rngs=nnx.Rngs(0))
    ds = pipeline.eval_dataset(source, "test", to_float, local_batch_size=8)
    features, labels = extract_features(
        encoder, ds, parallel.make_mesh(), what="test images", total=13
    )

    (features,) = features.values()
    assert features.shape == (13, encoder.feature_dim) and features.dtype == np.float32
    np.testing.assert_array_equal(labels, [i % 2 for i in order])
    direct = encoder(jnp.asarray(images[order], jnp.float32) / 255, train=False)
    np.testing.assert_allclose(features, np.asarray(direct), rtol=1e-5, atol=1e-6)


def forward_to(encoder: ResNet, x: jnp.ndarray, stage: str) -> np.ndarray:
    """The encoder run by hand up to the end of `stage`: its map [N, H, W, C]."""
    x = nnx.relu(encoder.stem(x, train=False))
    for name in STAGE_NAMES[1 : STAGE_NAMES.index(stage) + 1]:
        for block in getattr(encoder, name):
            x = block(x, train=False)
    return np.asarray(x)


def test_each_stage_equals_a_direct_forward_to_it_all_from_one_pass(tmp_path: Path, monkeypatch):
    images, order = image_folder(tmp_path)
    encoder = ResNet(18, stem="cifar", width=0.25, rngs=nnx.Rngs(1))
    # Running statistics unlike a fresh BatchNorm's, so inference mode is not the identity.
    for path, stat in nnx.iter_graph(encoder):
        if isinstance(stat, nnx.BatchStat):
            noise = np.random.default_rng(len(path)).uniform(0.5, 1.5, stat.shape)
            stat[...] = stat[...] + noise.astype(np.float32)
    ds = pipeline.eval_dataset(
        open_source(f"folder:{tmp_path}"), "test", to_float, local_batch_size=8
    )
    passes = []
    global_batches = pipeline.global_batches
    monkeypatch.setattr(
        pipeline, "global_batches", lambda *a, **k: passes.append(1) or global_batches(*a, **k)
    )
    layers = resolve_layers(("all_stages",), RESNET)
    features, _ = extract_features(
        encoder, ds, parallel.make_mesh(), what="test", total=13, layers=layers
    )
    assert len(passes) == 1 and list(features) == ["stage1", "stage2", "stage3", "pre_logits"]
    x = jnp.asarray(images[order], jnp.float32) / 255
    # 8 px images: maps of 8x8x16, 4x4x32 and 2x2x64 values, under Revisiting's ~9,000: whole.
    for stage, size in zip(("stage1", "stage2", "stage3"), (1024, 512, 256)):
        assert features[stage].shape == (13, size)
        direct = forward_to(encoder, x, stage).reshape((13, -1))  # Row, column, channel.
        np.testing.assert_allclose(features[stage], direct, rtol=1e-5, atol=1e-6)
    assert features["pre_logits"].shape == (13, 128)
    direct = forward_to(encoder, x, "stage4").mean(axis=(1, 2))
    np.testing.assert_allclose(features["pre_logits"], direct, rtol=1e-5, atol=1e-6)
    # The deepest stage, pooled, is the encoder's output: the pre-logits.
    np.testing.assert_array_equal(features["pre_logits"], encoder(x, train=False))


def test_the_batches_in_flight_are_bounded_whatever_the_data_size(tmp_path: Path, monkeypatch):
    rng = np.random.default_rng(0)
    for i in range(96):  # 12 batches of 8.
        path = tmp_path / "test" / f"c{i % 2}" / f"{i:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(tf.io.encode_png(rng.integers(0, 256, (8, 8, 3), np.uint8)).numpy())
    ds = pipeline.eval_dataset(
        open_source(f"folder:{tmp_path}"), "test", to_float, local_batch_size=8
    )
    live = []  # Arrays alive on the devices as each batch is handed over.
    global_batches = pipeline.global_batches

    def counted(*args, **kwargs):
        for batch in global_batches(*args, **kwargs):
            live.append(len(jax.live_arrays()))
            yield batch

    monkeypatch.setattr(pipeline, "global_batches", counted)
    encoder = ResNet(18, stem="cifar", width=0.125, rngs=nnx.Rngs(0))
    features, labels = extract_features(encoder, ds, parallel.make_mesh(), what="test", total=96)
    assert len(live) == 12 and features["pre_logits"].shape == (96, 64) and len(labels) == 96
    # Once MAX_IN_FLIGHT batches are out, each new one replaces one gathered to the host.
    steady = live[MAX_IN_FLIGHT + 1 :]
    assert max(steady) == min(steady), live


def test_layers_are_the_encoders_depths_or_all_stages():
    assert resolve_layers(("pre_logits", "stage1"), RESNET) == ("stage1", "pre_logits")
    assert resolve_layers(("all_stages",), RESNET) == ("stage1", "stage2", "stage3", "pre_logits")
    for bad in ((), ("stage5",), ("stage4",), ("block3",)):
        with pytest.raises(ConfigError, match=r"config.layers=.*from \['stage1'.*'pre_logits'\]"):
            resolve_layers(bad, RESNET)
    vit = ml_collections.ConfigDict(dict(name="vit_small"))
    blocks = tuple(f"block{i}" for i in range(1, 12))
    assert resolve_layers(("all_stages",), vit) == (*blocks, "pre_logits")
    assert resolve_layers(("patch_mean", "block6"), vit) == ("block6", "patch_mean")
    assert resolve_layers(("cls_last4",), vit) == ("cls_last4",)
    with pytest.raises(ConfigError, match=r"'pre_logits', 'patch_mean', 'cls_last4', 'cls_patch"):
        resolve_layers(("stage1",), vit)


def revisiting_stride(height: int, channels: int, target: int = 9000) -> float:
    """Revisiting-SSL's `utils.adaptive_pool` (adaptive_max), transcribed: the stride of its
    fractional max-pooling of a map with `height` rows and `channels` channels."""
    target_size = (target / float(channels)) ** 0.5
    if abs(target - channels * np.floor(target_size) ** 2) < abs(
        target - channels * np.ceil(target_size) ** 2
    ):
        target_size = max(np.floor(target_size), 1.0)
    else:
        target_size = max(np.ceil(target_size), 1.0)
    stride = height / target_size - 1.0e-5
    return min(max(stride, 1), height)


def test_cells_are_spread_evenly():
    # 56 rows in 6 cells: 9 or 10 rows each (TensorFlow draws this mix in a random order).
    np.testing.assert_array_equal(cell_edges(56, 6), [0, 9, 18, 28, 37, 46, 56])
    np.testing.assert_array_equal(cell_edges(7, 7), np.arange(8))


def test_pooled_sizes_per_stage_are_revisitings():
    # ResNet-50 and ResNet-18 at 224 px: stage1-3 maps, pooled to about 9,000 values.
    for channels, sizes in ((256, (9216, 8192, 9216)), (64, (9216, 8192, 9216))):
        for stage, (size, pooled) in enumerate(zip((56, 28, 14), sizes)):
            rows, cols = pooled_grid(size, size, channels * 2**stage)
            assert rows == cols and rows * cols * channels * 2**stage == pooled
    # Every map of up to 128 rows and 4096 channels, square or not: Revisiting's rule, applied
    # where the map holds more than 9,000 values (linear_eval.apply_fractional_pooling).
    for height in range(1, 129):
        for channels in (1, 3, 8, 16, 64, 96, 256, 512, 1024, 2048, 4096):
            for width in (height, height + 5):
                got = pooled_grid(height, width, channels)
                if height * width * channels <= 9000:
                    assert got == (height, width)
                else:
                    stride = revisiting_stride(height, channels)
                    assert got == (math.floor(height / stride), math.floor(width / stride))


@pytest.mark.parametrize("shape", [(56, 56, 256), (14, 14, 1024), (32, 37, 16), (5, 5, 4096)])
def test_the_pooling_is_revisitings_fractional_max_pooling_with_fixed_cells(shape):
    height, width, channels = shape
    x = np.random.default_rng(0).normal(size=(2, *shape)).astype(np.float32)
    stride = revisiting_stride(height, channels)
    expected, row_seq, col_seq = tf.nn.fractional_max_pool(x, [1, stride, stride, 1], seed=1)
    expected, row_seq, col_seq = expected.numpy(), row_seq.numpy(), col_seq.numpy()
    # Given TensorFlow's cells, the pooling is its output exactly.
    np.testing.assert_array_equal(max_pool_cells(x, row_seq, col_seq), expected)
    # Its own cells are of the sizes TensorFlow draws (floor and ceil of size / cells, as
    # many of each), spread evenly instead of shuffled per batch.
    pooled = np.asarray(revisiting_pool(jnp.asarray(x)))
    assert pooled.shape == expected.shape
    for seq, edges in ((row_seq, cell_edges(height, len(row_seq) - 1)),
                       (col_seq, cell_edges(width, len(col_seq) - 1))):  # fmt: skip
        assert sorted(np.diff(seq)) == sorted(np.diff(edges)) and edges[-1] == seq[-1]
    row_edges, col_edges = cell_edges(height, pooled.shape[1]), cell_edges(width, pooled.shape[2])
    for i, (top, bottom) in enumerate(zip(row_edges[:-1], row_edges[1:])):
        for j, (left, right) in enumerate(zip(col_edges[:-1], col_edges[1:])):
            cell = x[:, top:bottom, left:right].max(axis=(1, 2))
            np.testing.assert_array_equal(pooled[:, i, j], cell)


def test_probed_features_are_maps_pooled_and_flattened_vectors_and_the_encoders_output():
    rng = np.random.default_rng(0)
    maps = {"stage2": rng.normal(size=(2, 32, 32, 16)), "block3": rng.normal(size=(2, 8))}
    maps["pooled"] = rng.normal(size=(2, 5))
    maps = {k: jnp.asarray(v, jnp.float32) for k, v in maps.items()}
    encoder = SimpleNamespace(features=lambda images, train: dict(maps))
    layers = ("stage2", "block3", "pre_logits")
    features = pooled_layers(encoder, jnp.zeros((2, 64, 64, 3)), layers)
    # 32x32x16 = 16,384 values: Revisiting pools them to 24x24x16 = 9,216.
    assert features["stage2"].shape == (2, 9216)
    pooled = revisiting_pool(maps["stage2"])
    np.testing.assert_array_equal(features["stage2"], np.asarray(pooled).reshape((2, -1)))
    np.testing.assert_array_equal(features["block3"], maps["block3"])
    np.testing.assert_array_equal(features["pre_logits"], maps["pooled"])
