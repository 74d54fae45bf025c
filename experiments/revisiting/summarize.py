"""Table and accuracy-by-depth plot of the Revisiting study, from its runs' summary.json files.

  python experiments/revisiting/summarize.py RUNS_DIR OUT_DIR

reads RUNS_DIR/<task>/summary.json, RUNS_DIR/<task>_probe/summary.json and RUNS_DIR/times.tsv
(as `run.sh` writes them), prints a Markdown table (linear-probe accuracy at each depth, the
best depth, held-out pretext accuracy, times) and writes OUT_DIR/accuracy_by_depth.png: one line
per encoder, and dashed grey lines for the random-init encoder, one per distinct input.
"""

import json
import sys
from pathlib import Path

from selfsup import report

TASKS = {
    "rotation": "rotation",
    "jigsaw": "jigsaw",
    "exemplar": "exemplar",
    "relpatch": "relative patch",
    "simclr": "SimCLR",
}
LAYERS = ("stage1", "stage2", "stage3", "pre_logits")


def linear_by_depth(probe: dict, encoder: str) -> dict[str, float]:
    prefix = "" if encoder == "pretrained" else f"{encoder}/"
    return {
        layer: probe[f"{prefix}linear{'' if layer == 'pre_logits' else '/' + layer}/test_accuracy"]
        for layer in LAYERS
    }


def main(runs: Path, out: Path) -> None:
    times = dict(line.split("\t") for line in (runs / "times.tsv").read_text().splitlines())
    rows, trained, baselines = [], {}, {}
    for task, name in TASKS.items():
        pretrain = json.loads((runs / task / "summary.json").read_text())
        probe = json.loads((runs / f"{task}_probe" / "summary.json").read_text())
        trained[name] = accuracy = linear_by_depth(probe, "pretrained")
        pretext = pretrain.get("pretrain/heldout/pretext_accuracy") or pretrain.get(
            "pretrain/heldout/contrast_accuracy"
        )
        rows.append(row(name, accuracy, pretext=f"{100 * pretext:.1f}", seconds=times, task=task))
        # Tasks that feed the encoder the same evaluation input share one random-init baseline
        # (the encoder is initialised alike from the seed): one row and line per input.
        baseline = linear_by_depth(probe, "random_init")
        baselines.setdefault(tuple(baseline.values()), (baseline, []))[1].append(name)
    lines = {name: (accuracy, True) for name, accuracy in trained.items()}
    for baseline, names in baselines.values():
        label = f"random init ({' and '.join(names)} input)"
        rows.append(row(label, baseline))
        lines[label] = (baseline, False)
    print(report.markdown_table(rows, list(rows[0])))
    plot(lines, out / "accuracy_by_depth.png")


def row(encoder: str, accuracy: dict[str, float], *, pretext="", seconds=None, task="") -> dict:
    return {
        "encoder": encoder,
        **{layer: f"{100 * a:.1f}" for layer, a in accuracy.items()},
        "best depth": max(accuracy, key=accuracy.get),
        "held-out pretext accuracy": pretext,
        "pretrain / probe (s)": f"{seconds[task]} / {seconds[task + '_probe']}" if task else "",
    }


def plot(lines: dict[str, tuple[dict[str, float], bool]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    greys = iter(["0.25", "0.5", "0.7", "0.85"])
    for i, (label, (accuracy, trained)) in enumerate(lines.items()):
        ax.plot(
            range(len(LAYERS)),
            [100 * accuracy[layer] for layer in LAYERS],
            "-" if trained else "--",
            marker="o" if trained else "x",
            color=f"C{i}" if trained else next(greys),
            label=label,
        )
    ax.set_xticks(range(len(LAYERS)), ["stage1", "stage2", "stage3", "stage4\n(pre_logits)"])
    ax.set(
        xlabel="encoder depth probed (global average of the stage's output)",
        ylabel="linear probe accuracy on val (%)",
        title="Linear probe by depth: CIFAR-10 sample, ResNet-18 x1/8",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
