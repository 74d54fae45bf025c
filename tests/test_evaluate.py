"""The evaluate command's own checks on what it is asked to measure."""

import shutil
from pathlib import Path

import pytest

from selfsup.config import load_config_file
from selfsup.evaluate.run import evaluate

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.slow  # One k-NN evaluation (~20 s on a loaded machine).
def test_a_one_class_evaluation_warns_that_its_accuracy_means_nothing(
    pretrained_run, tmp_path, capsys
):
    one_class = tmp_path / "one" / "train" / "c0"
    shutil.copytree(pretrained_run.parent / "images" / "train" / "c0", one_class)
    config = load_config_file(CONFIGS / "linear_probe.py", "runlocal")
    config.update(checkpoint=str(pretrained_run), data=f"folder:{tmp_path / 'one'}")
    config.update(eval_split="train", batch_size=8, evaluators=("knn",))
    config.update(random_init_baseline=False)
    config.knn.ks = (3,)
    summary, _ = evaluate(config, tmp_path / "eval")
    assert summary["knn/k3/test_accuracy"] == 1.0
    warning = (
        f"folder:{tmp_path / 'one'} has 1 class, so every accuracy is 100% whatever the "
        "encoder: evaluate on data of two or more classes."
    )
    assert f"Warning: {warning}" in capsys.readouterr().out
    assert f"**Warning:** {warning}" in (tmp_path / "eval" / "report.md").read_text()
