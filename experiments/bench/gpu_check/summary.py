"""Summary of a check.sh run, without JAX: the stage table (passed, failed, timed out or skipped,
with the reason), the CLI smoke's numbers, and the train-step benchmark with its MFU (model FLOPs
from experiments/bench/flops.py over the peak of each row's precision) and XLA's FLOP count
beside the model's.

  python3 summary.py OUT_DIR COLLECT_DIR

Reads OUT_DIR/{stages.tsv, bench_*.json} and the smoke summaries COLLECT_DIR/*.json;
writes OUT_DIR/smoke.json (the smoke summaries merged) and OUT_DIR/summary.md, and prints it.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

BENCH_MODELS = ("resnet50_224", "resnet18_cifar")


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def fmt(value, spec: str = ".3g") -> str:
    if value is None or value == "":
        return ""
    if isinstance(value, float | int) and not isinstance(value, bool):
        return format(value, spec)
    return str(value)


def stages_section(out: Path) -> list[str]:
    lines = ["## Stages", "", "| stage | result | seconds | note |", "|---|---|---|---|"]
    path = out / "stages.tsv"
    if path.exists():
        for row in path.read_text().splitlines()[1:]:
            name, result, seconds, note = (row.split("\t") + [""] * 4)[:4]
            lines.append(f"| {name} | {result} | {seconds} | {note.replace('|', '/')} |")
    return lines


def smoke_section(collect: Path, out: Path) -> list[str]:
    merged = {}
    for path in sorted(collect.glob("*.json")):
        data = read_json(path)
        if data is not None:
            merged[path.stem] = data
    (out / "smoke.json").write_text(json.dumps(merged, indent=1, default=str) + "\n")
    lines = ["", "## CLI smoke (builtin:shapes)", ""]
    if not merged:
        return [*lines, "no smoke summaries (skipped or failed: see stages and check.log)"]
    keep = re.compile(r"(loss|accuracy|images_per_second|steps|resumed|wall_seconds)")
    for name, data in merged.items():
        shown = {k: v for k, v in data.items() if keep.search(k) and isinstance(v, int | float)}
        lines.append(
            f"- **{name}**: " + ", ".join(f"{k} {fmt(v, '.4g')}" for k, v in shown.items())
        )
    return lines


def bench_section(out: Path) -> list[str]:
    lines = ["", "## Train-step benchmark (experiments/bench/train_step.py, one GPU)", ""]
    for model in BENCH_MODELS:
        bench = read_json(out / f"bench_{model}.json")
        if not bench:
            lines.append(f"- {model}: no results (skipped, failed or timed out)")
            continue
        batch = bench["args"]["batch"]
        model_flops, xla_flops = bench["model_flops_per_step"], bench["xla_flops_per_step"]
        lines += [
            f"### {model}, batch {batch} images ({2 * batch} views); device {bench['device']}; "
            f"{bench['peak']}",
            "",
            f"FLOPs/step: model (analytic, the MFU numerator) {fmt(model_flops, '.4g')}; XLA "
            f"compiled (GPU cost analysis) {fmt(xla_flops, '.4g')}"
            + (f" = {xla_flops / model_flops:.2f}x model" if xla_flops else ""),
            "",
            "| mode | precision | images/s | step ms | compile s | memory MB | MFU |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in bench["rows"]:
            step, mfu = row["step_s"], row["mfu"]
            lines.append(
                f"| {row['mode']} | {row['precision']} | {fmt(row['images_per_s'], '.0f')} "
                f"| {fmt(1e3 * step, '.2f')} | {fmt(row['compile_s'], '.1f')} "
                f"| {fmt(row['peak_memory_mb'], '.0f')} | {fmt(mfu and 100 * mfu, '.1f')}% |"
            )
        lines.append("")
    return lines


def main() -> None:
    out = Path(sys.argv[1])
    collect = Path(sys.argv[2]) if len(sys.argv) > 2 else out
    lines = ["# selfsup GPU check", ""]
    lines += stages_section(out)
    lines += smoke_section(collect, out)
    lines += bench_section(out)
    text = "\n".join(lines) + "\n"
    (out / "summary.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
