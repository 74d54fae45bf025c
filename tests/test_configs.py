"""The config files: every key a pretraining run has is built by configs/common.py, and a root
recipe (one that loads no other config file) writes only what is its own, so a key added later
is added in one place."""

import ast
from pathlib import Path

from selfsup.config import load_config_file

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted(p for p in (ROOT / "configs").glob("*.py") if p.name != "common.py")


def written_keys(path: Path) -> set[str]:
    """Top-level keys that a config file writes: `config.KEY = ...`, `config.KEY.field = ...`,
    `config.KEY.update(...)`, `config["KEY"] = ...` and `config.update(KEY=...)`."""
    keys = set()
    for node in ast.walk(ast.parse(path.read_text())):
        targets = node.targets if isinstance(node, ast.Assign) else []
        if isinstance(node, ast.AugAssign | ast.AnnAssign):
            targets = [node.target]
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr == "update" and _is_config(node.func.value):
                keys.update(k.arg for k in node.keywords if k.arg)
                for d in (a for a in node.args if isinstance(a, ast.Dict)):
                    keys.update(k.value for k in d.keys if isinstance(k, ast.Constant))
            elif node.func.attr == "update":
                targets = [node.func.value]
        for target in targets:
            while isinstance(target, ast.Attribute | ast.Subscript):
                if _is_config(target.value):
                    key = target.attr if isinstance(target, ast.Attribute) else target.slice
                    keys.add(key if isinstance(key, str) else ast.literal_eval(key))
                    break
                target = target.value
    return keys


def _is_config(node: ast.AST) -> bool:
    return isinstance(node, ast.Name) and node.id == "config"


def test_no_pretraining_key_is_written_in_two_root_configs():
    roots = [p for p in CONFIGS if "load_config_file(" not in p.read_text()]
    pretraining = [p for p in roots if "task" in load_config_file(p)]
    assert len(pretraining) >= 7  # Every pretext task has a root recipe.
    keys = {key for p in pretraining for key in load_config_file(p).keys()}
    writers: dict[str, list[str]] = {}
    for path in pretraining:
        for key in written_keys(path) & keys:
            writers.setdefault(key, []).append(path.name)
    assert {k: v for k, v in writers.items() if len(v) > 1} == {}


def test_written_keys_reads_every_way_of_writing_a_key(tmp_path):
    path = tmp_path / "c.py"
    path.write_text(
        "config.a = 1\nconfig.b.c = 2\nconfig.d.update(e=3)\nconfig['f'] = 4\n"
        "config.update(g=5)\nconfig.update({'h': 6})\nconfig.i += 7\nother.j = 8\n"
    )
    assert written_keys(path) == set("abdfghi")
