"""Test session setup: eight fake CPU devices (set before JAX is imported anywhere), quiet TF,
and temp files kept out of the system temp dir."""

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

assert jax.device_count() == 8, "tests expect 8 fake CPU devices; import jax after conftest"

# Tests build the same tiny models many times; compile each program once per session.
jax.config.update("jax_compilation_cache_dir", os.path.join(os.environ["TMPDIR"], "jax-cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
