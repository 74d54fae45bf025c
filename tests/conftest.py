"""Test session setup: eight fake CPU devices (set before JAX is imported anywhere), quick
compiles, one compile cache for the session, quiet TF, temp files kept out of the system temp
dir, and a tiny image folder for trainer tests."""

import importlib.metadata
import os
import socket
import tempfile
from pathlib import Path

# The tests' programs are small, so compiling them costs more than running them: LLVM without
# its optimisations halves the CPU time of a compile-bound test (a BYOL 1-vs-8-device test: 146
# CPU s -> 81) and leaves a step-bound one as it was. jaxlib 0.10 still has XLA:CPU's older
# fusion emitters, which compile in ~60% of the time of its new ones (SimSiam's first step on 8
# and 1 devices and 6 training steps: 69 CPU-s -> 42); 0.11 removed them and its flag. Command
# subprocesses get these flags too (test_cli.cli_env), so their numbers are those of the
# session. The flags are added once: xdist workers inherit the controller's, and JAX's cache key
# hashes XLA_FLAGS as written.
QUICK_COMPILE = "--xla_backend_optimization_level=0"
if importlib.metadata.version("jaxlib").startswith("0.10."):
    QUICK_COMPILE += " --xla_cpu_use_fusion_emitters=false"
_flags = os.environ.get("XLA_FLAGS", "").split()
for _flag in (*QUICK_COMPILE.split(), "--xla_force_host_platform_device_count=8"):
    if _flag not in _flags:
        _flags.append(_flag)
os.environ["XLA_FLAGS"] = " ".join(_flags)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TFDS leaves empty tmp*tfds folders behind; keep them in a folder of this session.
os.environ["TMPDIR"] = tempfile.mkdtemp(prefix="selfsup-tests-")
tempfile.tempdir = None
# Tests build the same tiny models many times: compile each program once per session. The first
# process (pytest, or xdist's controller) names the cache; the workers and every subprocess they
# start (the commands, `python -c` scripts) inherit it through the environment.
if "PYTEST_XDIST_WORKER" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = os.path.join(os.environ["TMPDIR"], "jax-cache")
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

import jax  # noqa: E402
import pytest  # noqa: E402

import selfsup  # noqa: E402, F401  Sets XLA:CPU flags; JAX starts its backend below.

assert len(jax.devices("cpu")) == 8, "tests expect 8 fake CPU devices; import jax after conftest"
assert jax.config.jax_compilation_cache_dir == os.environ["JAX_COMPILATION_CACHE_DIR"]


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory) -> str:
    """`folder:` spec of 40 random 20x20 PNGs in 4 classes (split `train`)."""
    import numpy as np
    import tensorflow as tf

    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(40):
        path = root / "train" / f"c{i % 4}" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(tf.io.encode_png(rng.integers(0, 256, (20, 20, 3), np.uint8)).numpy())
    return f"folder:{root}"


# Fixtures that train a run, prepare a dataset or start another library's process, once per
# module or session (10-35 CPU-s each): a test that reads one is slow, whatever its own cost.
COSTLY_FIXTURES = {
    "pretrained_run", "run4", "log2_run", "run6", "tiny_run", "finished_run", "builtin_data_dir",
    "timm_side",
}  # fmt: skip


@pytest.hookimpl(tryfirst=True)  # Before xdist reads the groups.
def pytest_collection_modifyitems(items):
    """The tests that read COSTLY_FIXTURES are slow; those that read `pretrained_run` share one
    xdist worker (pyproject's `--dist loadgroup`), so the session trains that run once, not once
    per worker (the other fixtures' modules name their groups). Slow tests go first, so that the
    workers do not end on one long test while the other idles."""
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & COSTLY_FIXTURES:
            item.add_marker(pytest.mark.slow)
        if "pretrained_run" in fixtures:
            item.add_marker(pytest.mark.xdist_group("pretrained_run"))
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)  # Stable.


def prepare_builtin_offline(root: Path):
    """Prepares `builtin:shapes` under `root/data` with every Python socket connection failing:
    its TFDS builder."""
    from selfsup.data import builtin

    def no_network(*args, **kwargs):
        raise OSError("network access during builtin preparation")

    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TMPDIR", str(root))  # TFDS leaves empty tmp*tfds folders behind.
        patch.setattr(tempfile, "tempdir", None)
        patch.setattr(socket.socket, "connect", no_network)
        return builtin.load_builtin("shapes", data_dir=str(root / "data"))


@pytest.fixture(scope="session")
def builtin_data_dir(tmp_path_factory) -> Path:
    """A data_dir holding `builtin:shapes`, prepared offline once per session (its tests share
    an xdist worker: xdist_group "builtin")."""
    root = tmp_path_factory.mktemp("shapes_a")
    prepare_builtin_offline(root)
    return root / "data"


@pytest.fixture(scope="session")
def pretrained_run(tmp_path_factory):
    """A pretraining workdir that export and load_encoder read: SimCLR on 16 random 16 px
    images cropped to 8 px (a width-1 step costs its size squared), a width-1 ResNet-18 with
    the CIFAR stem (torchvision's width), 2 steps, one checkpoint (so its BatchNorm statistics
    have moved)."""
    import numpy as np
    import tensorflow as tf

    from selfsup.config import load_config_file
    from selfsup.train import loop

    root = tmp_path_factory.mktemp("run")
    rng = np.random.default_rng(0)
    for i in range(16):
        path = root / "images" / "train" / f"c{i % 2}" / f"{i}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(tf.io.encode_png(rng.integers(0, 256, (16, 16, 3), np.uint8)).numpy())
    config = load_config_file(
        os.path.join(os.path.dirname(__file__), "..", "configs", "simclr_cifar10.py"), "runlocal"
    )
    config.update(
        dict(data=f"folder:{root / 'images'}", eval_split="train", image_size=8, batch_size=8)
    )
    config.update(dict(total_steps=2, checkpoint_every_steps=2, eval_every_steps=0))
    config.online_probe_classes = 0
    config.model.width = 1.0
    loop.pretrain(config, root / "pretrain")
    return root / "pretrain"
