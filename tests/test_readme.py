"""The README's "Adding a pretext task" example is real code: the registered rotation task's
class, verbatim, registered as the README says."""

import re
from pathlib import Path

from selfsup.pretext import TASKS

ROOT = Path(__file__).resolve().parents[1]


def test_the_readme_example_is_the_rotation_task_verbatim():
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Adding a pretext task") :]
    example = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    module = (ROOT / "selfsup" / "pretext" / "rotation.py").read_text()
    assert example.startswith("class Rotation:") and len(example.splitlines()) > 30
    assert module.endswith(example)  # The whole task class, to the end of the module.
    registration = re.search(r'`"rotation": "([a-z_]+:[A-Za-z]+)"` in `TASKS`', section).group(1)
    assert TASKS["rotation"] == registration
