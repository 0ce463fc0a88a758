"""slirp4netns networking with real namespaces, unprivileged, on loopback only.

Never a name resolved through the forwarder, never an address other than the host's 127.0.0.1
and the sandbox's own.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import BIN, PROFILES, REQUIRE, caller_env, sbx

pytestmark = pytest.mark.usefixtures("integration", "slirp")
WEB = str(PROFILES / "web-dev.toml")
NET = ["--net", "slirp4netns"]


@pytest.fixture
def slirp() -> None:
    if not shutil.which("slirp4netns", path="/usr/bin:/bin"):
        if os.environ.get("SANDBOXER_REQUIRE_INTEGRATION") == "1":
            pytest.fail("slirp4netns is not installed")
        pytest.skip("slirp4netns is not installed")


@pytest.fixture
def runtime(tmp_path: Path) -> Path:
    """XDG_RUNTIME_DIR for the caller: where the API socket's private directory goes."""
    d = tmp_path / "run"
    d.mkdir(mode=0o700)
    return d


def env_for(home: Path, runtime: Path, **extra: str) -> dict[str, str]:
    return caller_env(home, XDG_RUNTIME_DIR=str(runtime), **extra)


def sh(script: str) -> list[str]:
    return ["--", "/bin/sh", "-c", script]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A TCP listener on the host's 127.0.0.1."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(8)
    yield s
    s.close()


PROBE = ("import socket, sys\n"
         "s = socket.socket(); s.settimeout(3)\n"
         "try:\n    s.connect(('10.0.2.2', int(sys.argv[1]))); print('CONNECTED')\n"
         "except OSError as e:\n    print('REFUSED', e.errno)\n")


def test_interfaces_route_and_files(home: Path, runtime: Path) -> None:
    script = ("ip -o link; echo ROUTE; ip route; echo RESOLV; cat /etc/resolv.conf; "
              "echo HOSTS; cat /etc/hosts; echo PORT; cat /proc/sys/net/ipv4/ip_unprivileged_port_start")
    out = sbx([*NET, *sh(script)], home, env=env_for(home, runtime))
    assert out.returncode == 0, out.stderr
    links, rest = out.stdout.split("ROUTE")
    assert ": lo:" in links and ": tap0:" in links
    route, rest = rest.split("RESOLV")
    assert "default via 10.0.2.2 dev tap0" in route
    resolv, rest = rest.split("HOSTS")
    assert resolv.split() == ["nameserver", "10.0.2.3"]
    hosts, port = rest.split("PORT")
    assert "10.0.2.100\tsandbox" in hosts and "localhost" in hosts
    assert port.strip() == "0"
    assert not list(runtime.iterdir())


def test_without_pid_namespace(home: Path, runtime: Path) -> None:
    out = sbx([*NET, "--no-pid", *sh("ip -o -4 addr show dev tap0")], home, env=env_for(home, runtime))
    assert out.returncode == 0, out.stderr
    assert "10.0.2.100/24" in out.stdout


