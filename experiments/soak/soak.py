"""Soak benchmark: many short pretrain -> restart -> evaluate cycles in one process, recording
resident memory, open file descriptors and threads after each cycle, to show that nothing
accumulates (checkpoint managers, TensorBoard writers, tf.data iterators, workdir locks).

Each cycle, in a fresh workdir: pretrain a tiny SimCLR model; drop its last checkpoint and run
the same command again (a restart: restore the previous checkpoint, resume the data stream,
train to the end); run it once more on the finished workdir (restore only); then the linear
probe and k-NN on the frozen encoder. Writes `results.json`, `RESULTS.md` rows and `soak.png`
into --out.

  python experiments/soak/soak.py --data=folder:../shared/data/cifar10-sample --cycles=20
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def process_figures() -> dict[str, float]:
    """Resident memory (MiB), open file descriptors and OS threads of this process."""
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return {
        "rss_mib": int(status["VmRSS"].split()[0]) / 1024,
        "open_fds": len(os.listdir("/proc/self/fd")),
        "threads": int(status["Threads"]),
        "python_threads": threading.active_count(),
    }


def slope(ys: list[float]) -> float:
    """Least-squares growth per cycle."""
    import numpy as np

    return float(np.polyfit(np.arange(len(ys)), ys, 1)[0]) if len(ys) > 1 else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="folder:../shared/data/cifar10-sample")
    parser.add_argument("--train_split", default="train")
    parser.add_argument("--eval_split", default="val")
    parser.add_argument("--cycles", type=int, default=20)
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--out", default=str(Path(__file__).parent))
    args = parser.parse_args()

    from selfsup import report
    from selfsup.config import load_config_file
    from selfsup.evaluate.run import evaluate
    from selfsup.train.checkpoint import Checkpointer
    from selfsup.train.loop import pretrain

    config = load_config_file(ROOT / "configs" / "simclr_cifar10.py", "runlocal")
    config.update(
        dict(
            data=args.data,
            train_split=args.train_split,
            eval_split=args.eval_split,
            image_size=16,
            batch_size=32,
            total_steps=args.steps,
            log_every_steps=args.steps // 2,
            checkpoint_every_steps=args.steps // 2,
            eval_every_steps=0,
        )
    )
    probe = load_config_file(ROOT / "configs" / "linear_probe.py", "runlocal")
    probe.random_init_baseline = False

    scratch = Path(tempfile.mkdtemp(prefix="soak-"))
    rows, start = [], time.perf_counter()
    try:
        for cycle in range(args.cycles + 1):  # Cycle 0 warms up (imports, first compiles).
            t = time.perf_counter()
            workdir = scratch / f"run{cycle}"
            pretrain(config, workdir)
            checkpointer = Checkpointer(workdir, keep=config.keep_checkpoints)
            checkpointer.manager.delete(args.steps)  # As if killed before the last save.
            checkpointer.close()
            pretrain(config, workdir)  # Restart: resumes at steps / 2.
            summary = pretrain(config, workdir)  # Finished: restores, trains nothing.
            probe.checkpoint = str(workdir)
            evaluation, _ = evaluate(probe, scratch / f"probe{cycle}")
            shutil.rmtree(workdir)
            shutil.rmtree(scratch / f"probe{cycle}")
            row = {
                "cycle": cycle,
                "seconds": time.perf_counter() - t,
                **process_figures(),
                "loss": summary["pretrain/loss"],
                "linear_accuracy": evaluation["linear/test_accuracy"],
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    measured = rows[1:]
    result = {
        "command": "python experiments/soak/soak.py "
        + " ".join(f"--{k}={v}" for k, v in vars(args).items() if k != "out"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "date": time.strftime("%Y-%m-%d"),
        "wall_seconds": time.perf_counter() - start,
        "cycles": rows,
        "after_warmup": {
            f"{key}_per_cycle": slope([r[key] for r in measured])
            for key in ("rss_mib", "open_fds", "threads")
        },
    }
    out = Path(args.out)
    (out / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / "cycles.md").write_text(
        report.markdown_table(
            [{k: round(v, 3) if isinstance(v, float) else v for k, v in r.items()} for r in rows],
            list(rows[0]),
        )
    )
    plot(rows, out / "soak.png")
    print(json.dumps(result["after_warmup"]))


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cycles = [r["cycle"] for r in rows]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.2))
    for ax, key, label in zip(
        axes,
        ("rss_mib", "open_fds", "threads"),
        ("resident memory (MiB)", "open file descriptors", "OS threads"),
    ):
        ax.plot(cycles, [r[key] for r in rows], marker="o")
        ax.set_xlabel("cycle (0 = warm-up)")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    main()
