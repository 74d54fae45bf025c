"""Frozen-feature extraction: sharded, padded, masked batches give exactly one feature row per
example, equal to running the encoder on all images at once, at every depth from one pass."""

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
from flax import nnx

from selfsup import parallel
from selfsup.config import ConfigError
from selfsup.data import pipeline
from selfsup.data.sources import open_source
from selfsup.evaluate.features import (
    LAYERS,
    MAX_IN_FLIGHT,
    extract_features,
    resolve_layers,
)
from selfsup.models.resnet import ResNet


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
    """The encoder run by hand up to the end of `stage`, averaged over positions."""
    x = nnx.relu(encoder.stem(x, train=False))
    for name in LAYERS[: LAYERS.index(stage) + 1]:
        for block in getattr(encoder, name):
            x = block(x, train=False)
    return np.asarray(x.mean(axis=(1, 2)))


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
    layers = resolve_layers(("all_stages",))
    features, _ = extract_features(
        encoder, ds, parallel.make_mesh(), what="test", total=13, layers=layers
    )
    assert len(passes) == 1 and list(features) == list(LAYERS)
    x = jnp.asarray(images[order], jnp.float32) / 255
    for stage, width in zip(LAYERS, (16, 32, 64, 128)):
        assert features[stage].shape == (13, width)
        direct = forward_to(encoder, x, stage)
        np.testing.assert_allclose(features[stage], direct, rtol=1e-5, atol=1e-6)
    # The deepest stage, pooled, is the encoder's output: the pre-logits.
    np.testing.assert_allclose(features["stage4"], encoder(x, train=False), rtol=1e-5, atol=1e-6)


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
    assert len(live) == 12 and features["stage4"].shape == (96, 64) and len(labels) == 96
    # Once MAX_IN_FLIGHT batches are out, each new one replaces one gathered to the host.
    steady = live[MAX_IN_FLIGHT + 1 :]
    assert max(steady) == min(steady), live


def test_layers_are_stage_names_or_all_stages():
    assert resolve_layers(("stage3", "stage1")) == ("stage1", "stage3")
    assert resolve_layers(("all_stages",)) == LAYERS
    for bad in ((), ("stage5",), ("pooled",)):
        with pytest.raises(ConfigError, match=r"config.layers=.*use depths from \['stage1'"):
            resolve_layers(bad)
