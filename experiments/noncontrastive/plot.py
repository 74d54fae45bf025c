"""Table, loss curves and accuracy bars of the two-view study, from its workdirs.

  python experiments/noncontrastive/plot.py RUNS_DIR OUT_DIR

reads RUNS_DIR/<task>/{metrics.jsonl,summary.json} and RUNS_DIR/<task>_probe/summary.json (as
`run_cpu.sh` writes them) of each task that has them, prints a Markdown table and writes
OUT_DIR/loss_curves.png and OUT_DIR/accuracy.png. A task without workdirs takes its probe's
accuracies from experiments/teachers/RESULTS.md (`EARLIER`; the same configs, budget and probe),
marked with `*`.
"""

import json
import sys
from pathlib import Path

from selfsup import report

TASKS = {
    "simclr": "SimCLR",
    "byol": "BYOL",
    "moco": "MoCo v2",
    "simsiam": "SimSiam",
    "barlow_twins": "Barlow Twins",
    "vicreg": "VICReg",
}
METHODS = ("linear", "knn/k20", "knn/k200")
# experiments/teachers/RESULTS.md's linear, 20-NN and 200-NN accuracies (%), run by the same
# commands (run_cpu.sh's) before this study.
EARLIER = {"simclr": (40.5, 38.1, 35.7), "byol": (37.5, 34.3, 31.3), "moco": (34.9, 32.5, 30.5)}


def main(runs: Path, out: Path) -> None:
    done = {t: n for t, n in TASKS.items() if (runs / f"{t}_probe" / "summary.json").exists()}
    rows, bars = [], []
    for task, name in done.items():
        probe = json.loads((runs / f"{task}_probe" / "summary.json").read_text())
        pretrain = json.loads((runs / task / "summary.json").read_text())
        accuracy = {m: probe[f"{m}/test_accuracy"] for m in METHODS}
        rows.append(
            {
                "encoder": name,
                **{m: f"{100 * a:.1f}" for m, a in accuracy.items()},
                "online probe": f"{100 * pretrain['pretrain/heldout/online_probe/accuracy']:.1f}",
                "final loss": f"{pretrain['pretrain/loss']:.3f}",
            }
        )
        bars += [{"encoder": name, "method": m, "test_accuracy": a} for m, a in accuracy.items()]
    for task in (t for t in EARLIER if t not in done):
        accuracy = dict(zip(METHODS, (a / 100 for a in EARLIER[task])))
        rows.append(
            {"encoder": f"{TASKS[task]}*", **{m: f"{100 * a:.1f}" for m, a in accuracy.items()}}
        )
        bars += [
            {"encoder": f"{TASKS[task]}*", "method": m, "test_accuracy": a}
            for m, a in accuracy.items()
        ]
    # Every probe has the same random-init baseline (same architecture, seed and input).
    random_init = {m: probe[f"random_init/{m}/test_accuracy"] for m in METHODS}
    rows.append({"encoder": "random init", **{m: f"{100 * a:.1f}" for m, a in random_init.items()}})
    bars += [
        {"encoder": "random init", "method": m, "test_accuracy": a} for m, a in random_init.items()
    ]
    print(report.markdown_table(rows, list(rows[0])))
    title = f"ResNet-18 x1/8, 15 epochs, CIFAR-10 sample ({probe['eval_split']})"
    report.plot_accuracy_bars(bars, out / "accuracy.png", title=title)
    plot_losses(runs, done, out / "loss_curves.png")


def plot_losses(runs: Path, tasks: dict[str, str], path: Path) -> None:
    """One panel per task: each loss has its own scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(tasks), figsize=(4 * len(tasks), 3.5), squeeze=False)
    for ax, (task, name) in zip(axes[0], tasks.items()):
        records = report.read_metrics(runs / task / "metrics.jsonl")
        ax.plot([r["step"] for r in records], [r["loss"] for r in records], label="training")
        held = [r for r in records if "heldout/loss" in r]
        ax.plot(
            [r["step"] for r in held], [r["heldout/loss"] for r in held], "o-", label="held-out"
        )
        ax.set(title=name, xlabel="step", ylabel="loss")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
