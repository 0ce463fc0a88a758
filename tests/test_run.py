"""`sandboxer run` with real namespaces, as an unprivileged user."""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import BIN, PROFILES, alive_with, caller_env, run_rendering, sbx

pytestmark = pytest.mark.usefixtures("integration")
CLEAN = str(PROFILES / "clean-home.toml")
OFFLINE = str(PROFILES / "offline.toml")


def sh(script: str) -> list[str]:
    return ["--", "/bin/sh", "-c", script]


def test_home_is_empty_writable_and_hides_the_canary(home: Path) -> None:
    out = sbx([CLEAN, *sh('echo "home=$HOME"; ls -A "$HOME" | wc -l; touch "$HOME/new" && echo wrote; '
                          'cat "$HOME/canary" 2>&1; df -k "$HOME" | tail -1')], home)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == f"home={home}" and lines[1] == "0" and lines[2] == "wrote"
    assert "No such file" in lines[3]
    assert lines[4].split()[0] == "tmpfs" and int(lines[4].split()[1]) == 256 * 1024
    assert not (home / "new").exists() and (home / "canary").exists()


def test_mounts_are_locked_even_for_root(home: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    script = (
        'umount "$HOME" 2>/dev/null && echo umount-ok; '
        f'mount -o remount,rw,bind {data} 2>/dev/null && echo remount-ok; '
        f'touch {data}/x 2>/dev/null && echo write-ok; '
        'mount -o remount,size=2G "$HOME" 2>/dev/null && echo resize-ok; '
        'umount -l "$HOME" 2>/dev/null && echo lazy-ok; id -u'
    )
    out = sbx([CLEAN, "--map", "root", "--ro-bind", str(data), *sh(script)], home)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0"]
    assert not (data / "x").exists()


@pytest.mark.parametrize("mode", ["self", "root"])
def test_user_mapping(home: Path, mode: str) -> None:
    out = sbx([CLEAN, "--map", mode, *sh("id -u; id -g; cat /proc/self/uid_map /proc/self/gid_map; "
                                         "echo $USER; grep CapEff /proc/self/status")], home)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    uid, gid = (0, 0) if mode == "root" else (os.getuid(), os.getgid())
    assert lines[:2] == [str(uid), str(gid)]
    assert lines[2].split() == [str(uid), "0", "1"] and lines[3].split() == [str(gid), "0", "1"]
    if mode == "self":
        assert lines[4] == pwd.getpwuid(os.getuid()).pw_name
        assert lines[5].split()[1] == "0000000000000000"
    else:
        assert lines[4] == "root"


def test_files_written_as_root_are_yours_outside(home: Path, tmp_path: Path) -> None:
    out = sbx(["--map", "root", "--bind", str(tmp_path), *sh(f"touch {tmp_path}/byroot; stat -c %u {tmp_path}/byroot")], home)
    assert out.returncode == 0 and out.stdout.strip() == "0", out.stderr
    assert (tmp_path / "byroot").stat().st_uid == os.getuid()


def test_proc_shows_only_the_sandbox(home: Path) -> None:
    out = sbx([CLEAN, *sh("ls /proc | grep -c '^[0-9]'; cat /proc/1/cmdline | tr '\\0' ' '")], home)
    assert out.returncode == 0, out.stderr
    count, init = out.stdout.splitlines()
    assert int(count) <= 4 and "sandboxer-stage" in init


def test_secret_env_and_inherited_fd_do_not_leak(home: Path) -> None:
    r, w = os.pipe()
    os.set_inheritable(w, True)
    try:
        out = sbx([CLEAN, "--env", "GIVEN=yes", "--keep-env", "KEPT",
                   *sh("env | sort; echo fds:; ls /proc/$$/fd")],
                  home, env=caller_env(home, SECRET="s3cret", KEPT="k"), pass_fds=(w,))
    finally:
        os.close(r)
        os.close(w)
    assert out.returncode == 0, out.stderr
    assert "s3cret" not in out.stdout and "SECRET" not in out.stdout
    assert "GIVEN=yes" in out.stdout and "KEPT=k" in out.stdout and "LANG=C.UTF-8" in out.stdout
    assert out.stdout.split("fds:")[1].split() == ["0", "1", "2"]


def test_hardening(home: Path) -> None:
    script = ("grep -E '^(NoNewPrivs|Seccomp|SigIgn|SigBlk):' /proc/self/status; "
              "python3 -c 'import os; print(\"session-leader\", os.getsid(0) == os.getppid())'")
    out = sbx([CLEAN, *sh(script)], home, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr
    assert "NoNewPrivs:\t1" in out.stdout and "Seccomp:\t2" in out.stdout
    # the stage ignores SIGPIPE and blocks signals around the fork; the payload gets neither
    assert "SigIgn:\t0000000000000000" in out.stdout and "SigBlk:\t0000000000000000" in out.stdout
    assert "session-leader True" in out.stdout


KEYRING = ("import ctypes; libc = ctypes.CDLL(None); libc.syscall.restype = ctypes.c_long; "
           "print(libc.syscall(250, 0, -3, 0))")  # keyctl(GET_KEYRING_ID, SESSION, 0), x86_64


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="syscall number is for x86_64")
def test_fresh_session_keyring(home: Path) -> None:
    outside = subprocess.run(["python3", "-c", KEYRING], capture_output=True, text=True).stdout
    out = sbx([CLEAN, "--", "python3", "-c", KEYRING], home)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() and out.stdout != outside


def test_tiocsti_refused_on_a_terminal(home: Path) -> None:
    import pty

    probe = ("import fcntl, termios\ntry:\n    fcntl.ioctl(0, termios.TIOCSTI, b'x')\n    print('INJECTED')\n"
             "except OSError as e:\n    print('refused', e.errno)\n")
    pid, fd = pty.fork()
    if pid == 0:  # child: the pty is our controlling terminal and stdin
        os.chdir(home)
        os.execve(str(BIN), [str(BIN), "run", CLEAN, "--", "python3", "-c", probe], caller_env(home))
    output = b""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            chunk = os.read(fd, 1024)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    assert b"refused 1" in output and b"INJECTED" not in output, output
    assert os.waitstatus_to_exitcode(status) == 0


@pytest.mark.parametrize("code", [0, 1, 2, 42, 100, 124, 125, 126, 127, 128, 200, 255])
def test_exit_code_passes_through(home: Path, code: int) -> None:
    assert sbx([CLEAN, *sh(f"exit {code}")], home).returncode == code


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL, signal.SIGSEGV, signal.SIGUSR1])
def test_killed_by_signal_is_128_plus_n(home: Path, sig: int) -> None:
    assert sbx([CLEAN, *sh(f"kill -{int(sig)} $$")], home).returncode == 128 + sig


