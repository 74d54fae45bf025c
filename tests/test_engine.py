"""The engine on a toy least-squares problem: the step against a hand-written update, the
runner's cadence, log means, NaN stop and SIGTERM, and metric windows that survive JSON."""

import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from selfsup import parallel
from selfsup.train import engine
from selfsup.train.state import TrainState

LR = 0.1


def squared_error(params, batch_stats, extra, batch, rng):
    residual = batch["x"] @ params["w"] - batch["y"]
    loss = jnp.mean(residual**2)
    return loss, ({"loss": loss, "max_residual": jnp.max(jnp.abs(residual))}, batch_stats, extra)


def toy_batches(mesh, steps: int, *, nan_at: int | None = None):
    rng = np.random.default_rng(0)
    for step in range(1, steps + 1):
        x = rng.normal(size=(16, 4)).astype(np.float32)
        y = (x @ np.arange(4, dtype=np.float32)).astype(np.float32)
        if step == nan_at:
            y[0] = np.nan
        yield jax.device_put({"x": x, "y": y}, parallel.batch_sharding(mesh))


def toy_state(tx) -> TrainState:
    params = {"w": jnp.zeros(4, jnp.float32)}
    state = TrainState(jnp.zeros((), jnp.int32), params, {}, tx.init(params))
    return jax.device_put(state, parallel.replicated(parallel.make_mesh()))


class Recorder(engine.Hooks):
    def __init__(self):
        self.logged, self.saved = [], []

    def log(self, step, metrics):
        self.logged.append((step, metrics))
        return metrics

    def evaluate(self, state):
        return {"heldout/w0": float(state.params["w"][0])}

    def save(self, step, state, window):
        # A copy: the next step donates `state`'s buffers.
        self.saved.append((step, window, jax.tree.map(jnp.copy, state)))

    def diverged(self, problem, step):
        return engine.NonFiniteLossError(f"{problem} at {step}")


def test_the_step_is_one_sgd_update_with_its_gradient_norm_and_learning_rate():
    tx = optax.sgd(LR)
    step = engine.make_train_step(squared_error, tx, seed=0, schedule=lambda count: LR + count)
    batch = next(toy_batches(parallel.make_mesh(), 1))
    state, metrics = jax.jit(step)(toy_state(tx), batch)
    x, y = np.asarray(batch["x"], np.float64), np.asarray(batch["y"], np.float64)
    grad = 2 * x.T @ (x @ np.zeros(4) - y) / len(y)  # d/dw mean((xw - y)^2) at w = 0.
    np.testing.assert_allclose(state.params["w"], -LR * grad, rtol=1e-5)
    np.testing.assert_allclose(metrics["grad_norm"], np.linalg.norm(grad), rtol=1e-5)
    np.testing.assert_allclose(metrics["loss"], np.mean(y**2), rtol=1e-5)
    assert int(state.step) == 1 and metrics["learning_rate"] == np.float32(LR)  # schedule(0).


def test_extra_state_reaches_the_loss_gets_no_gradient_and_moves_after_the_update():
    """A toy teacher: the loss pulls w towards extra["t"] (read, not trained), the loss sees
    a counter it advances, and `update_extra` moves t halfway to the updated w."""

    def loss_fn(params, batch_stats, extra, batch, rng):
        loss = jnp.sum((params["w"] - extra["t"]) ** 2)
        return loss, ({"loss": loss}, batch_stats, {**extra, "seen": extra["seen"] + 1})

    def update_extra(extra, params, step):
        t = extra["t"] + 0.5 * (params["w"] - extra["t"])
        return {**extra, "t": t}, {"step_seen": step}

    tx = optax.sgd(LR)
    step = engine.make_train_step(loss_fn, tx, seed=0, update_extra=update_extra)
    w, t = np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.5, -1.0, 2.0, 0.0])
    params = {"w": jnp.asarray(w, jnp.float32)}
    extra = {"t": jnp.asarray(t, jnp.float32), "seen": jnp.zeros((), jnp.int32)}
    state = TrainState(jnp.asarray(3, jnp.int32), params, {}, tx.init(params), extra)
    state, metrics = jax.jit(step)(state, {})
    new_w = w - LR * 2 * (w - t)  # The gradient is the parameters' only: d/dw sum (w - t)^2.
    np.testing.assert_allclose(state.params["w"], new_w, rtol=1e-6)
    np.testing.assert_allclose(state.extra["t"], t + 0.5 * (new_w - t), rtol=1e-6)
    assert int(state.extra["seen"]) == 1 and int(metrics["step_seen"]) == 3
    np.testing.assert_allclose(metrics["grad_norm"], np.linalg.norm(2 * (w - t)), rtol=1e-6)


