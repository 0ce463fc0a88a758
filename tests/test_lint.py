"""Linters as tests: ruff and mypy (strict) over the package."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO, REQUIRE

TOOLS = Path(sys.executable).parent


@pytest.mark.parametrize("command", [["ruff", "check", "sandboxer", "tests", "bench"], ["mypy", "sandboxer"]])
def test_linter(command: list[str]) -> None:
    tool = TOOLS / command[0]
    if not tool.exists():
        found = shutil.which(command[0])
        if not found:
            if REQUIRE:
                pytest.fail(f"{command[0]} is not installed (pip install -e .[dev])")
            pytest.skip(f"{command[0]} not installed")
        tool = Path(found)
    out = subprocess.run([str(tool), *command[1:]], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr


def test_stage_imports_only_the_standard_library() -> None:
    # stage.py runs as `python3 -I -S`: no site-packages, and every import costs start-up time
    for name in ("stage.py", "_stage.py"):
        source = (REPO / "sandboxer" / name).read_text()
        imports = {line.split()[1] for line in source.splitlines() if line.startswith(("import ", "from "))}
        assert imports <= {"__future__", "ctypes", "marshal", "os", "select", "_signal", "sys", "typing",
                           "_stage"}, (name, imports)
