"""The `demo` command: each of `config.tasks` pretrained on the built-in dataset, then its frozen
encoder probed (linear, k-NN) next to a random-init one; one table of all of them in
`summary.json`, `report.md` and `accuracy.png`, printed at the end."""

from __future__ import annotations

import json
import time
from pathlib import Path

import ml_collections

from selfsup import report
from selfsup.evaluate.run import evaluate
from selfsup.train.loop import pretrain

Row = dict[str, object]
HELDOUT_COLUMNS = ["held-out pretext accuracy", "online probe (held-out)"]


def demo(
    config: ml_collections.ConfigDict, workdir: Path, *, allow_config_change: bool = False
) -> dict[str, object]:
    """Runs every task of `config.tasks` (`pretrain` and `probe` configs) under `workdir/<name>`;
    returns the flat summary it also writes."""
    start = time.perf_counter()
    summary: dict[str, object] = {}
    rows: list[Row] = []
    for name, task in config.tasks.items():
        pretrain_dir, probe_dir = workdir / name / "pretrain", workdir / name / "linear_probe"
        if config.data_dir:
            task.pretrain.data_dir = config.data_dir
        pretrained = pretrain(task.pretrain, pretrain_dir, allow_config_change=allow_config_change)
        task.probe.checkpoint = str(pretrain_dir)
        probed, probe_rows = evaluate(
            task.probe, probe_dir, allow_config_change=allow_config_change
        )
        summary.update({f"{name}/{k}": v for k, v in {**pretrained, **probed}.items()})
        rows += table_rows(name, task.probe.features, pretrained, probe_rows)
    summary["demo/wall_seconds"] = time.perf_counter() - start
    target = f"{probed['data']} ({probed['eval_split']})"
    write_outputs(workdir, list(config.tasks), summary, rows, target=target)
    return summary


def table_rows(name: str, features: str, pretrained: Row, probe_rows: list[Row]) -> list[Row]:
    """The table's rows of one task: its encoder, then the random-init one, each with the test
    accuracy of every probe method at all labels; the encoder's row also has the pretext task's
    own held-out accuracy and the online probe's, which trained alongside."""
    heldout = {
        k.removeprefix("pretrain/heldout/"): v
        for k, v in pretrained.items()
        if k.startswith("pretrain/heldout/") and k.endswith("accuracy")
    }
    online = heldout.pop("online_probe/accuracy", "")
    rows = []
    for encoder, label in (("pretrained", name), ("random_init", f"random init ({name})")):
        accuracy = {
            f"{r['method']}/test_accuracy": r["test_accuracy"]
            for r in probe_rows
            if r["encoder"] == encoder and r["label_fraction"] == 1
        }
        mine = encoder == "pretrained"
        held = [next(iter(heldout.values())), online] if mine else ["", ""]
        rows.append(
            {"encoder": label, "features": features, **accuracy, **dict(zip(HELDOUT_COLUMNS, held))}
        )
    return rows


def write_outputs(
    workdir: Path, tasks: list[str], summary: dict[str, object], rows: list[Row], *, target: str
) -> None:
    """summary.json, metrics.jsonl, accuracy.png and report.md; prints the table."""
    accuracy_columns = [k for k in rows[0] if k.endswith("/test_accuracy")]
    table = report.markdown_table(
        rows, ["encoder", "features", *accuracy_columns, *HELDOUT_COLUMNS]
    )
    report.write_summary(workdir, summary)
    (workdir / "metrics.jsonl").write_text(json.dumps(summary) + "\n")
    bars = [
        {"encoder": r["encoder"], "method": c.removesuffix("/test_accuracy"), "test_accuracy": r[c]}
        for r in rows
        for c in accuracy_columns
    ]
    report.plot_accuracy_bars(bars, workdir / "accuracy.png", title=f"frozen encoders, {target}")
    figures = "![linear probe and k-NN of every encoder](accuracy.png)\n" + "".join(
        f"![{name} training loss]({name}/pretrain/loss_curve.png)\n" for name in tasks
    )
    seconds = summary["demo/wall_seconds"]
    (workdir / "report.md").write_text(
        f"# Demo: {', '.join(tasks)} on the built-in dataset; frozen features vs a "
        "random-init encoder\n\n" + table + f"\nTotal time: {seconds:.0f} s.\n\n" + figures
    )
    print(f"\n{table}\nWrote {workdir}/summary.json and report.md in {seconds:.0f} s.")
