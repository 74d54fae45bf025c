"""Data specs: image folders (real CIFAR-10 sample and hand-made folders), TFDS under
mock_data, and the errors for bad input."""

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from selfsup.data import sources
from selfsup.data.sources import DataError, open_source

CIFAR_SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "cifar10-sample"
needs_cifar_sample = pytest.mark.skipif(
    not CIFAR_SAMPLE.is_dir(), reason="the CIFAR-10 sample folder (../shared/data) is absent"
)


def write_images(folder: Path, names: list[str], size: int = 8) -> None:
    rng = np.random.default_rng(0)
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
        path.write_bytes(tf.io.encode_png(image).numpy())


def labels_of(source, split, **kwargs):
    ds = source.dataset(split, process_index=0, process_count=1, **kwargs)
    return [int(ex["label"]) for ex in ds]


@needs_cifar_sample
def test_folder_source_on_cifar10_sample():
    source = open_source(f"folder:{CIFAR_SAMPLE}")
    assert source.num_classes == 10
    assert source.split_sizes == {"train": 5000, "val": 1000}
    labels = labels_of(source, "val")
    assert np.bincount(labels).tolist() == [100] * 10
    first = next(iter(source.dataset("val", process_index=0, process_count=1)))
    image = tf.io.decode_image(first["image"], channels=3)
    assert image.shape == (32, 32, 3)


def test_folder_classes_and_unlabeled_images(tmp_path):
    write_images(
        tmp_path,
        [
            "train/cat/a.png",
            "train/dog/b.png",
            "train/dog/c.png",
            "test/dog/d.png",
            "unlabeled/x.png",
        ],
    )
    source = open_source(f"folder:{tmp_path}")
    assert source.num_classes == 2
    assert labels_of(source, "train") == [0, 1, 1]
    assert labels_of(source, "test") == [1]  # Class ids are shared across splits.
    assert labels_of(source, "unlabeled") == [-1]


def test_folder_process_shards_are_disjoint_and_complete(tmp_path):
    write_images(tmp_path, [f"train/c{i % 3}/{i:02d}.png" for i in range(11)])
    source = open_source(f"folder:{tmp_path}")

    def images(index):
        ds = source.dataset("train", process_index=index, process_count=2)
        return [bytes(ex["image"].numpy()) for ex in ds]

    a, b = images(0), images(1)
    assert (len(a), len(b)) == (6, 5)
    assert not set(a) & set(b)
    assert len(set(a) | set(b)) == 11


@pytest.mark.parametrize(
    "spec, message",
    [
        ("cifar10", "unknown data spec"),
        ("s3:bucket", "unknown data spec"),
        ("folder:/nonexistent/images", "does not exist"),
        ("builtin:nope", "shapes"),
    ],
)
def test_bad_specs_name_the_problem(spec, message, tmp_path):
    with pytest.raises((DataError, ValueError), match=message):
        open_source(spec, data_dir=str(tmp_path))


def test_empty_split_and_non_image_files(tmp_path):
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="has no images"):
        open_source(f"folder:{tmp_path / 'empty'}")
    write_images(tmp_path / "bad", ["train/cat/a.png"])
    (tmp_path / "bad" / "train" / "cat" / "notes.txt").write_text("not an image")
    with pytest.raises(DataError, match="notes.txt is not a JPEG/PNG"):
        open_source(f"folder:{tmp_path / 'bad'}")
    (tmp_path / "bad" / "train" / "cat" / "notes.txt").unlink()
    (tmp_path / "bad" / "train" / "cat" / "fake.jpg").write_text("text pretending to be a jpeg")
    with pytest.raises(DataError, match="fake.jpg is not a JPEG/PNG"):
        open_source(f"folder:{tmp_path / 'bad'}")


def test_unknown_split_lists_the_available_ones(tmp_path):
    write_images(tmp_path, ["train/cat/a.png"])
    source = open_source(f"folder:{tmp_path}")
    with pytest.raises(DataError, match=r"no split 'test'.*\['train'\]"):
        source.num_examples("test")


def test_tfds_offline_fails_fast_naming_alternatives(tmp_path):
    with pytest.raises(DataError, match="folder:.*builtin:"):
        open_source("tfds:cifar10", data_dir=str(tmp_path))


def test_tfds_source_under_mock_data(monkeypatch):
    monkeypatch.setattr(sources, "check_network", lambda: None)
    with tfds.testing.mock_data(num_examples=12):
        source = open_source("tfds:cifar10")
        assert source.num_classes == 10
        assert source.num_examples("train") == 12
        examples = list(source.dataset("train", process_index=0, process_count=1))
    assert len(examples) == 12
    image = tf.io.decode_image(examples[0]["image"], channels=3)
    assert image.shape == (32, 32, 3) and examples[0]["label"].dtype == tf.int64


def test_tfds_process_shards_are_disjoint_complete_and_even(tmp_path):
    # A real prepared TFDS dataset: tfds.testing.mock_data ignores tfds.even_splits (every
    # shard would yield every example), so it cannot test the per-process split.
    images = np.arange(11, dtype=np.uint8)[:, None, None, None] * np.ones((1, 4, 4, 3), np.uint8)
    builder = tfds.dataset_builders.TfDataBuilder(
        name="tiny",
        version="1.0.0",
        split_datasets={
            "train": tf.data.Dataset.from_tensor_slices(
                {"image": images, "label": np.arange(11) % 3}
            )
        },
        features=tfds.features.FeaturesDict(
            {
                "image": tfds.features.Image(shape=(4, 4, 3)),
                "label": tfds.features.ClassLabel(num_classes=3),
            }
        ),
        data_dir=str(tmp_path),
    )
    builder.download_and_prepare()
    source = sources._tfds_source("tfds:tiny", builder)
    assert source.num_examples("train") == 11
    for count in (2, 3):
        shards = [
            [
                int(tf.io.decode_png(ex["image"])[0, 0, 0])
                for ex in source.dataset("train", process_index=i, process_count=count)
            ]
            for i in range(count)
        ]
        ids = [i for shard in shards for i in shard]
        assert sorted(ids) == list(range(11))  # Disjoint and complete.
        # Sizes differ by at most one: eval_dataset pads every process to ceil(11 / count).
        assert max(map(len, shards)) - min(map(len, shards)) <= 1
