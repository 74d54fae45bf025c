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
`metrics.jsonl`, `report.md` and plots. Finished rows, extracted features and fine-tuning
checkpoints are saved as they come (`resume`), so the same command re-run after a kill goes on
from where it stopped; a re-run under another config is refused unless
`--allow_config_change`, and then starts over.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import ml_collections
from flax import nnx

from selfsup import parallel, report
from selfsup.config import VALUE_RULES, ConfigError, check_values, load_saved_config, save_config
from selfsup.data import pipeline
from selfsup.data.sources import open_source
from selfsup.evaluate import Row, finetune, fraction_name, get_evaluator, value_rules
from selfsup.evaluate.features import resolve_layers
from selfsup.evaluate.resume import SavedWork, fingerprint
from selfsup.evaluate.subsets import make_label_splits, split_labels
from selfsup.evaluate.target import Target
from selfsup.files import write_atomically
from selfsup.pretext import get_task
from selfsup.pretrained import init_encoder, init_weights
from selfsup.train.checkpoint import load_pretrained_model
from selfsup.workdir import check_same_config, claim


def summary_key(r: Row, field: str) -> str:
    """`[encoder/]method[/labels<pct>]/field`: the pretrained encoder and all labels unmarked,
    so `linear/test_accuracy` is the classic linear-evaluation number."""
    parts = [] if r["encoder"] == "pretrained" else [str(r["encoder"])]
    parts.append(str(r["method"]))
    if r["label_fraction"] != 1:
        parts.append(f"labels{fraction_name(r['label_fraction'])}")
    return "/".join([*parts, field])


def check_config(config: ml_collections.ConfigDict) -> None:
    """Fails before any compute on a config that cannot run: every value (the shared rules,
    the command's and its evaluators': `selfsup.evaluate.value_rules`), the input (`features`)
    the pretrained task can give, and `init_from` weights that are missing or of another
    architecture."""
    if not config.checkpoint:
        raise ConfigError(
            "evaluate needs a pretrained encoder: pass --config.checkpoint=PRETRAIN_WORKDIR."
        )
    check_values(config, VALUE_RULES, value_rules(config))
    pre_config = load_saved_config(config.checkpoint)
    resolve_layers(config.layers, pre_config.model)
    if "finetune" in config.evaluators:
        finetune.check_encoder(config.finetune, pre_config.model, config.checkpoint)
    eval_views(get_task(pre_config), config)
    if config.init_from:
        init_weights(config.init_from, pre_config.model)


def eval_views(task, config: ml_collections.ConfigDict) -> dict[str, Callable]:
    """The task's evaluation inputs, refusing a `config.features` that it does not offer."""
    views = task.eval_views(crop_proportion=config.crop_proportion)
    if config.features not in views:
        raise ConfigError(
            f"config.features={config.features!r} is not an input that {task.config.task} "
            f"offers: use one of {sorted(views)}."
        )
    return views


def evaluate(
    config: ml_collections.ConfigDict, workdir: str | Path, *, allow_config_change: bool = False
) -> tuple[Row, list[Row]]:
    """Runs the suite, or resumes the one in `workdir`; writes and returns the flat summary and
    the result rows. Refuses a workdir that a live run holds, or (unless `allow_config_change`)
    one that an evaluation of another config made."""
    check_config(config)
    with claim(workdir, "evaluate"):
        check_same_config(config, workdir, allow_change=allow_config_change)
        return _evaluate(config, Path(workdir))


def _evaluate(config: ml_collections.ConfigDict, workdir: Path) -> tuple[Row, list[Row]]:
    start = time.perf_counter()
    mesh = parallel.make_mesh()
    pre_config, step, model = load_pretrained_model(config.checkpoint, mesh)
    task = get_task(pre_config)
    saved = SavedWork(
        workdir, fingerprint(config, Path(config.checkpoint, "checkpoints", str(step)))
    )
    target, skipped = open_target(config, pre_config, task, mesh, saved)
    for warning in warnings(target):
        print(f"Warning: {warning}")
    save_config(config, workdir)
    encoders = {"pretrained": model.encoder}
    if config.random_init_baseline:
        encoders["random_init"] = task.build_model(nnx.Rngs(config.seed)).encoder
    if config.init_from:
        encoders["init_from"] = init_encoder(config.init_from, pre_config.model)
    summary: Row = {
        "checkpoint": str(config.checkpoint),
        "checkpoint_step": step,
        "model/dtype": pre_config.model.dtype,
        "data": target.source.spec,
        "train_split": target.train_split,
        "eval_split": target.eval_split,
        "features": config.features,
        "layers": list(target.layers),
        "minival_examples": len(target.splits.minival),
        "data/skipped_images": len(skipped),
    }
    rows = [
        r
        for evaluator in config.evaluators
        for name, encoder in encoders.items()
        for r in printed(
            saved.rows(
                f"{evaluator} {name}",
                lambda: get_evaluator(evaluator).run(target, config, name, encoder),  # noqa: B023
            )
        )
    ]
    for r in rows:
        for field, value in r.items():
            if field not in ("encoder", "method", "label_fraction"):
                summary[summary_key(r, field)] = value
    summary["evaluate/wall_seconds"] = time.perf_counter() - start
    report.write_summary(workdir, summary)
    write_atomically(
        workdir / "metrics.jsonl", "".join(json.dumps({"step": step, **r}) + "\n" for r in rows)
    )
    evaluators = [get_evaluator(e) for e in config.evaluators]
    settings = [e.settings(config) for e in evaluators]
    plots = [e.plot for e in evaluators if e.plot]
    report.write_transfer_report(
        workdir, config, summary, rows, settings=settings, plots=plots, warnings=warnings(target)
    )
    saved.finished()
    return summary, rows


def warnings(target: Target) -> list[str]:
    """What makes the results of this target mean less than they seem."""
    if target.source.num_classes < 2:
        return [
            f"{target.source.spec} has {target.source.num_classes} class, so every accuracy "
            "is 100% whatever the encoder: evaluate on data of two or more classes."
        ]
    return []


def printed(rows: list[Row]) -> list[Row]:
    """`rows`, each announced in a line as it arrives."""
    for r in rows:
        print(
            f"{r['encoder']} {r['method']} {fraction_name(r['label_fraction'])} labels: "
            f"test {r['test_accuracy']:.4f}, minival {r['minival_accuracy']:.4f}",
            flush=True,
        )
    return rows


def open_target(config, pre_config, task, mesh, saved: SavedWork) -> tuple[Target, list]:
    """The target task (empty data keys: the pretraining run's) with its label splits, the
    task's evaluation inputs and the evaluation's `saved` work, and the images left out as
    undecodable."""
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
    views = eval_views(task, config)
    target = Target(
        source=source,
        train_split=train_split,
        eval_split=eval_split,
        splits=splits,
        mesh=mesh,
        local_batch=parallel.local_batch_size(
            parallel.padded_batch_size(config.batch_size, mesh), mesh
        ),
        feature_input=views[config.features],
        image_input=views["image"],
        crop_input=task.eval_views(crop_proportion=1.0)["image"],
        layers=resolve_layers(config.layers, pre_config.model),
        saved=saved,
    )
    return target, skipped
