"""The README's two set-up commands are the ones CI and users run."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    block = re.search(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    assert block, "README must open with a bash block"
    return [line for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]


def test_readme_opens_with_exactly_two_commands() -> None:
    commands = _readme_commands()
    assert len(commands) == 2
    assert "python -m indexer build" in commands[0] and "python -m retrieval search" in commands[0]
    assert "pytest" in commands[1]


def test_ci_runs_the_readme_test_command() -> None:
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    assert _readme_commands()[1] in ci_lines


def test_ci_runs_ruff_before_the_tests() -> None:
    ci_lines = (ROOT / ".ci" / "run").read_text().splitlines()
    ruff = next(i for i, line in enumerate(ci_lines) if "ruff check ." in line and "ruff format --check ." in line)
    assert ruff < ci_lines.index(_readme_commands()[1])
    assert '"ruff' in (ROOT / "pyproject.toml").read_text().split("test = [", 1)[1].split("]", 1)[0]
