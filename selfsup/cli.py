"""Command line: `python -m selfsup {demo,pretrain,evaluate} --config=FILE[:arg] --workdir=DIR`.

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
DEMO_CONFIG = CONFIGS_DIR / "simclr_builtin.py"
COMMANDS = ("demo", "pretrain", "evaluate")
# Stopped by SIGTERM after checkpointing: 128 + 15, what schedulers expect of a SIGTERM'd job.
EXIT_PREEMPTED = 143

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Config file, `configs/X.py` or `configs/X.py:runlocal` (demo: configs/simclr_builtin.py).",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Output directory; re-running pretrain on it resumes its latest checkpoint."
)


def demo(config: ml_collections.ConfigDict, workdir: Path) -> dict[str, object]:
    """SimCLR pretraining (`config`: the built-in dataset's by default), then a linear probe and
    k-NN of its frozen features next to a random-init encoder."""
    from selfsup.evaluate import report
    from selfsup.evaluate.run import evaluate
    from selfsup.train.loop import pretrain

    start = time.perf_counter()
    pretrain_dir = workdir / "pretrain"
    pretrain_summary = pretrain(config, pretrain_dir)
    probe_config = load_config_file(CONFIGS_DIR / "linear_probe.py")
    probe_config.checkpoint = str(pretrain_dir)
    probe_summary, rows = evaluate(probe_config, workdir / "linear_probe")
    summary = {**pretrain_summary, **probe_summary}
    summary["demo/wall_seconds"] = time.perf_counter() - start
    table = report.markdown_table(rows, list(rows[0]))
    report.write_summary(workdir, summary)
    (workdir / "metrics.jsonl").write_text(json.dumps(summary) + "\n")
    (workdir / "report.md").write_text(
        f"# Demo: SimCLR on {config.data}; frozen features vs a random-init encoder\n\n"
        + table
        + f"\nTotal time: {summary['demo/wall_seconds']:.0f} s.\n\n"
        "![training loss](pretrain/loss_curve.png)\n"
        "![linear probe](linear_probe/linear_probe.png)\n"
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
    from selfsup.train.loop import NonFiniteLossError, PreemptedError  # Imports TF.

    try:
        config = _CONFIG.value
        try:
            if config is not None:
                config.to_dict()  # config_flags defers a missing file's error to first use.
        except OSError as e:
            raise ConfigError(f"cannot load --config: {str(e).splitlines()[-1].strip()}") from None
        if command == "demo":
            config = load_config_file(DEMO_CONFIG) if config is None else config
            demo(config, Path(_WORKDIR.value or "runs/demo"))
            return
        if config is None or _WORKDIR.value is None:
            raise ConfigError(f"{command} needs --config=configs/X.py and --workdir=DIR.")
        if command == "pretrain":
            from selfsup.train.loop import pretrain

            pretrain(config, _WORKDIR.value)
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
