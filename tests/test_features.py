"""Frozen-feature extraction: sharded, padded, masked batches give exactly one feature row per
example, equal to running the encoder on all images at once."""

from pathlib import Path

import jax.numpy as jnp
import numpy as np
import tensorflow as tf
from flax import nnx

from selfsup import parallel
from selfsup.data import pipeline
from selfsup.data.sources import open_source
from selfsup.evaluate.features import extract_features
from selfsup.models.resnet import ResNet


def test_features_match_direct_forward_with_padding(tmp_path: Path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (13, 8, 8, 3), np.uint8)  # 13: not a multiple of 8 devices.
    for i, image in enumerate(images):
        path = tmp_path / "test" / f"c{i % 2}" / f"{i:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(tf.io.encode_png(image).numpy())
    source = open_source(f"folder:{tmp_path}")
    encoder = ResNet(18, stem="cifar", width=0.125, rngs=nnx.Rngs(0))

    def to_float(image):
        return tf.cast(tf.reshape(image, [8, 8, 3]), tf.float32) / 255

    ds = pipeline.eval_dataset(source, "test", to_float, local_batch_size=8)
    features, labels = extract_features(
        encoder, ds, parallel.make_mesh(), what="test images", total=13
    )

    assert features.shape == (13, encoder.feature_dim) and features.dtype == np.float32
    order = sorted(range(13), key=lambda i: (i % 2, i))  # The folder lists class by class.
    np.testing.assert_array_equal(labels, [i % 2 for i in order])
    direct = encoder(jnp.asarray(images[order], jnp.float32) / 255, train=False)
    np.testing.assert_allclose(features, np.asarray(direct), rtol=1e-5, atol=1e-6)
