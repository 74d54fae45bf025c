"""The `evaluate` command: a suite of transfer evaluators on one target task.

It loads the pretrained encoder from its workdir (and builds a random-init encoder of the same
architecture as the baseline), splits the target's training split once into a minival split
(hyper-parameter choice only) and class-balanced label-fraction subsets of the rest, then runs
each evaluator named in `config.evaluators` for every encoder and label fraction:

- `linear`: L-BFGS logistic regression on frozen features, L2 chosen on minival;
- `knn`: weighted k-NN on frozen features, for each k in `config.knn.ks` (temperature fixed);
  both for each depth of the encoder in `config.layers` (features of every depth from one pass);
- `finetune`: the encoder plus a linear head trained end to end, for each depth in
  `config.finetune.freeze_stages` of frozen bottom stages.

Every result is a row that carries its settings; rows become `summary.json` (flat keys),
`metrics.jsonl`, `report.md` and plots.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Callable
from pathlib import Path

import jax
import ml_collections
import numpy as np
import tensorflow as tf
from flax import nnx

from selfsup import parallel
from selfsup.config import ConfigError, check_values, load_saved_config, save_config
from selfsup.data import pipeline
from selfsup.data.sources import Source, open_source
from selfsup.evaluate import report
from selfsup.evaluate.features import PRE_LOGITS, extract_features, resolve_layers
from selfsup.evaluate.finetune import finetune
from selfsup.evaluate.knn import knn_accuracy
from selfsup.evaluate.linear import linear_probe
from selfsup.evaluate.subsets import LabelSplits, make_label_splits, split_labels, subset_source
from selfsup.pretext import get_task
from selfsup.train.checkpoint import load_pretrained_model
from selfsup.workdir import claim

Row = dict[str, object]


@dataclasses.dataclass
class Target:
    """The target task every evaluator of a run shares: data, splits, preprocessing, and the
    frozen features of each encoder (extracted once, on first use)."""

    source: Source
    train_split: str
    eval_split: str
    splits: LabelSplits
    mesh: jax.sharding.Mesh
    local_batch: int
    feature_input: Callable[[tf.Tensor], tf.Tensor]  # What frozen evaluators feed the encoder.
    image_input: Callable[[tf.Tensor], tf.Tensor]  # A whole image, as fine-tuning feeds it.
    # A fine-tuning crop, already a square view: prepared as an evaluation image, not cropped again.
    crop_input: Callable[[tf.Tensor], tf.Tensor]
    layers: tuple[str, ...]  # The depths frozen evaluators probe.
    _features: dict[str, dict[str, tuple[np.ndarray, ...]]] = dataclasses.field(
        default_factory=dict
    )

    def eval_dataset(
        self, source: Source, split: str, preprocess: Callable[[tf.Tensor], tf.Tensor]
    ) -> tf.data.Dataset:
        return pipeline.eval_dataset(
            source,
            split,
            preprocess,
            local_batch_size=self.local_batch,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )

    def minival_source(self) -> Source:
        return subset_source(self.source, self.train_split, self.splits.minival, name="minival")

    def frozen_features(self, name: str, encoder: nnx.Module, layer: str) -> tuple[np.ndarray, ...]:
        """(train_x, train_y, test_x, test_y) of encoder `name` at depth `layer`; train rows in
        split order. Every layer's features come from one pass over each split."""
        if name not in self._features:
            (train_x, train_y), (test_x, test_y) = (
                extract_features(
                    encoder,
                    self.eval_dataset(self.source, split, self.feature_input),
                    self.mesh,
                    what=f"{self.source.spec} split {split!r}",
                    layers=self.layers,
                )
                for split in (self.train_split, self.eval_split)
            )
            self._features[name] = {
                layer: (train_x[layer], train_y, test_x[layer], test_y) for layer in self.layers
            }
        return self._features[name][layer]


def layer_method(method: str, layer: str) -> str:
    """A frozen evaluator's result name at `layer`: `method/layer`, but plain `method` at the
    pre-logits, so `linear/test_accuracy` is the classic linear-evaluation number at any sweep."""
    return method if layer == PRE_LOGITS else f"{method}/{layer}"


