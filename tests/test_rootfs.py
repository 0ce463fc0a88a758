"""Root filesystems: pivot_root and chroot into a busybox-static tree built at test time."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from .conftest import BIN, REQUIRE, caller_env, sbx

pytestmark = pytest.mark.usefixtures("integration")
BUSYBOX = shutil.which("busybox") or "/bin/busybox"
APPLETS = ("sh", "ls", "cat", "mkdir", "chroot", "id", "touch", "echo", "test", "grep", "env",
           "readlink", "wc", "head", "stat", "rm")
MARKER = "ID=sbx-busybox-marker"


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    return busybox_tree(tmp_path)


def busybox_tree(tmp_path: Path) -> Path:
    """tmp_path/rootfs: busybox-static and a few applets in /bin, an os-release marker."""
    if not os.path.exists(BUSYBOX):
        if REQUIRE:
            pytest.fail("busybox-static is required (apt install busybox-static)")
        pytest.skip("busybox-static is not installed")
    root = tmp_path / "rootfs"
    (root / "bin").mkdir(parents=True)
    (root / "etc").mkdir()
    shutil.copy(BUSYBOX, root / "bin" / "busybox")
    for name in APPLETS:
        (root / "bin" / name).symlink_to("busybox")
    (root / "etc" / "os-release").write_text(MARKER + "\n")
    return root


def run(rootfs: Path, home: Path, script: str, *opts: str) -> object:
    return sbx(["--rootfs", str(rootfs), "--net", "none", *opts, "--", "/bin/sh", "-c", script], home)


@pytest.mark.parametrize("switch", ["pivot_root", "chroot"])
@pytest.mark.parametrize("mode", ["self", "root"])
def test_new_root(rootfs: Path, home: Path, mode: str, switch: str) -> None:
    out = run(rootfs, home, "cat /etc/os-release; id -u", "--map", mode, "--root-switch", switch)
    assert out.returncode == 0, out.stderr  # type: ignore[attr-defined]
    lines = out.stdout.splitlines()  # type: ignore[attr-defined]
    assert lines[0] == MARKER
    assert lines[1] == ("0" if mode == "root" else str(os.getuid()))


@pytest.mark.parametrize("mode", ["self", "root"])
def test_pivot_root_leaves_no_old_root(rootfs: Path, home: Path, mode: str) -> None:
    out = run(rootfs, home, "cat /proc/self/mountinfo; echo ==; ls -a /", "--map", mode)
    assert out.returncode == 0, out.stderr  # type: ignore[attr-defined]
    mountinfo, listing = out.stdout.split("==")  # type: ignore[attr-defined]
    for line in mountinfo.splitlines():
        mount_point = line.split()[4]
        assert mount_point == "/" or mount_point.startswith(("/proc", "/dev", "/tmp", str(home))), line
    assert set(listing.split()) <= {".", "..", "bin", "dev", "etc", "home", "proc", "tmp"}


ESCAPE = """
mkdir -p /x
chroot /x /bin/busybox sh -c 'cd ../../../../../../../..; exec /bin/busybox chroot . /bin/busybox cat {marker}' \
  && echo ESCAPED
