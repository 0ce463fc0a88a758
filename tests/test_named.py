"""Named sandboxes: run --name/--detach, ps, exec, stop, logs, port; and what a payload or a
recycled pid must not do to them."""

from __future__ import annotations

import json
import marshal
import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandboxer import names

from .conftest import BIN, alive_with, caller_env, sbx

pytestmark = pytest.mark.usefixtures("integration")


@pytest.fixture
def started(home: Path) -> Iterator[list[str]]:
    """Names of the sandboxes a test starts: stopped at the end, whatever happened."""
    running: list[str] = []
    yield running
    for name in running:
        sbx(["stop", "--timeout", "0", name], home, timeout=30)


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def detach(home: Path, started: list[str], name: str, *args: str, timeout: float = 30) -> str:
    out = sbx(["-d", "--name", name, *args], home, timeout=timeout)
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"{name}\n"
    started.append(name)
    return name


def ps(home: Path) -> dict[str, dict[str, object]]:
    out = sbx(["ps", "--json"], home)
    assert out.returncode == 0, out.stderr
    return {row["name"]: row for row in json.loads(out.stdout)}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- exec ----------------------------------------------------------------------------------------

def test_exec_sees_what_the_payload_sees(home: Path, started: list[str]) -> None:
    name = detach(home, started, unique("same"), "--", "sh", "-c", "echo made > $HOME/made; exec sleep 60")
    time.sleep(0.2)
    out = sbx(["exec", name, "--", "sh", "-c", "cat $HOME/made; id -u; ls /proc | grep -c '^[0-9]'; "
               "cat /proc/1/comm; readlink /proc/self/ns/user"], home)
    assert out.returncode == 0, out.stderr
    made, uid, procs, init, userns = out.stdout.splitlines()
    assert (made, uid, init) == ("made", str(os.getuid()), "sandboxer-stage")
    assert int(procs) <= 6  # the stage, the payload, exec's sh, ls and grep: nothing of the host's
    assert userns != os.readlink("/proc/self/ns/user")
    # the payload's own user namespace, not the stage's
    payload = ps(home)[name]["pid"]
    assert isinstance(payload, int) and userns == os.readlink(f"/proc/{payload}/ns/user")
    # the command's own exit status passes through; a missing command is 127
    assert sbx(["exec", name, "--", "sh", "-c", "exit 7"], home).returncode == 7
    missing = sbx(["exec", name, "--", "no-such-command"], home)
    assert missing.returncode == 127 and "command not found" in missing.stderr


def test_exec_into_a_map_root_sandbox_cannot_unlock_its_mounts(home: Path, started: list[str]) -> None:
    name = detach(home, started, unique("root"), "--map", "root", "--", "sleep", "60")
    out = sbx(["exec", name, "--", "sh", "-c", "id -u; umount $HOME 2>/dev/null && echo UNMOUNTED; "
               "umount -l $HOME 2>/dev/null && echo DETACHED; mount -o remount,rw / 2>/dev/null && echo REMOUNTED; "
               "grep -E '^(NoNewPrivs|Seccomp):' /proc/self/status"], home)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["0", "NoNewPrivs:\t1", "Seccomp:\t2"]


def test_exec_gets_a_terminal_and_no_host_fd_or_cwd(home: Path, tmp_path: Path, started: list[str]) -> None:
    name = detach(home, started, unique("tty"), "--", "sleep", "60")
    secret = tmp_path / "host-file"
    secret.write_text("host\n")
    fd = os.open(secret, os.O_RDONLY)  # an fd the caller has open, inheritable
    os.set_inheritable(fd, True)
    try:
        out = subprocess.run([str(BIN), "exec", name, "--", "sh", "-c", "ls /proc/self/fd | wc -l; pwd"],
                             capture_output=True, text=True, timeout=30, cwd=tmp_path, env=caller_env(home),
                             pass_fds=(fd,))
    finally:
        os.close(fd)
    assert out.returncode == 0, out.stderr
    count, cwd = out.stdout.split()
    assert count == "4"  # 0, 1, 2 and ls's own directory
    assert cwd == str(home)  # the payload's cwd, not the caller's
    # on a terminal, the command has one
    script = subprocess.run(["script", "-qec", f"{BIN} exec {name} -- tty", "/dev/null"], capture_output=True,
                            text=True, timeout=30, env=caller_env(home), cwd=home)
    assert script.returncode == 0, script.stdout
    assert script.stdout.strip().startswith("/dev/pts/")


