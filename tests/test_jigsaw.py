"""Jigsaw puzzles: the published permutation set (Noroozi's) and the greedy maximal-Hamming-
distance one, the puzzles a one-colour-per-cell image makes and their reassembly from the label,
and the patch geometry shared with relative patch position."""

import itertools
from pathlib import Path

import jax
import numpy as np
import pytest
import tensorflow as tf
from test_relpatch import cell_colours, grid_image, standardise

from selfsup.config import ConfigError, load_config_file
from selfsup.data import augment
from selfsup.data import patches as patch_input
from selfsup.pretext import get_task, jigsaw

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
# The published set as text beside the checkout (its README names the source); a clean
# checkout elsewhere has no such folder, and the package's copy is then checked by its
# properties alone.
SHARED_PERMUTATIONS = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "data"
    / "jigsaw-permutations"
    / "permutations_100_max.txt"
)


def hamming(perms: np.ndarray) -> np.ndarray:
    """Pairwise Hamming distances, the diagonal left out as 9 + 1."""
    d = (perms[:, None, :] != perms[None, :, :]).sum(-1)
    np.fill_diagonal(d, 10)
    return d


@pytest.mark.parametrize(("count", "promised"), [(100, 6), (1000, 5)])
def test_the_permutation_set_is_valid_distinct_and_as_far_apart_as_promised(count, promised):
    perms = jigsaw.permutation_set(count, 0)
    assert perms.shape == (count, 9) and perms.dtype == np.int32
    assert (np.sort(perms, axis=1) == np.arange(9)).all()  # Each a permutation of the cells.
    assert hamming(perms).min() >= promised  # As default_config() promises for seed 0.
    # Greedy max-min: nine permutations can differ in every position (a Latin square), and so
    # the first nine do; a random pick of 9! would rarely.
    assert (hamming(perms[:9]) >= 9).all()
    # Deterministic from the seed; a smaller set of the same seed is the start of a larger one.
    np.testing.assert_array_equal(jigsaw.permutation_set(10, 0), perms[:10])
    assert not np.array_equal(jigsaw.permutation_set(10, 1), perms[:10])


def test_max_min_beats_noroozis_sum_alone():
    """Noroozi's Algorithm 1 (the largest summed distance alone) leaves pairs only 2 apart; the
    minimum first keeps the set's mean distance (Noroozi reports 8.08 for 100) and raises its
    minimum."""
    ours = jigsaw.permutation_set(100, 0)
    allp = np.array(list(itertools.permutations(range(9))), np.int8)
    chosen, total = [int(np.flatnonzero((allp == ours[0]).all(1))[0])], np.zeros(len(allp))
    for _ in range(99):
        total += (allp != allp[chosen[-1]]).sum(1)
        total[chosen] = -1
        chosen.append(int(np.argmax(total)))
    noroozi = hamming(allp[chosen].astype(np.int32))
    assert noroozi.min() == 2 and hamming(ours).min() > noroozi.min()
    assert abs(hamming(ours)[hamming(ours) < 10].mean() - 8.08) < 0.05


def test_the_default_set_is_noroozis_published_one():
    """The package's copy of `permutations_100_max`: 100 distinct permutations, any two at
    least 2 apart, mean distance 8.08 (what Noroozi reports for it), in the file's order."""
    perms = jigsaw.published_permutations()
    assert perms.shape == (100, 9) and perms.dtype == np.int32
    assert (np.sort(perms, axis=1) == np.arange(9)).all()
    d = hamming(perms)
    assert d.min() == 2 and round(d[d < 10].mean(), 2) == 8.08
    np.testing.assert_array_equal(
        perms[[0, -1]], [[7, 6, 5, 8, 4, 3, 2, 1, 0], [7, 6, 4, 2, 0, 8, 3, 1, 5]]
    )
    np.testing.assert_array_equal(task().permutations, perms)  # The default, in every config.
    np.testing.assert_array_equal(
        task(permutations="greedy").permutations, jigsaw.permutation_set(100, 0)
    )


@pytest.mark.skipif(
    not SHARED_PERMUTATIONS.is_file(),
    reason="the shared permutation file (../shared/data) is absent",
)
def test_the_packaged_set_equals_the_shared_file():
    shared = np.loadtxt(SHARED_PERMUTATIONS, dtype=np.int32)
    np.testing.assert_array_equal(jigsaw.published_permutations(), shared)


def task(**overrides) -> jigsaw.Jigsaw:
    config = load_config_file(CONFIGS / "jigsaw_cifar10.py", "runlocal")
    config.jigsaw.update(resize_size=72, crop_size=72, grayscale_probability=0.0)
    config.jigsaw.update(overrides)
    return get_task(config)


