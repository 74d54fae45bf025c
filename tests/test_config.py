"""Config files: every one loads plain and with `runlocal`, locked, with every key declared."""

from pathlib import Path

import pytest

from selfsup.config import ConfigError, load_config_file

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.py"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads_locked_with_and_without_runlocal(path):
    config = load_config_file(path)
    runlocal = load_config_file(path, "runlocal")
    assert set(config.keys()) == set(runlocal.keys())
    # The demo's config holds a pretraining and a probe config per pretext task.
    runs = (
        [c for task in config.tasks.values() for c in task.values()]
        if "tasks" in config
        else [config]
    )
    for run in runs:
        assert "seed" in run and "data" in run
    with pytest.raises(AttributeError, match="batch_sise"):
        config.batch_sise = 8
    with pytest.raises(ConfigError, match="runlocal"):
        load_config_file(path, "fast")


@pytest.mark.parametrize(
    "name", ["simclr_cifar10.py", "relpatch_imagenet.py", "relpatch_cifar10.py"]
)
def test_runlocal_shrinks_pretraining(name):
    path = CONFIGS[0].with_name(name)
    full, small = load_config_file(path), load_config_file(path, "runlocal")
    assert small.total_steps and small.total_steps <= 100
    assert small.model.width < full.model.width and small.batch_size < full.batch_size


def test_missing_config_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config_file("configs/nope.py")