def test_not_found_and_not_executable(home: Path, tmp_path: Path) -> None:
    out = sbx([CLEAN, "--", "no-such-command-xyz"], home)
    assert out.returncode == 127
    assert out.stderr.strip() == ("sandboxer: error: command not found in the sandbox's PATH: "
                                  "no-such-command-xyz")
    script = tmp_path / "notexec.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    out = sbx(["--home", "host", "--", str(script)], home)
    assert out.returncode == 126 and "cannot execute" in out.stderr and out.stderr.count("\n") == 1
    out = sbx(["--home", "host", "--", str(tmp_path)], home)
    assert out.returncode == 126


def test_bad_profile_is_125(home: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[home]\nmode = 'tmp'\n")
    out = sbx([str(bad), "--", "true"], home)
    assert out.returncode == 125 and "bad.toml:2: home.mode: expected one of" in out.stderr


def test_flags_alone_and_network_none(home: Path) -> None:
    probe = ("import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); s.listen(); "
             "c = socket.create_connection(s.getsockname(), timeout=5); print('lo-ok')")
    out = sbx(["--net", "none", "--home", "tmpfs", "--hostname", "box", "--", "/bin/sh", "-c",
               f"cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' '; hostname; python3 -c \"{probe}\""],
              home)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["lo", "box", "lo-ok"]


def test_network_host_sees_host_interfaces(home: Path) -> None:
    inside = sbx([CLEAN, "--", "cat", "/proc/net/dev"], home).stdout
    assert inside == Path("/proc/net/dev").read_text().replace(inside, inside)  # same namespace
    assert len(inside.splitlines()) == len(Path("/proc/net/dev").read_text().splitlines())


def test_cwd(home: Path, tmp_path: Path) -> None:
    work = tmp_path / "work"
    work.mkdir()
    assert sbx([CLEAN, "--", "pwd"], home, cwd=work).stdout.strip() == str(work)
    inside_home = home / "sub"
    inside_home.mkdir()
    assert sbx([CLEAN, "--", "pwd"], home, cwd=inside_home).stdout.strip() == str(home)
    assert sbx([CLEAN, "--cwd", "/usr", "--", "pwd"], home).stdout.strip() == "/usr"
    out = sbx([CLEAN, "--cwd", "/nonexistent", "--", "pwd"], home)
    assert out.returncode == 125 and "working directory /nonexistent" in out.stderr


def test_bind_ro_bind_tmpfs(home: Path, tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "in.txt").write_text("hello")
    ro = tmp_path / "ro"
    ro.mkdir()
    script = ('cat ~/work/in.txt; echo; echo out > ~/work/out.txt; '
              f'touch {ro}/x 2>/dev/null || echo ro-refused; '
              'df -k ~/scratch | tail -1 | awk "{print \\$1, \\$2}"; ls -A ~/scratch | wc -l')
    out = sbx([CLEAN, "--bind", f"{src}:~/work", "--ro-bind", str(ro), "--tmpfs", "~/scratch:8M", *sh(script)], home)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:5] == ["hello", "ro-refused", "tmpfs 8192", "0", ""]
    assert (src / "out.txt").read_text() == "out\n"