@pytest.mark.parametrize(
    "cadence, step, due",
    [
        (engine.Cadence(10, log_every=3), 3, (False, True, False)),
        (engine.Cadence(10, log_every=3), 4, (False, False, False)),
        (engine.Cadence(10, log_every=3), 10, (False, True, False)),  # The last step logs.
        (engine.Cadence(10, log_every=3, eval_every=4), 4, (True, True, False)),
        (engine.Cadence(10, log_every=3, save_every=5), 5, (False, False, True)),
        (engine.Cadence(10, log_every=3, eval_every=4, save_every=5), 10, (True, True, True)),
    ],
)
def test_cadence(cadence, step, due):
    assert cadence.due(step) == due


def run_toy(steps=7, *, nan_at=None, state=None, window=None, start_step=0, **cadence):
    mesh = parallel.make_mesh()
    tx = optax.sgd(LR)
    train_step = engine.jit_step(engine.make_train_step(squared_error, tx, seed=0), mesh)
    batches = toy_batches(mesh, steps, nan_at=nan_at)
    for _ in range(start_step):
        next(batches)
    hooks = Recorder()
    state, last = engine.run(
        state or toy_state(tx),
        train_step,
        batches,
        start_step=start_step,
        cadence=engine.Cadence(steps, **cadence),
        hooks=hooks,
        window=window,
    )
    return hooks, state, last


def test_logs_carry_the_mean_of_the_steps_since_the_last_log():
    hooks, state, last = run_toy(log_every=3)
    assert [step for step, _ in hooks.logged] == [3, 6, 7]
    # Replay the same steps one by one and average their losses by hand.
    mesh = parallel.make_mesh()
    tx = optax.sgd(LR)
    step_fn = jax.jit(engine.make_train_step(squared_error, tx, seed=0))
    replay, losses = toy_state(tx), []
    for batch in toy_batches(mesh, 7):
        replay, metrics = step_fn(replay, batch)
        losses.append(float(metrics["loss"]))
    for (_, logged), window in zip(hooks.logged, ([0, 1, 2], [3, 4, 5], [6])):
        np.testing.assert_allclose(logged["loss"], np.mean([losses[i] for i in window]), rtol=1e-6)
    assert last == hooks.logged[-1][1]
    np.testing.assert_allclose(state.params["w"], replay.params["w"], rtol=1e-6)


def test_a_nan_stops_the_run_at_the_next_log_before_any_save():
    with pytest.raises(engine.NonFiniteLossError, match=r"loss is nan .* at 6"):
        run_toy(nan_at=5, log_every=3, save_every=3)


def test_a_saved_window_resumes_to_the_same_log_line():
    full, _, _ = run_toy(log_every=3, save_every=2)
    step, window, state = full.saved[1]  # Step 4: one step into the window that closes at 6.
    assert (step, window["steps"]) == (4, 1)
    restored = engine.Window.from_json(window, parallel.make_mesh())
    resumed, _, _ = run_toy(log_every=3, save_every=2, state=state, window=restored, start_step=4)
    assert resumed.logged[0] == full.logged[1]  # Step 6's mean, bit for bit.


def test_sigterm_stops_after_saving_the_current_step():
    class Terminate(Recorder):
        def log(self, step, metrics):
            if step == 2:
                os.kill(os.getpid(), signal.SIGTERM)
            return super().log(step, metrics)

    mesh = parallel.make_mesh()
    tx = optax.sgd(LR)
    hooks, handler = Terminate(), signal.getsignal(signal.SIGTERM)
    with pytest.raises(engine.PreemptedError, match="saved a checkpoint at step 3/7"):
        engine.run(
            toy_state(tx),
            engine.jit_step(engine.make_train_step(squared_error, tx, seed=0), mesh),
            toy_batches(mesh, 7),
            start_step=0,
            cadence=engine.Cadence(7, log_every=1, save_every=5),
            hooks=hooks,
        )
    assert [step for step, _, _ in hooks.saved] == [3]
    assert signal.getsignal(signal.SIGTERM) is handler  # The runner's handler is gone again.


def test_the_engine_runs_without_tensorflow():
    code = (
        "import sys; sys.modules['tensorflow'] = None\n"  # Any `import tensorflow` now fails.
        "from selfsup.train import engine\n"
        "import test_engine as t\n"
        "hooks, state, last = t.run_toy(log_every=3)\n"
        "print(len(hooks.logged))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "3"


def test_prefetch_keeps_order_runs_ahead_and_raises_where_the_error_was():
    produced = []

    def items():
        for i in range(5):
            produced.append(i)
            if i == 3:
                raise ValueError("item 3 is unreadable")
            yield i

    got = engine.prefetch(items(), size=2)
    assert next(got) == 0
    deadline = time.monotonic() + 10
    while len(produced) < 3 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert produced[:3] == [0, 1, 2]  # Items 1 and 2 were made before anyone asked for them.
    assert [next(got), next(got)] == [1, 2]
    with pytest.raises(ValueError, match="item 3 is unreadable"):
        next(got)
    assert list(engine.prefetch(iter(range(4)))) == [0, 1, 2, 3]
