"""The README and docs/ are real: the README is short, starts with its two commands and links
every page of docs/ (every relative link resolves); docs/extending.md's pretext task is the
registered rotation task's class, verbatim (tests/test_pretext.py checks it meets the contract);
docs/pretrained.md exports, loads in PyTorch and JAX, and initialises from torchvision weights as
written."""

import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_cli import cli_env
from test_torchvision import HAS_TORCHVISION, TOLERANCE

import selfsup
from selfsup import pretrained
from selfsup.pretext import TASKS

README = Path(__file__).resolve().parents[1] / "README.md"
DOCS = README.parent / "docs"
LINK = re.compile(r"\]\(([^)#\s]+)[^)]*\)|src=\"([^\"]+)\"")


def test_the_readme_is_short_starts_with_its_commands_and_links_every_doc():
    readme = README.read_text()
    lines = readme.splitlines()
    assert len(lines) <= 220
    assert 'pip install -e ".[test]" && python -m selfsup demo' in "\n".join(lines[:10])
    assert "python -m pytest -n 2" in "\n".join(lines[:10])
    linked = {README.parent / (a or b) for a, b in LINK.findall(readme)}
    assert set(DOCS.glob("*.md")) <= linked
    for page in [README, *DOCS.glob("*.md")]:
        for a, b in LINK.findall(page.read_text()):
            target = a or b
            if "://" not in target:
                assert (page.parent / target).exists(), f"{page.name}: {target}"


def test_the_readme_example_is_the_rotation_task_verbatim():
    docs = (DOCS / "extending.md").read_text()
    section = docs[docs.index("## Adding a pretext task") :]
    example = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    module = (README.parent / "selfsup" / "pretext" / "rotation.py").read_text()
    assert example.startswith("class Rotation:") and len(example.splitlines()) > 30
    assert module.endswith(example)  # The whole task class, to the end of the module.
    registration = re.search(r'`"rotation": "([a-z_]+:[A-Za-z]+)"` in `TASKS`', section).group(1)
    assert TASKS["rotation"] == registration


def readme_block(first_line: str, language: str = "python") -> str:
    """docs/pretrained.md's fenced block that starts with `first_line`."""
    pattern = rf"```{language}\n({re.escape(first_line)}.*?)```"
    return re.search(pattern, (DOCS / "pretrained.md").read_text(), re.S).group(1)


def shell_commands(block: str) -> list[list[str]]:
    """The `python -m selfsup ...` commands of a bash block, as argument lists."""
    lines = block.replace("\\\n", " ").splitlines()
    return [
        [sys.executable, *shlex.split(line)[1:]] for line in lines if line.startswith("python ")
    ]


@pytest.mark.slow  # pretrained_run (once per session), then ~55 CPU-s: 4 processes, mostly.
def test_using_a_pretrained_encoder_elsewhere_runs_as_written(
    pretrained_run, tmp_path, monkeypatch
):
    (tmp_path / "configs").symlink_to(README.parent / "configs")
    shutil.copytree(pretrained_run, tmp_path / "runs" / "simclr_cifar10")

    def run(args: list[str]) -> None:
        done = subprocess.run(args, cwd=tmp_path, env=cli_env(), capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]

    (export,) = shell_commands(readme_block("python -m selfsup export", "bash"))
    run(export)
    # JAX, run here: the run's own encoder, through the export.
    namespace: dict = {}
    monkeypatch.chdir(tmp_path)
    exec(readme_block("# JAX: the encoder without the training workdir."), namespace)
    run_encoder = selfsup.load_encoder(tmp_path / "runs" / "simclr_cifar10")
    features, images = np.asarray(namespace["features"]), namespace["images"]
    assert features.shape == (2, 512)
    np.testing.assert_array_equal(features, run_encoder(images, train=False))
    if not HAS_TORCHVISION:
        return  # The rest runs where torch is installed (CI's Python 3.11 end).
    # PyTorch, in a process of its own (tests/torchvision_side.py says why).
    torch_code = readme_block("# PyTorch: the exported encoder in torchvision's ResNet.")
    run([sys.executable, "-c", torch_code + SAVE_TORCH_FEATURES])
    images = np.load(tmp_path / "images.npy").transpose(0, 2, 3, 1)
    ours = np.asarray(run_encoder(images, train=False))
    assert np.abs(np.load(tmp_path / "features.npy") - ours).max() <= TOLERANCE
    # Initialised from the state dict PyTorch saved; a zero learning rate keeps the weights. One
    # 8 px image per device: the width-1 ResNet's step costs little at any size (~10 CPU-s at 16).
    pretrain, evaluate = shell_commands(
        readme_block("# Initialise from torchvision weights", "bash")
    )
    data = f"--config.data={json.loads((pretrained_run / 'config.json').read_text())['data']}"
    run(pretrain + [data, "--config.batch_size=2", "--config.image_size=8",
                    "--config.total_steps=1", "--config.optim.learning_rate=0",
                    "--config.eval_every_steps=0", "--config.online_probe_classes=0"])  # fmt: skip
    started = pretrained.read_run(tmp_path / "runs" / "from_torch").params["encoder"]
    imported = pretrained.read_weights(tmp_path / "resnet18_cifar.pth").params
    for name, value in imported.items():
        np.testing.assert_array_equal(started[name], value, err_msg=name)
    # One L2 value: the 45-value path fits 45 probes per encoder (~27 CPU-s each on 16 images).
    # No random-init row (the demo's test checks it): the init_from row is the one asked of it.
    run(evaluate + ["--config.batch_size=8", "--config.linear.l2_grid=(1.0,)",
                    "--config.random_init_baseline=False"])  # fmt: skip
    summary = json.loads((tmp_path / "runs" / "probe" / "summary.json").read_text())
    # The state dict PyTorch saved holds the run's own weights: the same encoder, the same probe.
    assert summary["init_from/linear/test_accuracy"] == summary["linear/test_accuracy"]
    assert "| init_from | linear |" in (tmp_path / "runs" / "probe" / "report.md").read_text()


SAVE_TORCH_FEATURES = """
import numpy as np
np.save("images.npy", images.numpy())
np.save("features.npy", features.detach().numpy())
"""