def test_host_loopback_unreachable_by_default(home: Path, runtime: Path, listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    out = sbx([*NET, "--", "python3", "-c", PROBE, str(port)], home, env=env_for(home, runtime))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("REFUSED"), out.stdout
    assert "warning" not in out.stderr


def test_host_loopback_reachable_when_allowed(home: Path, runtime: Path, listener: socket.socket) -> None:
    port = listener.getsockname()[1]
    out = sbx([*NET, "--allow-host-loopback", "--", "python3", "-c", PROBE, str(port)], home,
              env=env_for(home, runtime))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "CONNECTED"
    assert "sandboxer: warning:" in out.stderr and "127.0.0.1" in out.stderr


def _start(args: list[str], home: Path, runtime: Path, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen([str(BIN), "run", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, cwd=str(home), env=env_for(home, runtime, **env),
                            start_new_session=True)


def _stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
    return proc.communicate(timeout=10)


def test_http_round_trip_through_a_forward(home: Path, runtime: Path) -> None:
    port = free_port()
    proc = _start([WEB, "--forward", f"127.0.0.1:{port}:80", "--", "python3", "-m", "http.server",
                   "--directory", "/etc", "80"], home, runtime)
    try:
        body = b""
        for _ in range(100):
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                    s.sendall(b"GET /hosts HTTP/1.0\r\nHost: x\r\n\r\n")
                    s.settimeout(5)
                    while chunk := s.recv(65536):
                        body += chunk
                if body:
                    break
            except OSError:
                pass
            time.sleep(0.1)
        assert body.startswith(b"HTTP/1.0 200"), body[:200]
        assert b"10.0.2.100\tsandbox" in body
        ss = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True, timeout=10).stdout
        bound = [line.split()[3] for line in ss.splitlines() if line.split()[3].endswith(f":{port}")]
        assert bound == [f"127.0.0.1:{port}"], ss
        assert not list(runtime.iterdir())  # the API socket is gone once the forwards are in
    finally:
        _, err = _stop(proc)
    assert "warning" not in err


def test_port_already_in_use(home: Path, runtime: Path, listener: socket.socket, tmp_path: Path) -> None:
    port = listener.getsockname()[1]
    marker = tmp_path / "ran"
    out = sbx([*NET, "--forward", f"{port}:80", "--bind", str(tmp_path), *sh(f"touch {marker}")], home,
              env=env_for(home, runtime))
    assert out.returncode == 125, out.stderr
    assert out.stderr.startswith("sandboxer: error: network helper cannot forward"), out.stderr
    assert len(out.stderr.splitlines()) == 1
    assert not marker.exists()
    assert not list(runtime.iterdir())


def test_non_loopback_forward_warns(home: Path, runtime: Path) -> None:
    port = free_port()
    out = sbx(["explain", *NET, "--forward", f"0.0.0.0:{port}:80"], home, env=env_for(home, runtime))
    assert out.returncode == 0, out.stderr
    assert f"forward 0.0.0.0:{port} -> 80/tcp" in out.stdout and "warning" in out.stdout


def _fake(tmp_path: Path, body: str) -> Path:
    """A directory to put first on PATH, holding a fake slirp4netns (the one on PATH is used)."""
    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    fake = bindir / "slirp4netns"
    version = "" if "--version" in body else '[ "$1" = --version ] && { echo "slirp4netns version 1.2.0"; exit 0; }\n'
    fake.write_text("#!/bin/sh\n" + version + body + "\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    return bindir


@pytest.mark.parametrize("body,said", [
    ("exec sleep 60", "not ready within"),
    ("echo 'fake: unsupported option' >&2; exit 1", "exited before it was ready (exit status 1)"),
])
def test_fake_helper_fails_closed(home: Path, runtime: Path, tmp_path: Path, body: str, said: str) -> None:
    fake = _fake(tmp_path, body)
    marker = tmp_path / "ran"
    started = time.monotonic()
    out = sbx([*NET, "--bind", str(tmp_path), *sh(f"touch {marker}")], home,
              env=env_for(home, runtime, PATH=f"{fake}:/usr/local/bin:/usr/bin:/bin"), timeout=20)
    assert out.returncode == 125, out.stderr
    assert "network helper" in out.stderr and said in out.stderr, out.stderr
    assert not marker.exists()
    assert time.monotonic() - started < 15
    assert "sleep 60" not in subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout


@pytest.mark.parametrize("backend", ["slirp4netns", "pasta"])
def test_no_tun_device_fails_closed(home: Path, tmp_path: Path, backend: str) -> None:
    # /dev/net/tun hidden (a tmpfs on /dev/net, in a mount namespace of the test's own, with a
    # network namespace of its own too, so that no helper could ever reach out): the stage's
    # first step fails, before any helper starts; one line, 125, the command never runs
    if backend == "pasta" and not shutil.which("pasta", path="/usr/bin:/bin"):
        if REQUIRE:
            pytest.fail("pasta is not installed (apt install passt)")
        pytest.skip("pasta is not installed")
    marker = tmp_path / "ran"
    script = (f'mount -t tmpfs none /dev/net && exec unshare --user --map-user={os.getuid()} '
              f'--map-group={os.getgid()} -- "$@"')
    out = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "--net", "--", "/bin/sh", "-c", script,
                          "sh", str(BIN), "run", "--net", backend, "--bind", str(tmp_path), "--", "touch",
                          str(marker)], capture_output=True, text=True, timeout=30, cwd=home, env=caller_env(home))
    assert out.returncode == 125, out.stderr
    assert out.stderr == ("sandboxer: error: sandbox setup failed: cannot open /dev/net/tun: No such file or "
                          "directory (user-mode networking needs it readable and writable by you: mode 0666)\n")
    assert not marker.exists()


@pytest.mark.parametrize("body,said", [
    ('[ "$1" = --version ] && echo "slirp4netns version 0.4.9"; exit 0', "version 0.4.9, too old"),
    ('[ "$1" = --version ] && echo "who knows"; exit 0', "cannot tell the version"),
])
def test_old_or_unknown_helper_refused(home: Path, runtime: Path, tmp_path: Path, body: str, said: str) -> None:
    fake = _fake(tmp_path, body)
    out = sbx([*NET, "--", "true"], home, env=env_for(home, runtime, PATH=f"{fake}:/usr/local/bin:/usr/bin:/bin"),
              timeout=20)
    assert out.returncode == 125 and said in out.stderr, out.stderr
    assert out.stderr.count("\n") == 1


def _slirp_children(pid: int) -> list[int]:
    found = []
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    for kid in kids:
        try:
            if Path(f"/proc/{kid}/comm").read_text().strip() == "slirp4netns":
                found.append(int(kid))
        except OSError:
            pass
    return found


def _wait_started(proc: subprocess.Popen[str]) -> list[int]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip() == "started", line
    helpers = _slirp_children(proc.pid)
    assert len(helpers) == 1
    return helpers


def _gone(pid: int) -> bool:
    for _ in range(50):
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        time.sleep(0.1)
    return False


def test_helper_killed_mid_run(home: Path, runtime: Path) -> None:
    proc = _start([*NET, *sh("echo started; exec sleep 30")], home, runtime)
    try:
        (helper,) = _wait_started(proc)
        os.kill(helper, signal.SIGKILL)
        proc.wait(timeout=10)
    finally:
        _, err = _stop(proc)
    assert proc.returncode == 125, err
    assert "sandboxer: error: network helper died" in err


def test_nothing_left_after_supervisor_sigkill(home: Path, runtime: Path) -> None:
    port = free_port()
    proc = _start([*NET, "--forward", f"{port}:80", *sh("echo started; exec sleep 30")], home, runtime)
    try:
        (helper,) = _wait_started(proc)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
        assert _gone(helper)
    finally:
        _stop(proc)
    assert not list(runtime.iterdir())
    ss = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True, timeout=10).stdout
    assert f":{port} " not in ss
