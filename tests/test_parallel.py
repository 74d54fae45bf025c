"""Multi-process training for real: two processes joined by jax.distributed (coordinator on
127.0.0.1, gloo CPU collectives), each reading its own shard of the data, against one process
that trains on the same global batches."""

import os
import platform
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import tensorflow as tf
from test_cli import cli_env

from selfsup import parallel
from selfsup.config import ConfigError, load_config_file
from selfsup.data import pipeline
from selfsup.report import read_metrics
from selfsup.train import loop
from selfsup.train.checkpoint import load_train_state

ROOT = Path(__file__).resolve().parents[1]
OVERRIDES = dict(
    image_size=16,
    batch_size=16,
    total_steps=8,
    log_every_steps=1,
    checkpoint_every_steps=4,
    eval_every_steps=0,  # The folder has no held-out split.
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_processes(data: str, workdir: Path, port: int) -> list[subprocess.Popen]:
    """The same pretrain command on two processes of four CPU devices each."""
    env = cli_env(devices=4)
    command = [
        sys.executable, "-m", "selfsup", "pretrain",
        f"--config={ROOT / 'configs' / 'simclr_cifar10.py'}:runlocal", f"--workdir={workdir}",
        f"--config.data={data}", *(f"--config.{k}={v}" for k, v in OVERRIDES.items()),
        f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2",
    ]  # fmt: skip
    processes = []
    for i in range(2):
        with open(workdir.parent / f"stderr{workdir.name}{i}.txt", "w") as stderr:
            processes.append(
                subprocess.Popen(
                    [*command, f"--process_id={i}"],
                    env=env,
                    text=True,
                    stdout=subprocess.PIPE if i == 0 else subprocess.DEVNULL,
                    stderr=stderr,
                )
            )
    return processes


def stderr_of(workdir: Path, i: int) -> str:
    return (workdir.parent / f"stderr{workdir.name}{i}.txt").read_text()


def two_shard_batches(real_train_dataset):
    """`pipeline.train_dataset` for one process that yields what a 2-process run's processes
    yield, concatenated in process order: exactly the global batches of the 2-process run."""

    def train_dataset(source, split, example_fn, *, local_batch_size, **kwargs):
        kwargs.pop("process_index"), kwargs.pop("process_count")
        shards = [
            real_train_dataset(
                source, split, example_fn, local_batch_size=local_batch_size // 2,
                process_index=i, process_count=2, **kwargs,
            )
            for i in range(2)
        ]  # fmt: skip
        return tf.data.Dataset.zip(*shards).map(
            lambda a, b: jax.tree.map(lambda x, y: tf.concat([x, y], 0), a, b)
        )

    return train_dataset


def state_at(workdir: Path, step: int):
    """The full train state saved at `step` in `workdir`, on the host."""
    return jax.device_get(load_train_state(workdir, parallel.make_mesh(), step=step)[2])


@pytest.mark.slow
def test_two_processes_match_one_and_agree_on_a_one_host_sigterm(
    image_folder, tmp_path, monkeypatch
):
    # SIGTERM reaches only process 1: both must checkpoint the same step and exit 143.
    two = tmp_path / "two"
    processes = start_processes(image_folder, two, free_port())
    for line in processes[0].stdout:
        if line.startswith("step 3/"):
            processes[1].send_signal(signal.SIGTERM)
            break
    codes = [p.wait(timeout=120) for p in processes]
    assert codes == [143, 143], stderr_of(two, 0)[-2000:] + stderr_of(two, 1)[-2000:]
    saved = {
        int(re.search(r"saved a checkpoint at step (\d+)/8", stderr_of(two, i)).group(1))
        for i in range(2)
    }
    assert len(saved) == 1
    stop = saved.pop()
    assert 3 <= stop < 8

    # One process with all 8 devices, fed both processes' shards as one global batch, with a
    # checkpoint where they stopped (checkpointing changes nothing that is computed).
    config = load_config_file(ROOT / "configs" / "simclr_cifar10.py", "runlocal")
    config.data = image_folder
    config.update({**OVERRIDES, "checkpoint_every_steps": stop})
    monkeypatch.setattr(pipeline, "train_dataset", two_shard_batches(pipeline.train_dataset))
    loop.pretrain(config, tmp_path / "one")

    loss_two = [r["loss"] for r in read_metrics(two / "metrics.jsonl")]
    loss_one = [r["loss"] for r in read_metrics(tmp_path / "one" / "metrics.jsonl")][:stop]
    assert len(loss_two) == stop
    # Step 1 (same init, same global batch) agrees to float32 precision; after that, the
    # cross-process all-reduce (gloo) sums in another order than the in-process one, and
    # those last-bit differences grow a little with every LARS step.
    assert loss_two[0] == pytest.approx(loss_one[0], rel=1e-6)
    np.testing.assert_allclose(loss_two, loss_one, rtol=1e-3)
    for a, b in zip(
        jax.tree.leaves(state_at(two, stop)), jax.tree.leaves(state_at(tmp_path / "one", stop))
    ):
        np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-5)


