"""Tests for selfsup.data.builtin: offline preparation, splits, determinism, and that the
`shapes` labels are carried by shape, not by colour."""

import numpy as np
import pytest
import tensorflow_datasets as tfds
from conftest import prepare_builtin_offline
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from selfsup.data import builtin

# One xdist worker for the module (and the demo's test), so the session prepares the dataset
# (~10 CPU-s) once.
pytestmark = pytest.mark.xdist_group("builtin")


def _read(builder: tfds.core.DatasetBuilder, split: str) -> dict[str, np.ndarray]:
    """A whole split as arrays: encoded PNG bytes, decoded images and labels, in stored order."""
    encoded = builder.as_dataset(
        split=split, batch_size=-1, decoders={"image": tfds.decode.SkipDecoding()}
    )
    data = tfds.as_numpy(encoded)
    data["png"] = data.pop("image")
    data["image"] = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))["image"]
    return data


@pytest.fixture(scope="session")
def prepared(builtin_data_dir) -> tuple[tfds.core.DatasetBuilder, dict]:
    builder = builtin.load_builtin("shapes", data_dir=str(builtin_data_dir))
    return builder, {split: _read(builder, split) for split in builtin.SPLIT_SIZES}


def _fit_and_score(features_train, y_train, features_test, y_test) -> float:
    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000))
    return probe.fit(features_train, y_train).score(features_test, y_test)


def _mean_colour(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1, 3).mean(axis=1)


def _edge_orientation_spectrum(images: np.ndarray, bins: int = 36) -> np.ndarray:
    """A crude, colour-free shape statistic: the Fourier magnitudes of the histogram of edge
    orientations (weighted by edge strength). Magnitudes ignore rotation; a square's edges
    show up at harmonic 4, a triangle's at 3, a disc's nowhere."""
    gray = images.astype(np.float32).mean(axis=-1)
    gx, gy = np.diff(gray, axis=2)[:, :-1], np.diff(gray, axis=1)[:, :, :-1]
    magnitude = np.hypot(gx, gy).reshape(len(images), -1)
    bin_index = ((np.arctan2(gy, gx) + np.pi) / (2 * np.pi) * bins).astype(int) % bins
    offsets = bins * np.arange(len(images))[:, None]
    histogram = np.bincount(
        (bin_index.reshape(len(images), -1) + offsets).ravel(),
        weights=magnitude.ravel(),
        minlength=bins * len(images),
    ).reshape(len(images), bins)
    histogram /= histogram.sum(axis=1, keepdims=True)
    return np.abs(np.fft.rfft(histogram, axis=1))[:, 1:10]


def test_prepares_offline_with_the_declared_splits_and_features(prepared):
    builder, data = prepared
    assert builder.info.name == "shapes"
    assert str(builder.info.version) == "1.0.0"
    assert {name: s.num_examples for name, s in builder.info.splits.items()} == {
        "train": 10_000,
        "test": 2_000,
    }
    assert builder.info.features["label"].names == list(builtin.CLASS_NAMES)
    assert len(set(builtin.CLASS_NAMES)) == 10
    for split, size in builtin.SPLIT_SIZES.items():
        assert data[split]["image"].shape == (size, 32, 32, 3)
        assert data[split]["image"].dtype == np.uint8
        assert all(png.startswith(b"\x89PNG\r\n\x1a\n") for png in data[split]["png"])


def test_splits_are_class_balanced(prepared):
    _, data = prepared
    for split, size in builtin.SPLIT_SIZES.items():
        counts = np.bincount(data[split]["label"], minlength=10)
        np.testing.assert_array_equal(counts, np.full(10, size // 10))


@pytest.mark.slow  # A second full preparation of the dataset.
def test_preparing_twice_gives_identical_bytes(prepared, tmp_path_factory):
    _, first = prepared
    second_builder = prepare_builtin_offline(tmp_path_factory.mktemp("shapes_b"))
    for split in builtin.SPLIT_SIZES:
        second = tfds.as_numpy(
            second_builder.as_dataset(
                split=split, batch_size=-1, decoders={"image": tfds.decode.SkipDecoding()}
            )
        )
        np.testing.assert_array_equal(second["image"], first[split]["png"])
        np.testing.assert_array_equal(second["label"], first[split]["label"])


def test_stored_images_are_the_generated_ones_and_splits_do_not_overlap(prepared):
    _, data = prepared
    generated, labels = builtin.generate_examples("test", 0, builtin.SPLIT_SIZES["test"])
    stored = sorted(zip(map(bytes, data["test"]["image"]), data["test"]["label"]))
    assert stored == sorted(zip(map(bytes, generated), labels))  # PNG round trip is lossless.
    train_images = set(map(bytes, data["train"]["image"]))
    assert len(train_images) == builtin.SPLIT_SIZES["train"]
    assert not train_images & set(map(bytes, generated))


def _edge_strength(images: np.ndarray) -> np.ndarray:
    gray = images.astype(np.float32).mean(axis=-1)
    return np.hypot(np.diff(gray, axis=2)[:, :-1], np.diff(gray, axis=1)[:, :, :-1])


def test_colour_and_position_vary_within_every_class(prepared):
    _, data = prepared
    images, labels = data["train"]["image"], data["train"]["label"]
    colours = _mean_colour(images.astype(np.float32))
    class_mean_colours = np.stack([colours[labels == c].mean(axis=0) for c in range(10)])
    # Foreground and background colours are both centred on mid-grey, whatever the shape.
    np.testing.assert_allclose(class_mean_colours, 127.5, atol=6)
    edges = _edge_strength(images)
    single_image_contrast = np.mean(edges.std(axis=(1, 2)) / edges.mean(axis=(1, 2)))
    for c in range(10):
        assert colours[labels == c].std(axis=0).min() > 20
        # Shapes at a fixed place and size would keep their outline in the class-average edge
        # map (measured: contrast 0.8-1.3, like a single image); random placement blurs it flat.
        class_average = edges[labels == c].mean(axis=0)
        assert class_average.std() / class_average.mean() < 0.5 < single_image_contrast


def test_colour_predicts_nothing_but_a_crude_shape_statistic_does(prepared):
    _, data = prepared
    train, test = data["train"], data["test"]
    colour_accuracy = _fit_and_score(
        _mean_colour(train["image"]), train["label"], _mean_colour(test["image"]), test["label"]
    )
    shape_accuracy = _fit_and_score(
        _edge_orientation_spectrum(train["image"]),
        train["label"],
        _edge_orientation_spectrum(test["image"]),
        test["label"],
    )
    assert colour_accuracy < 0.15  # Chance is 0.10.
    assert shape_accuracy > 0.22
    assert shape_accuracy > colour_accuracy + 0.1


def test_unknown_name_raises_and_names_the_builtin_datasets(tmp_path):
    with pytest.raises(ValueError, match="unknown builtin dataset 'mnist'.*'shapes'"):
        builtin.load_builtin("mnist", data_dir=str(tmp_path))
    assert not any(tmp_path.iterdir())


def test_generate_examples_rejects_an_unknown_split():
    with pytest.raises(ValueError, match="no split 'validation'.*'train', 'test'"):
        builtin.generate_examples("validation", 0, 1)
