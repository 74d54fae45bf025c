"""Transfer report: the accuracy table (methods x label fractions, random-init rows included),
flat summary keys, and the plots."""

from pathlib import Path

import pytest

from selfsup import report
from selfsup.config import load_config_file
from selfsup.evaluate import finetune
from selfsup.evaluate.run import summary_key


def rows():
    out = []
    for encoder, base in (("pretrained", 0.6), ("random_init", 0.2)):
        for fraction in (0.01, 0.1, 1.0):
            out.append(
                dict(encoder=encoder, method="linear", label_fraction=fraction,
                     test_accuracy=base * fraction**0.1, minival_accuracy=0.5, l2=1e-3)
            )  # fmt: skip
            for n in (0, 4):
                out.append(
                    dict(encoder=encoder, method=f"finetune/freeze{n}", label_fraction=fraction,
                         test_accuracy=base * fraction**0.2 + 0.01 * n, minival_accuracy=0.5,
                         freeze_stages=n, learning_rate=0.1)
                )  # fmt: skip
    return out


def test_accuracy_table_has_a_row_per_encoder_and_method_and_a_column_per_fraction():
    table = report.accuracy_table(rows()).splitlines()
    assert table[0] == "| encoder | method | 1% | 10% | 100% |"
    assert len(table) == 2 + 6
    # 60 * 0.01**0.1 = 37.86, 60 * 0.1**0.1 = 47.66; 20 * 0.01**0.2 + 4 = 11.96, ...
    assert "| pretrained | linear | 37.9 | 47.7 | 60.0 |" in table
    assert "| random_init | finetune/freeze4 | 12.0 | 16.6 | 24.0 |" in table


def test_summary_keys_leave_the_pretrained_encoder_and_all_labels_unmarked():
    linear, finetune = rows()[2 * 3], rows()[-1]
    assert summary_key(linear, "test_accuracy") == "linear/test_accuracy"
    assert summary_key(rows()[1], "learning_rate") == "finetune/freeze0/labels1%/learning_rate"
    assert summary_key(finetune, "test_accuracy") == "random_init/finetune/freeze4/test_accuracy"


def test_report_writes_the_table_and_plots(tmp_path: Path):
    config = load_config_file(Path(__file__).resolve().parents[1] / "configs" / "transfer.py")
    summary = dict(
        data="builtin:shapes", train_split="train", eval_split="test", checkpoint="runs/x",
        checkpoint_step=10, minival_examples=1000, **{"evaluate/wall_seconds": 12.0},
    )  # fmt: skip
    settings = dict(settings=["probe A", "tuning B"], plots=[finetune.plot])
    report.write_transfer_report(tmp_path, config, summary, rows(), **settings)
    text = (tmp_path / "report.md").read_text()
    assert "| random_init | linear |" in text and "Total time: 12 s" in text
    assert "Settings: probe A; tuning B. " in text
    # The evaluator's own plot follows the accuracy plot.
    assert "(accuracy_vs_labels.png)\n![frozen vs fine-tuned](frozen_vs_finetuned.png)\n" in text
    for png in ("accuracy_vs_labels.png", "frozen_vs_finetuned.png"):
        assert (tmp_path / png).stat().st_size > 10_000
    # One label fraction: a bar chart instead of lines; no evaluator's plot, none of its own.
    (tmp_path / "one").mkdir()
    single = [r for r in rows() if r["label_fraction"] == 1.0]
    report.write_transfer_report(tmp_path / "one", config, summary, single, settings=["A"])
    assert (tmp_path / "one" / "accuracy.png").stat().st_size > 10_000
    assert sorted(p.name for p in (tmp_path / "one").iterdir()) == ["accuracy.png", "report.md"]
    # Fine-tuning's plot draws nothing for rows without fine-tuning.
    assert finetune.plot([r for r in single if "freeze_stages" not in r], tmp_path, "t") == ""


def test_read_metrics_leaves_out_a_last_line_cut_short(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.5}\n{"step": 2, "loss": 2.4}\n{"step": 3, "lo')
    assert report.read_metrics(path) == [{"step": 1, "loss": 2.5}, {"step": 2, "loss": 2.4}]


def test_read_metrics_names_a_damaged_line_before_the_last(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "loss": 2.5}\n{"step": 2, "lo\n{"step": 3, "loss": 2.3}\n')
    with pytest.raises(ValueError) as error:
        report.read_metrics(path)
    assert str(error.value).startswith(f"{path} line 2 is damaged (")
    assert str(error.value).endswith("): delete that line, or restore the file from a copy.")


def depth_rows():
    """Linear and 20-NN rows at four depths (method suffixed by the layer except at stage4, the
    pre-logits), for two label fractions, plus a fine-tuning row that has no depth."""
    out = []
    for encoder, base in (("pretrained", 0.5), ("random_init", 0.3)):
        for fraction in (0.1, 1.0):
            for depth, layer in enumerate(("stage1", "stage2", "stage3", "stage4"), 1):
                for method, bonus in (("linear", 0.0), ("knn/k20", -0.05)):
                    name = method if layer == "stage4" else f"{method}/{layer}"
                    out.append(
                        dict(encoder=encoder, method=name, label_fraction=fraction, layer=layer,
                             test_accuracy=base + 0.02 * depth + bonus - (fraction < 1) * 0.1)
                    )  # fmt: skip
        out.append(dict(encoder=encoder, method="finetune/freeze0", label_fraction=1.0,
                        test_accuracy=0.9, freeze_stages=0))  # fmt: skip
    return out


def test_accuracy_by_depth_has_a_line_per_encoder_and_method_at_the_most_labels(tmp_path):
    cells = report.accuracy_by_depth(depth_rows())
    assert list(cells) == [
        ("pretrained", "linear"), ("pretrained", "knn/k20"),
        ("random_init", "linear"), ("random_init", "knn/k20"),
    ]  # fmt: skip
    assert list(cells["pretrained", "linear"]) == ["stage1", "stage2", "stage3", "stage4"]
    assert cells["random_init", "knn/k20"]["stage2"] == pytest.approx(0.3 + 0.04 - 0.05)
    section = report.accuracy_by_depth_section(tmp_path, depth_rows(), "t")
    assert "| encoder | method | stage1 | stage2 | stage3 | stage4 |" in section
    assert "| pretrained | linear | 52.0 | 54.0 | 56.0 | 58.0 |" in section
    assert (tmp_path / "accuracy_by_depth.png").stat().st_size > 1000
    one_depth = [r for r in depth_rows() if r.get("layer") in (None, "stage4")]
    assert report.accuracy_by_depth_section(tmp_path / "none", one_depth, "t") == ""
