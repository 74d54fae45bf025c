"""Pretraining on the engine (`train.engine`): the pretext loss plus the online probe,
metrics.jsonl / TensorBoard / the progress line, held-out pretext metrics, checkpoints and
resume from the workdir's latest (or a chosen) checkpoint.

It knows nothing about a particular pretext task: the task supplies the training example
(TF side), the model and the loss.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import tensorflow as tf

from selfsup import parallel, report
from selfsup.config import (
    VALUE_RULES,
    ConfigError,
    check_values,
    resolve_model_dtype,
    save_config,
)
from selfsup.data import pipeline
from selfsup.data.sources import Source, open_source
from selfsup.files import write_atomically
from selfsup.pretext import get_task, value_rules
from selfsup.pretrained import init_train_state, init_weights
from selfsup.progress import Progress, Throughput
from selfsup.report import read_metrics
from selfsup.train import engine
from selfsup.train.checkpoint import Checkpointer, DamagedCheckpoint, Restored
from selfsup.train.engine import NonFiniteLossError
from selfsup.train.optim import make_optimizer
from selfsup.train.pretext_step import heldout_metrics, jit_heldout_step, jit_train_step
from selfsup.train.state import (
    TrainState,
    abstract_train_state,
    create_train_state,
    model_graphdef,
)
from selfsup.workdir import check_same_config, claim


class MetricsLog:
    """`metrics.jsonl`, TensorBoard scalars and the progress line (loss, images/s, ETA). On
    resume it drops the records past the restored step and rebuilds TensorBoard's events from
    the rest, so each step has one record and one event whatever runs were killed. In a
    multi-process run only process 0 writes and prints; the others just compute what it logs."""

    def __init__(self, workdir: Path, *, start_step: int, total_steps: int, batch_size: int):
        self.path = workdir / "metrics.jsonl"
        self.writes = jax.process_index() == 0
        records = read_metrics(self.path)
        self.kept = [r for r in records if r["step"] <= start_step]
        if self.writes:
            # A finished run's file stays as it is: no step of it is logged again.
            if start_step < total_steps or len(self.kept) < len(records):
                text = "".join(json.dumps(r) + "\n" for r in self.kept)
                write_atomically(self.path, text)  # A kill leaves the old file or the new.
            shutil.rmtree(workdir / "tensorboard", ignore_errors=True)  # Derived from the records.
            self.tensorboard = tf.summary.create_file_writer(str(workdir / "tensorboard"))
            for record in self.kept:
                self._write_events(record["step"], record)
        self.total_steps = total_steps
        self.throughput = Throughput(
            start_step=start_step, total_steps=total_steps, batch_size=batch_size
        )

    def write(self, step: int, metrics: dict[str, float]) -> dict[str, float]:
        """Logs `metrics` plus throughput; returns what it logged."""
        images_per_s, rate = self.throughput.report(step)
        metrics = {**metrics, "images_per_second": images_per_s}
        if not self.writes:
            return metrics
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        self._write_events(step, metrics)
        heldout = "".join(f"  {k} {v:.4f}" for k, v in metrics.items() if k.startswith("heldout/"))
        print(
            f"step {step}/{self.total_steps}  loss {metrics['loss']:.4f}{heldout}{rate}", flush=True
        )
        return metrics

    def _write_events(self, step: int, metrics: dict[str, float]) -> None:
        with self.tensorboard.as_default(step=step):
            for k, v in metrics.items():
                if k != "step":
                    tf.summary.scalar(k, v)
        self.tensorboard.flush()

    def close(self) -> None:
        if self.writes:
            self.tensorboard.close()


def resolve_online_probe(config: ml_collections.ConfigDict, source: Source) -> None:
    """`online_probe_classes=-1` becomes the data's class count (0, no probe, for unlabeled
    data); the resolved value is what config.json records, so the model can be rebuilt."""
    if config.online_probe_classes == -1:
        config.online_probe_classes = source.num_classes
    elif config.online_probe_classes not in (0, source.num_classes):
        raise ConfigError(
            f"config.online_probe_classes={config.online_probe_classes} but {config.data} has "
            f"{source.num_classes} classes: set --config.online_probe_classes=-1 (the data's "
            "count) or 0 (no online probe)."
        )


def schedule_lengths(config: ml_collections.ConfigDict, num_examples: int) -> tuple[int, int]:
    """(total steps, warmup steps); `total_steps > 0` overrides `num_epochs`."""
    total = config.total_steps or max(
        1, math.ceil(config.num_epochs * num_examples / config.batch_size)
    )
    warmup = round(config.optim.warmup_epochs * num_examples / config.batch_size)
    return total, warmup


def pretrain(
    config: ml_collections.ConfigDict,
    workdir: str | Path,
    *,
    allow_config_change: bool = False,
    resume_step: int | None = None,
) -> dict[str, float]:
    """Trains (or resumes) `config` in `workdir`; returns the flat summary it also writes.

    Resumes from the latest checkpoint, or from `resume_step` (newer checkpoints are then
    moved aside, never deleted). Refuses a workdir that a live run holds, that another kind of
    command made, or (unless `allow_config_change`) that a run of a different config made."""
    check_values(config, VALUE_RULES, value_rules(config))
    workdir = Path(workdir)
    # Whatever ends the run, its checkpoint saves finish and its files are closed.
    with claim(workdir, "pretrain"), contextlib.ExitStack() as cleanup:
        return _train(
            config,
            workdir,
            cleanup,
            allow_config_change=allow_config_change,
            resume_step=resume_step,
        )


def initial_state(
    checkpointer: Checkpointer, abstract_state: TrainState, fresh, *, resume_step: int | None
) -> Restored:
    """The state a run starts from: checkpoint `resume_step` (newer ones moved aside as
    `<step>.abandoned`), else the latest readable checkpoint, else `fresh()` at step 0. A
    workdir whose checkpoints were all set aside is refused rather than started over."""
    if unfinished := checkpointer.unfinished_saves():  # This run holds the workdir: all dead.
        print(f"Ignoring unfinished checkpoint saves (cut short): {', '.join(unfinished)}.")
    if resume_step is not None:
        try:
            restored = checkpointer.restore(resume_step, abstract_state)
        except DamagedCheckpoint as e:  # The step the user chose: refused, left as it is.
            how = "pass --resume_step with an intact one, or leave it out for the latest intact"
            raise checkpointer.damaged_error(resume_step, e, how) from None
        for step in checkpointer.steps():
            if step > resume_step:
                aside = checkpointer.move_aside(step, "abandoned")
                print(f"Moved the checkpoint at step {step}, after step {resume_step}, to {aside}.")
        return restored
    if checkpointer.steps():
        return checkpointer.restore_latest(abstract_state)
    if aside := checkpointer.set_aside():
        raise ConfigError(
            f"{checkpointer.directory} has no checkpoint to resume from, only ones set aside "
            f"({', '.join(aside)}): move that folder away to start over, or pass another --workdir."
        )
    return Restored(0, fresh(), {})


# No healthy ResNet weight comes near this; a run whose weights pass it has diverged even if
# its loss is still finite, and a checkpoint of it would only diverge again when resumed.
WEIGHT_LIMIT = 1e6


@jax.jit
def largest_weight(params) -> jax.Array:
    """max |w| over all parameters (NaN if any is NaN)."""
    return jnp.max(jnp.stack([jnp.max(jnp.abs(p)) for p in jax.tree.leaves(params)]))


def divergence_error(problem: str, step: int, checkpointer: Checkpointer) -> NonFiniteLossError:
    steps = checkpointer.steps()
    if not steps:
        where = (
            "no checkpoint was saved yet, so a re-run starts from step 0. Lower "
            "--config.optim.learning_rate (with --allow_config_change, as this workdir holds the "
            "config it ran) or check the data first."
        )
    else:
        where = (
            f"the last checkpoint is step {steps[-1]} in {checkpointer.directory} (kept: "
            f"{', '.join(map(str, steps))}). Lower --config.optim.learning_rate (with "
            "--allow_config_change) or check the data, then re-run to resume from it, or from "
            "an older one with --resume_step=N."
        )
    return NonFiniteLossError(f"{problem} by step {step}; {where}")


@dataclasses.dataclass
class PretrainHooks(engine.Hooks):
    """The engine's hooks for pretraining: metrics.jsonl and TensorBoard, held-out pretext
    metrics (left out of the throughput), and checkpoints never of a diverged state."""

    metrics_log: MetricsLog
    checkpointer: Checkpointer
    heldout: Callable[[TrainState], dict[str, float]] | None

    def log(self, step: int, metrics: dict[str, float]) -> dict[str, float]:
        return self.metrics_log.write(step, metrics)

    def evaluate(self, state: TrainState) -> dict[str, float]:
        start = time.perf_counter()
        metrics = self.heldout(state)
        self.metrics_log.throughput.exclude(time.perf_counter() - start)
        return metrics

    def save(self, step: int, state: TrainState, window: dict) -> None:
        if not (largest := float(largest_weight(state.params))) <= WEIGHT_LIMIT:
            problem = (
                f"the weights have diverged (largest |w| {largest:.3g}, a healthy run stays "
                f"under {WEIGHT_LIMIT:g}; not checkpointed)"
            )
            raise self.diverged(problem, step)
        self.checkpointer.save(step, state, metric_window=window)

    def diverged(self, problem: str, step: int) -> NonFiniteLossError:
        return divergence_error(problem, step, self.checkpointer)


def _train(
    config: ml_collections.ConfigDict,
    workdir: Path,
    cleanup: contextlib.ExitStack,
    *,
    allow_config_change: bool,
    resume_step: int | None,
) -> dict[str, float]:
    mesh = parallel.make_mesh()
    local_batch = parallel.local_batch_size(config.batch_size, mesh)  # Fails before any work.
    source, skipped = _open_data(config, workdir, allow_config_change=allow_config_change)
    task = get_task(config)
    num_examples = source.num_examples(config.train_split)
    total_steps, tx, schedule = _optimizer(config, num_examples)
    checkpointer = Checkpointer(workdir, keep=config.keep_checkpoints)
    cleanup.callback(checkpointer.close)
    restored = initial_state(
        checkpointer,
        abstract_train_state(task, tx, mesh=mesh),
        lambda: fresh_state(config, task, tx, mesh),
        resume_step=resume_step,
    )
    if restored.step:
        print(f"Resuming from checkpoint at step {restored.step}/{total_steps} in {workdir}.")
    if jax.process_index() == 0:
        save_config(config, workdir)
    log = MetricsLog(
        workdir, start_step=restored.step, total_steps=total_steps, batch_size=config.batch_size
    )
    cleanup.callback(log.close)
    graphdef = model_graphdef(task.build_model)
    print(
        f"Pretraining {config.task} on {config.data} ({num_examples} images) for {total_steps} "
        f"steps of {config.batch_size} on {jax.device_count()} devices.",
    )
    length = dict(total_steps=total_steps, steps_per_epoch=num_examples / config.batch_size)
    step = jit_train_step(task, graphdef, tx, schedule, seed=config.seed, mesh=mesh, **length)
    _, host_metrics = engine.run(
        restored.state,
        step,
        _train_batches(config, source, task, mesh, local_batch, start_step=restored.step),
        start_step=restored.step,
        cadence=engine.Cadence(
            total_steps,
            config.log_every_steps,
            eval_every=config.eval_every_steps,
            save_every=config.checkpoint_every_steps,
        ),
        hooks=PretrainHooks(
            log, checkpointer, _heldout(config, source, task, graphdef, tx, mesh, local_batch)
        ),
        window=engine.Window.from_json(restored.metric_window, mesh),
    )
    if not host_metrics and (kept := _kept_summary(log, workdir, total_steps)):
        return kept
    # A finished run re-run trains nothing: its last record stands.
    host_metrics = host_metrics or (log.kept or [{}])[-1]
    summary = {f"pretrain/{k}": v for k, v in host_metrics.items() if k != "step"}
    return _summarised(workdir, config, summary, total_steps, num_examples, len(skipped))


def _kept_summary(log: MetricsLog, workdir: Path, total_steps: int) -> dict | None:
    """The summary of a finished run whose metrics.jsonl lost its last record (a line cut short):
    left as it was, since its last step is not trained again to log it anew; else None."""
    summary = workdir / "summary.json"
    if (log.kept and log.kept[-1]["step"] == total_steps) or not summary.is_file():
        return None
    print(
        f"{log.path} has no record of the last step, {total_steps} (its line was cut short), "
        f"and the run is finished: {summary} is left as it was."
    )
    return json.loads(summary.read_text())


def _summarised(workdir, config, summary, total_steps: int, num_examples: int, skipped: int):
    """The run's flat summary, written with its report by process 0."""
    summary |= {"pretrain/steps": total_steps, "pretrain/examples": num_examples}
    summary |= {"model/dtype": config.model.dtype, "data/skipped_images": skipped}
    if jax.process_index() == 0:
        report.write_pretrain_report(workdir, config, summary)
    return summary


