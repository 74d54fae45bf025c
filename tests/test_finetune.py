"""Fine-tuning: frozen stages stay bit-identical (weights and BatchNorm statistics) while the
rest trains, the pretrained encoder is left untouched, per-stage learning-rate rules, and a
head-only fine-tune that learns a separable task."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
import tensorflow as tf
from flax import nnx

from selfsup import parallel
from selfsup.config import ConfigError
from selfsup.data import augment, pipeline
from selfsup.data.sources import open_source
from selfsup.evaluate import finetune
from selfsup.models.resnet import STAGE_NAMES, ResNet
from selfsup.models.vit import ViT
from selfsup.train.optim import lr_multipliers, with_lr_multipliers
from selfsup.train.state import split_model


@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for split, n in (("train", 32), ("test", 16)):
        for i in range(n):
            label = i % 2  # Dark and bright images: a head on any encoder separates them.
            image = rng.integers(0, 128, (16, 16, 3)) + 127 * label
            path = root / split / f"class{label}" / f"{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(tf.io.encode_png(image.astype(np.uint8)).numpy())
    return root


SGD = dict(
    name="sgd",
    learning_rate=2.0,
    lr_scaling="linear",
    momentum=0.9,
    weight_decay=0.0,
    weight_decay_exclude=r"(^|/)(bias|scale)$",
    trust_coefficient=0.001,
    schedule="cosine",
    param_groups=(),
    min_learning_rate=0.0,
    weight_decay_end=None,
    clip_per_tensor=0.0,
    frozen_first=(),
    normalize_after_step="",
)


def finetune_config(**overrides) -> ml_collections.ConfigDict:
    config = dict(
        steps=4,
        batch_size=16,
        warmup_steps=0,
        stage_lr_decay=1.0,
        drop_path=0.0,
        lr_multipliers=(),
        min_crop_area=0.5,
        flip=True,
        log_every_steps=2,
        optim=SGD,
    )
    config.update(overrides)
    return ml_collections.ConfigDict(config)


def run(image_root, encoder, *, frozen_stages, **overrides):
    source = open_source(f"folder:{image_root}")
    mesh = parallel.make_mesh()

    def preprocess(image):
        return augment.eval_view(image, size=16)

    test = pipeline.eval_dataset(source, "test", preprocess, local_batch_size=16)
    return finetune.finetune(
        encoder,
        source=source,
        train_split="train",
        evaluation={"test": test},
        config=finetune_config(**overrides),
        frozen_stages=frozen_stages,
        preprocess=preprocess,
        mesh=mesh,
        seed=0,
        what="test fine-tune",
    )


def accuracy_by_hand(image_root, classifier) -> float:
    """The classifier's accuracy (inference mode, one unsharded batch) on the `test` folder."""
    paths = sorted((image_root / "test").glob("class*/*.png"))
    images = np.stack(
        [augment.eval_view(tf.io.decode_png(path.read_bytes()), size=16) for path in paths]
    )
    labels = np.array([int(path.parent.name.removeprefix("class")) for path in paths])
    logits = np.asarray(classifier(jnp.asarray(images), train=False))
    return float(np.mean(np.argmax(logits, axis=1) == labels))


def host_copy(tree):
    return jax.tree.map(np.array, tree)


def identical(a, b) -> bool:
    """Bit for bit (NaNs and signed zeros included)."""
    return jax.tree.all(
        jax.tree.map(lambda x, y: x.dtype == y.dtype and x.tobytes() == y.tobytes(), a, b)
    )


@pytest.mark.slow
def test_frozen_stages_stay_bit_identical_and_the_rest_trains(image_root):
    encoder = ResNet(18, width=0.125, rngs=nnx.Rngs(jax.random.key(0, impl="rbg")))
    # Statistics as a pretrained encoder has them (not the initial 0/1), so "unchanged" is strict.
    encoder(jax.random.uniform(jax.random.key(1), (32, 16, 16, 3)), train=True)
    _, params, stats = split_model(encoder)
    params, stats = host_copy(params), host_copy(stats)

    result, classifier = run(image_root, encoder, frozen_stages=2)

    _, tuned, tuned_stats = split_model(classifier)
    tuned, tuned_stats = host_copy(tuned), host_copy(tuned_stats)
    for name in STAGE_NAMES:
        frozen = name in ("stem", "stage1", "stage2")
        assert identical(params[name], tuned["encoder"][name]) == frozen, name
        assert identical(stats[name], tuned_stats["encoder"][name]) == frozen, name
    assert np.abs(tuned["head"]["kernel"]).max() > 0  # The zero-initialised head moved.
    # The encoder handed in is a starting point, not trained in place.
    _, after, after_stats = split_model(encoder)
    assert identical(params, host_copy(after)) and identical(stats, host_copy(after_stats))
    assert (result.steps, result.batch_size, result.epochs) == (4, 16, 2.0)
    assert result.learning_rate == pytest.approx(2.0 * 16 / 256)
    assert result.accuracy["test"] == accuracy_by_hand(image_root, classifier)
    # The zero-initialised head starts at ln 2; the last log window's loss is far below it.
    assert result.train_loss < 0.5 * np.log(2)


