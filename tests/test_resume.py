"""An evaluation re-run after a kill continues: finished results and extracted features are kept
(never those of another config or checkpoint, never a damaged copy), fine-tuning resumes from
its checkpoint, and the results equal an uninterrupted run's bit for bit."""

import json
import os
import signal
from pathlib import Path

import numpy as np
import pytest
from test_loop import tiny_config

from selfsup.config import ConfigError, load_config_file
from selfsup.evaluate import finetune, resume, target
from selfsup.evaluate.resume import FOLDER, SavedWork, fingerprint
from selfsup.evaluate.run import evaluate
from selfsup.train import loop
from selfsup.train.engine import PreemptedError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def suite(checkpoint: Path, **overrides):
    config = load_config_file(CONFIGS / "transfer.py", "runlocal")
    config.update(checkpoint=str(checkpoint), batch_size=8, label_fractions=(1.0,))
    config.update(random_init_baseline=False, **overrides)
    config.knn.ks = (3,)
    config.linear.l2_grid = (1e-2,)
    # Cut at step 3 of 5: the last step's logged loss (a row's train_loss) follows step 4's
    # update, which the restored optimizer state (momentum) takes part in.
    config.finetune.update(freeze_stages=(0,), steps=5, batch_size=8)
    config.finetune.update(log_every_steps=1, checkpoint_every_steps=2)
    return config


@pytest.fixture(scope="module")
def tiny_run(image_folder, tmp_path_factory) -> Path:
    """test_loop's tiny run (the same programs: the session compiles them once), held out on its
    training split: a ResNet-18 at width 1/8, whose fine-tuning steps cost little (at width 1,
    as `pretrained_run`, each step costs ~6 CPU-s)."""
    workdir = tmp_path_factory.mktemp("tiny") / "run"
    loop.pretrain(tiny_config(image_folder, eval_split="train"), workdir)
    return workdir


def without_seconds(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


@pytest.mark.slow  # A tiny pretraining and three small evaluations.
def test_an_evaluation_stopped_in_fine_tuning_resumes_to_the_same_results(
    tiny_run, tmp_path, monkeypatch, capsys
):
    _, uninterrupted = evaluate(suite(tiny_run), tmp_path / "whole")

    extractions = []
    extract = target.extract_features
    monkeypatch.setattr(
        target, "extract_features", lambda *a, **k: extractions.append(1) or extract(*a, **k)
    )
    log = finetune.FinetuneHooks.log

    def terminated_at_step_2(self, step, metrics):
        if step == 2:  # As `kill` does: the engine's handler stops after the next step.
            os.kill(os.getpid(), signal.SIGTERM)
        return log(self, step, metrics)

    monkeypatch.setattr(finetune.FinetuneHooks, "log", terminated_at_step_2)
    with pytest.raises(PreemptedError, match=r"SIGTERM: saved a checkpoint at step 3/5"):
        evaluate(suite(tiny_run), tmp_path / "cut")
    assert len(extractions) == 2  # Train and test split, once.

    monkeypatch.setattr(finetune.FinetuneHooks, "log", log)
    capsys.readouterr()
    summary, resumed = evaluate(suite(tiny_run), tmp_path / "cut")
    out = capsys.readouterr().out
    assert len(extractions) == 2  # The features were kept, not extracted again.
    assert "linear pretrained: kept from an earlier run" in out
    assert "knn pretrained: kept from an earlier run" in out
    assert "resuming from its checkpoint at step 3/5" in out
    assert without_seconds(resumed) == without_seconds(uninterrupted)  # Bit for bit.
    assert summary["finetune/freeze0/steps"] == 5
    # What only a resume needs is gone once the evaluation is done.
    assert sorted(p.name for p in (tmp_path / "cut" / FOLDER).iterdir()) == ["KEY", "rows"]

    with pytest.raises(ConfigError, match=r"holds a run of a different config \(seed: 0 -> 1\)"):
        evaluate(suite(tiny_run, seed=1), tmp_path / "cut")


def test_saved_work_of_another_config_checkpoint_or_definition_is_not_reused(
    tmp_path, capsys, monkeypatch
):
    checkpoint = tmp_path / "run" / "checkpoints" / "2"
    checkpoint.mkdir(parents=True)
    (checkpoint / "weights").write_bytes(b"1234")
    config = suite(tmp_path / "run")
    key = fingerprint(config, checkpoint)
    features = {"train.stage4": np.arange(6, dtype=np.float32).reshape(3, 2)}
    saved = SavedWork(tmp_path / "eval", key)
    assert saved.arrays("features pretrained", lambda: features) is features

    def never():
        raise AssertionError("recomputed")

    kept = SavedWork(tmp_path / "eval", key).arrays("features pretrained", never)
    np.testing.assert_array_equal(kept["train.stage4"], features["train.stage4"])

    (checkpoint / "weights").write_bytes(b"12345")  # The checkpoint changed since.
    assert fingerprint(config, checkpoint) != key
    config.seed = 1
    assert fingerprint(suite(tmp_path / "run"), checkpoint) != fingerprint(config, checkpoint)
    config.finetune.log_every_steps = 2  # Reporting keys change nothing computed.
    assert fingerprint(config, checkpoint) == fingerprint(
        suite(tmp_path / "run", seed=1), checkpoint
    )
    again = SavedWork(tmp_path / "eval", fingerprint(config, checkpoint))
    assert (
        "holds work of another config or checkpoint (or of an older version's definition of "
        "features and results): recomputing everything." in capsys.readouterr().out
    )
    assert again.arrays("features pretrained", lambda: features) is features  # Recomputed.
    # Code that computes features or rows differently: the same config's saved work is stale.
    key = fingerprint(config, checkpoint)
    monkeypatch.setattr(resume, "DEFINITIONS", (*resume.DEFINITIONS, "stage2: averaged"))
    assert fingerprint(config, checkpoint) != key


def test_a_damaged_saved_copy_is_recomputed(tmp_path, capsys):
    saved = SavedWork(tmp_path, "key")
    features = {"train.stage4": np.ones((64, 8), np.float32)}
    saved.arrays("features pretrained", lambda: features)
    (path,) = (tmp_path / FOLDER / "arrays").iterdir()
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    assert saved.arrays("features pretrained", lambda: features) is features
    assert "does not read back" in capsys.readouterr().out
    rows = [{"method": "linear", "test_accuracy": 0.1 + 0.2}]
    assert saved.rows("linear pretrained", lambda: rows) is rows
    assert json.loads((tmp_path / FOLDER / "rows" / "linear_pretrained.json").read_text()) == rows
