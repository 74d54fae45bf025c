"""Test session setup: eight fake CPU devices (set before JAX is imported anywhere), quiet TF,
temp files kept out of the system temp dir, and a tiny image folder for trainer tests."""

import os
import tempfile

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TFDS leaves empty tmp*tfds folders behind; keep them in a folder of this session.
os.environ["TMPDIR"] = tempfile.mkdtemp(prefix="selfsup-tests-")
tempfile.tempdir = None

import jax  # noqa: E402
import pytest  # noqa: E402

import selfsup  # noqa: E402, F401  Sets XLA:CPU flags; JAX starts its backend below.

assert jax.device_count() == 8, "tests expect 8 fake CPU devices; import jax after conftest"

# Tests build the same tiny models many times; compile each program once per session.
jax.config.update("jax_compilation_cache_dir", os.path.join(os.environ["TMPDIR"], "jax-cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


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