def test_head_only_fine_tune_learns_a_separable_task(image_root):
    encoder = ResNet(18, width=0.125, rngs=nnx.Rngs(jax.random.key(0, impl="rbg")))
    result, classifier = run(image_root, encoder, frozen_stages=4, steps=12)
    assert result.accuracy["test"] >= 0.9
    assert result.accuracy["test"] == accuracy_by_hand(image_root, classifier)


def test_stage_rules_freeze_the_bottom_stages_and_decay_the_rest():
    classifier = nnx.eval_shape(
        lambda: finetune.Classifier(ResNet(18, width=0.125, rngs=nnx.Rngs(0)), 3, rngs=nnx.Rngs(0))
    )
    _, params, _ = split_model(classifier)

    paths = classifier.encoder.depth_paths

    def multipliers(**kwargs):
        tree = lr_multipliers(params, finetune.stage_rules(paths, **kwargs))
        by_group = {name: set(jax.tree.leaves(tree["encoder"][name])) for name in STAGE_NAMES}
        return by_group, set(jax.tree.leaves(tree["head"]))

    by_stage, head = multipliers(frozen_stages=1, stage_lr_decay=1.0)
    assert by_stage == {
        "stem": {0.0},
        "stage1": {0.0},
        "stage2": {1.0},
        "stage3": {1.0},
        "stage4": {1.0},
    }
    assert head == {1.0}
    by_stage, head = multipliers(frozen_stages=4, stage_lr_decay=1.0)
    assert all(m == {0.0} for m in by_stage.values()) and head == {1.0}

    # Layer-wise decay 0.5: stage4 gets 0.5, stage3 0.25, ...; explicit rules come first.
    by_stage, head = multipliers(
        frozen_stages=0, stage_lr_decay=0.5, extra_rules=[("^encoder/stage2/", 3.0)]
    )
    assert by_stage == {
        "stem": {0.5**5},
        "stage1": {0.5**4},
        "stage2": {3.0},
        "stage3": {0.5**2},
        "stage4": {0.5},
    }
    assert head == {1.0}
    with pytest.raises(ConfigError, match="freeze_stages holds 5: this encoder's depths are 0..4"):
        finetune.stage_rules(paths, frozen_stages=5, stage_lr_decay=1.0)
    with pytest.raises(ConfigError, match="stage_lr_decay"):
        finetune.stage_rules(paths, frozen_stages=0, stage_lr_decay=0.0)


def test_a_vits_blocks_learn_at_lr_times_the_decay_to_the_depth_above_them():
    """MAE's layer-wise decay (`param_groups_lrd`): ViT-Tiny's embeddings at lr * d^13, block i
    (1-based) at lr * d^(13 - i), the final norm and the head at lr; frozen depths at 0.
    Measured on the optimizer's update of a unit gradient."""
    classifier = nnx.eval_shape(
        lambda: finetune.Classifier(
            ViT("vit_tiny", patch_size=8, image_size=16, rngs=nnx.Rngs(0)), 3, rngs=nnx.Rngs(0)
        )
    )
    _, params, _ = split_model(classifier)
    ones = jax.tree.map(lambda p: jnp.ones(p.shape), params)

    def rates(**kwargs) -> dict[str, np.ndarray]:
        rules = finetune.stage_rules(classifier.encoder.depth_paths, **kwargs)
        tx = with_lr_multipliers(optax.sgd(0.5), lr_multipliers(params, rules))
        updates, _ = tx.update(ones, tx.init(ones))
        return {
            jax.tree_util.keystr(path, simple=True, separator="/"): np.unique(-leaf / 0.5)
            for path, leaf in jax.tree_util.tree_leaves_with_path(updates)
        }

    def expected(name: str, decay: float, frozen: int) -> float:
        if name.startswith("encoder/blocks/"):
            depth = int(name.split("/")[2]) + 1
        elif name.startswith(("encoder/patch_embed/", "encoder/cls_token", "encoder/pos_embed")):
            depth = 0
        else:
            return 1.0  # The final norm, the head.
        return 0.0 if depth <= frozen and frozen else decay ** (13 - depth)

    for decay, frozen in ((0.75, 0), (0.75, 3), (1.0, 12)):
        got = rates(frozen_stages=frozen, stage_lr_decay=decay)
        assert len(got) == 4 + 12 * 12 + 2 + 2
        for name, rate in got.items():
            np.testing.assert_allclose(
                rate, [expected(name, decay, frozen)], rtol=1e-6, err_msg=name
            )
