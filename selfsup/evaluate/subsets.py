"""Which labelled training examples each transfer evaluator may use.

A target's training split is divided once per run (from its labels and the seed alone) into a
class-stratified *minival* split, used only to choose hyper-parameters, and the *pool* of the
rest. Label-fraction subsets (1%, 10%, 100%) are class-balanced draws from the pool, so they
never contain a minival example, and every method and encoder compared trains on the very same
examples. Subsets of one seed are nested: per class, a fixed seeded order of the pool is cut
after the first `n` examples, so the 1% subset lies inside the 10% one. Once its choices are
made, a method at all labels uses the whole training split (`LabelSplits.final_labels`), as the
papers' protocols do: the linear probe is refit on train + minival (SimCLR, Kornblith et al.)
and the k-NN bank holds every training example (DINO, InstDisc).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np

from selfsup.data.sources import DataError, Source, select_examples


@dataclasses.dataclass(frozen=True)
class LabelSplits:
    """Indices into the training split (in the source's order), each sorted: `minival`, and one
    subset of the pool per label fraction (`subsets[1.0]` is the whole pool)."""

    minival: np.ndarray
    subsets: dict[float, np.ndarray]

    def final_labels(self, fraction: float) -> np.ndarray:
        """The examples a method fits once nothing is left to choose on minival: the subset of
        `fraction`, and at 1.0 the whole training split (the pool and minival). A smaller
        subset keeps its own: adding minival would give it more labels than its fraction."""
        subset = self.subsets[fraction]
        return np.union1d(subset, self.minival) if fraction == 1 else subset


def split_labels(source: Source, split: str) -> np.ndarray:
    """The labels of a split in the source's order (one process reading all of it), without
    decoding images; an unlabeled image (label -1) is an error, as transfer needs labels."""
    ds = source.dataset(split, process_index=0, process_count=1).map(lambda ex: ex["label"])
    labels = np.fromiter(ds.as_numpy_iterator(), np.int64)
    if (labels < 0).any():
        raise DataError(
            f"{source.spec} split {split!r} has {np.count_nonzero(labels < 0)} unlabeled images "
            "(directly in the split folder): transfer needs a class folder for every image."
        )
    return labels


def stratified_split(
    labels: np.ndarray, *, num_classes: int, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """(fit indices, minival indices), each sorted: per class, a seeded random
    round(val_fraction * count) examples (at least 1, and at least 1 left to fit) go to minival."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    labels = np.asarray(labels)
    counts = np.bincount(labels, minlength=num_classes)
    too_few = np.flatnonzero(counts < 2)
    if too_few.size:
        raise ValueError(
            f"classes {too_few.tolist()} have fewer than 2 training examples "
            f"(counts {counts[too_few].tolist()}); a minival split needs at least one example "
            "per class to fit on and one to validate on"
        )
    rng = np.random.default_rng(seed)
    val = []
    for c in range(num_classes):
        members = rng.permutation(np.flatnonzero(labels == c))
        num_val = int(np.clip(round(val_fraction * len(members)), 1, len(members) - 1))
        val.append(members[:num_val])
    val = np.sort(np.concatenate(val))
    return np.setdiff1d(np.arange(len(labels)), val), val


def label_fraction_subsets(
    labels: np.ndarray, pool: np.ndarray, fractions: Sequence[float], *, num_classes: int, seed: int
) -> dict[float, np.ndarray]:
    """Sorted indices of a class-balanced subset of `pool` per fraction in (0, 1].

    Fraction 1.0 is the whole pool. A smaller fraction f takes the same number from every class,
    max(1, round(f * len(pool) / num_classes)), the first ones of a seeded per-class order of
    the pool (so smaller subsets are nested in larger ones); a class with fewer examples in the
    pool than that is an error, since the subset could not be balanced.
    """
    labels, pool = np.asarray(labels), np.asarray(pool)
    rng = np.random.default_rng([seed, 1])  # Independent of the minival draw of the same seed.
    order = [rng.permutation(pool[labels[pool] == c]) for c in range(num_classes)]
    subsets = {}
    for fraction in fractions:
        if not 0 < fraction <= 1:
            raise ValueError(f"label fractions must be in (0, 1], got {fraction}")
        if fraction == 1:
            subsets[fraction] = np.sort(pool)
            continue
        per_class = max(1, round(fraction * len(pool) / num_classes))
        short = [c for c in range(num_classes) if len(order[c]) < per_class]
        if short:
            raise ValueError(
                f"a class-balanced {fraction:.0%} subset needs {per_class} examples per class, "
                f"but classes {short} have fewer outside minival; use a larger fraction"
            )
        subsets[fraction] = np.sort(np.concatenate([o[:per_class] for o in order]))
    return subsets


def make_label_splits(
    labels: np.ndarray,
    fractions: Sequence[float],
    *,
    num_classes: int,
    minival_fraction: float,
    seed: int,
) -> LabelSplits:
    """The minival split and the label-fraction subsets of the remaining pool."""
    pool, minival = stratified_split(
        labels, num_classes=num_classes, val_fraction=minival_fraction, seed=seed
    )
    subsets = label_fraction_subsets(labels, pool, fractions, num_classes=num_classes, seed=seed)
    return LabelSplits(minival=minival, subsets=subsets)


def subset_source(source: Source, split: str, indices: np.ndarray, *, name: str) -> Source:
    """A source whose split `name` holds the examples `indices` of `split`, in order."""
    return select_examples(source, {name: (split, indices)}, spec=f"{source.spec} {split}[{name}]")
