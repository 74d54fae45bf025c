"""Layer-wise probing end to end: `evaluate` with `layers=all_stages` probes every depth of a
pretrained encoder (here a jigsaw encoder on its patch-average view) from one pass per split,
reports a table and the accuracy-by-depth plot, and its pre_logits rows are the results a plain
evaluation gives."""

import json
from pathlib import Path

import pytest

from selfsup.config import load_config_file
from selfsup.evaluate.run import evaluate
from selfsup.train import loop

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.slow  # A short pretraining and two evaluations.
def test_all_stages_probes_every_depth_and_pre_logits_is_the_plain_evaluation(
    image_folder, tmp_path
):
    pretrain = load_config_file(CONFIGS / "jigsaw_builtin.py", "runlocal")
    pretrain.update(data=image_folder, batch_size=16, total_steps=2, eval_every_steps=0)
    pretrain.online_probe_classes = 0
    loop.pretrain(pretrain, tmp_path / "jigsaw")

    def probe(workdir: str, **overrides):
        config = load_config_file(CONFIGS / "linear_probe.py", "runlocal")
        config.update(checkpoint=str(tmp_path / "jigsaw"), eval_split="train", features="patches")
        # Strong L2 values, which L-BFGS solves in a few iterations on stage1-3's ~9,000 values
        # per image (with runlocal's 1e-4 and 1e-2 they took most of the swept evaluation's time).
        config.linear.l2_grid = (1.0, 10.0)
        config.update(overrides)
        return evaluate(config, tmp_path / workdir)

    plain, _ = probe("plain")
    swept, rows = probe("swept", layers=("all_stages",))
    assert swept["layers"] == ["stage1", "stage2", "stage3", "pre_logits"]
    for method in ("linear", "knn/k5", "random_init/linear"):
        for layer in ("stage1", "stage2", "stage3"):
            # A count of the 40 test images (eval_split is the whole train split).
            accuracy = swept[f"{method}/{layer}/test_accuracy"]
            assert round(accuracy * 40) == accuracy * 40
        assert swept[f"{method}/test_accuracy"] == plain[f"{method}/test_accuracy"]
    assert {r["layer"] for r in rows} == set(swept["layers"])
    report = (tmp_path / "swept" / "report.md").read_text()
    assert "## Accuracy by depth" in report and "| pretrained | linear |" in report
    assert (tmp_path / "swept" / "accuracy_by_depth.png").exists()
    assert "## Accuracy by depth" not in (tmp_path / "plain" / "report.md").read_text()
    metrics = (tmp_path / "swept" / "metrics.jsonl").read_text().splitlines()
    # 2 encoders x 4 depths x (linear + 2 k-NN), all labels.
    assert len(metrics) == 24 and json.loads(metrics[0])["layer"] == "stage1"
