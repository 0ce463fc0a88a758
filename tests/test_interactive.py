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


def _session(sock: str, command: list[str], prompt: str):  # type: ignore[no-untyped-def]
    """A tmux session running command on a real terminal; yields (keys, screen)."""
    if not shutil.which("tmux"):
        if REQUIRE:
            pytest.fail("tmux is required for the interactive tests")
        pytest.skip("tmux not installed")
    subprocess.run(["tmux", "-S", sock, "-f", "/dev/null", "new-session", "-d", "-x", "120", "-y", "40",
                    *command], check=True, timeout=10)

    def keys(*k: str) -> None:
        subprocess.run(["tmux", "-S", sock, "send-keys", *k], check=True, timeout=10)

    def screen() -> str:
        return subprocess.run(["tmux", "-S", sock, "capture-pane", "-p"], capture_output=True,
                              text=True, timeout=10).stdout

    try:
        assert wait_for(lambda: prompt in screen()), screen()
        yield keys, screen
    finally:
        subprocess.run(["tmux", "-S", sock, "kill-server"], capture_output=True, timeout=10)


@pytest.fixture
def tmux(tmp_path: Path, home: Path):  # type: ignore[no-untyped-def]
    """An interactive bash inside the sandbox, started by a shell without job control."""
    status = tmp_path / "status"
    inner = (f"cd {shlex.quote(str(home))}; HOME={shlex.quote(str(home))} "
             f"{shlex.quote(str(BIN))} run {shlex.quote(str(PROFILES / 'clean-home.toml'))} "
             f"--env 'PS1=sbx$ ' -- bash --norc --noprofile -i; echo $? > {shlex.quote(str(status))}; sleep 30")
    command = ["env", "-i", "PATH=/usr/bin:/bin", "TERM=xterm", "PS1=sbx$ ", "/bin/sh", "-c", inner]
    for keys, screen in _session(str(tmp_path / "tmux.sock"), command, "sbx$"):
        yield keys, screen, status


@pytest.fixture
def outer_shell(tmp_path: Path, home: Path):  # type: ignore[no-untyped-def]
    """An interactive bash on the host, with job control, in which sandboxer is run."""
    command = ["env", "-i", "PATH=/usr/bin:/bin", "TERM=xterm", f"HOME={home}", "PS1=host$ ",
               "bash", "--norc", "--noprofile", "-i"]
    yield from _session(str(tmp_path / "tmux.sock"), command, "host$")


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


def test_ctrl_z_suspends_the_sandbox_and_fg_resumes_it(outer_shell, home: Path) -> None:  # type: ignore[no-untyped-def]
    # the payload is the terminal's foreground job inside; Ctrl-Z must reach the caller's shell
    keys, screen = outer_shell
    keys(f"cd {shlex.quote(str(home))}; {shlex.quote(str(BIN))} run --home tmpfs -- cat", "Enter")
    time.sleep(0.5)
    keys("first-line", "Enter")
    assert wait_for(lambda: screen().count("first-line") >= 2), screen()  # echoed, then cat's copy
    keys("C-z")
    assert wait_for(lambda: "Stopped" in screen() and screen().rstrip().endswith("host$")), screen()
    keys("jobs -l", "Enter")
    assert wait_for(lambda: screen().count("Stopped") >= 2), screen()
    # bg: cat reads the terminal in the background, stops again (SIGTTIN), and the shell keeps
    # the terminal
    keys("bg", "Enter")
    time.sleep(0.5)
    keys("echo shell-$((6*7)); jobs", "Enter")
    assert wait_for(lambda: "shell-42" in screen() and screen().count("Stopped") >= 3), screen()
    keys("fg", "Enter")
    time.sleep(0.5)
    keys("second-line", "Enter")  # cat has the terminal again
    assert wait_for(lambda: screen().count("second-line") >= 2), screen()
    keys("C-d")
    keys("echo status=$?", "Enter")
    assert wait_for(lambda: "status=0" in screen()), screen()


def test_tab_in_bash_with_bash_completion_as_installed(tmp_path: Path, home: Path) -> None:
    """What a user has: an interactive bash with Debian's bash-completion, which loads
    sandboxer's completion on first use from ~/.local/share/bash-completion/completions (where
    ./tasks links puts it), and TAB."""
    loader = Path("/usr/share/bash-completion/bash_completion")
    if not loader.exists():
        if REQUIRE:
            pytest.fail("bash-completion is required (apt install bash-completion)")
        pytest.skip("bash-completion is not installed")
    data = home / ".local" / "share"
    (data / "bash-completion" / "completions").mkdir(parents=True)
    (data / "bash-completion" / "completions" / "sandboxer").symlink_to(
        Path(__file__).resolve().parent.parent / "completions" / "sandboxer.bash")
    rc = tmp_path / "bashrc"
    rc.write_text(f"source {loader}\nPS1='host$ '\n")
    project = home / "proj"
    (project / "profiles").mkdir(parents=True)
    (project / "profiles" / "nightly-build.toml").write_text("")
    command = ["env", "-i", f"PATH={BIN.parent}:/usr/bin:/bin", "TERM=xterm", f"HOME={home}",
               f"XDG_DATA_HOME={data}", "bash", "--noprofile", "--rcfile", str(rc), "-i"]
    session = _session(str(tmp_path / "tmux.sock"), command, "host$")
    keys, screen = next(session)
    try:
        keys(f"cd {shlex.quote(str(project))}", "Enter")
        keys("sandboxer run --net sl", "Tab")
        assert wait_for(lambda: "sandboxer run --net slirp4netns" in screen()), screen()
        keys("nightly-b", "Tab")
        assert wait_for(lambda: "--net slirp4netns nightly-build" in screen()), screen()
        keys("C-u")
        keys("sandboxer idmap --sch", "Tab")
        assert wait_for(lambda: "sandboxer idmap --scheme" in screen()), screen()
        keys("C-u")
        # after --, the payload's own completion (bash-completion's for id)
        keys("sandboxer run --net none -- id --ze", "Tab")
        assert wait_for(lambda: "-- id --zero" in screen()), screen()
    finally:
        session.close()
