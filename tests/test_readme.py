"""The README's quickstart runs as written, and its first two lines are the commands CI runs."""

from __future__ import annotations

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_quickstart_code_block_runs():
    text = (ROOT / "README.md").read_text()
    block = re.search(r"```python\n(.*?)```", text, re.S)
    assert block, "README.md has no python code block"
    exec(compile(block.group(1), "README.md quickstart", "exec"), {})


def test_first_two_lines_are_the_install_commands_ci_runs():
    first, second = (ROOT / "README.md").read_text().splitlines()[:2]
    assert first.strip() == "bash scripts/install.sh && .venv/bin/python -m networks.demo"
    assert second.strip() == "bash scripts/install.sh test && .venv/bin/python -m pytest -q"
    ci = (ROOT / ".ci" / "run").read_text()
    assert "bash scripts/install.sh test" in ci and ".venv/bin/python -m pytest -q" in ci