def test_a_puzzle_reassembles_from_its_label_into_the_image():
    puzzle = task()
    templates = [standardise(np.broadcast_to(c, (16, 16, 3))) for c in cell_colours()]

    def cells(patches):
        return [int(np.argmin([np.abs(p - t).max() for t in templates])) for p in patches]

    for seed in range(4):
        example = puzzle.train_example(grid_image(noise=0.02, seed=seed), tf.constant([seed, 3]))
        grid, labels = example["patches"].numpy(), example["permutation"].numpy()
        assert cells(grid) == list(range(9))  # Grid order: patch i from cell i.
        assert labels.shape == (8,) and len(set(labels)) == 8 and labels.max() < 100
        # What the head sees: the shuffles of `jigsaw.shuffle`, one per label.
        order = puzzle.permutations[labels]
        shuffled = np.asarray(jigsaw.shuffle(grid[None], order[None]))[0]  # [8, 9, p, p, 3]
        for label, puzzle_patches in zip(labels, shuffled):
            perm = puzzle.permutations[label]
            assert cells(puzzle_patches) == list(perm)  # Position j shows cell perm[j].
            reassembled = np.empty_like(puzzle_patches)
            reassembled[perm] = puzzle_patches
            np.testing.assert_array_equal(reassembled, grid)
        shown, in_place = puzzle.display_views(
            {k: v for k, v in example.items()} | {"patches": grid, "permutation": labels}
        )
        np.testing.assert_array_equal(in_place, patch_input.grid_mosaic(grid, grid=3))
        np.testing.assert_array_equal(shown, patch_input.grid_mosaic(shuffled[0], grid=3))


def test_patches_are_relative_patch_positions_and_labels_uniform():
    """Jigsaw's patches are `patch_example`'s, the geometry relative patch position uses (whose
    invariants test_relpatch.py checks), and its eval inputs are the same."""
    puzzle = task(grayscale_probability=0.66, chromatic="color_drop")
    image, seed = grid_image(noise=0.05), tf.constant([5, 6], tf.int64)
    patch_seed, _ = augment.split_seed(seed, 2)
    expected = patch_input.patch_example(image, patch_seed, puzzle.config.jigsaw, grid=3)
    np.testing.assert_array_equal(puzzle.train_example(image, seed)["patches"], expected)
    views = puzzle.eval_views(crop_proportion=1.0)
    np.testing.assert_array_equal(
        views["patches"](image),
        patch_input.eval_patches(image, puzzle.config.jigsaw, grid=3),
    )
    # One graph for the 200 draws (as tf.data runs it): eager calls cost ~40 ms each.
    permutations = tf.function(lambda s: puzzle.train_example(image, s)["permutation"])
    counts = np.bincount(
        np.concatenate([permutations(tf.constant([s, 0], tf.int64)) for s in range(200)]),
        minlength=100,
    )
    assert counts.sum() == 1600 and counts.min() > 0 and counts.max() < 40  # Mean 16.


def test_the_loss_classifies_each_puzzle_of_each_image():
    logits = np.full((2, 3, 5), -1.0, np.float32)
    labels = np.array([[0, 4, 2], [1, 3, 3]])
    logits[np.arange(2)[:, None], np.arange(3), labels] = 1.0
    loss, metrics = jigsaw.jigsaw_loss(jax.numpy.asarray(logits), jax.numpy.asarray(labels))
    assert float(metrics["pretext_accuracy"]) == 1.0
    np.testing.assert_allclose(float(loss), np.log1p(4 * np.exp(-2)), rtol=1e-5)
    logits[0, 0] = logits[0, 0, ::-1]
    assert float(jigsaw.jigsaw_loss(logits, labels)[1]["pretext_accuracy"]) == pytest.approx(5 / 6)


def test_bad_settings_are_config_errors_naming_the_jigsaw_key():
    with pytest.raises(ConfigError, match=r"crop_size=72 is invalid: .* at most resize_size=64"):
        task(resize_size=64)
    with pytest.raises(
        ConfigError, match=r"crop_size=72 is invalid: .* at least 78, .*24 px cells"
    ):
        task(patch_size=24)
    with pytest.raises(ConfigError, match=r"num_permutations=10 is invalid: .*100 with perm"):
        task(num_permutations=10)
    with pytest.raises(ConfigError, match=r"perms_per_image=9 is invalid: .*num_permutations=8"):
        task(permutations="greedy", num_permutations=8, perms_per_image=9)
    # A set of all 9! orders would scan them 362880 times: refused at once.
    for count in (1, 362880):
        with pytest.raises(
            ConfigError, match=rf"num_permutations={count} is invalid: .*\[2, 1000\]"
        ):
            task(permutations="greedy", num_permutations=count, perms_per_image=1)
    with pytest.raises(ConfigError, match=r"--config.jigsaw.patch_size to an integer in \[1,"):
        task(patch_size=0)
    with pytest.raises(ConfigError, match=r"--config.jigsaw.permutation_seed to an integer in"):
        task(permutation_seed=-1)
    with pytest.raises(ConfigError, match=r"--config.jigsaw.dropout to a number in \[0, 1\)"):
        task(dropout=1.5)
    with pytest.raises(ConfigError, match=r"--config.jigsaw.embed_dim to an integer in \[1,"):
        task(embed_dim=0)
