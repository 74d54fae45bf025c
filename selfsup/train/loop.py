"""The pretraining loop: a jitted, donated train step over a sharded batch, periodic logging
with throughput and ETA, checkpoints, and resume from the workdir's latest checkpoint.

It knows nothing about a particular pretext task: the task supplies the training example
(TF side), the model and the loss.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tensorflow as tf
from flax import nnx

from selfsup import parallel
from selfsup.config import ConfigError, check_minimums, save_config
from selfsup.data import pipeline
from selfsup.data.sources import Source, open_source
from selfsup.evaluate import report
from selfsup.evaluate.report import read_metrics
from selfsup.models.heads import online_probe_loss
from selfsup.pretext import get_task
from selfsup.train.checkpoint import Checkpointer
from selfsup.train.optim import make_optimizer
from selfsup.train.state import (
    TrainState,
    abstract_train_state,
    create_train_state,
    model_graphdef,
)
from selfsup.workdir import check_same_config, claim

# Keys the loop divides by, counts with or sizes arrays from; checked before any work.
PRETRAIN_MINIMUMS = {
    "batch_size": 1,
    "total_steps": 0,
    "num_epochs": 0,
    "log_every_steps": 1,
    "eval_every_steps": 0,
    "checkpoint_every_steps": 1,
    "keep_checkpoints": 1,
}


class NonFiniteLossError(RuntimeError):
    """The loss or the gradient became NaN or infinite; the message names the step and the last
    checkpoint."""


class PreemptedError(RuntimeError):
    """SIGTERM or Ctrl-C (SIGINT) arrived; a checkpoint of the current step was saved before
    stopping. `signum` is the signal."""

    def __init__(self, message: str, signum: int = signal.SIGTERM):
        super().__init__(message)
        self.signum = signum


@contextlib.contextmanager
def sigterm_requests() -> Iterator[threading.Event]:
    """An event that SIGTERM (preemption, `kill`, a scheduler's time limit) or a first Ctrl-C
    (SIGINT, unless ignored) sets while the block runs, so the loop can checkpoint and stop
    between steps; its `signum` is the signal. A second Ctrl-C does what Ctrl-C did before the
    block (by default, KeyboardInterrupt). Restores the old handlers."""
    requested = threading.Event()
    requested.signum = signal.SIGTERM  # What a process stopped by another's signal reports.
    signums = [signal.SIGTERM]
    if signal.getsignal(signal.SIGINT) is not signal.SIG_IGN:  # Ignored in background jobs.
        signums.append(signal.SIGINT)

    def request(signum, frame):
        if requested.is_set() and signum == signal.SIGINT and callable(previous[signum]):
            previous[signum](signum, frame)
            return
        requested.signum = signum
        requested.set()

    previous = {s: signal.signal(s, request) for s in signums}
    try:
        yield requested
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def make_train_step(task, graphdef, tx, schedule, *, seed: int):
    """The pure update `(state, batch) -> (state, metrics)`."""

    def train_step(state: TrainState, batch: dict[str, jax.Array]):
        rng = jax.random.fold_in(jax.random.key(seed), state.step)

        def loss_fn(params):
            model = nnx.merge(graphdef, params, state.batch_stats)
            loss, metrics, features = task.loss(model, batch, rng, train=True)
            probe_loss, probe_metrics = online_probe_loss(
                model.online_probe, features, batch["label"]
            )
            batch_stats = nnx.to_pure_dict(nnx.state(model, nnx.BatchStat))
            return loss + probe_loss, (loss, {**metrics, **probe_metrics}, batch_stats)

        (_, (loss, metrics, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            **metrics,
            "loss": loss,
            "grad_norm": optax.tree.norm(grads),
            "learning_rate": schedule(state.step),
        }
        return TrainState(state.step + 1, params, batch_stats, opt_state), metrics

    return train_step


def jit_train_step(task, graphdef, tx, schedule, *, seed: int, mesh: jax.sharding.Mesh):
    """`make_train_step` compiled as pretraining runs it (and experiments/bench measures it):
    state replicated and donated, batch sharded over the mesh, metrics replicated."""
    state_sharding = parallel.replicated(mesh)
    return jax.jit(
        make_train_step(task, graphdef, tx, schedule, seed=seed),
        in_shardings=(state_sharding, parallel.batch_sharding(mesh)),
        out_shardings=(state_sharding, parallel.replicated(mesh)),
        donate_argnums=0,
    )


def make_heldout_step(task, graphdef, *, seed: int):
    """`(state, batch) -> metrics` of the pretext loss and the online probe in inference mode
    (running BatchNorm statistics, no dropout), for held-out images."""

    def heldout_step(state: TrainState, batch: dict[str, jax.Array]):
        model = nnx.merge(graphdef, state.params, state.batch_stats)
        loss, metrics, features = task.loss(model, batch, jax.random.key(seed), train=False)
        _, probe_metrics = online_probe_loss(model.online_probe, features, batch["label"])
        return {**metrics, **probe_metrics, "loss": loss}

    return heldout_step


def heldout_metrics(heldout_step, state: TrainState, batches) -> dict[str, float]:
    """Means of the pretext metrics over every held-out batch, as `heldout/<name>`."""
    total, count = None, 0
    for batch in batches:
        metrics = heldout_step(state, batch)
        total = metrics if total is None else jax.tree.map(jnp.add, total, metrics)
        count += 1
    return {f"heldout/{k}": float(v) / count for k, v in jax.device_get(total).items()}


class MetricsLog:
    """`metrics.jsonl`, TensorBoard scalars and the progress line (loss, images/s, ETA); on
    resume, drops the lines past the restored step. In a multi-process run only process 0
    writes and prints; the others just compute what it logs."""

    def __init__(self, workdir: Path, *, start_step: int, total_steps: int, batch_size: int):
        self.path = workdir / "metrics.jsonl"
        self.writes = jax.process_index() == 0
        if self.writes:
            kept = [r for r in read_metrics(self.path) if r["step"] <= start_step]
            self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
            self.tensorboard = tf.summary.create_file_writer(str(workdir / "tensorboard"))
        self.total_steps, self.batch_size = total_steps, batch_size
        self.timer = (time.perf_counter(), start_step)  # Throughput is measured from here.
        self.first_write = True

    def exclude(self, seconds: float) -> None:
        """Leaves `seconds` of non-training work (held-out evaluation) out of the throughput."""
        start_time, start_step = self.timer
        self.timer = (start_time + seconds, start_step)

    def write(self, step: int, metrics: dict[str, float]) -> dict[str, float]:
        """Logs `metrics` plus throughput; returns what it logged."""
        start_time, start_step = self.timer
        images_per_s = (step - start_step) * self.batch_size / (time.perf_counter() - start_time)
        if self.first_write:  # From the first write on, compilation no longer skews throughput.
            self.timer, self.first_write = (time.perf_counter(), step), False
        metrics = {**metrics, "images_per_second": images_per_s}
        if not self.writes:
            return metrics
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")
        with self.tensorboard.as_default(step=step):
            for k, v in metrics.items():
                tf.summary.scalar(k, v)
        self.tensorboard.flush()
        eta = (self.total_steps - step) * self.batch_size / images_per_s
        heldout = "".join(f"  {k} {v:.4f}" for k, v in metrics.items() if k.startswith("heldout/"))
        print(
            f"step {step}/{self.total_steps}  loss {metrics['loss']:.4f}{heldout}  "
            f"{images_per_s:.1f} images/s  ETA {format_duration(eta)}",
            flush=True,
        )
        return metrics

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


def format_duration(seconds: float) -> str:
    seconds = int(seconds)
    return (
        f"{seconds // 3600}h{seconds // 60 % 60:02d}m"
        if seconds >= 3600
        else (f"{seconds // 60}m{seconds % 60:02d}s")
    )


def pretrain(
    config: ml_collections.ConfigDict, workdir: str | Path, *, allow_config_change: bool = False
) -> dict[str, float]:
    """Trains (or resumes) `config` in `workdir`; returns the flat summary it also writes.

    Refuses a workdir that a live run holds, and (unless `allow_config_change`) one that an
    earlier run of a different config made."""
    check_minimums(config, PRETRAIN_MINIMUMS)
    workdir = Path(workdir)
    # Whatever ends the run, its checkpoint saves finish and its files are closed.
    with claim(workdir), contextlib.ExitStack() as cleanup:
        return _train(config, workdir, cleanup, allow_config_change=allow_config_change)


def _train(
    config: ml_collections.ConfigDict,
    workdir: Path,
    cleanup: contextlib.ExitStack,
    *,
    allow_config_change: bool,
) -> dict[str, float]:
    mesh = parallel.make_mesh()
    local_batch = parallel.local_batch_size(config.batch_size, mesh)
    source = open_source(config.data, data_dir=config.data_dir or None)
    resolve_online_probe(config, source)
    # After resolving: config.json records resolved values, and this is how a rerun compares.
    check_same_config(config, workdir, allow_change=allow_config_change)
    read_splits = [config.train_split] + ([config.eval_split] if config.eval_every_steps else [])
    source, skipped = pipeline.drop_undecodable_images(source, read_splits, config.corrupt_images)
    task = get_task(config)
    num_examples = source.num_examples(config.train_split)
    total_steps, warmup_steps = schedule_lengths(config, num_examples)
    tx, schedule = make_optimizer(
        config.optim,
        batch_size=config.batch_size,
        total_steps=total_steps,
        warmup_steps=warmup_steps,
        steps_per_epoch=num_examples / config.batch_size,
    )

    checkpointer = Checkpointer(workdir, keep=config.keep_checkpoints)
    cleanup.callback(checkpointer.close)
    if unfinished := checkpointer.unfinished_saves():  # This run holds the workdir: all dead.
        print(f"Ignoring unfinished checkpoint saves (cut short): {', '.join(unfinished)}.")
    if checkpointer.latest_step() is None:
        start_step = 0
        state = create_train_state(task.build_model, tx, seed=config.seed, mesh=mesh)
    else:
        start_step, state = checkpointer.restore_latest(
            abstract_train_state(task.build_model, tx, mesh=mesh)
        )
        print(f"Resuming from checkpoint at step {start_step}/{total_steps} in {workdir}.")
    if jax.process_index() == 0:
        save_config(config, workdir)
    log = MetricsLog(
        workdir, start_step=start_step, total_steps=total_steps, batch_size=config.batch_size
    )
    cleanup.callback(log.close)

    state_sharding = parallel.replicated(mesh)
    graphdef = model_graphdef(task.build_model)
    train_step = jit_train_step(task, graphdef, tx, schedule, seed=config.seed, mesh=mesh)
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
    batches = pipeline.global_batches(ds, mesh, what=f"{config.data} split {config.train_split!r}")
    if config.eval_every_steps:
        heldout_step = jax.jit(
            make_heldout_step(task, graphdef, seed=config.seed),
            in_shardings=(state_sharding, parallel.batch_sharding(mesh)),
            out_shardings=parallel.replicated(mesh),
        )
        heldout_ds = pipeline.heldout_dataset(
            source,
            config.eval_split,
            task.train_example,
            local_batch_size=local_batch,
            seed=config.seed,
            process_index=jax.process_index(),
            process_count=jax.process_count(),
        )
    print(
        f"Pretraining {config.task} on {config.data} ({num_examples} images) for "
        f"{total_steps} steps of {config.batch_size} on {jax.device_count()} devices."
    )

    last_saved = start_step
    host_metrics = (read_metrics(log.path) or [{}])[-1]
    window, window_steps = None, 0  # Device-side metric sums since the last log.
    with sigterm_requests() as sigterm:
        for step in range(start_step + 1, total_steps + 1):
            batch = next(batches)  # The one intended host-to-device copy, outside the guard.
            with jax.transfer_guard("disallow"):
                state, metrics = train_step(state, batch)
            window = metrics if window is None else jax.tree.map(jnp.add, window, metrics)
            window_steps += 1
            # SIGTERM may reach only some hosts of a pod: all stop at the same step or none.
            preempted = parallel.any_process(sigterm.is_set())
            is_last = step == total_steps
            should_eval = bool(config.eval_every_steps) and (
                step % config.eval_every_steps == 0 or is_last
            )
            should_log = step % config.log_every_steps == 0 or is_last or should_eval
            should_save = step % config.checkpoint_every_steps == 0 or is_last
            if should_log or should_save or preempted:
                # Means since the last log; a NaN anywhere in the window shows in the mean.
                host_metrics = {
                    k: float(v) / window_steps for k, v in jax.device_get(window).items()
                }
                if not np.isfinite([host_metrics["loss"], host_metrics["grad_norm"]]).all():
                    last_good = (
                        f"is step {last_saved} in {workdir}/checkpoints"
                        if checkpointer.latest_step() is not None
                        else "does not exist yet"
                    )
                    raise NonFiniteLossError(
                        f"loss is {host_metrics['loss']} and gradient norm "
                        f"{host_metrics['grad_norm']} by step {step}; the last good checkpoint "
                        f"{last_good}. Lower --config.optim."
                        "learning_rate (with --allow_config_change) or check the data, then "
                        "re-run to resume from it."
                    )
            if should_eval:
                start = time.perf_counter()
                host_metrics |= heldout_metrics(
                    heldout_step,
                    state,
                    pipeline.global_batches(
                        heldout_ds, mesh, what=f"{config.data} split {config.eval_split!r}"
                    ),
                )
                log.exclude(time.perf_counter() - start)
            if should_log:
                host_metrics = log.write(step, host_metrics)
                window, window_steps = None, 0
            if should_save or preempted:
                checkpointer.save(step, state)
                last_saved = step
            if preempted:
                raise PreemptedError(
                    f"{signal.Signals(sigterm.signum).name}: saved a checkpoint at step "
                    f"{step}/{total_steps} in {workdir}/checkpoints; re-run the same command to "
                    "resume from it.",
                    sigterm.signum,
                )
    summary = {f"pretrain/{k}": v for k, v in host_metrics.items() if k != "step"}
    summary["pretrain/steps"] = total_steps
    summary["pretrain/examples"] = num_examples
    summary["data/skipped_images"] = len(skipped)
    if jax.process_index() == 0:
        report.write_pretrain_report(workdir, config, summary)
    return summary