def test_missing_bind_source_fails_closed(home: Path, tmp_path: Path) -> None:
    out = sbx([CLEAN, "--bind", str(tmp_path / "nope"), "--", "touch", str(tmp_path / "ran")], home)
    assert out.returncode == 125 and "does not exist" in out.stderr
    assert not (tmp_path / "ran").exists()


def test_plan_cache_is_out_of_reach(home: Path) -> None:
    sbx([CLEAN, "--", "true"], home)  # fills the cache
    cache = home / ".cache" / "sandboxer" / "plans"
    assert len(list(cache.iterdir())) >= 1
    script = ('ls -A ~/.cache/sandboxer | wc -l; touch ~/.cache/sandboxer/x 2>/dev/null && echo planted; '
              'mv ~/.cache ~/.cache2 2>/dev/null && echo renamed; mv ~ ~/../moved 2>/dev/null && echo moved; true')
    out = sbx(["--home", "host", *sh(script)], home)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0"]
    assert (home / ".cache" / "sandboxer" / "plans").is_dir()


def test_cache_hit_and_invalidation(home: Path, tmp_path: Path) -> None:
    profile = tmp_path / "p.toml"
    profile.write_text("[network]\nmode = 'host'\n[namespaces]\nhostname = 'one'\n")
    assert sbx([str(profile), "--", "hostname"], home).stdout.strip() == "one"
    assert sbx([str(profile), "--", "hostname"], home).stdout.strip() == "one"
    profile.write_text("[network]\nmode = 'host'\n[namespaces]\nhostname = 'two'\n")
    assert sbx([str(profile), "--", "hostname"], home).stdout.strip() == "two"


STARTED: list[subprocess.Popen[str]] = []


