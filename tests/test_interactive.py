"""An interactive bash inside, on a real terminal (tmux): Ctrl-C and job control."""

from __future__ import annotations

import shlex
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from .conftest import BIN, PROFILES, REQUIRE

pytestmark = pytest.mark.usefixtures("integration")


def wait_for(check: Callable[[], bool], timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.1)
    return False


@pytest.fixture
def tmux(tmp_path: Path, home: Path):  # type: ignore[no-untyped-def]
    if not shutil.which("tmux"):
        if REQUIRE:
            pytest.fail("tmux is required for the interactive tests")
        pytest.skip("tmux not installed")
    sock = str(tmp_path / "tmux.sock")
    status = tmp_path / "status"
    inner = (f"cd {shlex.quote(str(home))}; HOME={shlex.quote(str(home))} "
             f"{shlex.quote(str(BIN))} run {shlex.quote(str(PROFILES / 'clean-home.toml'))} "
             f"--env 'PS1=sbx$ ' -- bash --norc --noprofile -i; echo $? > {shlex.quote(str(status))}; sleep 30")
    subprocess.run(["tmux", "-S", sock, "-f", "/dev/null", "new-session", "-d", "-x", "120", "-y", "40",
                    "env", "-i", "PATH=/usr/bin:/bin", "TERM=xterm", "PS1=sbx$ ", "/bin/sh", "-c", inner],
                   check=True, timeout=10)

    def keys(*k: str) -> None:
        subprocess.run(["tmux", "-S", sock, "send-keys", *k], check=True, timeout=10)

    def screen() -> str:
        return subprocess.run(["tmux", "-S", sock, "capture-pane", "-p"], capture_output=True,
                              text=True, timeout=10).stdout

    try:
        assert wait_for(lambda: "sbx$" in screen()), screen()
        yield keys, screen, status
    finally:
        subprocess.run(["tmux", "-S", sock, "kill-server"], capture_output=True, timeout=10)


def test_ctrl_c_interrupts_the_foreground_job_not_the_sandbox(tmux) -> None:  # type: ignore[no-untyped-def]
    keys, screen, status = tmux
    keys("sleep 100", "Enter")
    time.sleep(0.5)
    keys("C-c")
    keys("echo alive-$((40+2))", "Enter")
    assert wait_for(lambda: "alive-42" in screen()), screen()
    # job control: a background job, listed, brought to the foreground, stopped, resumed
    keys("sleep 77 &", "Enter")
    keys("jobs", "Enter")
    assert wait_for(lambda: "Running" in screen() and "sleep 77" in screen()), screen()
    keys("fg", "Enter")
    time.sleep(0.3)
    keys("C-z")
    assert wait_for(lambda: "Stopped" in screen()), screen()
    keys("bg", "Enter")
    keys("jobs", "Enter")
    assert wait_for(lambda: screen().count("Running") >= 2), screen()
    keys("kill %1; wait; exit 3", "Enter")
    assert wait_for(lambda: status.exists() and status.read_text().strip() == "3"), screen()