def fraction_name(fraction: float) -> str:
    return f"{100 * fraction:g}%"


def row(encoder: str, method: str, fraction: float, indices: np.ndarray, **fields) -> Row:
    return {
        "encoder": encoder,
        "method": method,
        "label_fraction": fraction,
        "num_labels": len(indices),
        **fields,
    }


def linear_rows(target: Target, config, name: str, layer: str, features) -> list[Row]:
    train_x, train_y, test_x, test_y = features
    minival = target.splits.minival
    rows = []
    for fraction, indices in target.splits.subsets.items():
        start = time.perf_counter()
        result = linear_probe(
            train_x[indices], train_y[indices], train_x[minival], train_y[minival], test_x, test_y,
            num_classes=target.source.num_classes, l2_grid=list(config.linear.l2_grid),
        )  # fmt: skip
        rows.append(
            row(
                name,
                layer_method("linear", layer),
                fraction,
                indices,
                layer=layer,
                test_accuracy=result.test_accuracy,
                minival_accuracy=result.minival_accuracy,
                train_accuracy=result.train_accuracy,
                l2=result.l2,
                seconds=time.perf_counter() - start,
            )  # fmt: skip
        )
    return rows


def knn_rows(target: Target, config, name: str, layer: str, features) -> list[Row]:
    train_x, train_y, test_x, test_y = features
    minival = target.splits.minival
    rows = []
    for fraction, indices in target.splits.subsets.items():
        for k in config.knn.ks:
            start = time.perf_counter()
            # Fewer labelled examples than k: every one of them votes.
            used_k = min(k, len(indices))
            kwargs = dict(
                num_classes=target.source.num_classes, k=used_k, temperature=config.knn.temperature
            )
            bank = train_x[indices], train_y[indices]
            rows.append(
                row(
                    name,
                    layer_method(f"knn/k{k}", layer),
                    fraction,
                    indices,
                    layer=layer,
                    test_accuracy=knn_accuracy(*bank, test_x, test_y, **kwargs),
                    minival_accuracy=knn_accuracy(
                        *bank, train_x[minival], train_y[minival], **kwargs
                    ),
                    k=used_k,
                    temperature=config.knn.temperature,
                    seconds=time.perf_counter() - start,
                )  # fmt: skip
            )
    return rows


def run_finetune(
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
            method = f"finetune/freeze{frozen_stages}"
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
                what=f"{name} {method} {fraction_name(fraction)} labels",
            )
            rows.append(
                row(
                    name,
                    method,
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
                )  # fmt: skip
            )
    return rows


def at_each_layer(rows_at: Callable[..., list[Row]]) -> Callable[..., list[Row]]:
    """A frozen-feature evaluator `rows_at(target, config, name, layer, features)` run at every
    depth in `target.layers`."""

    def run(target: Target, config, name: str, encoder: nnx.Module) -> list[Row]:
        return [
            r
            for layer in target.layers
            for r in rows_at(
                target, config, name, layer, target.frozen_features(name, encoder, layer)
            )
        ]

    return run


EVALUATORS: dict[str, Callable[..., list[Row]]] = {
    "linear": at_each_layer(linear_rows),
    "knn": at_each_layer(knn_rows),
    "finetune": run_finetune,
}


def summary_key(r: Row, field: str) -> str:
    """`[encoder/]method[/labels<pct>]/field`: the pretrained encoder and all labels unmarked,
    so `linear/test_accuracy` is the classic linear-evaluation number."""
    parts = [] if r["encoder"] == "pretrained" else [str(r["encoder"])]
    parts.append(str(r["method"]))
    if r["label_fraction"] != 1:
        parts.append(f"labels{fraction_name(r['label_fraction'])}")
    return "/".join([*parts, field])