@pytest.fixture(autouse=True)
def _no_strays():  # type: ignore[no-untyped-def]
    """A failing test must not leave a sandbox running: kill what _start started."""
    yield
    while STARTED:
        proc = STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def _start(home: Path, args: list[str]) -> subprocess.Popen[str]:
    proc = subprocess.Popen([str(BIN), "run", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, text=True, cwd=home, env=caller_env(home))
    STARTED.append(proc)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "ready"
    return proc


def test_sigterm_to_supervisor_ends_payload(home: Path) -> None:
    proc = _start(home, [CLEAN, *sh("echo ready; exec sleep 60")])
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 128 + signal.SIGTERM


def test_sigint_is_forwarded_to_a_trap(home: Path) -> None:
    proc = _start(home, [CLEAN, *sh("trap 'echo got-int; exit 7' INT; echo ready; "
                                    "while :; do sleep 0.05; done")])
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=10) == 7
    assert proc.stdout is not None and "got-int" in proc.stdout.read()


@pytest.mark.parametrize("pidns", ["--pid", "--no-pid"])
def test_nothing_left_after_supervisor_sigkill(home: Path, pidns: str) -> None:
    marker = f"{time.time_ns() % 1000}.{os.getpid()}"
    proc = _start(home, [CLEAN, pidns, *sh(f"sleep 1{marker} & setsid sleep 2{marker} & echo ready; exec sleep 3{marker}")])
    assert len(alive_with(marker)) >= 3  # the sleeps (and the supervisor's own argv)
    proc.kill()
    proc.wait(timeout=5)
    deadline = time.monotonic() + 5
    while (alive_with(marker) or alive_with("sandboxer-stage")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert alive_with(marker) == []
    assert alive_with("sandboxer-stage") == []


def test_no_pid_namespace_still_cleans_up_on_exit(home: Path) -> None:
    marker = f"4{time.time_ns() % 1000}.{os.getpid()}"
    out = sbx([CLEAN, "--no-pid", *sh(f"setsid sleep {marker} & echo bye")], home)
    assert out.returncode == 0 and out.stdout.strip() == "bye"
    time.sleep(0.2)
    assert alive_with(marker) == []


def test_fails_closed_without_user_namespaces(home: Path) -> None:
    # In a user namespace of our own we may set its limit of nested namespaces to 0.
    script = 'echo 0 > /proc/sys/user/max_user_namespaces && exec "$@"'
    out = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--", "/bin/sh", "-c", script, "sh", str(BIN),
         "run", CLEAN, "--", "touch", str(home / "ran")],
        capture_output=True, text=True, env=caller_env(home), cwd=home, timeout=30)
    assert out.returncode == 125, out.stderr
    assert out.stderr.count("\n") == 1 and "user.max_user_namespaces is 0" in out.stderr
    assert "sysctl -w user.max_user_namespaces" in out.stderr
    assert not (home / "ran").exists()


def test_explain_shell_script_runs(home: Path, tmp_path: Path) -> None:
    out = run_rendering([OFFLINE, "--", "/bin/sh", "-c",
                         'ls -A "$HOME" | wc -l; hostname; id -u; cat /proc/net/dev | tail -n +3 | cut -d: -f1'],
                        home, tmp_path / "plan.sh")
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["0", "sandbox", str(os.getuid()), "lo"]


def test_explain_describe_and_json(home: Path) -> None:
    import json

    lines = sbx(["explain", CLEAN], home).stdout.splitlines()
    assert "unshare --user --map-root-user" in lines[0]
    assert any("mount tmpfs on" in line for line in lines)
    data = json.loads(sbx(["explain", "--json", OFFLINE], home).stdout)
    assert "net" in data["namespaces"]


def test_runs_under_a_small_fd_limit(home: Path) -> None:
    """A caller with few fds (ulimit -n 32) still gets its sandbox: the helpers' fds are placed
    without asking for fd numbers above the limit."""
    import resource

    def few_fds() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (32, 32))

    out = subprocess.run([str(BIN), "run", "--net", "none", "--", "sh", "-c", "ulimit -n"], capture_output=True,
                         text=True, timeout=30, cwd=home, env=caller_env(home), preexec_fn=few_fds)
    assert (out.returncode, out.stdout) == (0, "32\n"), out.stderr
