"""Data specs: image folders (real CIFAR-10 sample and hand-made folders), TFDS under
mock_data, and the errors for bad input."""

import os
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


def webp_bytes() -> bytes:
    """A 2x2 lossless WebP: a format tf.io.decode_image reads, but not one of the folder
    source's formats."""
    return bytes.fromhex("524946461a000000574542505650384c0e0000002f01400000071011fd0f4444ff03")


def test_empty_split_and_files_that_are_no_images(tmp_path):
    (tmp_path / "empty" / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="has no images"):
        open_source(f"folder:{tmp_path / 'empty'}")
    root = tmp_path / "bad"
    write_images(root, ["train/cat/a.png", "train/cat/b.png", "test/cat/c.png"])
    cat = root / "train" / "cat"
    (cat / "notes.txt").write_text("not an image")
    (cat / "fake.jpg").write_text("text pretending to be a jpeg")
    (cat / "empty.jpg").write_bytes(b"")
    (cat / "webp.jpg").write_bytes(webp_bytes())
    (cat / "dangling.png").symlink_to(tmp_path / "gone.png")
    (cat / "loop1.png").symlink_to(cat / "loop2.png")
    (cat / "loop2.png").symlink_to(cat / "loop1.png")
    source = open_source(f"folder:{root}")
    # Left out of the split, listed with the reason, for `corrupt_images` to decide on.
    assert source.num_examples("train") == 2 and source.num_examples("test") == 1
    assert {Path(path).name: why for path, why in source.rejected["train"]} == {
        "notes.txt": "not named .jpg/.jpeg/.png/.gif/.bmp",
        "fake.jpg": "not JPEG/PNG/GIF/BMP data",
        "empty.jpg": "an empty file",
        "webp.jpg": "not JPEG/PNG/GIF/BMP data",
        "dangling.png": "a symbolic link to a missing file",
        "loop1.png": "Too many levels of symbolic links",
        "loop2.png": "Too many levels of symbolic links",
    }
    assert "test" not in source.rejected
    # A process whose shard is empty reads an empty dataset.
    assert len(list(source.dataset("train", process_index=3, process_count=4))) == 0


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads a file whatever its permissions")
def test_an_unreadable_file_is_rejected_with_the_reason(tmp_path):
    write_images(tmp_path, ["train/cat/a.png", "train/cat/b.png"])
    (tmp_path / "train" / "cat" / "b.png").chmod(0)
    source = open_source(f"folder:{tmp_path}")
    assert source.rejected["train"] == [
        (str(tmp_path / "train" / "cat" / "b.png"), "Permission denied")
    ]


def test_a_folder_spec_naming_a_file_says_so(tmp_path):
    (tmp_path / "images.zip").write_bytes(b"PK")
    with pytest.raises(DataError) as error:
        open_source(f"folder:{tmp_path / 'images.zip'}")
    assert str(error.value) == (
        f"folder:{tmp_path / 'images.zip'}: {tmp_path / 'images.zip'} is a file, not a folder: "
        f"point folder: at {tmp_path / 'images.zip'}/<split>/<class>/<image>."
    )


def test_an_unknown_tfds_name_is_one_line_with_close_matches(tmp_path):
    with pytest.raises(DataError) as error:
        open_source("tfds:cifar1O", data_dir=str(tmp_path))
    assert str(error.value).startswith(
        "TFDS has no dataset 'cifar1O' (close: cifar10, cifar100, cifar10_n): fix the name"
    )
    assert "\n" not in str(error.value)


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
