"""Table and bar chart of the SimCLR augmentation ablation, from the probes' `summary.json`.

  python experiments/simclr_augmentation_ablation/plot.py RUNS_DIR OUT_DIR

reads RUNS_DIR/{simclr_cifar_sample,ablation_no_crop,...}_probe/summary.json (as `run.sh`
writes them), prints a Markdown table and writes OUT_DIR/accuracy.png.
"""

import json
import sys
from pathlib import Path

from selfsup import report

VARIANTS = {
    "simclr_cifar_sample": "crop + colour (full recipe)",
    "ablation_no_color": "crop only",
    "ablation_no_crop": "colour only",
    "ablation_no_crop_no_color": "neither (flip only)",
}
METHODS = ("linear", "knn/k20", "knn/k200")


def main(runs: Path, out: Path) -> None:
    rows, bars = [], []
    for run, name in VARIANTS.items():
        summary = json.loads((runs / f"{run}_probe" / "summary.json").read_text())
        pretrain = json.loads((runs / run / "summary.json").read_text())
        accuracy = {m: summary[f"{m}/test_accuracy"] for m in METHODS}
        contrast = pretrain["pretrain/heldout/contrast_accuracy"]
        rows.append(
            {
                "augmentations": name,
                **{m: f"{100 * a:.1f}" for m, a in accuracy.items()},
                "held-out contrast acc.": f"{100 * contrast:.1f}",
                "training loss": f"{pretrain['pretrain/loss']:.3f}",
            }
        )
        bars += [{"encoder": name, "method": m, "test_accuracy": a} for m, a in accuracy.items()]
    # Every variant's probe has the same random-init baseline (same architecture and seed).
    random_init = {m: summary[f"random_init/{m}/test_accuracy"] for m in METHODS}
    rows.append(
        {"augmentations": "random init", **{m: f"{100 * a:.1f}" for m, a in random_init.items()}}
    )
    bars += [
        {"encoder": "random init", "method": m, "test_accuracy": a} for m, a in random_init.items()
    ]
    print(report.markdown_table(rows, list(rows[0])))
    kind, _, where = summary["data"].partition(":")
    data = Path(where).name if kind == "folder" else summary["data"]
    title = f"SimCLR augmentation ablation, {data} ({summary['eval_split']})"
    report.plot_accuracy_bars(bars, out / "accuracy.png", title=title)


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
