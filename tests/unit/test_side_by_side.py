"""The README's two commands side by side: the test command (`bash .ci/run`) installs into
and runs from its own venv, so it never reinstalls the package a running `.venv/bin/rdr
serve` (the README's start command) serves its page from."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def shell_lines(path: Path) -> list[str]:
    return [line.strip() for line in path.read_text().splitlines()
            if line.strip() and not line.lstrip().startswith("#")]


def test_readme_start_command_runs_from_dot_venv_on_the_embedded_default() -> None:
    readme = (ROOT / "README.md").read_text()
    start = next(line for line in readme.splitlines() if line.startswith("apt-get update"))
    assert "python3 -m venv .venv" in start and ".venv/bin/pip install ." in start
    assert start.endswith(".venv/bin/rdr serve")  # no --config: the embedded default


def test_ci_run_never_touches_dot_venv() -> None:
    lines = shell_lines(ROOT / ".ci" / "run")
    assert "venv=.ci/venv" in lines
    assert 'python3 -m venv "$venv"' in lines
    assert not [line for line in lines if re.search(r"(^|[\s/])\.venv\b", line)], lines
    for tool in ("pip install", "ruff", "lint-imports", "python -m pytest"):
        uses = [line for line in lines if tool in line]
        assert uses and all('"$venv"/bin/' in line for line in uses), (tool, uses)
    assert ".ci/venv/" in (ROOT / ".gitignore").read_text().splitlines()