exit 0
"""


@pytest.mark.parametrize("switch", ["pivot_root", "chroot"])
@pytest.mark.parametrize("mode", ["self", "root"])
def test_double_chroot_escape_fails(rootfs: Path, home: Path, tmp_path: Path, mode: str,
                                    switch: str) -> None:
    host_marker = tmp_path / "host-marker"
    host_marker.write_text("HOST FILE\n")
    # /x needs a busybox for chroot to exec: give it one, as an attacker would
    (rootfs / "x" / "bin").mkdir(parents=True)
    shutil.copy(BUSYBOX, rootfs / "x" / "bin" / "busybox")
    out = run(rootfs, home, ESCAPE.format(marker=host_marker), "--map", mode, "--root-switch", switch)
    assert out.returncode == 0, out.stderr  # type: ignore[attr-defined]
    assert "ESCAPED" not in out.stdout and "HOST FILE" not in out.stdout  # type: ignore[attr-defined]


@pytest.mark.parametrize("writes", ["persist", "read-only", "overlay"])
def test_writes(rootfs: Path, home: Path, writes: str) -> None:
    out = run(rootfs, home, "touch /foobar && echo wrote; cat /foobar && echo there; exit 0",
              "--map", "root", "--rootfs-writes", writes)
    assert out.returncode == 0, out.stderr  # type: ignore[attr-defined]
    if writes == "read-only":
        assert "wrote" not in out.stdout  # type: ignore[attr-defined]
    else:
        assert "wrote" in out.stdout and "there" in out.stdout  # type: ignore[attr-defined]
    assert (rootfs / "foobar").exists() == (writes == "persist")


def test_tmpfs_home_bind_and_dev(rootfs: Path, home: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_text("from the host\n")
    script = ('echo "home=$HOME"; ls -A "$HOME" | wc -l; cat /data/f; ls /dev; echo hi > /dev/null '
              '&& echo null-ok; readlink /dev/ptmx; ls /sys 2>&1 | head -1')
    out = run(rootfs, home, script, "--bind", f"{data}:/data")
    assert out.returncode == 0, out.stderr  # type: ignore[attr-defined]
    lines = out.stdout.splitlines()  # type: ignore[attr-defined]
    assert lines[0] == f"home={home}" and lines[1] == "0" and lines[2] == "from the host"
    for name in ("null", "zero", "full", "random", "urandom", "tty", "pts", "shm", "ptmx", "fd",
                 "stdin", "stdout", "stderr"):
        assert name in lines
    assert "null-ok" in lines and "pts/ptmx" in lines
    assert "No such file" in out.stdout  # type: ignore[attr-defined]
    assert not (home / "canary").read_text() == ""


@pytest.mark.parametrize("link,to", [("dev", "outside"), ("home", "/")])
def test_symlinked_targets_refused(rootfs: Path, home: Path, tmp_path: Path, link: str,
                                   to: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (rootfs / link).symlink_to(str(outside) if to == "outside" else to)
    out = run(rootfs, home, "echo ran", "--tmpfs", "/home/sub", "--bind", f"{tmp_path}:/home/b")
    assert out.returncode == 125, out.stdout  # type: ignore[attr-defined]
    assert f"/{link} is a symlink; refusing to mount over it" in out.stderr  # type: ignore[attr-defined]
    assert list(outside.iterdir()) == []
    assert "ran" not in out.stdout  # type: ignore[attr-defined]


def test_missing_dir_and_file(rootfs: Path, home: Path, tmp_path: Path) -> None:
    out = run(tmp_path / "nope", home, "true")
    assert out.returncode == 125 and "No such file" in out.stderr  # type: ignore[attr-defined]
    f = tmp_path / "file"
    f.write_text("")
    out = run(f, home, "true")
    assert out.returncode == 125 and "not a directory" in out.stderr  # type: ignore[attr-defined]


def test_missing_command(rootfs: Path, home: Path) -> None:
    out = sbx(["--rootfs", str(rootfs), "--", "python3", "-c", "pass"], home)
    assert out.returncode == 127 and "command not found" in out.stderr


@pytest.mark.parametrize("switch", ["pivot_root", "chroot"])
@pytest.mark.parametrize("resolv", ["file", "missing", "dangling", "absolute"])
def test_slirp4netns_in_rootfs(rootfs: Path, home: Path, request: pytest.FixtureRequest,
                               resolv: str, switch: str) -> None:
    # the tree's /etc/resolv.conf: a file, absent, a dangling symlink (a stub resolver's path),
    # or an absolute symlink into a directory that exists both on the host and in the tree: it
    # must resolve in the tree, and nothing may be created on the host
    etc = rootfs / "etc"
    host_dir = Path(tempfile.mkdtemp(prefix="sbx-test-", dir="/var/tmp"))
    request.addfinalizer(lambda: shutil.rmtree(host_dir))
    host_file = host_dir / "resolv.conf"
    if resolv == "file":
        (etc / "resolv.conf").write_text("nameserver 127.0.0.53\n")
    elif resolv == "dangling":
        (rootfs / "run" / "resolve").mkdir(parents=True)
        (etc / "resolv.conf").symlink_to("../run/resolve/stub-resolv.conf")
    elif resolv == "absolute":
        (etc / "resolv.conf").symlink_to(host_file)
        (rootfs / host_dir.relative_to("/")).mkdir(parents=True)
    out = sbx(["--rootfs", str(rootfs), "--root-switch", switch, "--net", "slirp4netns", "--",
               "/bin/sh", "-c", "cat /etc/resolv.conf; grep -c . /etc/hosts"], home)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == "nameserver 10.0.2.3"
    if resolv == "absolute":
        assert not host_file.exists() and os.listdir(host_dir) == []
    # the tree itself only gains an empty file where it had none
    if resolv == "file":
        assert (etc / "resolv.conf").read_text() == "nameserver 127.0.0.53\n"
    elif resolv == "missing":
        assert (etc / "resolv.conf").read_text() == ""
    else:
        assert not (rootfs / "run" / "resolve" / "stub-resolv.conf").exists()


@pytest.mark.parametrize("switch", ["pivot_root", "chroot"])
@pytest.mark.parametrize("net,pid", [("host", "--no-pid"), ("none", "--pid")])
def test_network_pid_namespace_and_ro_bind(rootfs: Path, home: Path, tmp_path: Path, switch: str,
                                           net: str, pid: str) -> None:
    data = tmp_path / "ro"
    data.mkdir()
    (data / "f").write_text("original\n")
    script = (f"grep -c : /proc/net/dev; test -d /proc/{os.getpid()} && echo host-pids; "
              "echo changed > /ro/f && echo WROTE; cat /ro/f; exit 0")
    out = sbx(["--rootfs", str(rootfs), "--root-switch", switch, "--net", net, pid, "--ro-bind",
               f"{data}:/ro", "--", "/bin/sh", "-c", script], home)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    host_ifaces = Path("/proc/net/dev").read_text().count(":")
    assert int(lines[0]) == (host_ifaces if net == "host" else 1)
    assert ("host-pids" in lines) == (pid == "--no-pid")  # without a PID namespace, the host's /proc
    assert "WROTE" not in lines and "original" in lines
    assert (data / "f").read_text() == "original\n"


def test_read_only_covers_mounts_already_in_the_tree(rootfs: Path, home: Path) -> None:
    # DIR/sub is a mount point before sandboxer runs (a FUSE or bind mount of the user's, made
    # here in an outer namespace); read-only must cover it, and leave /tmp and HOME writable
    (rootfs / "sub").mkdir()
    inner = shlex.join([str(BIN), "run", "--rootfs", str(rootfs), "--rootfs-writes", "read-only",
                        "--home", "tmpfs", "--net", "none", "--", "/bin/sh", "-c",
                        "touch /sub/x && echo WROTE-SUB; touch /etc/x && echo WROTE-ETC; "
                        "touch /tmp/ok && echo tmp-ok; touch $HOME/ok && echo home-ok; exit 0"])
    out = subprocess.run(["unshare", "--user", "--map-root-user", "--mount", "--", "/bin/sh", "-c",
                          f'mount -t tmpfs tmpfs "$0" && exec {inner}', str(rootfs / "sub")],
                         capture_output=True, text=True, timeout=30, cwd=str(home), env=caller_env(home))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "WROTE-SUB" not in lines and "WROTE-ETC" not in lines
    assert "tmp-ok" in lines and "home-ok" in lines
