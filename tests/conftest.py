"""Shared fixtures: the sandboxer executable, and a gate for real-namespace tests.

Integration tests need unprivileged user namespaces. Where they are unavailable they skip with
the reason, except when SANDBOXER_REQUIRE_INTEGRATION=1 (CI sets it): then they fail.
"""

from __future__ import annotations

import functools
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PROFILES = REPO / "profiles"
BIN = Path(sys.executable).parent / "sandboxer"
REQUIRE = os.environ.get("SANDBOXER_REQUIRE_INTEGRATION") == "1"


def pytest_configure(config: pytest.Config) -> None:
    """Temporary files under the user's HOME, where users keep their projects: every sandbox
    replaces the host's /tmp with a private one, so a project there is out of its sight."""
    if config.option.basetemp is None:
        base = Path.home() / ".cache" / "sandboxer-tests"
        base.mkdir(parents=True, exist_ok=True)
        config.option.basetemp = str(base / "pytest")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Every test that uses real namespaces (the `integration` fixture) carries the integration
    marker, so `./tasks test -m "not integration"` is the fast loop of pure tests."""
    for item in items:
        if "integration" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.integration)


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


def alive_with(marker: str) -> list[int]:
    """The pids of the processes whose command line holds marker."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if marker.encode() in Path(f"/proc/{entry}/cmdline").read_bytes():
                    found.append(int(entry))
            except OSError:
                pass
    return found


def run_rendering(args: Sequence[str], home: Path, script: Path, *, cwd: Path | None = None
                  ) -> subprocess.CompletedProcess[str]:
    """`sandboxer explain --shell ARGS`, written to script and run with /bin/sh from cwd (home)."""
    rendered = sbx(["explain", "--shell", *args], home, cwd=cwd)
    assert rendered.returncode == 0, rendered.stderr
    script.write_text(rendered.stdout)
    return subprocess.run(["/bin/sh", str(script)], capture_output=True, text=True, cwd=cwd or home,
                          env=caller_env(home), timeout=30)


def sbx(args: Sequence[str], home: Path, *, cwd: Path | None = None, timeout: float = 30,
        env: dict[str, str] | None = None, **kw: object) -> subprocess.CompletedProcess[str]:
    if not args or args[0] not in ("run", "check", "explain", "profiles", "rootfs", "completion", "schema",
                                   "doctor", "idmap", "ps", "exec", "stop", "logs", "port", "rnu"):
        args = ["run", *args]
    return subprocess.run(
        [str(BIN), *args], capture_output=True, text=True, timeout=timeout,
        cwd=str(cwd or home), env=env or caller_env(home), **kw,  # type: ignore[call-overload]
    )


class Desktop:
    """What a desktop session has, for the tests to attack from inside sandboxes: a session bus
    and a private socket in /run/user/UID, an X11-like socket in /tmp, an abstract socket (X11's
    @/tmp/.X11-unix/X0), and another process of the user."""

    def __init__(self, runtime: Path, tag: str) -> None:
        self.runtime = runtime
        self.bus = runtime / f"{tag}-bus"
        self.private = runtime / f"{tag}-systemd-private"
        self.x11_dir = Path("/tmp") / f".{tag}-X11-unix"
        self.x11 = self.x11_dir / "X0"
        self.abstract = f"@/tmp/.{tag}-X11-unix/X0"
        self.procs: list[subprocess.Popen[bytes]] = []
        self.sockets: list[socket.socket] = []
        self.other = 0

    @property
    def targets(self) -> dict[str, str]:
        return {"bus": str(self.bus), "runtime": str(self.private), "tmp": str(self.x11),
                "abstract": self.abstract}

    def listen(self, address: str) -> None:
        s = socket.socket(socket.AF_UNIX)
        s.bind("\0" + address[1:] if address.startswith("@") else address)
        s.listen(16)
        self.sockets.append(s)

        def serve() -> None:
            while True:
                try:
                    conn, _ = s.accept()
                except OSError:
                    return
                with conn:
                    conn.sendall(b"hello")

        threading.Thread(target=serve, daemon=True).start()

    def start(self) -> None:
        dbus = subprocess.Popen(["dbus-daemon", "--session", f"--address=unix:path={self.bus}", "--nofork",
                                 "--print-address=1"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.procs.append(dbus)
        assert dbus.stdout is not None and dbus.stdout.readline().startswith(b"unix:path=")
        self.listen(str(self.private))
        self.x11_dir.mkdir(mode=0o700)
        self.listen(str(self.x11))
        self.listen(self.abstract)
        other = subprocess.Popen(["sleep", "600"])
        self.procs.append(other)
        self.other = other.pid

    def stop(self) -> None:
        for s in self.sockets:
            s.close()
        for proc in self.procs:
            proc.kill()
            proc.wait(timeout=10)
        for path in (self.bus, self.private, self.x11):
            path.unlink(missing_ok=True)
        if self.x11_dir.exists():
            self.x11_dir.rmdir()


@pytest.fixture(scope="session")
def desktop() -> Iterator[Desktop]:
    runtime = Path(f"/run/user/{os.getuid()}")
    if not runtime.is_dir() or not shutil.which("dbus-daemon"):
        problem = f"{runtime} or dbus-daemon is missing (./tasks test makes the one and installs the other)"
        if REQUIRE:
            pytest.fail(problem)
        pytest.skip(problem)
    session = Desktop(runtime, f"sbx-test-{os.getpid()}")
    try:
        session.start()
        yield session
    finally:
        session.stop()
