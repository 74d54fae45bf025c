"""Input pipeline: reproducible, resumable training streams; padded, masked eval passes."""

from pathlib import Path

import jax
import numpy as np
import pytest
import tensorflow as tf

from selfsup import parallel
from selfsup.config import ConfigError, load_config_file
from selfsup.data import pipeline
from selfsup.data.sources import DataError, open_source
from selfsup.pretext import get_task

ROOT = Path(__file__).resolve().parents[1]


def make_folder(root: Path, n: int, *, split: str = "train") -> str:
    """n 4x4 PNGs whose pixel value is their index, in 3 classes."""
    for i in range(n):
        path = root / split / f"c{i % 3}" / f"{i:03d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(tf.io.encode_png(np.full((4, 4, 3), i, np.uint8)).numpy())
    return f"folder:{root}"


def identify(image, seed):
    """Example id plus a random number drawn from the example's seed."""
    return {"id": tf.cast(image[0, 0, 0], tf.int32), "noise": tf.random.stateless_uniform([], seed)}


def to_float(image):
    return tf.cast(tf.reshape(image, [4, 4, 3]), tf.float32)


def take(ds, n):
    return [b for _, b in zip(range(n), ds.as_numpy_iterator())]


def test_train_stream_is_epochwise_permutation_and_reproducible(tmp_path):
    source = open_source(make_folder(tmp_path, 12))
    ds = pipeline.train_dataset(source, "train", identify, local_batch_size=4, seed=3)
    batches = take(ds, 9)  # Three epochs.
    ids = np.concatenate([b["id"] for b in batches])
    for epoch in range(3):
        assert sorted(ids[12 * epoch : 12 * (epoch + 1)]) == list(range(12))
    assert not np.array_equal(ids[:12], ids[12:24])  # Reshuffled every epoch.
    again = take(pipeline.train_dataset(source, "train", identify, local_batch_size=4, seed=3), 9)
    for a, b in zip(batches, again):
        np.testing.assert_array_equal(a["id"], b["id"])
        np.testing.assert_array_equal(a["noise"], b["noise"])
    other = take(pipeline.train_dataset(source, "train", identify, local_batch_size=4, seed=4), 3)
    assert not np.array_equal(np.concatenate([b["id"] for b in other]), ids[:12])


@pytest.mark.parametrize("start_step", [1, 3, 5])
def test_resumed_stream_continues_where_it_left_off(tmp_path, start_step):
    source = open_source(make_folder(tmp_path, 12))
    full = take(pipeline.train_dataset(source, "train", identify, local_batch_size=4, seed=0), 8)
    resumed = take(
        pipeline.train_dataset(
            source, "train", identify, local_batch_size=4, seed=0, start_step=start_step
        ),
        8 - start_step,
    )
    for a, b in zip(full[start_step:], resumed):
        np.testing.assert_array_equal(a["id"], b["id"])
        np.testing.assert_array_equal(a["noise"], b["noise"])  # Same augmentation seeds.


def test_too_few_images_for_a_batch(tmp_path):
    source = open_source(make_folder(tmp_path, 5))
    with pytest.raises(DataError, match="fewer than one batch"):
        pipeline.train_dataset(source, "train", identify, local_batch_size=8, seed=0)


@pytest.mark.parametrize("n, batch, processes", [(10, 4, 1), (10, 4, 3), (7, 8, 2), (12, 4, 2)])
def test_eval_pass_counts_every_example_once(tmp_path, n, batch, processes):
    source = open_source(make_folder(tmp_path, n, split="test"))
    seen, num_batches = [], set()
    for index in range(processes):
        ds = pipeline.eval_dataset(
            source,
            "test",
            to_float,
            local_batch_size=batch,
            process_index=index,
            process_count=processes,
        )
        batches = list(ds.as_numpy_iterator())
        num_batches.add(len(batches))
        assert all(len(b["mask"]) == batch for b in batches)
        for b in batches:
            seen += b["image"][b["mask"], 0, 0, 0].astype(int).tolist()
            assert not b["image"][~b["mask"]].any()  # Padding is zeros.
    assert len(num_batches) == 1  # Every process runs the same number of batches.
    assert sorted(seen) == list(range(n))


