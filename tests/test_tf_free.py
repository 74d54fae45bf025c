"""The core runs without TensorFlow: in a process where importing `tensorflow` (or TFDS) raises,
every task builds and traces its train step (its loss and model code included), one (MoCo, whose
extra state is sharded over the mesh) trains on synthetic arrays and saves and restores a
checkpoint, and the train-step benchmark imports. TensorFlow is needed only to read data."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from selfsup.pretext import TASKS

ROOT = Path(__file__).resolve().parents[1]
# The task whose step runs (the one with the most state: a sharded queue and a teacher):
# compiling every task's step would add minutes and no coverage, as tracing already runs all
# of their code.
TRAINED = ("moco",)

# As if not installed: `import tensorflow` raises ImportError, `find_spec` finds nothing.
BLOCK_TENSORFLOW = """
import sys

sys.modules["tensorflow"] = sys.modules["tensorflow_datasets"] = None
"""

TRAIN_AND_CHECKPOINT = """
import jax, numpy as np
from selfsup import parallel
from selfsup.config import load_config_file
from selfsup.pretext import TASKS, get_task
from selfsup.train.checkpoint import Checkpointer
from selfsup.train.optim import make_optimizer
from selfsup.train.pretext_step import jit_train_step
from selfsup.train.state import abstract_train_state, create_train_state, model_graphdef

# Synthetic batches of 8 examples, shaped as each task's host pipeline makes them (SimCLR,
# BYOL and MoCo take two views of each image, MAE one, multi-crop tasks two groups of crops).
def synthetic(config):
    rng = np.random.default_rng(0)
    s = config.get("image_size")
    if config.task in ("relpatch", "jigsaw"):
        p = config[config.task].patch_size
        arrays = {"patches": rng.normal(size=(8, 9, p, p, 3))}
    elif config.task == "rotation":
        arrays = {"rotations": rng.uniform(size=(8, 4, s, s, 3))}
    elif config.task == "exemplar":
        arrays = {"copies": rng.normal(size=(8, config.exemplar.copies, s, s, 3))}
    elif config.task == "mae":
        arrays = {"image": rng.uniform(size=(8, s, s, 3))}
    elif "local_crops_number" in config[config.task]:  # Multi-crop: a global and a local group.
        c = config[config.task]
        local = (8, c.local_crops_number, c.local_crops_size, c.local_crops_size, 3)
        arrays = {"global": rng.uniform(size=(8, 2, s, s, 3)), "local": rng.uniform(size=local)}
    else:
        arrays = {"views": rng.uniform(size=(8, 2, s, s, 3))}
    arrays = {k: v.astype(np.float32) for k, v in arrays.items()}
    if config.task == "jigsaw":
        c = config.jigsaw
        arrays["permutation"] = rng.integers(0, c.num_permutations, (8, c.perms_per_image))
    return {**arrays, "label": np.arange(8) % 2}

mesh = parallel.make_mesh()
for name in sorted(TASKS):
    config = load_config_file(f"configs/{name}_builtin.py", "runlocal")
    config.model.dtype, config.online_probe_classes, config.batch_size = "float32", 2, 8
    task = get_task(config)
    tx, schedule = make_optimizer(
        config.optim, batch_size=8, total_steps=3, warmup_steps=0, steps_per_epoch=3
    )
    # The state's shapes and shardings (its init traced, as the step is): only a task that
    # trains compiles its init.
    abstract_state = abstract_train_state(task, tx, mesh=mesh)
    step = jit_train_step(
        task,
        model_graphdef(task.build_model),
        tx,
        schedule,
        seed=0,
        mesh=mesh,
        total_steps=3,
        steps_per_epoch=3.0,
    )
    batch = parallel.to_global(synthetic(config), mesh)
    step.trace(abstract_state, batch)
    print(name, "traced")
    if name not in TRAINED:
        continue
    state = create_train_state(task, tx, seed=0, mesh=mesh)
    for _ in range(2):
        state, metrics = step(state, batch)
    assert np.isfinite(float(metrics["loss"])), metrics
    checkpointer = Checkpointer(f"{WORKDIR}/{name}", keep=1)
    checkpointer.save(2, state, metric_window={})
    checkpointer.close()
    restored = Checkpointer(f"{WORKDIR}/{name}", read_only=True).restore_latest(abstract_state)
    assert restored.step == 2
    for a, b in zip(jax.tree.leaves(restored.state), jax.tree.leaves(state)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    print(name, "trained and restored", float(metrics["loss"]))

import runpy
sys.argv = ["train_step.py", "--help"]
sys.path.insert(0, "experiments/bench")
try:
    runpy.run_path("experiments/bench/train_step.py", run_name="__main__")
except SystemExit as e:
    assert e.code == 0, e.code
assert sys.modules["tensorflow"] is None
"""


@pytest.mark.slow
def test_tasks_train_and_checkpoint_without_tensorflow(tmp_path):
    script = (
        BLOCK_TENSORFLOW
        + f"WORKDIR, TRAINED = {str(tmp_path)!r}, {TRAINED!r}\n"
        + TRAIN_AND_CHECKPOINT
    )
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    for name in TASKS:
        assert f"{name} traced" in done.stdout
    for name in TRAINED:
        assert f"{name} trained and restored" in done.stdout
