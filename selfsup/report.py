"""Human- and machine-readable results: `summary.json` (flat keys), `report.md` tables and
PNG plots in a workdir."""

from __future__ import annotations

import contextlib
import itertools
import json
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import ml_collections
import numpy as np

from selfsup.files import write_atomically


def write_summary(workdir: Path, summary: Mapping[str, object]) -> None:
    write_atomically(Path(workdir, "summary.json"), json.dumps(dict(summary), indent=2) + "\n")


def read_metrics(path: Path) -> list[dict]:
    """The records of a `metrics.jsonl`, oldest first. A last line cut short (a run killed while
    appending it) is left out, with a note: its step is after the last checkpoint, so a resume
    logs it again (a finished run keeps the line and its summary)."""
    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as e:
            if number == len(lines):
                print(
                    f"{path} line {number}, the last, is cut short (a kill while it was written): "
                    "left out."
                )
                break
            raise ValueError(
                f"{path} line {number} is damaged ({e.msg}): delete that line, or restore the "
                "file from a copy."
            ) from None
    return records


def markdown_table(rows: Sequence[Mapping[str, object]], columns: Sequence[str]) -> str:
    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def figure(path: Path, *, figsize: tuple[float, float]) -> Iterator:
    """Axes to draw on; saved as a PNG at `path` on exit."""
    import matplotlib

    matplotlib.use("Agg")  # Files only: works without a display.
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=figsize)
    yield ax
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_loss_curve(metrics: Sequence[Mapping[str, float]], path: Path, *, title: str) -> None:
    with figure(path, figsize=(6, 4)) as ax:
        ax.plot([m["step"] for m in metrics], [m["loss"] for m in metrics])
        ax.set(xlabel="step", ylabel="training loss (mean since previous point)", title=title)
        ax.grid(alpha=0.3)


def write_pretrain_report(
    workdir: Path, config: ml_collections.ConfigDict, summary: Mapping[str, object]
) -> None:
    metrics = read_metrics(workdir / "metrics.jsonl")
    write_summary(workdir, summary)
    plot_loss_curve(metrics, workdir / "loss_curve.png", title=f"{config.task} on {config.data}")
    rows = [{"metric": k, "value": v} for k, v in summary.items()]
    Path(workdir, "report.md").write_text(
        f"# Pretraining: {config.task} on {config.data}\n\n"
        + markdown_table(rows, ["metric", "value"])
        + "\n![training loss](loss_curve.png)\n"
    )


