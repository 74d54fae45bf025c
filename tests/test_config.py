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
    assert "seed" in config and "data" in config
    with pytest.raises(AttributeError, match="batch_sise"):
        config.batch_sise = 8
    with pytest.raises(ConfigError, match="runlocal"):
        load_config_file(path, "fast")


def test_runlocal_shrinks_pretraining():
    path = CONFIGS[0].with_name("simclr_cifar10.py")
    full, small = load_config_file(path), load_config_file(path, "runlocal")
    assert small.total_steps and small.total_steps <= 100
    assert small.model.width < full.model.width and small.batch_size < full.batch_size


def test_missing_config_file():
    with pytest.raises(ConfigError, match="does not exist"):
        load_config_file("configs/nope.py")
