"""The `evaluate` command: load a pretrained encoder from its workdir, extract frozen features
of the target data, fit the linear probe, and report it next to a random-init encoder."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import ml_collections
from flax import nnx

from selfsup import parallel
from selfsup.config import ConfigError
from selfsup.data import pipeline
from selfsup.data.sources import open_source
from selfsup.evaluate import report
from selfsup.evaluate.features import extract_features
from selfsup.evaluate.knn import knn_accuracy
from selfsup.evaluate.linear import linear_probe
from selfsup.pretext import get_task
from selfsup.train.checkpoint import load_pretrained_model


def evaluate(
    config: ml_collections.ConfigDict, workdir: str | Path
) -> tuple[dict[str, object], list[dict[str, object]]]:
    """Linear probe and k-NN per encoder; writes and returns the flat summary and table rows."""
    if config.features not in ("image", "patches"):
        raise ConfigError(f"unknown config.features={config.features!r}: use 'image' or 'patches'.")
    if not config.checkpoint:
        raise ConfigError(
            "evaluate needs a pretrained encoder: pass --config.checkpoint=PRETRAIN_WORKDIR."
        )
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    mesh = parallel.make_mesh()
    local_batch = parallel.local_batch_size(config.batch_size, mesh)
    pre_config, step, model = load_pretrained_model(config.checkpoint, mesh)
    data = config.data or pre_config.data
    train_split = config.train_split or pre_config.train_split
    eval_split = config.eval_split or pre_config.eval_split
    source = open_source(data, data_dir=config.data_dir or pre_config.data_dir or None)
    task = get_task(pre_config)
    preprocess = functools.partial(
        task.eval_input, crop_fraction=config.crop_fraction, patches=config.features == "patches"
    )

    def features(encoder, split):
        ds = pipeline.eval_dataset(source, split, preprocess, local_batch_size=local_batch)
        return extract_features(encoder, ds, mesh, what=f"{data} split {split!r}")

    encoders = {"pretrained": model.encoder}
    if config.random_init_baseline:
        encoders["random_init"] = task.build_model(nnx.Rngs(config.seed)).encoder
    summary: dict[str, object] = {
        "checkpoint": str(config.checkpoint),
        "checkpoint_step": step,
        "data": data,
        "train_split": train_split,
        "eval_split": eval_split,
        "features": config.features,
    }
    rows = []
    for name, encoder in encoders.items():
        train_x, train_y = features(encoder, train_split)
        test_x, test_y = features(encoder, eval_split)
        result = linear_probe(
            train_x, train_y, test_x, test_y,
            num_classes=source.num_classes,
            l2_grid=list(config.probe.l2_grid),
            val_fraction=config.probe.val_fraction,
            seed=config.seed,
        )  # fmt: skip
        row = {
            "encoder": name,
            "linear/test_accuracy": result.test_accuracy,
            "linear/minival_accuracy": result.minival_accuracy,
            "linear/train_accuracy": result.train_accuracy,
            "linear/l2": result.l2,
        }
        for k in config.knn.ks:
            row[f"knn/k{k}/test_accuracy"] = knn_accuracy(
                train_x, train_y, test_x, test_y,
                num_classes=source.num_classes, k=k, temperature=config.knn.temperature,
            )  # fmt: skip
        rows.append(row)
        prefix = "" if name == "pretrained" else f"{name}/"
        summary.update({prefix + key: value for key, value in row.items() if key != "encoder"})
        print(f"{name} on {eval_split!r}: " + ", ".join(
            f"{key} {value:.4g}" for key, value in row.items() if key.endswith("accuracy")
        ), flush=True)  # fmt: skip
    summary["knn/temperature"] = config.knn.temperature

    report.write_summary(workdir, summary)
    (workdir / "metrics.jsonl").write_text(json.dumps({"step": step, **summary}) + "\n")
    report.plot_accuracy_bars(
        rows, workdir / "linear_probe.png", title=f"Linear probe on {data} ({eval_split})"
    )
    (workdir / "report.md").write_text(
        f"# Frozen features: {data}, trained on {train_split!r}, tested on {eval_split!r}\n\n"
        f"Encoder from `{config.checkpoint}` (step {step}). Accuracies on `{eval_split}`. "
        f"Linear probe: L2 chosen on a {config.probe.val_fraction:.0%} minival split of "
        f"`{train_split}`. k-NN: cosine similarity, votes weighted by exp(s / "
        f"{config.knn.temperature:g}).\n\n"
        + report.markdown_table(rows, list(rows[0]))
        + "\n![linear probe](linear_probe.png)\n"
    )
    return summary, rows