def test_a_partial_multi_process_setup_is_refused():
    with pytest.raises(ConfigError, match="needs all of --coordinator_address"):
        parallel.initialize_distributed("127.0.0.1:1234", None, 0)


def test_any_process_is_the_local_flag_on_one_process():
    assert parallel.any_process(True) and not parallel.any_process(False)


STEP_FAULTS = """
import resource, statistics, sys
import jax, jax.numpy as jnp
from selfsup import parallel
if sys.argv[1] == "reuse":
    parallel.reuse_step_memory()
# sin(x), 64 MB, is a temporary of the step: a dot operand XLA materialises.
step = jax.jit(lambda x: (jnp.sin(x) @ x[:64].T).sum())
x = jnp.ones((8192, 2048))
step(x).block_until_ready()
faults = []
for _ in range(8):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    step(x).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(statistics.median(faults))
"""


@pytest.mark.slow  # Two processes that import JAX and compile and run 9 steps: about 6 CPU-s.
@pytest.mark.skipif(
    sys.platform != "linux" or platform.libc_ver()[0] != "glibc",
    reason="glibc's malloc and Linux page faults",
)
def test_reuse_step_memory_stops_steps_faulting_in_their_temporaries():
    """Without it, every step faults in its 64 MB temporary afresh (one fault per page); with
    it, a step reuses the memory the step before freed (now and then the heap still grows,
    hence the median over 8 steps). One CPU device, as the claim is made for; the counts are
    compared with each other, not with a number of this machine."""
    pages = 8192 * 2048 * 4 / os.sysconf("SC_PAGE_SIZE")  # sin(x): 8192 x 2048 float32.
    one_device = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}

    def faults_per_step(mode: str) -> float:
        run = subprocess.run(
            [sys.executable, "-c", STEP_FAULTS, mode],
            capture_output=True, text=True, cwd=ROOT, env=one_device,
        )  # fmt: skip
        assert run.returncode == 0, run.stderr[-2000:]
        return float(run.stdout.split()[-1])

    default = faults_per_step("default")
    assert default > 0.7 * pages  # The measurement sees the temporary faulted in.
    assert faults_per_step("reuse") < default / 10


HEAP_HOLE = """
import ctypes, os
from selfsup import parallel
parallel.keep_freed_host_memory()  # As the commands set it: freed memory never trimmed.
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
def resident():
    return int(open("/proc/self/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
blocks = [libc.malloc(1 << 20) for _ in range(256)]
for block in blocks:
    ctypes.memset(block, 1, 1 << 20)
for block in blocks[:-1]:  # The last one keeps the heap's top: a hole of 255 MiB below it.
    libc.free(block)
held = resident()
parallel.return_freed_host_memory()
print(held - resident())
"""


@pytest.mark.skipif(
    sys.platform != "linux" or platform.libc_ver()[0] != "glibc",
    reason="glibc's malloc and Linux resident memory",
)
def test_freed_memory_inside_the_heap_goes_back_to_the_kernel():
    """Feature extraction leaves holes in the heap that stay resident and add up with the data
    (experiments/bench/RESULTS.md, "Feature-extraction memory"); `return_freed_host_memory`
    gives them back even with the commands' no-trim setting."""
    run = subprocess.run(
        [sys.executable, "-c", HEAP_HOLE], capture_output=True, text=True, cwd=ROOT
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert int(run.stdout.split()[-1]) > 200 * 2**20


def test_evaluation_batches_round_up_to_the_device_count_training_batches_must_divide():
    mesh = parallel.make_mesh()  # 8 devices.
    assert [parallel.padded_batch_size(n, mesh) for n in (1, 8, 12, 16, 17)] == [8, 8, 16, 16, 24]
    with pytest.raises(ConfigError, match="batch_size=12 does not divide over 8 devices"):
        parallel.local_batch_size(12, mesh)