def fresh_state(config: ml_collections.ConfigDict, task, tx, mesh) -> TrainState:
    """Step 0: the model initialised from `config.seed`, its encoder from `config.init_from`
    (read first, so that a wrong file fails before the model is built)."""
    weights = init_weights(config.init_from, config.model) if config.init_from else None
    return init_train_state(create_train_state(task, tx, seed=config.seed, mesh=mesh), weights)


def _optimizer(config: ml_collections.ConfigDict, num_examples: int):
    """(total steps, optimizer, learning-rate schedule) of the run."""
    total_steps, warmup_steps = schedule_lengths(config, num_examples)
    tx, schedule = make_optimizer(
        config.optim,
        batch_size=config.batch_size,
        total_steps=total_steps,
        warmup_steps=warmup_steps,
        steps_per_epoch=num_examples / config.batch_size,
    )
    return total_steps, tx, schedule


def _open_data(config: ml_collections.ConfigDict, workdir: Path, *, allow_config_change: bool):
    """(source, skipped images) of the run, once its config is resolved against the data and
    checked against the workdir's."""
    source = open_source(config.data, data_dir=config.data_dir or None)
    resolve_online_probe(config, source)
    resolve_model_dtype(config, jax.default_backend())
    # After resolving: config.json records resolved values, and this is how a rerun compares.
    check_same_config(config, workdir, allow_change=allow_config_change)
    read_splits = [config.train_split] + ([config.eval_split] if config.eval_every_steps else [])
    return pipeline.drop_undecodable_images(source, read_splits, config.corrupt_images)


def _train_batches(config, source: Source, task, mesh, local_batch: int, *, start_step: int):
    ds = pipeline.train_dataset(
        source,
        config.train_split,
        task.train_example,
        local_batch_size=local_batch,
        seed=config.seed,
        start_step=start_step,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    return pipeline.global_batches(ds, mesh, what=f"{config.data} split {config.train_split!r}")


def _heldout(config, source: Source, task, graphdef, tx, mesh, local_batch: int):
    """`state -> held-out metrics` over `config.eval_split`, or None without evaluations."""
    if not config.eval_every_steps:
        return None
    heldout_step = jit_heldout_step(task, graphdef, tx, seed=config.seed, mesh=mesh)
    ds = pipeline.heldout_dataset(
        source,
        config.eval_split,
        task.train_example,
        local_batch_size=local_batch,
        seed=config.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    what = f"{config.data} split {config.eval_split!r}"
    # Whole global batches (the remainder is dropped).
    total = source.num_examples(config.eval_split) // config.batch_size * config.batch_size

    def batches():
        progress = Progress(f"held-out {what}", total)
        for batch in pipeline.global_batches(ds, mesh, what=what):
            yield batch
            progress.advance(config.batch_size)

    return lambda state: heldout_metrics(heldout_step, state, batches())
