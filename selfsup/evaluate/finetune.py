"""Fine-tuning a pretrained encoder plus a new linear head on a labelled target split.

The bottom `frozen_stages` = n depths can be frozen (`encoder.depth_paths`: a ResNet's stem and
stage1..4, a ViT's embeddings and blocks 1..12): n = 0 trains everything, n = k freezes depths
0..k (a ResNet's stem and stage1..stage<k>), n = the last depth the whole encoder (only the head
trains). Frozen stages run in inference mode, so their BatchNorm statistics stay as
pretrained, pass no gradient back, and sit in an optimizer group with a learning-rate
multiplier of 0 (`optax.set_to_zero`, no momentum state), so their weights stay bit-identical.
Other groups get per-layer learning rates: explicit `(regex, multiplier)` rules, and/or a
layer-wise decay `stage_lr_decay ** (D - i)` for depth i of D - 1 (a ResNet's stem 0 and stage1..4
= 1..4, D = 5; a ViT-B's embeddings 0 and blocks 1..12, D = 13, as MAE's `param_groups_lrd`;
the head, and a ViT's final norm, 1.0).

Recipe (google-research/simclr's fine-tuning preprocessing, `color_distort=False`): random
resized crop (area in [min_crop_area, 1]) + left-right flip, no colour distortion; SGD with
momentum, linear warmup then cosine decay, for a fixed number of steps; the head starts at zero.
It runs on the engine pretraining runs on (`train.engine`): the same jitted, donated step with
the batch sharded over every device (so BatchNorm statistics are those of the global batch),
the same NaN stop, progress line, checkpoints and SIGTERM stop (given a folder for them, a run
cut short resumes bit-identical); only the loss and the parameter groups are its own.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import optax
import tensorflow as tf
from flax import nnx

from selfsup import parallel, progress, report
from selfsup.config import REGEX, STEPS, ConfigError, Rule, flag, integer, number, sequence
from selfsup.data import augment, pipeline
from selfsup.data.sources import Source
from selfsup.evaluate import Evaluator, Row, fraction_name, row
from selfsup.evaluate.subsets import subset_source
from selfsup.evaluate.target import Target
from selfsup.models.encoders import depths, describe, with_drop_path
from selfsup.models.resnet import BN_EPSILON, BN_MOMENTUM
from selfsup.train import engine
from selfsup.train.checkpoint import Checkpointer
from selfsup.train.optim import (
    lr_multipliers,
    make_optimizer,
    peak_learning_rate,
    with_lr_multipliers,
)
from selfsup.train.state import TrainState, split_model

# `config.finetune`'s rules (`selfsup.config.check_values`); `optim.`, `batch_size`,
# `min_crop_area` and `log_every_steps` are shared ones.
VALUE_RULES = {
    "freeze_stages": sequence(
        integer(0, 4096, " (0 trains all, the encoder's last depth the head only)"), "(0, 4)"
    ),
    "steps": STEPS,
    "warmup_steps": integer(0),
    "stage_lr_decay": number(0, 1, open_low=True),
    "drop_path": number(
        0, 1, " (a ViT's stochastic depth; MAE fine-tunes ViT-B at 0.1)", open_high=True
    ),
    "lr_multipliers": sequence(
        Rule(
            lambda r: len(r) == 2 and REGEX.test(r[0]) and number(0, 1e6).test(r[1]),
            "(regex, learning-rate multiplier >= 0)",
        ),
        "(('^head/', 10.0),)",
        min_len=0,
    ),
    "flip": flag(),
}


def check_encoder(config: ml_collections.ConfigDict, model: ml_collections.ConfigDict, run: str):
    """Refuses before any work a `config.finetune` that the encoder `model` (of the pretraining
    run `run`) cannot take: frozen depths it does not have, stochastic depth for a ResNet."""
    last = depths(model) - 1
    if any(n > last for n in config.freeze_stages):
        raise ConfigError(
            f"config.finetune.freeze_stages={tuple(config.freeze_stages)!r} is invalid: set "
            f"--config.finetune.freeze_stages to depths of {run}'s {describe(model)}, each in "
            f"[0, {last}] (0 trains all, {last} the head only), e.g. '(0, {last})'."
        )
    if config.drop_path and model.name == "resnet":
        raise ConfigError(
            f"config.finetune.drop_path={config.drop_path} is invalid: set "
            f"--config.finetune.drop_path to 0 ({run}'s ResNet has no stochastic depth)."
        )


class Classifier(nnx.Module):
    """An encoder, then a parameter-free BatchNorm and a zero-initialised linear head on its
    pooled features. The BatchNorm (MAE's linear-probing head) standardises the features, so
    one learning rate suits every encoder: a random-init encoder's pooled features are far
    smaller than a trained one's, and a plain head on them barely moves in a short run. A ViT's
    blocks drop their residual branches up to `drop_path` (stochastic depth) in training."""

    def __init__(
        self, encoder: nnx.Module, num_classes: int, *, drop_path: float = 0.0, rngs: nnx.Rngs
    ):
        self.encoder = with_drop_path(encoder, drop_path)
        self.norm = nnx.BatchNorm(
            encoder.feature_dim,
            use_bias=False,
            use_scale=False,
            momentum=BN_MOMENTUM,
            epsilon=BN_EPSILON,
            rngs=rngs,
        )
        self.head = nnx.Linear(
            encoder.feature_dim, num_classes, kernel_init=nnx.initializers.zeros, rngs=rngs
        )

    def __call__(
        self,
        images: jax.Array,
        *,
        train: bool,
        frozen_stages: int = 0,
        drop_path_rng: jax.Array | None = None,
    ) -> jax.Array:
        """`drop_path_rng`: the key of a ViT's stochastic depth, in training when it has one."""
        rng = {} if drop_path_rng is None else {"drop_path_rng": drop_path_rng}
        features = self.encoder(images, train=train, frozen_stages=frozen_stages, **rng)
        return self.head(self.norm(features, use_running_average=not train))


@dataclasses.dataclass(frozen=True)
class FinetuneResult:
    """Accuracies in [0, 1] after the last step, per evaluation split (e.g. minival, test);
    the settings that produced them; the final training loss (mean of the last log window)."""

    accuracy: dict[str, float]
    train_loss: float
    learning_rate: float  # Peak, after batch-size scaling.
    steps: int
    batch_size: int
    epochs: float
    seconds: float


def stage_rules(
    depth_paths: Sequence[str],
    *,
    frozen_stages: int,
    stage_lr_decay: float,
    extra_rules: Sequence[tuple[str, float]] = (),
) -> list[tuple[str, float]]:
    """(regex, lr multiplier) rules over `Classifier` parameter paths, first match wins:
    frozen depths (0), then `extra_rules`, then the layer-wise decay of the other depths, whose
    parameter paths in the encoder `depth_paths` gives from the bottom up."""
    last = len(depth_paths) - 1
    if not 0 <= frozen_stages <= last:
        raise ConfigError(
            f"config.finetune.freeze_stages holds {frozen_stages}: this encoder's depths are "
            f"0..{last} (0 trains all, {last} freezes the encoder)."
        )
    if not 0 < stage_lr_decay <= 1:
        raise ConfigError(f"stage_lr_decay must be in (0, 1], got {stage_lr_decay}.")
    frozen = depth_paths[: frozen_stages + 1] if frozen_stages else ()
    rules = [(f"^encoder/({'|'.join(frozen)})", 0.0)] if frozen else []
    rules += [(regex, float(multiplier)) for regex, multiplier in extra_rules]
    if stage_lr_decay != 1:  # The head is one past the last depth.
        rules += [
            (f"^encoder/{path}", stage_lr_decay ** (len(depth_paths) - i))
            for i, path in enumerate(depth_paths)
        ]
    return rules


def _train_example(config: ml_collections.ConfigDict, preprocess: Callable[[tf.Tensor], tf.Tensor]):
    def example(image: tf.Tensor, seed: tf.Tensor) -> dict[str, tf.Tensor]:
        # The crop is resized to the side `preprocess` resizes to (static: its output's shape),
        # then preprocessed like an evaluation image (e.g. standardised).
        view = augment.simclr_view(
            image,
            seed,
            size=preprocess(image).shape[0],
            crop=True,
            min_crop_area=config.min_crop_area,
            flip=config.flip,
            color=False,
            color_strength=0.0,  # No colour distortion.
        )
        return {"image": preprocess(view)}

    return example


def finetune_loss(graphdef: nnx.GraphDef, *, frozen_stages: int, drop_path: float) -> engine.LossFn:
    """The classifier's cross-entropy, for `engine.make_train_step`; the step's key drives
    stochastic depth at `drop_path` > 0."""

    def loss_fn(params, batch_stats, extra, batch, rng):
        model = nnx.merge(graphdef, params, batch_stats)
        logits = model(
            batch["image"],
            train=True,
            frozen_stages=frozen_stages,
            drop_path_rng=rng if drop_path else None,
        )
        loss = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"]).mean()
        return loss, ({"loss": loss}, nnx.to_pure_dict(nnx.state(model, nnx.BatchStat)), extra)

    return loss_fn


@dataclasses.dataclass
class FinetuneHooks(engine.Hooks):
    """The engine's hooks for fine-tuning: a progress line per log; checkpoints that carry the
    last logged metrics too (a run resumed at its last step reports them)."""

    what: str
    throughput: progress.Throughput
    checkpointer: Checkpointer | None = None
    logged: dict[str, float] = dataclasses.field(default_factory=dict)

    def log(self, step: int, metrics: dict[str, float]) -> dict[str, float]:
        _, rate = self.throughput.report(step)
        total = self.throughput.total_steps
        print(f"  {self.what}: step {step}/{total}  loss {metrics['loss']:.4f}{rate}", flush=True)
        self.logged = metrics
        return metrics

    def save(self, step: int, state: TrainState, window: dict) -> None:
        self.checkpointer.save(step, state, metric_window={**window, "logged": self.logged})

    def diverged(self, problem: str, step: int) -> engine.NonFiniteLossError:
        return engine.NonFiniteLossError(
            f"{self.what}: fine-tuning {problem} at step {step}; lower "
            "--config.finetune.optim.learning_rate."
        )


@functools.partial(jax.jit, static_argnames="graphdef")
def _correct(params, batch_stats, batch, *, graphdef):
    logits = nnx.merge(graphdef, params, batch_stats)(batch["image"], train=False)
    hits = (jnp.argmax(logits, -1) == batch["label"]) & batch["mask"]
    return hits.sum(), batch["mask"].sum()


def accuracy(
    graphdef: nnx.GraphDef, params, batch_stats, ds: tf.data.Dataset, mesh, *, what: str
) -> float:
    """Top-1 accuracy of the classifier (inference mode) over an `eval_dataset`. The counts
    stay on the devices until the end, so the host never waits on a batch."""
    hits, total = 0, 0
    for batch in pipeline.global_batches(ds, mesh, what=what):
        h, n = _correct(params, batch_stats, batch, graphdef=graphdef)
        hits, total = hits + h, total + n
    return int(hits) / int(total)


@functools.cache
def _programs(
    graphdef: nnx.GraphDef,
    multipliers: tuple[jax.tree_util.PyTreeDef, tuple[float, ...]],
    config: ml_collections.FrozenConfigDict,
    batch_size: int,
    *,
    frozen_stages: int,
    mesh: jax.sharding.Mesh,
):
    """(jitted init, jitted train step) for one setting (`config` is `config.finetune`;
    `multipliers` each parameter's lr multiplier, flattened). Cached: the suite runs each
    setting for several encoders and label fractions, and compiles it once."""
    tx, _ = make_optimizer(
        config.optim,
        batch_size=batch_size,
        total_steps=config.steps,
        warmup_steps=config.warmup_steps,
    )
    tx = with_lr_multipliers(tx, multipliers[0].unflatten(multipliers[1]))
    replicated = parallel.replicated(mesh)

    def init(params, batch_stats):
        # Copies: the step donates its state, and the encoder must survive for the next run.
        params, batch_stats = jax.tree.map(jnp.copy, (params, batch_stats))
        return TrainState(jnp.zeros((), jnp.int32), params, batch_stats, tx.init(params))

    loss = finetune_loss(graphdef, frozen_stages=frozen_stages, drop_path=config.drop_path)
    step = engine.make_train_step(loss, tx, seed=0)
    return jax.jit(init, out_shardings=replicated), engine.jit_step(step, mesh)


def fitting_batch_size(batch_size: int, num_examples: int, mesh, *, what: str) -> int:
    """`batch_size`, shrunk to fit a small label fraction that holds fewer examples than one
    batch (a multiple of the device count)."""
    devices = mesh.devices.size
    fitting = min(batch_size, num_examples // devices * devices)
    if fitting == 0:
        raise ConfigError(
            f"{what}: {num_examples} training examples cannot fill one per device on "
            f"{devices} devices; use a larger label fraction."
        )
    return fitting


def finetune(
    encoder: nnx.Module,
    *,
    source: Source,
    train_split: str,
    evaluation: Mapping[str, tf.data.Dataset],
    config: ml_collections.ConfigDict,
    frozen_stages: int,
    preprocess: Callable[[tf.Tensor], tf.Tensor],
    mesh: jax.sharding.Mesh,
    seed: int,
    what: str,
    checkpoints: Path | None = None,
) -> tuple[FinetuneResult, Classifier]:
    """Fine-tunes a copy of `encoder` (left untouched) with a new head on `train_split` of
    `source`, fed `preprocess` of random crops; returns its accuracy on each `evaluation`
    dataset (`eval_dataset`s of `preprocess`ed images) and the fine-tuned classifier. With
    `checkpoints` (a folder), it saves there every `checkpoint_every_steps` and on SIGTERM,
    and resumes from the latest checkpoint found there."""
    start = time.perf_counter()
    num_examples = source.num_examples(train_split)
    batch_size = fitting_batch_size(config.batch_size, num_examples, mesh, what=what)
    graphdef, params, batch_stats = split_model(
        Classifier(encoder, source.num_classes, drop_path=config.drop_path, rngs=nnx.Rngs(seed))
    )
    rules = stage_rules(
        encoder.depth_paths,
        frozen_stages=frozen_stages,
        stage_lr_decay=config.stage_lr_decay,
        extra_rules=config.lr_multipliers,
    )
    multipliers, multipliers_def = jax.tree.flatten(lr_multipliers(params, rules))
    init, train_step = _programs(
        graphdef,
        (multipliers_def, tuple(multipliers)),
        ml_collections.FrozenConfigDict(config),
        batch_size,
        frozen_stages=frozen_stages,
        mesh=mesh,
    )
    state, logged = _train(
        init(params, batch_stats), train_step, checkpoints, mesh, config=config, what=what,
        batch_size=batch_size, batches=lambda start: _train_batches(
            source, train_split, config, preprocess, batch_size, mesh, seed, start
        ),
    )  # fmt: skip
    classifier = graphdef, state.params, state.batch_stats
    result = FinetuneResult(
        accuracy={
            name: accuracy(*classifier, ds, mesh, what=f"{what} {name}")
            for name, ds in evaluation.items()
        },
        train_loss=logged["loss"],
        learning_rate=peak_learning_rate(config.optim, batch_size),
        steps=config.steps,
        batch_size=batch_size,
        epochs=config.steps * batch_size / num_examples,
        seconds=time.perf_counter() - start,
    )
    return result, nnx.merge(*classifier)


def _train(state, train_step, checkpoints: Path | None, mesh, *, config, what, batch_size, batches):
    """(final state, last logged metrics) of the run from `state`, or from the latest checkpoint
    in `checkpoints`; `batches(start_step)` gives the data from a step on."""
    checkpointer = Checkpointer(checkpoints, keep=1) if checkpoints else None
    try:
        return _run(state, train_step, checkpointer, mesh, config, what, batch_size, batches)
    finally:
        if checkpointer:
            checkpointer.close()


def _run(state, train_step, checkpointer, mesh, config, what, batch_size, batches):
    restored = checkpointer.restore_latest(state) if checkpointer and checkpointer.steps() else None
    start = restored.step if restored else 0
    if restored:
        print(f"  {what}: resuming from its checkpoint at step {start}/{config.steps}.")
        state = restored.state
    throughput = dict(start_step=start, total_steps=config.steps, batch_size=batch_size)
    hooks = FinetuneHooks(what, progress.Throughput(**throughput), checkpointer)
    state, logged = engine.run(
        state,
        train_step,
        batches(start),
        start_step=start,
        cadence=engine.Cadence(
            total_steps=config.steps,
            log_every=config.log_every_steps,
            save_every=config.checkpoint_every_steps if checkpointer else 0,
        ),
        hooks=hooks,
        window=engine.Window.from_json(restored.metric_window, mesh) if restored else None,
    )
    # A run resumed at its last step trains nothing: the metrics saved with it stand.
    return state, logged or (restored.metric_window.get("logged", {}) if restored else {})


def _train_batches(source, split, config, preprocess, batch_size: int, mesh, seed: int, start=0):
    ds = pipeline.train_dataset(
        source,
        split,
        _train_example(config, preprocess),
        local_batch_size=parallel.local_batch_size(batch_size, mesh, what="finetune.batch_size"),
        seed=seed,
        start_step=start,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    return pipeline.global_batches(ds, mesh, what=f"{source.spec} split {split!r}")


def run(
    target: Target, config: ml_collections.ConfigDict, name: str, encoder: nnx.Module
) -> list[Row]:
    evaluation = {
        "minival": target.eval_dataset(target.minival_source(), "minival", target.image_input),
        "test": target.eval_dataset(target.source, target.eval_split, target.image_input),
    }
    ft = config.finetune
    rows = []
    for fraction, indices in target.splits.subsets.items():
        train = subset_source(target.source, target.train_split, indices, name="labelled")
        for frozen_stages in ft.freeze_stages:
            what = f"{name} finetune/freeze{frozen_stages} {fraction_name(fraction)} labels"
            rows += target.saved.rows(
                what,
                functools.partial(setting_rows, target, config, name, encoder, evaluation, train,
                                  fraction, indices, frozen_stages, what),
            )  # fmt: skip
    return rows


def setting_rows(
    target, config, name, encoder, evaluation, train, fraction, indices, frozen_stages, what
) -> list[Row]:
    """The row of one fine-tuning setting, checkpointed in the evaluation's saved work."""
    ft = config.finetune
    result, _ = finetune(
        encoder,
        source=train,
        train_split="labelled",
        evaluation=evaluation,
        config=ft,
        frozen_stages=frozen_stages,
        preprocess=target.crop_input,
        mesh=target.mesh,
        seed=config.seed,
        what=what,
        checkpoints=target.saved.checkpoints(what),
    )
    return [
        row(
            name,
            f"finetune/freeze{frozen_stages}",
            fraction,
            indices,
            test_accuracy=result.accuracy["test"],
            minival_accuracy=result.accuracy["minival"],
            train_loss=result.train_loss,
            freeze_stages=frozen_stages,
            learning_rate=result.learning_rate,
            stage_lr_decay=ft.stage_lr_decay,
            weight_decay=ft.optim.weight_decay,
            steps=result.steps,
            batch_size=result.batch_size,
            epochs=result.epochs,
            seconds=result.seconds,
        )
    ]


def settings(config: ml_collections.ConfigDict) -> str:
    ft = config.finetune
    return (
        f"fine-tuning: random resized crop (area >= {ft.min_crop_area:g}) + flip, "
        f"{ft.optim.name.upper()} (momentum / beta1 {ft.optim.momentum:g}), drop path "
        f"{ft.drop_path:g}, {ft.warmup_steps} warmup steps then cosine decay, {ft.steps} "
        f"steps, weight decay {ft.optim.weight_decay:g}, stage lr decay {ft.stage_lr_decay:g}, "
        f"extra lr multipliers {list(ft.lr_multipliers)}"
    )


def plot(rows: Sequence[Row], workdir: Path, title: str) -> str:
    """report.md's `frozen_vs_finetuned.png`: test accuracy against `freeze_stages`, per label
    fraction, with the linear probe of the frozen features as the last point; random-init
    dashed. "" (no plot) without fine-tuning rows."""
    if not any("freeze_stages" in r for r in rows):
        return ""
    with report.figure(workdir / "frozen_vs_finetuned.png", figsize=(7, 4.5)) as ax:
        fractions = sorted({r["label_fraction"] for r in rows})
        for encoder, style in (("pretrained", "-"), ("random_init", "--")):
            for i, fraction in enumerate(fractions):
                mine = [
                    r for r in rows if (r["encoder"], r["label_fraction"]) == (encoder, fraction)
                ]
                points = sorted(
                    (r["freeze_stages"], 100 * r["test_accuracy"])
                    for r in mine
                    if "freeze_stages" in r
                )
                probe = [100 * r["test_accuracy"] for r in mine if r["method"] == "linear"]
                label = f"{fraction_name(fraction)} labels ({encoder})"
                if points:
                    ax.plot(*zip(*points), style, marker="o", color=f"C{i}", label=label)
                if probe:
                    ax.plot([5], probe, marker="s", color=f"C{i}", linestyle="none")
        ax.set_xticks(
            range(6), ["0\n(all tuned)", "1", "2", "3", "4\n(head only)", "linear\nprobe"]
        )
        ax.set(xlabel="frozen bottom stages", ylabel="test accuracy (%)", title=title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    return "![frozen vs fine-tuned](frozen_vs_finetuned.png)\n"


EVALUATOR = Evaluator(run=run, settings=settings, plot=plot)
