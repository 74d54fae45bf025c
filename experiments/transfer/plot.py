"""Freeze or fine-tune? One figure from the transfer runs of both pretext tasks.

  python experiments/transfer/plot.py OUT.png NAME=RUN_DIR [NAME=RUN_DIR ...]

reads each RUN_DIR/summary.json (a `configs/transfer.py` run) and draws, per label fraction,
test accuracy against how much of the encoder is trained: frozen features with the linear probe,
then fine-tuning with 4, 2 and 0 bottom stages frozen. Solid lines are the pretrained encoders,
dashed ones the random-init encoder of the same run.
"""

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

FRACTIONS = ("1%", "10%", "100%")
METHODS = ("linear", "finetune/freeze4", "finetune/freeze2", "finetune/freeze0")
TICKS = ("linear probe\n(all frozen)", "fine-tune\n4 frozen", "2 frozen", "0 frozen")


def accuracy(summary: dict, prefix: str, method: str, fraction: str) -> float:
    labels = "" if fraction == "100%" else f"labels{fraction}/"
    return 100 * summary[f"{prefix}{method}/{labels}test_accuracy"]


def main(out: Path, runs: dict[str, Path]) -> None:
    fig, axes = plt.subplots(1, len(FRACTIONS), figsize=(12, 4), sharey=True)
    for i, (name, run) in enumerate(runs.items()):
        summary = json.loads((run / "summary.json").read_text())
        for ax, fraction in zip(axes, FRACTIONS):
            for prefix, style, label in (("", "-", name), ("random_init/", "--", None)):
                points = [accuracy(summary, prefix, m, fraction) for m in METHODS]
                ax.plot(points, style, marker="o", color=f"C{i}", label=label)
    for ax, fraction in zip(axes, FRACTIONS):
        ax.set_xticks(range(len(METHODS)), TICKS, fontsize=8)
        ax.set_title(f"{fraction} of the labels")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("test accuracy (%)")
    axes[-1].plot([], [], "--", color="grey", label="random init (dashed)")
    axes[-1].legend(fontsize=8)
    kind, _, where = summary["data"].partition(":")
    data = Path(where).name if kind == "folder" else summary["data"]
    fig.suptitle(f"Freeze or fine-tune? {data} ({summary['eval_split']})")
    fig.tight_layout()
    fig.savefig(out, dpi=120)


if __name__ == "__main__":
    main(Path(sys.argv[1]), {k: Path(v) for k, v in (a.split("=", 1) for a in sys.argv[2:])})
