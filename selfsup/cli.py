"""Command line: `python -m selfsup {demo,pretrain,evaluate,show-augmentations}
--config=FILE[:arg] --workdir=DIR`.

Errors a user can fix (bad config, missing data, NaN loss) end the command with one line that
names the problem and the fix, instead of a stack trace.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import ml_collections
from absl import app, flags, logging
from ml_collections import config_flags

from selfsup.config import ConfigError, load_config_file

CONFIGS_DIR = Path(__file__).resolve().parents[1] / "configs"
DEMO_CONFIG = CONFIGS_DIR / "demo.py"
COMMANDS = ("demo", "pretrain", "evaluate", "show-augmentations")
# Stopped by SIGTERM after checkpointing: 128 + 15, what schedulers expect of a SIGTERM'd job.
EXIT_PREEMPTED = 143

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Config file, `configs/X.py` or `configs/X.py:runlocal` (demo: configs/demo.py).",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Output directory; re-running pretrain on it resumes its latest checkpoint."
)
# Multi-process runs without a scheduler JAX detects (TPU pods, SLURM, Open MPI, Kubernetes
# need none of these): the same command on every process, differing only in --process_id.
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "HOST:PORT of process 0, for a multi-process run."
)
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's id, 0..num_processes-1.")
_NUM_IMAGES = flags.DEFINE_integer(
    "num_images", 8, "show-augmentations: how many training images to show."
)
_RESUME_STEP = flags.DEFINE_integer(
    "resume_step",
    None,
    "pretrain: resume from the checkpoint of this step instead of the latest (after a "
    "divergence); newer checkpoints are moved aside to checkpoints/<step>.abandoned.",
)
_ALLOW_CONFIG_CHANGE = flags.DEFINE_bool(
    "allow_config_change",
    False,
    "Resume a pretraining workdir even though --config differs from the one it was made with.",
)


def demo(config: ml_collections.ConfigDict, workdir: Path) -> dict[str, object]:
    """Pretrains each of `config.tasks` on the built-in dataset, then probes its frozen encoder
    next to a random-init one; one table of all of them."""
    from selfsup.evaluate import report
    from selfsup.evaluate.run import evaluate
    from selfsup.train.loop import pretrain

    start = time.perf_counter()
    summary: dict[str, object] = {}
    rows = []
    for name, task in config.tasks.items():
        pretrain_dir, probe_dir = workdir / name / "pretrain", workdir / name / "linear_probe"
        if config.data_dir:
            task.pretrain.data_dir = config.data_dir
        pretrain_summary = pretrain(
            task.pretrain, pretrain_dir, allow_config_change=_ALLOW_CONFIG_CHANGE.value
        )
        task.probe.checkpoint = str(pretrain_dir)
        probe_summary, probe_rows = evaluate(task.probe, probe_dir)
        summary.update({f"{name}/{k}": v for k, v in {**pretrain_summary, **probe_summary}.items()})
        # The pretext task's own accuracy on held-out images (8-way position, or contrastive),
        # and the online probe's, which trained alongside on stop-gradient features.
        heldout = {
            k.removeprefix("pretrain/heldout/"): v
            for k, v in pretrain_summary.items()
            if k.startswith("pretrain/heldout/") and k.endswith("accuracy")
        }
        online = heldout.pop("online_probe/accuracy", "")
        methods = list(dict.fromkeys(row["method"] for row in probe_rows))
        for prefix in ("", "random_init/"):
            pretrained = prefix == ""
            rows.append(
                {
                    "encoder": name if pretrained else f"random init ({name})",
                    "features": task.probe.features,
                    **{
                        f"{m}/test_accuracy": probe_summary[f"{prefix}{m}/test_accuracy"]
                        for m in methods
                    },
                    "held-out pretext accuracy": next(iter(heldout.values())) if pretrained else "",
                    "online probe (held-out)": online if pretrained else "",
                }
            )
    summary["demo/wall_seconds"] = time.perf_counter() - start
    columns = ["encoder", "features", "linear/test_accuracy"]
    columns += [k for k in rows[0] if k.startswith("knn/")]
    columns += ["held-out pretext accuracy", "online probe (held-out)"]
    table = report.markdown_table(rows, columns)
    report.write_summary(workdir, summary)
    (workdir / "metrics.jsonl").write_text(json.dumps(summary) + "\n")
    bars = [
        {
            "encoder": row["encoder"],
            "method": column.removesuffix("/test_accuracy"),
            "test_accuracy": row[column],
        }
        for row in rows
        for column in columns
        if column.endswith("/test_accuracy")
    ]
    target = f"{probe_summary['data']} ({probe_summary['eval_split']})"
    report.plot_accuracy_bars(bars, workdir / "accuracy.png", title=f"frozen encoders, {target}")
    figures = "![linear probe and k-NN of every encoder](accuracy.png)\n" + "".join(
        f"![{name} training loss]({name}/pretrain/loss_curve.png)\n" for name in config.tasks
    )
    (workdir / "report.md").write_text(
        f"# Demo: {', '.join(config.tasks)} on the built-in dataset; frozen features vs a "
        "random-init encoder\n\n"
        + table
        + f"\nTotal time: {summary['demo/wall_seconds']:.0f} s.\n\n"
        + figures
    )
    print(
        "\n" + table + f"\nWrote {workdir}/summary.json and report.md "
        f"in {summary['demo/wall_seconds']:.0f} s."
    )
    return summary


def main(argv: list[str]) -> None:
    if len(argv) != 2 or argv[1] not in COMMANDS:
        raise app.UsageError(f"usage: python -m selfsup {{{','.join(COMMANDS)}}} [--flags]")
    command = argv[1]
    logging.set_verbosity(logging.WARNING)  # Orbax logs every save at INFO.
    from selfsup.train.engine import NonFiniteLossError, PreemptedError

    try:
        from selfsup import parallel

        parallel.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
        parallel.reuse_step_memory()
        config = _CONFIG.value
        try:
            if config is not None:
                config.to_dict()  # config_flags defers a missing file's error to first use.
        except OSError as e:
            raise ConfigError(f"cannot load --config: {str(e).splitlines()[-1].strip()}") from None
        if command == "demo":
            from selfsup.workdir import claim

            config = load_config_file(DEMO_CONFIG) if config is None else config
            with claim(_WORKDIR.value or "runs/demo", "demo"):
                demo(config, Path(_WORKDIR.value or "runs/demo"))
            return
        if config is None or _WORKDIR.value is None:
            raise ConfigError(f"{command} needs --config=configs/X.py and --workdir=DIR.")
        if command == "pretrain":
            from selfsup.train.loop import pretrain

            pretrain(
                config,
                _WORKDIR.value,
                allow_config_change=_ALLOW_CONFIG_CHANGE.value,
                resume_step=_RESUME_STEP.value,
            )
        elif command == "show-augmentations":
            from selfsup.data.show import show_augmentations

            show_augmentations(config, _WORKDIR.value, num_images=_NUM_IMAGES.value)
        else:
            from selfsup.evaluate.run import evaluate

            evaluate(config, _WORKDIR.value)
    except (ValueError, NonFiniteLossError) as e:  # ConfigError and DataError included.
        sys.exit(f"error: {e}")
    except PreemptedError as e:
        print(e, file=sys.stderr)
        sys.exit(EXIT_PREEMPTED)


def parse_flags(argv: list[str]) -> list[str]:
    """absl flag parsing, with a bad flag or config key reported in one line."""
    try:
        return flags.FLAGS(argv)
    except (flags.Error, KeyError, AttributeError, TypeError, ValueError) as e:
        text = str(e).replace("\\n", "\n").replace("\\'", "'")
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        # A config file that raised: its own error is the last line of the quoted traceback.
        message = lines[-1] if "Traceback" in text else " ".join(lines)
        if isinstance(e, (KeyError, AttributeError)):
            key, *rest = (line.strip("'") for line in lines)
            message = f"unknown config key {key!r}. {' '.join(rest)}"
        sys.exit(f"error: {message}")


def run() -> None:
    app.run(main, flags_parser=parse_flags)
