"""The README's Python snippet runs as written."""

import re
from pathlib import Path


def test_readme_python_snippet_runs():
    text = (Path(__file__).parents[1] / "README.md").read_text()
    # blocks after "<!-- example: NAME -->" need files (a trained run) and are run by their own tests
    blocks = re.findall(r"(?<!-->\n)```python\n(.*?)```", text, re.S)
    assert blocks, "README has no python block"
    for block in blocks:
        exec(compile(block, "README.md", "exec"), {})