def check_config(config: ml_collections.ConfigDict) -> None:
    """Fails before any compute on a config that cannot run: every value (`VALUE_RULES`),
    the evaluators, and the input (`features`) the pretrained task can give."""
    if not config.checkpoint:
        raise ConfigError(
            "evaluate needs a pretrained encoder: pass --config.checkpoint=PRETRAIN_WORKDIR."
        )
    check_values(config)
    resolve_layers(config.layers)
    unknown = sorted(set(config.evaluators) - set(EVALUATORS))
    if unknown or not config.evaluators:
        raise ConfigError(
            f"unknown or no config.evaluators {unknown}: choose from {sorted(EVALUATORS)}."
        )
    eval_views(get_task(load_saved_config(config.checkpoint)), config)


def eval_views(task, config: ml_collections.ConfigDict) -> dict[str, Callable]:
    """The task's evaluation inputs, refusing a `config.features` that it does not offer."""
    views = task.eval_views(crop_proportion=config.crop_proportion)
    if config.features not in views:
        raise ConfigError(
            f"config.features={config.features!r} is not an input that {task.config.task} "
            f"offers: use one of {sorted(views)}."
        )
    return views


def evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> tuple[Row, list[Row]]:
    """Runs the suite; writes and returns the flat summary and the result rows. Refuses a
    workdir that a live run holds."""
    check_config(config)
    with claim(workdir, "evaluate"):
        return _evaluate(config, Path(workdir))


def _evaluate(config: ml_collections.ConfigDict, workdir: Path) -> tuple[Row, list[Row]]:
    start = time.perf_counter()
    mesh = parallel.make_mesh()
    local_batch = parallel.local_batch_size(config.batch_size, mesh)
    pre_config, step, model = load_pretrained_model(config.checkpoint, mesh)
    data = config.data or pre_config.data
    source = open_source(data, data_dir=config.data_dir or pre_config.data_dir or None)
    train_split = config.train_split or pre_config.train_split
    eval_split = config.eval_split or pre_config.eval_split
    source.num_examples(eval_split)  # A missing split fails here, before any compute.
    source, skipped = pipeline.drop_undecodable_images(
        source, [train_split, eval_split], config.corrupt_images
    )
    try:
        splits = make_label_splits(
            split_labels(source, train_split),
            list(config.label_fractions),
            num_classes=source.num_classes,
            minival_fraction=config.minival_fraction,
            seed=config.seed,
        )
    except ValueError as e:
        raise ConfigError(f"{data} split {train_split!r}: {e}.") from None
    task = get_task(pre_config)
    target = Target(
        source=source,
        train_split=train_split,
        eval_split=eval_split,
        splits=splits,
        mesh=mesh,
        local_batch=local_batch,
        feature_input=eval_views(task, config)[config.features],
        image_input=eval_views(task, config)["image"],
        crop_input=task.eval_views(crop_proportion=1.0)["image"],
        layers=resolve_layers(config.layers),
    )
    save_config(config, workdir)

    encoders = {"pretrained": model.encoder}
    if config.random_init_baseline:
        encoders["random_init"] = task.build_model(nnx.Rngs(config.seed)).encoder
    summary: Row = {
        "checkpoint": str(config.checkpoint),
        "checkpoint_step": step,
        "model/dtype": pre_config.model.dtype,
        "data": data,
        "train_split": train_split,
        "eval_split": eval_split,
        "features": config.features,
        "layers": list(resolve_layers(config.layers)),
        "minival_examples": len(splits.minival),
        "data/skipped_images": len(skipped),
    }
    rows: list[Row] = []
    for evaluator in config.evaluators:
        for name, encoder in encoders.items():
            new_rows = EVALUATORS[evaluator](target, config, name, encoder)
            for r in new_rows:
                print(
                    f"{name} {r['method']} {fraction_name(r['label_fraction'])} labels: "
                    f"test {r['test_accuracy']:.4f}, minival {r['minival_accuracy']:.4f}",
                    flush=True,
                )
            rows += new_rows
    for r in rows:
        for field, value in r.items():
            if field not in ("encoder", "method", "label_fraction"):
                summary[summary_key(r, field)] = value
    summary["evaluate/wall_seconds"] = time.perf_counter() - start

    report.write_summary(workdir, summary)
    (workdir / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": step, **r}) + "\n" for r in rows)
    )
    report.write_transfer_report(workdir, config, summary, rows)
    return summary, rows
