"""The training engine that pretraining and fine-tuning share: a step factory (one gradient of a
loss over the parameters, the optimizer update, new BatchNorm statistics out) compiled jitted
and donated over a batch-sharded mesh, and a runner that drives it (metric windows summed on
device, a NaN/Inf stop, logging and checkpoint cadence, SIGTERM, the transfer guard).

What differs between uses comes in as arguments: the loss, and `Hooks` (how a log line is
written, what a held-out evaluation measures, how a checkpoint is saved).
"""

from __future__ import annotations

import contextlib
import dataclasses
import queue
import signal
import threading
from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from selfsup import parallel
from selfsup.train.state import TrainState

# (params, batch_stats, extra, batch, rng) -> (loss to differentiate, (metrics, new batch_stats,
# new extra)): `extra` is `TrainState.extra`, state that is not parameters (no gradient).
LossFn = Callable[..., tuple[jax.Array, tuple[dict[str, jax.Array], Any, Any]]]
# (extra, new params, step) -> (extra, metrics), after the optimizer step (e.g. a teacher's EMA).
UpdateExtraFn = Callable[..., tuple[Any, dict[str, jax.Array]]]


class NonFiniteLossError(RuntimeError):
    """The loss, the gradient or the weights diverged; the message names the step and what to
    resume from."""


class PreemptedError(RuntimeError):
    """SIGTERM or Ctrl-C (SIGINT) arrived; the run stopped between steps (after saving, where
    it saves). `signum` is the signal."""

    def __init__(self, message: str, signum: int = signal.SIGTERM):
        super().__init__(message)
        self.signum = signum


def make_train_step(
    loss_fn: LossFn,
    tx: optax.GradientTransformation,
    *,
    seed: int,
    schedule=None,
    update_extra: UpdateExtraFn | None = None,
):
    """The pure update `(state, batch) -> (state, metrics)`: `metrics` are the loss's own plus
    `grad_norm`, given a `schedule` `learning_rate`, and `update_extra`'s. Only the parameters
    are differentiated; `update_extra` moves the extra state on after the optimizer step. The
    step's key folds the step number into `seed`, so a resumed run draws what an uninterrupted
    one does."""

    def train_step(state: TrainState, batch: dict[str, jax.Array]):
        rng = jax.random.fold_in(jax.random.key(seed), state.step)
        (_, (metrics, batch_stats, extra)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
            state.params, state.batch_stats, state.extra, batch, rng
        )
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {**metrics, "grad_norm": optax.tree.norm(grads)}
        if schedule is not None:
            metrics["learning_rate"] = schedule(state.step)
        if update_extra is not None:
            extra, extra_metrics = update_extra(extra, params, state.step)
            metrics |= extra_metrics
        return TrainState(state.step + 1, params, batch_stats, opt_state, extra), metrics

    return train_step


def jit_step(train_step, mesh: jax.sharding.Mesh, *, state_sharding=None):
    """`train_step` compiled as the runner runs it: state donated, replicated (or as
    `state_sharding`, a TrainState of shardings, places it), batch sharded over the mesh (so
    BatchNorm statistics are the global batch's), metrics replicated."""
    replicated = parallel.replicated(mesh)
    state_sharding = replicated if state_sharding is None else state_sharding
    return jax.jit(
        train_step,
        in_shardings=(state_sharding, parallel.batch_sharding(mesh)),
        out_shardings=(state_sharding, replicated),
        donate_argnums=0,
    )


@contextlib.contextmanager
def sigterm_requests() -> Iterator[threading.Event]:
    """An event that SIGTERM (preemption, `kill`, a scheduler's time limit) or a first Ctrl-C
    (SIGINT, unless ignored) sets while the block runs, so the runner can stop between steps;
    its `signum` is the signal. A second Ctrl-C does what Ctrl-C did before the block (by
    default, KeyboardInterrupt). Restores the old handlers."""
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


@dataclasses.dataclass(frozen=True)
class Cadence:
    """Which steps log, evaluate held-out data and save (0 = never); the last step does all."""

    total_steps: int
    log_every: int
    eval_every: int = 0
    save_every: int = 0

    def due(self, step: int) -> tuple[bool, bool, bool]:
        """(evaluate, log, save) at `step`; an evaluation is always logged."""
        last = step == self.total_steps
        evaluate = bool(self.eval_every) and (step % self.eval_every == 0 or last)
        log = step % self.log_every == 0 or last or evaluate
        save = bool(self.save_every) and (step % self.save_every == 0 or last)
        return evaluate, log, save


