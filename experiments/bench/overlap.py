"""Does the engine overlap input with the step? With an artificially slow step (the device
busy for STEP seconds) and an artificially slow input pipeline (DATA seconds of host work per
batch, then the copy to the devices), a step of `engine.run` should cost about max(STEP,
DATA), not their sum as in a loop that fetches each batch right before its step. Both waits
release the GIL, as XLA's execution and tf.data's work do. Prints a table and writes the
"## Host-to-device overlap" section of RESULTS.md next to this file.

  python experiments/bench/overlap.py
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

SECTION = "## Host-to-device overlap"


def slow_batches(mesh, data_seconds: float):
    import jax
    import numpy as np

    from selfsup import parallel

    while True:
        time.sleep(data_seconds)  # Decoding and augmenting on the host.
        yield jax.device_put({"x": np.ones((8, 4), np.float32)}, parallel.batch_sharding(mesh))


def slow_step(step_seconds: float):
    import jax
    import jax.numpy as jnp

    def host_wait(x):
        time.sleep(step_seconds)  # The device computing.
        return x

    @jax.jit
    def step(state, batch):
        loss = jax.pure_callback(host_wait, jax.ShapeDtypeStruct((), jnp.float32), batch["x"].sum())
        return state, {"loss": loss, "grad_norm": loss}

    return step


class Quiet:
    def log(self, step, metrics):
        return metrics


def seconds_per_step(*, step_seconds: float, data_seconds: float, steps: int, engine_run: bool):
    import jax.numpy as jnp

    from selfsup import parallel
    from selfsup.train import engine

    mesh = parallel.make_mesh()
    step, batches = slow_step(step_seconds), slow_batches(mesh, data_seconds)
    state = jnp.zeros(())
    step(state, next(batches))  # Compile outside the timing.
    start = time.perf_counter()
    if engine_run:
        cadence = engine.Cadence(total_steps=steps, log_every=steps)
        engine.run(state, step, batches, start_step=0, cadence=cadence, hooks=Quiet())
    else:
        for _ in range(steps):
            state, metrics = step(state, next(batches))
            metrics["loss"].block_until_ready()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", default=str(Path(__file__).with_name("RESULTS.md")))
    args = parser.parse_args()
    rows = []
    for step_s, data_s in ((0.10, 0.10), (0.10, 0.05), (0.05, 0.10)):
        fetch_then_step, engine_s = (
            seconds_per_step(
                step_seconds=step_s, data_seconds=data_s, steps=args.steps, engine_run=e
            )
            for e in (False, True)
        )
        rows.append(
            f"| {step_s:.2f} | {data_s:.2f} | {step_s + data_s:.2f} | {max(step_s, data_s):.2f} "
            f"| {fetch_then_step:.3f} | {engine_s:.3f} |"
        )
    table = "\n".join(
        [
            "| step s | input s | sum | max | fetch-then-step s/step | engine.run s/step |",
            "|---|---|---|---|---|---|",
            *rows,
        ]
    )
    print(table)
    text = (
        f"{SECTION}\n`python experiments/bench/overlap.py --steps={args.steps}` "
        f"({time.strftime('%Y-%m-%d')}, load average {os.getloadavg()[0]:.1f}): seconds per "
        "step of a step that keeps the device busy for `step s` fed by an input pipeline "
        "that needs `input s` per batch. `engine.run` prefetches two batches onto the devices in a "
        "background thread, so a step costs about the larger of the two, not their sum.\n\n"
        f"{table}\n"
    )
    write_section(Path(args.out), text)


def write_section(path: Path, text: str) -> None:
    """Replaces (or appends) this benchmark's section of RESULTS.md."""
    old = path.read_text() if path.exists() else ""
    start = old.find(SECTION)
    if start < 0:
        path.write_text(old.rstrip() + "\n\n" + text)
        return
    end = old.find("\n## ", start + len(SECTION))
    path.write_text(old[:start] + text + (old[end + 1 :] if end >= 0 else ""))


if __name__ == "__main__":
    main()
