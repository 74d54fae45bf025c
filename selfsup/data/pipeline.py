"""Host input pipelines: shuffled, augmented training batches and padded, masked eval batches.

Training streams are reproducible from (seed, step): each epoch is shuffled with a seed derived
from the epoch number and every example's augmentation seed from its position in the stream,
so a run resumed at step `s` sees exactly the batches an uninterrupted run sees from `s` on.
Evaluation pads every process to the same number of batches and carries a `mask`, so no
example is dropped or counted twice on any device count.

An image that does not decode stops the run with a DataError naming its file, or, with
`config.corrupt_images="skip"`, is left out of its split before any stream is built (one
decoding pass over the split at start), so streams stay exactly resumable. Files the source
rejected when listing them (`Source.rejected`) are judged the same way, before any work.
"""

from __future__ import annotations

import dataclasses
import math
import re
import weakref
from collections.abc import Callable, Iterator, Sequence

import jax
import numpy as np
import tensorflow as tf

from selfsup import parallel
from selfsup.config import CORRUPT_IMAGE_MODES, ConfigError
from selfsup.data.sources import DataError, Source, select_examples

# TF only feeds the host pipeline; accelerators belong to JAX.
tf.config.set_visible_devices([], "GPU")

ExampleFn = Callable[[tf.Tensor, tf.Tensor], dict[str, tf.Tensor]]
# The shard each dataset built here reads, so that `global_batches` can name the file behind a
# decode failure (TF's error names only the op) without every caller passing its source along.
_SHARD_OF: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclasses.dataclass(frozen=True)
class Undecodable:
    """An example whose image does not decode: its position in the (shard of the) split (None
    for a file the source rejected when listing it), its origin (file or TFDS record id) and
    the reason."""

    position: int | None
    origin: str
    reason: str


def decode_image(encoded: tf.Tensor) -> tf.Tensor:
    """Encoded JPEG/PNG/GIF/BMP bytes -> uint8 [H, W, 3] (grayscale and RGBA converted)."""
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def undecodable_images(
    source: Source, split: str, *, process_index: int = 0, process_count: int = 1
) -> list[Undecodable]:
    """Every example of one process's shard of `split` whose image fails to decode, in order
    (one parallel decoding pass; the failures are then decoded once more for their reason)."""
    ds = source.dataset(split, process_index=process_index, process_count=process_count)
    ds = ds.enumerate()
    decodable = ds.map(
        lambda i, ex: (i, tf.size(decode_image(ex["image"]))),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    ).ignore_errors()
    good = np.fromiter((i for i, _ in decodable.as_numpy_iterator()), np.int64)
    bad = np.setdiff1d(np.arange(_local_size(ds)), good)
    if not bad.size:
        return []
    found = []
    for i, ex in ds.filter(lambda i, _: tf.reduce_any(i == bad)).as_numpy_iterator():
        try:
            decode_image(ex["image"])
            reason = "fails only inside tf.data"
        except tf.errors.OpError as e:
            reason = _short_reason(e)
        found.append(Undecodable(int(i), ex["origin"].decode(), reason))
    return found


def drop_undecodable_images(
    source: Source, splits: Sequence[str], mode: str
) -> tuple[Source, list[Undecodable]]:
    """`config.corrupt_images`: "error" returns `source` as it is (an image that does not decode
    is reported when it is met; a file the source rejected, at once); "skip" returns `source`
    without the examples of `splits` whose image does not decode and without its rejected
    files, and all of those. Every process scans whole splits, so all agree on them."""
    if mode not in CORRUPT_IMAGE_MODES:
        raise ConfigError(
            f"unknown config.corrupt_images={mode!r}: use one of {CORRUPT_IMAGE_MODES}."
        )
    splits = list(dict.fromkeys(splits))
    rejected = [Undecodable(None, f, why) for s in splits for f, why in source.rejected.get(s, [])]
    if mode == "error":
        if rejected:
            raise _rejected_error(rejected, source.spec)
        return source, []
    selection, dropped = {}, rejected
    for split in splits:
        bad = undecodable_images(source, split)
        positions = [b.position for b in bad]
        selection[split] = (split, np.setdiff1d(np.arange(source.num_examples(split)), positions))
        dropped += bad
    if dropped:
        shown = ", ".join(b.origin for b in dropped[:3]) + (", ..." if len(dropped) > 3 else "")
        print(f"Skipping {len(dropped)} undecodable images of {source.spec}: {shown}.")
    return select_examples(source, selection, spec=source.spec), dropped


