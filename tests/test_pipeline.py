"""Input pipeline: reproducible, resumable training streams; padded, masked eval passes."""

from pathlib import Path

import jax
import numpy as np
import pytest
import tensorflow as tf

from selfsup import parallel
from selfsup.data import pipeline
from selfsup.data.sources import DataError, open_source


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
    with pytest.raises(DataError, match="could not decode an image of my data"):
        list(pipeline.global_batches(ds, mesh, what="my data"))