def test_exec_leaves_nothing_in_a_sandbox_without_a_pid_namespace(home: Path, started: list[str]) -> None:
    # No init inside to take the exec'd command down with the sandbox: the attack is a daemon
    # (double fork, own session) started by exec, and an exec'd command still running when the
    # sandbox ends; neither may outlive it.
    marker = f"{time.time_ns() % 1000}.{os.getpid()}"
    name = detach(home, started, unique("nopid"), "--no-pid", "--", "sleep", "60")
    out = sbx(["exec", name, "--", "sh", "-c", f"(setsid sleep 5{marker} &); echo bg"], home)
    assert (out.returncode, out.stdout) == (0, "bg\n"), out.stderr
    assert alive_with(f"5{marker}") == []  # killed when the exec'd command exited
    proc = subprocess.Popen([str(BIN), "exec", name, "--", "sh", "-c", f"sleep 6{marker} & exec sleep 7{marker}"],
                            env=caller_env(home), cwd=home, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 10
    while len(alive_with(marker)) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert sbx(["stop", name], home).returncode == 0
    _, err = proc.communicate(timeout=10)
    assert proc.returncode == 128 + signal.SIGKILL, err
    assert alive_with(marker) == []


def test_a_killed_exec_leaves_nothing_once_a_sandbox_without_a_pid_namespace_ends(home: Path,
                                                                                 started: list[str]) -> None:
    # The joiner (sandboxer exec) is SIGKILLed: its command and what that daemonized, one of
    # them in a user namespace of its own, are orphans of the host's init now, no descendants
    # of the sandbox. They may live as long as the sandbox (as in a PID namespace), not longer.
    marker = f"{time.time_ns() % 1000}.{os.getpid()}"
    name = detach(home, started, unique("killed"), "--no-pid", "--", "sleep", "60")
    proc = subprocess.Popen([str(BIN), "exec", name, "--", "sh", "-c",
                             f"(setsid sleep 8{marker} &); (setsid unshare --user sleep 9{marker} &); "
                             f"exec sleep 10{marker}"], env=caller_env(home), cwd=home)
    deadline = time.monotonic() + 10
    while len(alive_with(marker)) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(alive_with(marker)) == 3
    proc.kill()
    proc.wait(timeout=10)
    assert len(alive_with(marker)) == 3  # in the sandbox still
    assert sbx(["stop", name], home).returncode == 0
    deadline = time.monotonic() + 5
    while alive_with(marker) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert alive_with(marker) == []


@pytest.mark.parametrize("pidns", ["--pid", "--no-pid"])
def test_the_payload_cannot_touch_what_exec_runs_beside_it(home: Path, started: list[str], pidns: str) -> None:
    # The attack: once something is exec'd into its sandbox, the payload signals and reads
    # (/proc/PID/environ: a ptrace check) every process it can see that is not its own: the
    # exec'd command, the joiner and the stage (sandboxer-stage), and without a PID namespace,
    # where it sees the host's processes too, the supervisor and this test.
    payload = (f"targets={os.getpid() if pidns == '--no-pid' else ''}; "
               "while [ ! -e /tmp/go ]; do sleep 0.05; done; "
               "for p in /proc/[0-9]*; do n=${p#/proc/}; [ $n = $$ ] && continue; "
               'case "$(cat $p/comm 2>/dev/null)" in sleep|sandboxer-stage|sandboxer) targets="$targets $n";; esac; '
               "done; "
               "for n in $targets; do "
               'if kill -TERM $n 2>/dev/null; then echo "killed $n"; else echo "refused $n"; fi; '
               'if cat /proc/$n/environ >/dev/null 2>&1; then echo "read $n"; fi; '
               "done; echo done; exec sleep 60")
    name = detach(home, started, unique("beside"), pidns, "--", "sh", "-c", payload)
    joined = subprocess.Popen([str(BIN), "exec", name, "--", "sh", "-c", "touch /tmp/go; exec sleep 48.5"],
                              env=caller_env(home), cwd=home, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline, said = time.monotonic() + 15, ""
        while "done" not in said.split() and time.monotonic() < deadline:
            time.sleep(0.1)
            said = sbx(["logs", name], home).stdout
        lines = said.splitlines()
        assert lines and lines[-1] == "done", said
        assert all(line.startswith("refused ") for line in lines[:-1]), said
        assert len(lines) - 1 >= (2 if pidns == "--pid" else 5), said  # the stage, exec's sleep (+ joiner, supervisor, us)
        assert joined.poll() is None  # the exec'd command still runs
    finally:
        joined.kill()
        joined.wait(timeout=10)


def test_exec_never_joins_a_recycled_pid(home: Path, started: list[str]) -> None:
    """A pid in the registry that names another process now (simulated: the recorded start time
    no longer matches) is refused before anything is joined."""
    name = detach(home, started, unique("recycled"), "--", "sleep", "60")
    path, info = names.lookup(name)
    info["stage"] = [info["stage"][0], info["stage"][1] + 1]  # type: ignore[index]
    (Path(path) / "info").write_bytes(marshal.dumps(info))
    out = sbx(["exec", name, "--", "true"], home)
    assert out.returncode == 125
    assert out.stderr == (f"sandboxer: error: cannot join the sandbox: the sandbox's init (pid {info['stage'][0]}) "  # type: ignore[index]
                          "is gone (the pid is another process now)\n")


# ---- stop, logs ----------------------------------------------------------------------------------

def test_detach_logs_and_stop(home: Path, started: list[str]) -> None:
    name = detach(home, started, unique("logs"), "--", "sh", "-c", "echo hello; echo oops >&2; exec sleep 60")
    time.sleep(0.3)
    out = sbx(["logs", name], home)
    assert out.returncode == 0 and "hello\n" in out.stdout and "oops\n" in out.stdout
    row = ps(home)[name]
    assert row["command"] == ["sh", "-c", "echo hello; echo oops >&2; exec sleep 60"] and row["detached"]
    follow = subprocess.Popen([str(BIN), "logs", "--follow", name], stdout=subprocess.PIPE, text=True,
                              env=caller_env(home), cwd=home)
    out = sbx(["stop", name], home)
    assert (out.returncode, out.stdout) == (0, f"{name}: killed by signal 15\n")
    assert follow.communicate(timeout=10)[0].startswith("hello")  # --follow ended with the sandbox
    assert name not in ps(home)
    assert sbx(["logs", name], home).returncode == 125


def test_stop_kills_what_ignores_sigterm(home: Path, started: list[str]) -> None:
    name = detach(home, started, unique("stubborn"), "--", "sh", "-c", "trap '' TERM; sleep 60 & wait; sleep 60")
    time.sleep(0.2)
    start = time.monotonic()
    out = sbx(["stop", "--timeout", "1", name], home)
    assert (out.returncode, out.stdout) == (0, f"{name}: killed by signal 9\n"), out.stderr
    assert time.monotonic() - start < 5
    assert name not in ps(home)


def test_a_command_that_ends_leaves_nothing(home: Path, started: list[str]) -> None:
    name = detach(home, started, unique("brief"), "--", "true")
    deadline = time.monotonic() + 10
    while name in ps(home) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert name not in ps(home)
    assert not (Path(names.root()) / name).exists()


def test_a_failed_start_is_said_by_run_detach(home: Path) -> None:
    out = sbx(["-d", "--", "no-such-command"], home)
    assert out.returncode == 127 and "command not found" in out.stderr and out.stdout == ""


# ---- port ----------------------------------------------------------------------------------------

def get(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as reply:
            return int(reply.status)
    except (urllib.error.URLError, ConnectionError):
        return 0


def test_port_add_and_rm(home: Path, started: list[str]) -> None:
    name = detach(home, started, unique("web"), "--net", "slirp4netns", "--", "python3", "-m", "http.server",
                  "8000", "--bind", "0.0.0.0")
    host = free_port()
    out = sbx(["port", "add", name, f"{host}:8000"], home)
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"{name}: forward 1: 127.0.0.1:{host} -> 8000/tcp\n"
    deadline = time.monotonic() + 10
    while get(host) != 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert get(host) == 200
    listing = sbx(["port", "ls", name], home).stdout.splitlines()
    assert listing[1].split() == ["1", "tcp", f"127.0.0.1:{host}", "8000"]
    assert ps(home)[name]["forwards"] == [f"127.0.0.1:{host} -> 8000/tcp"]
    # the same host port again: the helper's error, one line
    again = sbx(["port", "add", name, f"{host}:8000"], home)
    assert again.returncode == 125 and again.stderr.count("\n") == 1
    assert sbx(["port", "rm", name, "1"], home).returncode == 0
    assert get(host) == 0
    assert ps(home)[name]["forwards"] == []


def test_port_without_a_network(home: Path, started: list[str]) -> None:
    """(With pasta: test_pasta.py, in a network namespace of its own.)"""
    name = detach(home, started, unique("nonet"), "--net", "none", "--", "sleep", "60")
    out = sbx(["port", "add", name, "9999:80"], home)
    assert out.returncode == 125 and out.stderr.count("\n") == 1
    assert f"the sandbox {name!r} has no network helper (its network is none)" in out.stderr


# ---- names and the registry ----------------------------------------------------------------------

def test_names_are_unique_and_errors_are_one_line(home: Path, started: list[str]) -> None:
    name = detach(home, started, unique("taken"), "--", "sleep", "60")
    out = sbx(["-d", "--name", name, "--", "true"], home)
    assert out.returncode == 125
    assert out.stderr == (f"sandboxer: error: a sandbox named {name!r} is running (pick another --name, or end "
                          f"it: sandboxer stop {name})\n")
    for argv, says in ((["exec", "nope-x", "--", "true"], "no running sandbox named 'nope-x'"),
                       (["stop", "nope-x"], "no running sandbox named 'nope-x'"),
                       (["port", "ls", "nope-x"], "no running sandbox named 'nope-x'"),
                       (["--name", "bad/name", "--", "true"], "name: expected a name of letters")):
        out = sbx(argv, home)
        assert out.returncode == 125 and says in out.stderr and out.stderr.count("\n") == 1, out.stderr


def test_a_stale_entry_is_cleaned(home: Path, started: list[str]) -> None:
    """The supervisor is SIGKILLed: the sandbox dies with it, and its entry (provably stale: its
    lock is free) goes at the next ps; the name is free again."""
    name = detach(home, started, unique("stale"), "--", "sleep", "60")
    path, info = names.lookup(name)
    supervisor = info["supervisor"][0]  # type: ignore[index]
    os.kill(supervisor, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{supervisor}") and time.monotonic() < deadline:
        time.sleep(0.05)
    assert Path(path).exists()
    assert name not in ps(home)
    assert not Path(path).exists()
    detach(home, started, name, "--", "sleep", "60")


def test_the_registry_is_out_of_every_payloads_reach(home: Path, started: list[str]) -> None:
    name = detach(home, started, unique("reg"), "--", "sleep", "60")
    registry = names.root()
    runtime = os.path.dirname(registry)
    for args in ([], ["--bind", runtime]):
        out = sbx([*args, "--", "sh", "-c", f"ls -A {registry} 2>/dev/null | grep -c .; "
                   f"echo x > {registry}/{name}/info 2>/dev/null && echo WROTE; true"], home)
        assert out.stdout == "0\n", out.stdout
    assert names.lookup(name)[1]["name"] == name


def test_fifty_at_once(home: Path, started: list[str]) -> None:
    prefix = unique("many")
    procs = [subprocess.Popen([str(BIN), "run", "-d", "--name", f"{prefix}-{n}", "--", "sleep", "120"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=caller_env(home),
                              cwd=home) for n in range(50)]
    for n, proc in enumerate(procs):
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0 and out == f"{prefix}-{n}\n", err
        started.append(f"{prefix}-{n}")
    rows = ps(home)
    mine = sorted(n for n in rows if n.startswith(prefix))
    assert mine == sorted(f"{prefix}-{n}" for n in range(50))
    assert len({rows[n]["pid"] for n in mine}) == 50
    stops = [subprocess.Popen([str(BIN), "stop", n], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=caller_env(home), cwd=home) for n in mine]
    for proc in stops:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0 and out.endswith(": killed by signal 15\n"), err
    assert not [n for n in ps(home) if n.startswith(prefix)]
    assert not [e for e in os.listdir(names.root()) if e.startswith(prefix)]


def test_completion_offers_running_names(home: Path, tmp_path: Path, started: list[str]) -> None:
    from .test_docs import _with_sandboxer, bash_complete

    name = detach(home, started, unique("complete"), "--", "sleep", "60")
    env = _with_sandboxer(home)
    for line in (f"sandboxer exec {name[:9]}", f"sandboxer stop {name[:9]}", f"sandboxer logs {name[:9]}",
                 f"sandboxer port ls {name[:9]}"):
        assert bash_complete(line, tmp_path, env) == [name], line
    assert "port" not in bash_complete("sandboxer port ", tmp_path, env)
    assert set(bash_complete("sandboxer port ", tmp_path, env)) == {"add", "ls", "rm"}
