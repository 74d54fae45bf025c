"""Data sources behind the three data specs: `tfds:NAME`, `folder:PATH` and `builtin:NAME`.

A source yields, per split and per process, a deterministic `tf.data.Dataset` of
`{"image": encoded image bytes, "label": int64, "origin": string}`, `origin` naming where the
example came from (its file for folders, its TFDS record id `<file>__<index>` otherwise) so
that an unreadable image can be named. Decoding is left to the pipeline so that skipping
examples on resume costs no decode. Each process reads its own disjoint shard
(`tfds.even_splits` for TFDS, a strided slice of the sorted file list for folders).

A folder's files that cannot be images (wrong name or leading bytes, empty, unreadable, a
broken symbolic link) are listed apart as the source's `rejected` files, for
`config.corrupt_images` to decide on like images that do not decode.
"""

from __future__ import annotations

import dataclasses
import difflib
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
    # Per split, the (file, why) of files found but left out of it as no usable image.
    rejected: dict[str, list[tuple[str, str]]] = dataclasses.field(default_factory=dict)

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
    except tfds.core.DatasetNotFoundError:
        names = tfds.list_builders(with_community_datasets=False)
        close = difflib.get_close_matches(arg.partition("/")[0].partition(":")[0], names, n=3)
        hint = f" (close: {', '.join(close)})" if close else ""
        raise DataError(
            f"TFDS has no dataset {arg!r}{hint}: fix the name after tfds:, or {SPEC_HELP}."
        ) from None
    except Exception as e:
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
        raise DataError(
            f"TFDS could not find, fetch or prepare {arg!r} ({type(e).__name__}: "
            f"{reason}). Offline, prepare it on a connected machine into "
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
    layout = f"{root}/<split>/<class>/<image>"
    if root.exists() and not root.is_dir():
        raise DataError(f"{spec}: {root} is a file, not a folder: point folder: at {layout}.")
    if not root.is_dir():
        raise DataError(f"{spec}: folder {root} does not exist; point folder: at an image root.")
    splits = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not splits:
        raise DataError(
            f"{spec}: no split folders in {root}; expected {root}/<split>/<class>/<image>."
        )
    class_names = sorted({c.name for s in splits for c in (root / s).iterdir() if c.is_dir()})
    class_index = {name: i for i, name in enumerate(class_names)}
    files, rejected = {}, {}
    for split in splits:
        found = _list_files(root / split, class_index)
        if not found:
            raise DataError(
                f"{spec}: split folder {root / split} has no images; add some or drop it."
            )
        problems = {path: _image_problem(path) for path, _ in found}
        files[split] = [(str(path), label) for path, label in found if not problems[path]]
        rejected[split] = [(str(path), why) for path, why in problems.items() if why]

    def read(split, process_index, process_count):
        shard = files[split][process_index::process_count]
        paths = tf.constant([path for path, _ in shard], tf.string)
        labels = tf.constant([label for _, label in shard], tf.int64)
        return tf.data.Dataset.from_tensor_slices((paths, labels)).map(_read_file_example)

    sizes = {split: len(f) for split, f in files.items()}
    return Source(spec, len(class_names), sizes, read, {k: v for k, v in rejected.items() if v})


def _list_files(split_dir: Path, class_index: dict[str, int]) -> list[tuple[Path, int]]:
    """Sorted (path, label) pairs; label -1 for unlabeled images directly in the split folder."""
    found = []
    for entry in sorted(split_dir.iterdir()):
        if entry.is_dir():
            found += [(p, class_index[entry.name]) for p in sorted(entry.iterdir())]
        else:
            found.append((entry, -1))
    return found


def _image_problem(path: Path) -> str | None:
    """Why the file `path` cannot be an image, judged by its name and first bytes, or None."""
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        return f"not named {'/'.join(IMAGE_EXTENSIONS)}"
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except FileNotFoundError:  # Listed, so a symbolic link to nothing.
        return "a symbolic link to a missing file"
    except OSError as e:  # A symbolic link loop, no permission to read, a folder.
        return e.strerror or type(e).__name__
    if not head:
        return "an empty file"
    if not any(head.startswith(m) for m in _MAGIC):
        return "not JPEG/PNG/GIF/BMP data"
    return None


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
    rejected = {k: v for k, v in source.rejected.items() if k not in selection}
    return Source(spec, source.num_classes, sizes, read, rejected)
