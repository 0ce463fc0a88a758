"""Linters as tests: ruff and mypy (strict) over the package."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import REPO, REQUIRE

TOOLS = Path(sys.executable).parent


RUFF = ["ruff", "check", "sandboxer", "tests", "bench", "setup.py", "bin/sandboxer"]


@pytest.mark.parametrize("command", [RUFF, ["mypy", "sandboxer"]])
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


def test_stage_compiles_without_warnings(tmp_path: Path) -> None:
    # the stage runs inside every sandbox: hold it to strict warnings, as C
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.fail("no C compiler (apt install gcc): sandboxer's stage is C")
    out = subprocess.run([cc, "-O2", "-Wall", "-Wextra", "-Wformat=2", "-Wshadow", "-Wconversion",
                          "-Wno-sign-conversion", "-Werror", "-o", str(tmp_path / "stage"),
                          str(REPO / "sandboxer" / "stage.c")], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
