"""Learnability: each patch-and-transform pretext task (relative patch position, rotation,
jigsaw, exemplar) on a variant it can solve by looking: held-out images whose pretext answer is
plain to see. A correctly wired task (head, label order, loss, pairs or positives) goes from an
untrained model's low held-out pretext accuracy to ~100% in a few dozen steps; wrong labels,
pairs or positives would not. Each task's `configs/<task>_builtin.py:runlocal` (relative
patch position: `relpatch_cifar10.py:runlocal`; ResNet-18 at width 1/8), batch 16, learning
rate 0.8 x 16/256 = 0.05, constant. Writes RESULTS.md next to this file.

  python experiments/learnability/run.py [--tasks=relpatch,rotation,jigsaw,exemplar]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import tensorflow as tf
from flax import nnx

from selfsup.config import load_config_file
from selfsup.data import pipeline
from selfsup.data.sources import open_source
from selfsup.pretext import get_task
from selfsup.train import loop

ROOT = Path(__file__).resolve().parents[2]


def coloured_cells(rng: np.random.Generator) -> np.ndarray:
    """A 72 px image whose 3x3 cells each have their own colour (nine hues that per-patch
    standardisation keeps apart), plus noise: a patch shows where it came from."""
    angles = np.arange(9) * 2 * np.pi / 9
    hues = np.stack([np.cos(angles), np.sin(angles), np.cos(2 * angles) * 0.3], 1) * 0.3 + 0.5
    image = np.repeat(np.repeat(hues.reshape(3, 3, 3), 24, 0), 24, 1)
    return np.clip(np.round((image + rng.normal(0, 0.05, image.shape)) * 255), 0, 255).astype(
        np.uint8
    )


def bar_on_top(rng: np.random.Generator) -> np.ndarray:
    """A random dark colour with a white bar along the top: its turns are plain to see."""
    image = np.broadcast_to(rng.integers(0, 160, (1, 1, 3)), (20, 20, 3)).copy()
    image[:5] = 255
    return (image + rng.normal(0, 8, image.shape)).clip(0, 255).astype(np.uint8)


def blocks(rng: np.random.Generator) -> np.ndarray:
    """A 20 px image of 4x4 random-colour blocks: shifted copies of it share most blocks."""
    return np.repeat(np.repeat(rng.integers(0, 256, (4, 4, 3)), 5, 0), 5, 1).astype(np.uint8)


# Per task: the images, the settings that make the variant solvable by looking (no grey, which
# hides colours; jigsaw: a greedy set of 10 permutations; exemplar: copies that differ by a
# shift alone), and the steps at batch 16.
SOLVABLE = {
    "relpatch": (
        coloured_cells,
        dict(resize_size=72, grayscale_probability=0.0, embed_dim=16, fusion_hidden_dim=32),
        150,
    ),
    "rotation": (bar_on_top, {}, 60),
    "jigsaw": (
        coloured_cells,
        dict(
            permutations="greedy",
            num_permutations=10,
            perms_per_image=4,
            resize_size=72,
            grayscale_probability=0.0,
            embed_dim=16,
            fusion_hidden_dim=32,
        ),
        80,
    ),  # fmt: skip
    "exemplar": (
        blocks,
        dict(grayscale_probability=0.0, crop="padded", crop_padding=2, color=False),
        100,
    ),
}


def write_folder(root: Path, make) -> None:
    for split, count in (("train", 64), ("test", 32)):
        (root / split).mkdir(parents=True)
        for i in range(count):
            image = make(np.random.default_rng(i + 1000 * (split == "test")))
            (root / split / f"{i}.png").write_bytes(tf.io.encode_png(image).numpy())


def heldout_accuracy(task, config) -> float:
    """The pretext accuracy of the model as initialised, on the held-out batches the trainer
    measures (inference-mode BatchNorm)."""
    ds = pipeline.heldout_dataset(
        open_source(config.data), config.eval_split, task.train_example,
        local_batch_size=config.batch_size, seed=config.seed,
    )  # fmt: skip
    model = task.build_model(nnx.Rngs(config.seed))
    accuracies = [
        task.loss(model, jax.tree.map(jnp.asarray, b), jax.random.key(0), train=False)[1]
        for b in ds.as_numpy_iterator()
    ]
    return float(np.mean([a["pretext_accuracy"] for a in accuracies]))


def learn(name: str, scratch: Path) -> dict:
    make, settings, steps = SOLVABLE[name]
    write_folder(scratch / "data", make)
    recipe = "relpatch_cifar10.py" if name == "relpatch" else f"{name}_builtin.py"
    config = load_config_file(ROOT / "configs" / recipe, "runlocal")
    config[name].update(settings)
    config.update(
        data=f"folder:{scratch / 'data'}", eval_split="test", batch_size=16, total_steps=steps,
        eval_every_steps=steps, log_every_steps=steps, checkpoint_every_steps=steps,
        online_probe_classes=0,
    )  # fmt: skip
    config.model.dtype = "float32"
    config.optim.update(learning_rate=0.8, decay_epochs=())
    before = heldout_accuracy(get_task(config), config)
    start = time.perf_counter()
    summary = loop.pretrain(config, scratch / "run")
    after = summary["pretrain/heldout/pretext_accuracy"]
    return dict(task=name, steps=steps, before=before, after=after, s=time.perf_counter() - start)


def table(rows: list[dict], command: str) -> str:
    lines = "\n".join(
        f"| {r['task']} | {r['steps']} | {r['before']:.3f} | {r['after']:.3f} | {r['s']:.0f} |"
        for r in rows
    )
    return f"""# Learnability of the pretext tasks

`experiments/learnability/run.py` (its docstring says what it runs). Held-out pretext accuracy
of the untrained model and after training; a wired-up task reaches about 1.0.

- Command: `{command}`
- Date: {datetime.datetime.now(datetime.UTC):%Y-%m-%d %H:%M} UTC; {platform.machine()}, {
        os.cpu_count()
    } cores, jax {jax.__version__}, load average {os.getloadavg()[0]:.2f}.

| task | steps | held-out accuracy, untrained | after training | wall s |
|---|---:|---:|---:|---:|
{lines}
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default=",".join(SOLVABLE))
    args = parser.parse_args()
    rows = []
    for name in args.tasks.split(","):
        with tempfile.TemporaryDirectory() as scratch:
            rows.append(learn(name, Path(scratch)))
        print(rows[-1], flush=True)
    command = "python experiments/learnability/run.py " + " ".join(sys.argv[1:])
    text = table(rows, command.strip())
    Path(__file__).with_name("RESULTS.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
