"""Host input pipelines: shuffled, augmented training batches and padded, masked eval batches.

Training streams are reproducible from (seed, step): each epoch is shuffled with a seed derived
from the epoch number and every example's augmentation seed from its position in the stream,
so a run resumed at step `s` sees exactly the batches an uninterrupted run sees from `s` on.
Evaluation pads every process to the same number of batches and carries a `mask`, so no
example is dropped or counted twice on any device count.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import jax
import numpy as np
import tensorflow as tf

from selfsup import parallel
from selfsup.data.sources import DataError, Source

# TF only feeds the host pipeline; accelerators belong to JAX.
tf.config.set_visible_devices([], "GPU")

ExampleFn = Callable[[tf.Tensor, tf.Tensor], dict[str, tf.Tensor]]


def decode_image(encoded: tf.Tensor) -> tf.Tensor:
    """Encoded JPEG/PNG/GIF/BMP bytes -> uint8 [H, W, 3] (grayscale and RGBA converted)."""
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def _local_size(ds: tf.data.Dataset) -> int:
    n = int(ds.cardinality())
    if n < 0:  # Unknown cardinality: count once (cheap, images are not decoded here).
        n = int(ds.reduce(np.int64(0), lambda c, _: c + 1))
    return n


def _seeded_examples(example_fn: ExampleFn, *, stream_seed: tuple[int, int]):
    """`(index, encoded example) -> example_fn(image, seed) + label`, the seed derived from the
    stream's seed and the example's index in the stream (so resumes and reruns repeat it)."""
    stream_seed = tf.constant(stream_seed, tf.int64)

    def make_example(index, ex):
        example_seed = tf.random.experimental.stateless_fold_in(stream_seed, index)
        return {**example_fn(decode_image(ex["image"]), example_seed), "label": ex["label"]}

    return make_example


def train_dataset(
    source: Source,
    split: str,
    example_fn: ExampleFn,
    *,
    local_batch_size: int,
    seed: int,
    start_step: int = 0,
    shuffle_buffer: int = 50_000,
    process_index: int = 0,
    process_count: int = 1,
) -> tf.data.Dataset:
    """Endless batches of `example_fn(image, seed)` plus each image's `label` (-1 if unlabeled,
    for the online probe), starting at `start_step`."""
    base = source.dataset(split, process_index=process_index, process_count=process_count)
    n = _local_size(base)
    if n < local_batch_size:
        raise DataError(
            f"{source.spec} split {split!r} has {n} images on this process, fewer than one batch "
            f"({local_batch_size}): lower --config.batch_size or add images."
        )
    start = start_step * local_batch_size
    first_epoch, offset = divmod(start, n)
    buffer = min(n, shuffle_buffer)

    def epoch(e):
        return base.shuffle(buffer, seed=seed * 100_003 + e, reshuffle_each_iteration=False)

    make_example = _seeded_examples(example_fn, stream_seed=(seed, process_index))
    ds = tf.data.Dataset.range(first_epoch, np.iinfo(np.int64).max).flat_map(epoch).skip(offset)
    ds = ds.enumerate(start).map(make_example, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(local_batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return ds.with_options(_deterministic_options())


def heldout_dataset(
    source: Source,
    split: str,
    example_fn: ExampleFn,
    *,
    local_batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
) -> tf.data.Dataset:
    """One pass of whole batches of `example_fn(image, seed)` over a held-out split, the same
    examples and augmentations every time (for pretext metrics on images never trained on).
    Every process yields the same number of batches; the remainder of the split is left out."""
    base = source.dataset(split, process_index=process_index, process_count=process_count)
    num_batches = source.num_examples(split) // process_count // local_batch_size
    if num_batches == 0:
        raise DataError(
            f"{source.spec} split {split!r} has {source.num_examples(split)} images, fewer than "
            f"one batch ({local_batch_size} per process) for held-out pretext metrics: point "
            "--config.eval_split at a larger split, or set --config.eval_every_steps=0."
        )
    make_example = _seeded_examples(example_fn, stream_seed=(seed, 1_000_003 + process_index))
    ds = base.take(num_batches * local_batch_size).enumerate()
    ds = ds.map(make_example, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(local_batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return ds.with_options(_deterministic_options())


def eval_dataset(
    source: Source,
    split: str,
    preprocess_fn: Callable[[tf.Tensor], tf.Tensor],
    *,
    local_batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
) -> tf.data.Dataset:
    """One pass over a split: `{"image", "label", "mask"}`, padded to whole, equal batch counts."""
    base = source.dataset(split, process_index=process_index, process_count=process_count)
    per_process = math.ceil(source.num_examples(split) / process_count)
    num_batches = math.ceil(per_process / local_batch_size)

    def preprocess(ex):
        image = preprocess_fn(decode_image(ex["image"]))
        return {"image": image, "label": ex["label"], "mask": tf.constant(True)}

    ds = base.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
    padding = tf.data.Dataset.from_tensors(
        tf.nest.map_structure(lambda s: tf.zeros(s.shape, s.dtype), ds.element_spec)
    ).repeat()
    ds = ds.concatenate(padding).take(num_batches * local_batch_size)
    ds = ds.batch(local_batch_size).prefetch(tf.data.AUTOTUNE)
    return ds.with_options(_deterministic_options())


def global_batches(
    ds: tf.data.Dataset, mesh: jax.sharding.Mesh, *, what: str
) -> Iterator[dict[str, jax.Array]]:
    """Host batches -> global arrays; a decode failure becomes a DataError naming `what`."""
    it = ds.as_numpy_iterator()
    while True:
        try:
            host_batch = next(it)
        except StopIteration:
            return
        except tf.errors.InvalidArgumentError as e:
            raise DataError(
                f"could not decode an image of {what} ({e.message.splitlines()[0][:200]}): "
                "find the corrupt file (e.g. open each with PIL) and remove or replace it."
            ) from None
        yield parallel.to_global(host_batch, mesh)


def _deterministic_options() -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    return options
