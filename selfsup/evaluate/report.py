"""Human- and machine-readable results: `summary.json` (flat keys), `report.md` tables and
PNG plots in a workdir."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import ml_collections


def write_summary(workdir: Path, summary: Mapping[str, object]) -> None:
    Path(workdir, "summary.json").write_text(json.dumps(dict(summary), indent=2) + "\n")


def read_metrics(path: Path) -> list[dict]:
    """The records of a `metrics.jsonl`, oldest first."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def markdown_table(rows: Sequence[Mapping[str, object]], columns: Sequence[str]) -> str:
    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


@contextlib.contextmanager
def _figure(path: Path, *, figsize: tuple[float, float]) -> Iterator:
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
    with _figure(path, figsize=(6, 4)) as ax:
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
    with _figure(path, figsize=(5, 3.5)) as ax:
        names = [r["encoder"] for r in rows]
        accuracies = [100 * r["linear/test_accuracy"] for r in rows]
        bars = ax.bar(names, accuracies, color=["tab:blue", "tab:gray"][: len(rows)])
        ax.bar_label(bars, fmt="%.1f%%")
        ax.set(ylabel="test accuracy (%)", title=title, ylim=(0, 100))
