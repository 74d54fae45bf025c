"""The package's shape: layers import only downwards, and every function reads at once."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "selfsup"
# Lowest first; a module may import from its own layer and those below. Commands (the CLI and
# a module per command) sit on top: `train.loop` is `pretrain`, `evaluate.run` is `evaluate`;
# so does the package itself, whose `selfsup.load_encoder` is the public loading API.
LAYERS = [
    {
        "selfsup.config",
        "selfsup.workdir",
        "selfsup.report",
        "selfsup.progress",
        "selfsup.parallel",
        "selfsup.files",
    },
    {"selfsup.data", "selfsup.models"},
    {"selfsup.pretext"},
    {"selfsup.train", "selfsup.pretrained"},
    {"selfsup.evaluate"},
]
COMMANDS = {"selfsup.cli", "selfsup.__main__", "selfsup.demo", "selfsup.show", "selfsup.export"}
COMMANDS |= {"selfsup.train.loop", "selfsup.evaluate.run", "selfsup"}
MAX_FUNCTION_LINES = 60


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    if module in COMMANDS:
        return len(LAYERS)
    for i, names in reversed(list(enumerate(LAYERS))):
        if any(module == n or module.startswith(n + ".") for n in names):
            return i
    assert module in LAYERS[0], f"{module} is in no layer: add it to LAYERS or COMMANDS"
    return 0


def imports(path: Path) -> set[str]:
    """Every selfsup module `path` imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    # `from selfsup import x` names the package only as a namespace.
    return {name for name in found if name.startswith("selfsup.")}


MODULES = sorted(PACKAGE.rglob("*.py"))


@pytest.mark.parametrize("path", MODULES, ids=lambda p: module_name(p))
def test_modules_import_only_from_their_layer_or_below(path):
    module = module_name(path)
    known = {module_name(p) for p in MODULES}
    above = sorted(
        name
        for name in imports(path)
        if name in known
        and not (module in COMMANDS and name in COMMANDS)
        and layer(name) > layer(module)
    )
    assert not above, f"{module} (layer {layer(module)}) imports from above: {above}"


def test_every_function_reads_at_once():
    long = [
        f"{module_name(path)}.{node.name}: {node.end_lineno - node.lineno + 1} lines"
        for path in MODULES
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)
        and node.end_lineno - node.lineno + 1 > MAX_FUNCTION_LINES
    ]
    assert not long, long
