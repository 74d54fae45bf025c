"""Data sources behind the three data specs: `tfds:NAME`, `folder:PATH` and `builtin:NAME`.

A source yields, per split and per process, a deterministic `tf.data.Dataset` of
`{"image": encoded image bytes, "label": int64, "origin": string}`, `origin` naming where the
example came from (its file for folders, its TFDS record id `<file>__<index>` otherwise) so
that an unreadable image can be named. Decoding is left to the pipeline so that skipping
examples on resume costs no decode. Each process reads its own disjoint shard
(`tfds.even_splits` for TFDS, a strided slice of the sorted file list for folders).
"""

from __future__ import annotations

import dataclasses
import socket
from collections.abc import Callable
from pathlib import Path

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from selfsup.data import builtin

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp")
# Leading bytes of the formats tf.io.decode_image reads.
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM")
TFDS_MIRROR = "storage.googleapis.com"  # Where TFDS fetches prepared datasets first.
SPEC_HELP = "use tfds:NAME, folder:/path/to/root (root/<split>/<class>/<image>) or builtin:shapes"


class DataError(ValueError):
    """Data that cannot be read; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Source:
    """Where examples come from; `dataset()` gives one process's shard of a split."""

    spec: str
    num_classes: int
    split_sizes: dict[str, int]
    _reader: Callable[[str, int, int], tf.data.Dataset] = dataclasses.field(
        repr=False, compare=False
    )

    def num_examples(self, split: str) -> int:
        if split not in self.split_sizes:
            raise DataError(
                f"{self.spec} has no split {split!r}; its splits are {sorted(self.split_sizes)}: "
                "set --config.train_split / --config.eval_split to one of them."
            )
        return self.split_sizes[split]

    def dataset(self, split: str, *, process_index: int, process_count: int) -> tf.data.Dataset:
        self.num_examples(split)
        return self._reader(split, process_index, process_count)


def open_source(spec: str, *, data_dir: str | None = None) -> Source:
    """Opens a data spec, preparing TFDS/builtin datasets into `data_dir` if needed."""
    kind, _, arg = spec.partition(":")
    if not arg or kind not in ("tfds", "folder", "builtin"):
        raise DataError(f"unknown data spec {spec!r}: {SPEC_HELP}.")
    if kind == "folder":
        return _folder_source(spec, Path(arg))
    if kind == "builtin":
        return _tfds_source(spec, builtin.load_builtin(arg, data_dir=data_dir))
    try:
        builder = tfds.builder(arg, data_dir=data_dir or None)
        if not builder.is_prepared():
            check_network()
            builder.download_and_prepare()
    except Exception as e:
        raise DataError(
            f"TFDS could not find, fetch or prepare {arg!r} ({type(e).__name__}: "
            f"{str(e)[:200]}). Offline, prepare it on a connected machine into "
            "--config.data_dir, or use folder:/path/to/images or builtin:shapes."
        ) from e
    return _tfds_source(spec, builder)


def check_network() -> None:
    """Raises OSError when offline: TFDS would retry its downloads for minutes before failing."""
    socket.getaddrinfo(TFDS_MIRROR, 443)


def _tfds_source(spec: str, builder: tfds.core.DatasetBuilder) -> Source:
    info = builder.info
    label = info.features["label"]

    def read(split, process_index, process_count):
        ds = builder.as_dataset(
            split=tfds.even_splits(split, process_count)[process_index],
            shuffle_files=False,
            decoders={"image": tfds.decode.SkipDecoding()},
            read_config=tfds.ReadConfig(add_tfds_id=True),
        )
        return ds.map(_encoded_example)

    sizes = {name: split.num_examples for name, split in info.splits.items()}
    if not sizes:  # No split metadata (e.g. under tfds.testing.mock_data): count the data.
        sizes = {name: int(read(name, 0, 1).cardinality()) for name in ("train", "test")}
    return Source(spec, label.num_classes, sizes, read)


def _encoded_example(ex: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    return {"image": ex["image"], "label": tf.cast(ex["label"], tf.int64), "origin": ex["tfds_id"]}


def _read_file_example(path: tf.Tensor, label: tf.Tensor) -> dict[str, tf.Tensor]:
    return {"image": tf.io.read_file(path), "label": tf.cast(label, tf.int64), "origin": path}


def _folder_source(spec: str, root: Path) -> Source:
    if not root.is_dir():
        raise DataError(f"{spec}: folder {root} does not exist; point folder: at an image root.")
    splits = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not splits:
        raise DataError(
            f"{spec}: no split folders in {root}; expected {root}/<split>/<class>/<image>."
        )
    class_names = sorted({c.name for s in splits for c in (root / s).iterdir() if c.is_dir()})
    class_index = {name: i for i, name in enumerate(class_names)}
    files = {split: _list_images(spec, root / split, class_index) for split in splits}

    def read(split, process_index, process_count):
        paths, labels = zip(*files[split][process_index::process_count])
        ds = tf.data.Dataset.from_tensor_slices((list(paths), list(labels)))
        return ds.map(_read_file_example)

    sizes = {split: len(f) for split, f in files.items()}
    return Source(spec, len(class_names), sizes, read)


def _list_images(spec: str, split_dir: Path, class_index: dict[str, int]) -> list[tuple[str, int]]:
    """Sorted (path, label) pairs; label -1 for unlabeled images directly in the split folder."""
    found = []
    for entry in sorted(split_dir.iterdir()):
        if entry.is_dir():
            found += [(p, class_index[entry.name]) for p in sorted(entry.iterdir())]
        else:
            found.append((entry, -1))
    for path, _ in found:
        if path.suffix.lower() not in IMAGE_EXTENSIONS or not _looks_like_image(path):
            raise DataError(
                f"{spec}: {path} is not a JPEG/PNG/GIF/BMP image; remove or convert it."
            )
    if not found:
        raise DataError(f"{spec}: split folder {split_dir} has no images; add images or drop it.")
    return [(str(path), label) for path, label in found]


def _looks_like_image(path: Path) -> bool:
    with open(path, "rb") as f:
        head = f.read(8)
    return any(head.startswith(m) for m in _MAGIC)


def select_examples(
    source: Source, selection: dict[str, tuple[str, np.ndarray]], *, spec: str
) -> Source:
    """A source in which split `name` holds the examples `indices` (positions in the whole
    split, sorted) of `split`, for each `name: (split, indices)` of `selection`; other splits
    are `source`'s.

    Every process reads the whole split to keep the positions those of one process reading it
    all, then takes its strided share of the kept examples.
    """
    masks = {}
    for name, (split, indices) in selection.items():
        keep = np.zeros(source.num_examples(split), bool)
        keep[indices] = True
        masks[name] = (split, tf.constant(keep))

    def read(name, process_index, process_count):
        if name not in masks:
            return source.dataset(name, process_index=process_index, process_count=process_count)
        split, keep = masks[name]
        ds = source.dataset(split, process_index=0, process_count=1).enumerate()
        ds = ds.filter(lambda i, _: tf.gather(keep, i)).map(lambda _, ex: ex)
        return ds.shard(process_count, process_index)

    sizes = {**source.split_sizes, **{name: len(ix) for name, (_, ix) in selection.items()}}
    return Source(spec, source.num_classes, sizes, read)