def plot_accuracy_bars(rows: Sequence[Mapping[str, object]], path: Path, *, title: str) -> None:
    """Test accuracy per method (groups) and encoder (bars, in order of appearance; random-init
    encoders grey): for a single label fraction."""
    with figure(path, figsize=(6, 3.8)) as ax:
        methods = list(dict.fromkeys(r["method"] for r in rows))
        encoders = list(dict.fromkeys(r["encoder"] for r in rows))
        width = 0.8 / len(encoders)
        trained = [e for e in encoders if not str(e).startswith("random")]
        greys = itertools.cycle(["0.5", "0.7", "0.35", "0.85"])
        for i, encoder in enumerate(encoders):
            accuracy = {
                r["method"]: 100 * r["test_accuracy"] for r in rows if r["encoder"] == encoder
            }
            colour = f"C{trained.index(encoder)}" if encoder in trained else next(greys)
            x = np.arange(len(methods)) - 0.4 + width * (i + 0.5)
            bars = ax.bar(
                x, [accuracy.get(m, 0.0) for m in methods], width, color=colour, label=encoder
            )
            ax.bar_label(bars, fmt="%.1f", fontsize=7)
        top = max(100 * float(r["test_accuracy"]) for r in rows)
        ax.set_xticks(range(len(methods)), methods)
        ax.set(ylabel="test accuracy (%)", title=title, ylim=(0, min(100, 10 * (top // 8 + 1))))
        ax.legend(fontsize=8, ncols=2)


def _fraction_label(fraction: float) -> str:
    return f"{100 * fraction:g}%"


def accuracy_table(rows: Sequence[Mapping[str, object]]) -> str:
    """Test accuracy (%) per encoder and method (rows) and label fraction (columns)."""
    fractions = sorted({r["label_fraction"] for r in rows})
    cells: dict[tuple[str, str], dict[float, float]] = {}
    for r in rows:
        cells.setdefault((r["encoder"], r["method"]), {})[r["label_fraction"]] = r["test_accuracy"]
    table = [
        {
            "encoder": encoder,
            "method": method,
            **{_fraction_label(f): f"{100 * acc[f]:.1f}" for f in fractions if f in acc},
        }
        for (encoder, method), acc in cells.items()
    ]
    return markdown_table(table, ["encoder", "method", *map(_fraction_label, fractions)])


def plot_accuracy_vs_labels(rows: Sequence[Mapping[str, object]], path: Path, *, title: str):
    """Test accuracy against label fraction, one line per method; random-init dashed."""
    with figure(path, figsize=(7, 4.5)) as ax:
        methods = list(dict.fromkeys(r["method"] for r in rows))
        colours = {m: f"C{i % 10}" for i, m in enumerate(methods)}
        for encoder, style in (("pretrained", "-"), ("random_init", "--")):
            for method in methods:
                points = sorted(
                    (r["label_fraction"], 100 * r["test_accuracy"])
                    for r in rows
                    if r["encoder"] == encoder and r["method"] == method
                )
                if points:
                    ax.plot(
                        *zip(*points),
                        style,
                        marker="o",
                        color=colours[method],
                        label=f"{method} ({encoder})",
                    )
        ax.set_xscale("log")
        fractions = sorted({r["label_fraction"] for r in rows})
        ax.set_xticks(fractions, [_fraction_label(f) for f in fractions])
        ax.set(xlabel="labelled training examples used", ylabel="test accuracy (%)", title=title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))


def accuracy_by_depth(rows: Sequence[Mapping[str, object]]) -> dict[tuple[str, str], dict]:
    """{(encoder, method without its layer): {layer: test accuracy}} of the frozen evaluators'
    rows at the largest label fraction, layers in order of appearance (shallow to deep)."""
    probed = [r for r in rows if "layer" in r]
    top = max((r["label_fraction"] for r in probed), default=None)
    cells: dict[tuple[str, str], dict] = {}
    for r in probed:
        if r["label_fraction"] == top:
            method = str(r["method"]).removesuffix(f"/{r['layer']}")
            cells.setdefault((str(r["encoder"]), method), {})[str(r["layer"])] = r["test_accuracy"]
    return cells


def plot_accuracy_by_depth(cells: Mapping[tuple[str, str], Mapping], path: Path, *, title: str):
    """Test accuracy against the encoder depth probed (`accuracy_by_depth`'s cells), one line
    per encoder and method; random-init encoders dashed."""
    layers = list(dict.fromkeys(layer for accuracy in cells.values() for layer in accuracy))
    with figure(path, figsize=(7, 4.5)) as ax:
        for i, ((encoder, method), accuracy) in enumerate(cells.items()):
            style = "--" if encoder.startswith("random") else "-"
            points = [(layers.index(k), 100 * v) for k, v in accuracy.items()]
            label = f"{method} ({encoder})"
            ax.plot(*zip(*points), style, marker="o", color=f"C{i % 10}", label=label)
        ax.set_xticks(range(len(layers)), layers)
        ax.set(xlabel="encoder depth probed", ylabel="test accuracy (%)", title=title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))


def accuracy_by_depth_section(workdir: Path, rows: Sequence[Mapping[str, object]], title: str):
    """The report's table and plot of accuracy by depth if several depths were probed, else
    ""."""
    cells = accuracy_by_depth(rows)
    layers = list(dict.fromkeys(layer for accuracy in cells.values() for layer in accuracy))
    if len(layers) < 2:
        return ""
    plot_accuracy_by_depth(cells, workdir / "accuracy_by_depth.png", title=title)
    table = [
        {"encoder": e, "method": m, **{k: f"{100 * v:.1f}" for k, v in accuracy.items()}}
        for (e, m), accuracy in cells.items()
    ]
    return (
        "\n## Accuracy by depth\n\nTest accuracy (%) of each frozen evaluator on each depth's "
        "features (pre_logits: the encoder's output), with the most labels:\n\n"
        + markdown_table(table, ["encoder", "method", *layers])
        + "\n![accuracy by depth](accuracy_by_depth.png)\n"
    )


def write_transfer_report(
    workdir: Path,
    config: ml_collections.ConfigDict,
    summary: Mapping[str, object],
    rows: Sequence[Mapping[str, object]],
    *,
    settings: Sequence[str],
    plots: Sequence[Callable[[Sequence[Mapping[str, object]], Path, str], str]] = (),
    warnings: Sequence[str] = (),
) -> None:
    """`report.md`: `warnings` first, the accuracy table, how settings were chosen (a sentence
    per evaluator, `settings`), every row with its settings, and the plots: accuracy against
    label fraction, then each of `plots` (an evaluator's own: `plot(rows, workdir, title)` draws
    into the workdir and gives report.md's lines, "" for none), then accuracy by depth."""
    title = f"{summary['data']} ({summary['eval_split']})"
    if len({r["label_fraction"] for r in rows}) == 1:
        plot_accuracy_bars(rows, workdir / "accuracy.png", title=title)
        images = "![test accuracy](accuracy.png)\n"
    else:
        plot_accuracy_vs_labels(rows, workdir / "accuracy_vs_labels.png", title=title)
        images = "![accuracy vs label fraction](accuracy_vs_labels.png)\n"
    images += "".join(plot(rows, workdir, title) for plot in plots)
    columns = list(dict.fromkeys(k for r in rows for k in r))
    Path(workdir, "report.md").write_text(
        f"# Transfer: {summary['data']}, trained on {summary['train_split']!r}, "
        f"tested on {summary['eval_split']!r}\n\n"
        + "".join(f"**Warning:** {w}\n\n" for w in warnings)
        + f"Encoder from `{summary['checkpoint']}` (step {summary['checkpoint_step']}) and a "
        f"random-init encoder of the same architecture. Test accuracy (%) on "
        f"`{summary['eval_split']}`:\n\n"
        + accuracy_table(rows)
        + f"\nLabels: a class-stratified minival split ({config.minival_fraction:.0%} of "
        f"`{summary['train_split']}`, {summary['minival_examples']} examples, seed "
        f"{config.seed}) is held out for choosing hyper-parameters only; each label fraction is "
        "a class-balanced subset of the rest (100% = all of the rest), the same for every "
        "method and encoder; at 100% the linear probe (refit once its L2 is chosen) and the "
        "k-NN bank use minival too, as their papers do.\n\n"
        f"Settings: {'; '.join(settings)}. "
        f"Total time: {summary['evaluate/wall_seconds']:.0f} s.\n\n"
        + images
        + accuracy_by_depth_section(workdir, rows, title)
        + "\n## Every result with its settings\n\n"
        + markdown_table(rows, columns)
    )