def test_global_batches_are_sharded_and_corrupt_images_reported(tmp_path):
    mesh = parallel.make_mesh()
    source = open_source(make_folder(tmp_path, 16))
    ds = pipeline.train_dataset(source, "train", identify, local_batch_size=8, seed=0)
    batch = next(pipeline.global_batches(ds, mesh, what="test data"))
    assert batch["id"].shape == (8,) and len(batch["id"].sharding.device_set) == jax.device_count()

    png = (tmp_path / "train" / "c0" / "000.png").read_bytes()
    (tmp_path / "train" / "c0" / "000.png").write_bytes(png[:30])  # Valid header, truncated.
    ds = pipeline.eval_dataset(
        open_source(f"folder:{tmp_path}"), "train", to_float, local_batch_size=8
    )
    with pytest.raises(DataError) as error:
        list(pipeline.global_batches(ds, mesh, what="my data"))
    message = str(error.value)
    assert message.startswith(f"{tmp_path / 'train' / 'c0' / '000.png'} in my data does not decode")
    assert "remove or replace it, or set --config.corrupt_images=skip" in message
    assert "\n" not in message


def corrupt(path: Path, kind: str) -> None:
    """Valid magic bytes, broken body: a truncated PNG or a JPEG header followed by garbage."""
    if kind == "png":
        path.write_bytes(path.read_bytes()[:40])
    else:
        path.with_suffix(".jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4)
        path.unlink()


def test_every_undecodable_image_is_named_in_training_streams_too(tmp_path):
    mesh = parallel.make_mesh()
    source_spec = make_folder(tmp_path, 16)
    corrupt(tmp_path / "train" / "c1" / "004.png", "png")
    corrupt(tmp_path / "train" / "c2" / "005.png", "jpg")
    source = open_source(source_spec)
    ds = pipeline.train_dataset(source, "train", identify, local_batch_size=8, seed=0)
    with pytest.raises(DataError, match=r"^2 images in data do not decode, e\.g\. .*004\.png \("):
        list(zip(range(4), pipeline.global_batches(ds, mesh, what="data")))
    bad = pipeline.undecodable_images(source, "train")
    assert [Path(b.origin).name for b in bad] == ["004.png", "005.jpg"]
    assert all(b.reason for b in bad)


def test_skip_drops_undecodable_images_and_keeps_streams_exact(tmp_path, capsys):
    make_folder(tmp_path, 14)
    corrupt(tmp_path / "train" / "c1" / "004.png", "png")
    corrupt(tmp_path / "train" / "c2" / "011.png", "jpg")
    source = open_source(f"folder:{tmp_path}")
    kept, dropped = pipeline.drop_undecodable_images(source, ["train", "train"], "skip")
    assert [Path(b.origin).name for b in dropped] == ["004.png", "011.jpg"]
    assert "Skipping 2 undecodable images of folder:" in capsys.readouterr().out
    assert kept.num_examples("train") == 12
    full = take(pipeline.train_dataset(kept, "train", identify, local_batch_size=4, seed=0), 6)
    ids = np.concatenate([b["id"] for b in full])
    for epoch in range(2):  # Every epoch is a permutation of the decodable images.
        assert sorted(ids[12 * epoch : 12 * (epoch + 1)]) == sorted(set(range(14)) - {4, 11})
    resumed = take(
        pipeline.train_dataset(kept, "train", identify, local_batch_size=4, seed=0, start_step=4),
        2,
    )
    for a, b in zip(full[4:], resumed):
        np.testing.assert_array_equal(a["id"], b["id"])
        np.testing.assert_array_equal(a["noise"], b["noise"])
    # Two processes: disjoint shards of the decodable images, which every process agrees on.
    shards = [
        [int(x["image"][0, 0, 0]) for x in kept.dataset("train", process_index=i, process_count=2)
         .map(lambda ex: {"image": pipeline.decode_image(ex["image"])}).as_numpy_iterator()]
        for i in range(2)
    ]  # fmt: skip
    assert sorted(shards[0] + shards[1]) == sorted(set(range(14)) - {4, 11})
    assert pipeline.drop_undecodable_images(source, ["train"], "error") == (source, [])
    with pytest.raises(ConfigError, match="corrupt_images='ignore'"):
        pipeline.drop_undecodable_images(source, ["train"], "ignore")


def test_files_that_are_no_images_stop_the_run_or_are_skipped(tmp_path, capsys):
    make_folder(tmp_path, 9)
    make_folder(tmp_path, 3, split="test")
    empty, webp = tmp_path / "train" / "c0" / "empty.jpg", tmp_path / "train" / "c1" / "webp.jpg"
    empty.write_bytes(b"")
    webp.write_bytes(
        bytes.fromhex("524946461a000000574542505650384c0e0000002f01400000071011fd0f4444ff03")
    )
    source = open_source(f"folder:{tmp_path}")
    with pytest.raises(DataError) as error:
        pipeline.drop_undecodable_images(source, ["train"], "error")
    assert str(error.value) == (
        f"2 files in folder:{tmp_path} are not usable images, e.g. {empty} (an empty file): "
        "remove or replace them, or set --config.corrupt_images=skip to leave such files out."
    )
    kept, dropped = pipeline.drop_undecodable_images(source, ["train"], "skip")
    assert [(b.origin, b.reason) for b in dropped] == [
        (str(empty), "an empty file"),
        (str(webp), "not JPEG/PNG/GIF/BMP data"),
    ]
    assert f"Skipping 2 undecodable images of folder:{tmp_path}: {empty}, {webp}." in (
        capsys.readouterr().out
    )
    ids = take(pipeline.train_dataset(kept, "train", identify, local_batch_size=3, seed=0), 3)
    assert sorted(np.concatenate([b["id"] for b in ids])) == list(range(9))
    assert kept.rejected == {}
    # A split that is not read does not stop the run.
    assert pipeline.drop_undecodable_images(source, ["test"], "error") == (source, [])


@pytest.mark.parametrize("task_config", ["simclr_cifar10.py", "relpatch_cifar10.py"])
def test_grayscale_rgba_palette_and_tiny_images_train(tmp_path, task_config):
    images = {
        "gray.png": tf.io.encode_png(np.full((20, 20, 1), 90, np.uint8)),
        "gray.jpg": tf.io.encode_jpeg(np.full((20, 20, 1), 90, np.uint8)),
        "rgba.png": tf.io.encode_png(np.full((20, 20, 4), 90, np.uint8)),
        "tiny.png": tf.io.encode_png(np.full((2, 3, 3), 90, np.uint8)),  # Smaller than any crop.
        "one.png": tf.io.encode_png(np.full((1, 1, 3), 90, np.uint8)),
        "wide.png": tf.io.encode_png(np.full((3, 40, 3), 90, np.uint8)),
    }
    for name, data in images.items():
        (tmp_path / "train" / "c0").mkdir(parents=True, exist_ok=True)
        (tmp_path / "train" / "c0" / name).write_bytes(data.numpy())
    config = load_config_file(ROOT / "configs" / task_config, "runlocal")
    if "image_size" in config:
        config.image_size = 16
    task = get_task(config)
    source = open_source(f"folder:{tmp_path}")
    ds = pipeline.train_dataset(source, "train", task.train_example, local_batch_size=6, seed=0)
    batch = next(ds.as_numpy_iterator())
    (key,) = set(batch) - {"label"}
    values = batch[key]
    assert values.shape[0] == 6 and values.dtype == np.float32 and np.isfinite(values).all()
    # Every image is flat grey 90/255 after decoding (alpha dropped, grey repeated over RGB), and
    # the colour ops keep grey flat: every view is flat (SimCLR), and per-patch standardisation
    # makes every patch zero (relative patch position).
    flat_axes = tuple(range(values.ndim - 3, values.ndim))
    spread = values.max(axis=flat_axes) - values.min(axis=flat_axes)
    assert spread.max() < 1e-5
    if key == "patches":
        assert np.abs(values).max() < 1e-5