class Hooks:
    """What a use of the runner does at its cadence's steps; `log` and `diverged` are required,
    `evaluate` only with `Cadence.eval_every`, `save` only with `Cadence.save_every`."""

    def log(self, step: int, metrics: dict[str, float]) -> dict[str, float]:
        """Records the means since the last log; returns what it recorded."""
        raise NotImplementedError

    def diverged(self, problem: str, step: int) -> NonFiniteLossError:
        """The error that stops a run whose loss or gradient is no longer finite."""
        raise NotImplementedError

    def evaluate(self, state: TrainState) -> dict[str, float]:
        """Held-out metrics at an evaluation step."""
        raise NotImplementedError

    def save(self, step: int, state: TrainState, window: dict) -> None:
        """Saves `state`; `window` (`Window.to_json`) lets a resume continue the log window."""
        raise NotImplementedError


@dataclasses.dataclass
class Window:
    """Device-side metric sums since the last log, and how many steps they cover."""

    sums: dict[str, jax.Array] | None = None
    steps: int = 0

    def add(self, metrics: dict[str, jax.Array]) -> None:
        self.sums = metrics if self.sums is None else jax.tree.map(jnp.add, self.sums, metrics)
        self.steps += 1

    def to_json(self, host_sums: dict[str, np.ndarray] | None) -> dict:
        """The sums exactly (float32 values are exact as JSON doubles), for a checkpoint."""
        sums = {k: [float(v), np.asarray(v).dtype.name] for k, v in (host_sums or {}).items()}
        return {"steps": self.steps, "sums": sums}

    @classmethod
    def from_json(cls, saved: dict, mesh: jax.sharding.Mesh) -> Window:
        if not saved.get("steps"):
            return cls()
        sums = {k: np.asarray(v, jnp.dtype(dtype)) for k, (v, dtype) in saved["sums"].items()}
        return cls(jax.device_put(sums, parallel.replicated(mesh)), saved["steps"])


def run(
    state: TrainState,
    train_step,
    batches: Iterator[dict[str, jax.Array]],
    *,
    start_step: int,
    cadence: Cadence,
    hooks: Hooks,
    window: Window | None = None,
) -> tuple[TrainState, dict[str, float]]:
    """Steps `start_step + 1 .. cadence.total_steps`; returns the final state and the last
    logged metrics. Raises `hooks.diverged(...)` on a non-finite loss or gradient (checked at
    every log or save, so a bad state is never saved) and PreemptedError after SIGTERM."""
    window, host = window or Window(), {}
    batches = prefetch(batches)  # Batches arrive on the devices while the step before runs.
    with sigterm_requests() as sigterm:
        for step in range(start_step + 1, cadence.total_steps + 1):
            batch = next(batches)
            with jax.transfer_guard("disallow"):  # An accidental copy is an error, not a stall.
                state, metrics = train_step(state, batch)
            window.add(metrics)
            evaluate, log, save = cadence.due(step)
            # SIGTERM may reach only some hosts of a pod: all stop at the same step or none.
            # Agreeing is a cross-process sync, so a pod agrees on logging and saving steps only.
            preempted = (log or save or jax.process_count() == 1) and parallel.any_process(
                sigterm.is_set()
            )
            save = save or (preempted and bool(cadence.save_every))
            if log or save:
                sums = jax.device_get(window.sums)  # A NaN anywhere in the window shows.
                host = {k: float(v) / window.steps for k, v in sums.items()}
                if not np.isfinite([host["loss"], host["grad_norm"]]).all():
                    problem = f"loss is {host['loss']} and gradient norm {host['grad_norm']}"
                    raise hooks.diverged(problem, step)
            if evaluate:
                host |= hooks.evaluate(state)
            if log:
                host, window, sums = hooks.log(step, host), Window(), None
            if save:
                hooks.save(step, state, window.to_json(sums))
            if preempted:
                saved = f"saved a checkpoint at step {step}" if save else f"stopped at step {step}"
                raise PreemptedError(
                    f"{signal.Signals(sigterm.signum).name}: {saved}/{cadence.total_steps}; "
                    "re-run the same command to resume.",
                    sigterm.signum,
                )
    return state, host


def prefetch(items: Iterator, size: int = 2) -> Iterator:
    """`items`, produced `size` ahead by a background thread, so the host's input work and the
    host-to-device copies overlap the device's step instead of adding to it. Order is kept; an
    exception in `items` is raised here, at the item it replaced."""
    ready: queue.Queue = queue.Queue(maxsize=size)
    stop = threading.Event()

    def produce() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    with contextlib.suppress(queue.Full):
                        ready.put((True, item), timeout=0.1)
                        break
                if stop.is_set():
                    return
            ready.put((False, None))
        except Exception as error:  # Handed to the consumer, raised at its next item.
            ready.put((False, error))

    threading.Thread(target=produce, daemon=True).start()
    try:
        while True:
            ok, item = ready.get()
            if not ok:
                if item is not None:
                    raise item
                return
            yield item
    finally:
        stop.set()
