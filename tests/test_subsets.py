"""Minival and label-fraction subsets: class balance, disjointness from minival, nesting,
determinism from the seed, and a subset source that yields exactly the chosen examples."""

import numpy as np
import pytest
import tensorflow as tf

from selfsup.data.sources import DataError, open_source
from selfsup.evaluate import subsets


def test_stratified_split_is_stratified_disjoint_and_seeded():
    labels = np.repeat(np.arange(4), [10, 20, 35, 3])
    np.random.default_rng(0).shuffle(labels)
    fit, val = subsets.stratified_split(labels, num_classes=4, val_fraction=0.2, seed=3)
    # round(0.2 * [10, 20, 35, 3]) = [2, 4, 7, 1] (35 * 0.2 = 7; 3 * 0.2 rounds to 1).
    np.testing.assert_array_equal(np.bincount(labels[val], minlength=4), [2, 4, 7, 1])
    assert np.intersect1d(fit, val).size == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([fit, val])), np.arange(len(labels)))

    again = subsets.stratified_split(labels, num_classes=4, val_fraction=0.2, seed=3)
    np.testing.assert_array_equal(again[1], val)
    other = subsets.stratified_split(labels, num_classes=4, val_fraction=0.2, seed=4)
    assert not np.array_equal(other[1], val)


def test_stratified_split_keeps_one_example_per_class_on_each_side():
    labels = np.array([0, 0, 1, 1, 1])
    fit, val = subsets.stratified_split(labels, num_classes=2, val_fraction=0.9, seed=0)
    np.testing.assert_array_equal(np.bincount(labels[fit], minlength=2), [1, 1])
    np.testing.assert_array_equal(np.bincount(labels[val], minlength=2), [1, 2])
    with pytest.raises(ValueError, match=r"classes \[1\] have fewer than 2 training examples"):
        subsets.stratified_split(np.array([0, 0, 1]), num_classes=2, val_fraction=0.5, seed=0)
    with pytest.raises(ValueError, match=r"val_fraction must be in \(0, 1\)"):
        subsets.stratified_split(labels, num_classes=2, val_fraction=1.0, seed=0)


def shuffled_labels(counts, seed=0):
    labels = np.repeat(np.arange(len(counts)), counts)
    np.random.default_rng(seed).shuffle(labels)
    return labels


def test_label_fractions_are_balanced_nested_disjoint_from_minival_and_seeded():
    labels = shuffled_labels([110, 100, 120, 105, 100])  # 535 examples, slightly unbalanced.
    splits = subsets.make_label_splits(
        labels, [0.01, 0.1, 1.0], num_classes=5, minival_fraction=0.1, seed=7
    )
    pool = np.setdiff1d(np.arange(len(labels)), splits.minival)
    assert len(pool) == 535 - (11 + 10 + 12 + 10 + 10)
    np.testing.assert_array_equal(splits.subsets[1.0], pool)
    # Per class: max(1, round(f * 482 / 5)): 1% -> 1, 10% -> 10.
    np.testing.assert_array_equal(np.bincount(labels[splits.subsets[0.01]]), [1] * 5)
    np.testing.assert_array_equal(np.bincount(labels[splits.subsets[0.1]]), [10] * 5)
    for subset in splits.subsets.values():
        assert np.intersect1d(subset, splits.minival).size == 0
        assert np.all(np.diff(subset) > 0)  # Sorted, no repeats.
    assert set(splits.subsets[0.01]) <= set(splits.subsets[0.1])

    again = subsets.make_label_splits(
        labels, [0.01, 0.1, 1.0], num_classes=5, minival_fraction=0.1, seed=7
    )
    np.testing.assert_array_equal(again.minival, splits.minival)
    for fraction in splits.subsets:
        np.testing.assert_array_equal(again.subsets[fraction], splits.subsets[fraction])
    other = subsets.make_label_splits(labels, [0.1], num_classes=5, minival_fraction=0.1, seed=8)
    assert not np.array_equal(other.subsets[0.1], splits.subsets[0.1])


def test_final_labels_are_the_whole_split_at_all_labels_and_the_subset_below():
    labels = shuffled_labels([30, 30, 30])
    splits = subsets.make_label_splits(
        labels, [0.1, 1.0], num_classes=3, minival_fraction=0.1, seed=0
    )
    np.testing.assert_array_equal(splits.final_labels(1.0), np.arange(90))
    np.testing.assert_array_equal(splits.final_labels(0.1), splits.subsets[0.1])


def test_label_fraction_errors_name_the_problem():
    labels = shuffled_labels([50, 5])
    pool = np.arange(len(labels))
    with pytest.raises(ValueError, match=r"needs 14 examples per class, but classes \[1\]"):
        subsets.label_fraction_subsets(labels, pool, [0.5], num_classes=2, seed=0)
    with pytest.raises(ValueError, match=r"label fractions must be in \(0, 1\]"):
        subsets.label_fraction_subsets(labels, pool, [0.0], num_classes=2, seed=0)


@pytest.fixture
def image_folder(tmp_path):
    for i in range(12):
        path = tmp_path / "train" / f"c{i % 3}" / f"{i:02d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        # The red channel encodes the example's position in the split's order (class by class).
        image = np.full((4, 4, 3), (i % 3) * 4 + i // 3, np.uint8)
        path.write_bytes(tf.io.encode_png(image).numpy())
    return tmp_path


def test_subset_source_yields_exactly_the_indexed_examples(image_folder):
    source = open_source(f"folder:{image_folder}")
    labels = subsets.split_labels(source, "train")
    np.testing.assert_array_equal(labels, np.repeat([0, 1, 2], 4))
    indices = np.array([1, 4, 5, 11])
    subset = subsets.subset_source(source, "train", indices, name="few")
    assert subset.num_examples("few") == 4 and subset.num_classes == 3

    def red_values(process_index, process_count):
        ds = subset.dataset("few", process_index=process_index, process_count=process_count)
        return [
            (int(tf.io.decode_png(ex["image"])[0, 0, 0]), int(ex["label"]))
            for ex in ds.as_numpy_iterator()
        ]

    assert red_values(0, 1) == [(int(i), int(labels[i])) for i in indices]
    # Two processes split the subset between them, nothing lost or doubled.
    assert sorted(red_values(0, 2) + red_values(1, 2)) == red_values(0, 1)


def test_unlabeled_images_are_rejected(image_folder):
    (image_folder / "train" / "loose.png").write_bytes(
        tf.io.encode_png(np.zeros((4, 4, 3), np.uint8)).numpy()
    )
    with pytest.raises(DataError, match="1 unlabeled images"):
        subsets.split_labels(open_source(f"folder:{image_folder}"), "train")
