"""Shared fixtures: the sandboxer executable, and a gate for real-namespace tests.

Integration tests need unprivileged user namespaces. Where they are unavailable they skip with
the reason, except when SANDBOXER_REQUIRE_INTEGRATION=1 (CI sets it): then they fail.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PROFILES = REPO / "profiles"
BIN = Path(sys.executable).parent / "sandboxer"
REQUIRE = os.environ.get("SANDBOXER_REQUIRE_INTEGRATION") == "1"


@functools.cache
def userns_problem() -> str:
    try:
        out = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "true"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as e:
        return str(e)
    return "" if out.returncode == 0 else out.stderr.strip()


@pytest.fixture
def integration() -> None:
    problem = userns_problem()
    if problem:
        if REQUIRE:
            pytest.fail(f"user namespaces unavailable but required: {problem}")
        pytest.skip(f"user namespaces unavailable: {problem}")


@pytest.fixture
def home(tmp_path: Path) -> Path:
    """A private HOME for the caller, with a canary file the sandbox must not show."""
    h = tmp_path / "home"
    h.mkdir()
    (h / "canary").write_text("secret canary\n")
    return h


def caller_env(home: Path, **extra: str) -> dict[str, str]:
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8",
           "TERM": "dumb"}
    env.update(extra)
    return env


def sbx(args: Sequence[str], home: Path, *, cwd: Path | None = None, timeout: float = 30,
        env: dict[str, str] | None = None, **kw: object) -> subprocess.CompletedProcess[str]:
    if not args or args[0] not in ("run", "check", "explain"):
        args = ["run", *args]
    return subprocess.run(
        [str(BIN), *args], capture_output=True, text=True, timeout=timeout,
        cwd=str(cwd or home), env=env or caller_env(home), **kw,  # type: ignore[call-overload]
    )