def _rejected_error(rejected: list[Undecodable], spec: str) -> DataError:
    skip = "or set --config.corrupt_images=skip to leave such files out."
    first = rejected[0]
    if len(rejected) == 1:
        return DataError(
            f"{first.origin} in {spec} is not a usable image ({first.reason}): remove or "
            "replace it, " + skip
        )
    return DataError(
        f"{len(rejected)} files in {spec} are not usable images, e.g. {first.origin} "
        f"({first.reason}): remove or replace them, " + skip
    )


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
    return _reads(ds, source, split, process_index, process_count)


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
    return _reads(ds, source, split, process_index, process_count)


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
    return _reads(ds, source, split, process_index, process_count)


def preview_dataset(
    source: Source, split: str, example_fn: ExampleFn, *, num_examples: int, seed: int
) -> tf.data.Dataset:
    """The first `num_examples` of `split` in source order, unbatched, as `example_fn(image,
    seed)` plus the decoded `image` and its `label`; seeds derived from `seed` and the position
    as the training stream derives them (for looking at what the network is fed)."""
    base = source.dataset(split, process_index=0, process_count=1).take(num_examples)
    make_example = _seeded_examples(example_fn, stream_seed=(seed, 0))

    def with_image(index, ex):
        return {**make_example(index, ex), "image": decode_image(ex["image"])}

    return _reads(base.enumerate().map(with_image), source, split, 0, 1)


def host_batches(ds: tf.data.Dataset, *, what: str) -> Iterator[dict[str, np.ndarray]]:
    """`ds` as numpy; a decode failure becomes a DataError naming the file."""
    it = ds.as_numpy_iterator()
    while True:
        try:
            yield next(it)
        except StopIteration:
            return
        except tf.errors.InvalidArgumentError as e:
            raise undecodable_error(ds, what, e) from None


def global_batches(
    ds: tf.data.Dataset, mesh: jax.sharding.Mesh, *, what: str
) -> Iterator[dict[str, jax.Array]]:
    """Host batches -> global arrays; a decode failure becomes a DataError naming the file."""
    for host_batch in host_batches(ds, what=what):
        yield parallel.to_global(host_batch, mesh)


def undecodable_error(ds: tf.data.Dataset, what: str, error: tf.errors.OpError) -> DataError:
    """A one-line DataError for a decode failure in `ds`, naming the undecodable files of the
    shard it reads (found by scanning that shard once more) and the fixes."""
    if ds in _SHARD_OF:
        source, split, process_index, process_count = _SHARD_OF[ds]
        bad = undecodable_images(
            source, split, process_index=process_index, process_count=process_count
        )
    else:
        bad = []
    skip = "or set --config.corrupt_images=skip to leave undecodable images out."
    if not bad:
        reason = _short_reason(error)
        return DataError(f"could not decode an image of {what} ({reason}): remove it, {skip}")
    first = bad[0]
    if len(bad) == 1:
        return DataError(
            f"{first.origin} in {what} does not decode ({first.reason}): remove or replace it, "
            + skip
        )
    return DataError(
        f"{len(bad)} images in {what} do not decode, e.g. {first.origin} ({first.reason}): "
        "remove or replace them, " + skip
    )


def _short_reason(error: tf.errors.OpError) -> str:
    """TF's message without the op and device decorations eager errors carry."""
    message = re.sub(r"^\{\{function_node [^}]*\}\}\s*", "", error.message.splitlines()[0])
    return re.sub(r"\s*\[Op:\w+\]$", "", message)[:200]


def _reads(
    ds: tf.data.Dataset, source: Source, split: str, process_index: int, process_count: int
) -> tf.data.Dataset:
    """`ds` made deterministic, remembered as reading that shard of `split`."""
    ds = ds.with_options(_deterministic_options())
    _SHARD_OF[ds] = (source, split, process_index, process_count)
    return ds


def _deterministic_options() -> tf.data.Options:
    options = tf.data.Options()
    options.deterministic = True
    return options
