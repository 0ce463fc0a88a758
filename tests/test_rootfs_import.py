"""`sandboxer rootfs import`: tarballs built here, hostile ones included; nothing may land outside DIR."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import subprocess
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandboxer.errors import SandboxerError
from sandboxer.options import UsageError, parse
from sandboxer.rootfs_import import import_tarball, normalise

from .conftest import BIN, REPO, caller_env

BUSYBOX = Path("/bin/busybox")


def member(name: str, kind: bytes = tarfile.REGTYPE, *, data: bytes = b"", link: str = "",
           mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = mode
    info.linkname = link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.mtime = 1_700_000_000
    return info, data


def make_tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes]], mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode, format=tarfile.GNU_FORMAT) as tar:  # type: ignore[call-overload]
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.type == tarfile.REGTYPE else None)
    return path


def run_cli(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN), "rootfs", *args], capture_output=True, text=True, timeout=60,
                          cwd=str(home), env=caller_env(home, PYTHONPATH=str(REPO)))


@pytest.fixture
def outside() -> Iterator[Path]:
    """A unique path under /tmp that an attack would write to; it must stay absent."""
    path = Path("/tmp") / f"sbx-rootfs-{uuid.uuid4().hex}"
    yield path
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def tree(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if p.is_symlink():
                out[rel] = "-> " + os.readlink(p)
            elif p.is_dir():
                out[rel] = "dir"
            else:
                out[rel] = p.read_text(errors="replace")
    return out


def test_normalise() -> None:
    assert normalise("./etc/passwd") == ("etc", "passwd")
    assert normalise("/abs//file") == ("abs", "file")
    assert normalise("a/./b/../c") == ("a", "c")
    assert normalise("./") == ()
    assert normalise("../escape") is None
    assert normalise("a/../../x") is None


def test_normal_tree(tmp_path: Path) -> None:
    tarball = make_tar(tmp_path / "ok.tar.gz", [
        member("./", tarfile.DIRTYPE, mode=0o755),
        member("./etc/", tarfile.DIRTYPE, mode=0o755),
        member("./etc/os-release", data=b"NAME=test\n"),
        member("./usr/bin/tool", data=b"#!/bin/sh\n", mode=0o4755),  # parents implied, setuid dropped
        member("./bin/busybox", data=b"binary", mode=0o755),
        member("./bin/sh", tarfile.SYMTYPE, link="/bin/busybox"),
        member("./bin/ash", tarfile.SYMTYPE, link="busybox"),
        member("./bin/hard", tarfile.LNKTYPE, link="./bin/busybox"),
        member("./tmp/", tarfile.DIRTYPE, mode=0o1777),
        member("./ro/", tarfile.DIRTYPE, mode=0o555),
        member("./ro/file", data=b"in a read-only dir"),
    ])
    dest = tmp_path / "a" / "b" / "rootfs"
    summary = import_tarball(str(tarball), str(dest))
    assert summary == f"imported 10 entries into {dest}"
    assert (dest / "etc/os-release").read_text() == "NAME=test\n"
    assert os.readlink(dest / "bin/sh") == "/bin/busybox"
    assert os.readlink(dest / "bin/ash") == "busybox"
    assert (dest / "bin/hard").stat().st_ino == (dest / "bin/busybox").stat().st_ino
    assert stat.S_IMODE((dest / "bin/busybox").stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "usr/bin/tool").stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "usr/bin").stat().st_mode) == 0o755
    assert stat.S_IMODE((dest / "tmp").stat().st_mode) == 0o1777
    assert stat.S_IMODE((dest / "ro").stat().st_mode) == 0o555
    assert (dest / "ro/file").read_text() == "in a read-only dir"
    assert int((dest / "etc/os-release").stat().st_mtime) == 1_700_000_000
    os.chmod(dest / "ro", 0o755)


@pytest.mark.parametrize("mode", ["w", "w:gz", "w:xz", "w:bz2"])
def test_compressions(tmp_path: Path, mode: str) -> None:
    tarball = make_tar(tmp_path / "t.tar", [member("f", data=b"x")], mode)
    import_tarball(str(tarball), str(tmp_path / "out"))
    assert (tmp_path / "out/f").read_text() == "x"


def test_hostile_members(tmp_path: Path, outside: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = tmp_path / "base"
    (base / "outside").mkdir(parents=True)
    outside.mkdir()
    tarball = make_tar(tmp_path / "evil.tar.gz", [
        member("../escape", data=b"x"),
        member("a/../../x", data=b"x"),
        member("/abs/file", data=b"absolute"),  # imported as DIR/abs/file
        member("link", tarfile.SYMTYPE, link=str(outside)),
        member("link/pwned", data=b"x"),
        member("link/sub/pwned", data=b"x"),
        member("etc", tarfile.SYMTYPE, link="../../outside"),
        member("etc/passwd", data=b"root::0:0"),
        member("hl", tarfile.LNKTYPE, link="../../outside/x"),
        member("hl2", tarfile.LNKTYPE, link="/etc/passwd"),
        member("dev/null", tarfile.CHRTYPE),
        member("dev/fifo", tarfile.FIFOTYPE),
        member("ok", data=b"fine"),
    ])
    dest = base / "in" / "rootfs"
    summary = import_tarball(str(tarball), str(dest))
    err = capsys.readouterr().err
    assert summary == (f"imported 4 entries into {dest}; "
                       "skipped 2 device node(s)/FIFO(s), 7 unsafe or unsupported member(s)")
    assert tree(dest) == {"abs": "dir", "abs/file": "absolute", "link": f"-> {outside}",
                          "etc": "-> ../../outside", "ok": "fine"}
    assert list(outside.iterdir()) == []
    assert list((base / "outside").iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base", "evil.tar.gz"]
    assert sorted(p.name for p in base.iterdir()) == ["in", "outside"]
    assert "skipped 'link/pwned': link is a symlink" in err
    assert "skipped 'etc/passwd': etc is a symlink" in err
    assert "skipped '../escape': the path leads outside DIR" in err
    assert "skipped 2 device node(s) and FIFO(s)" in err


def test_later_members_replace_links_not_follow_them(tmp_path: Path, outside: Path) -> None:
    outside.write_text("untouched")
    tarball = make_tar(tmp_path / "t.tar", [
        member("f", tarfile.SYMTYPE, link=str(outside)),
        member("f", data=b"replaced"),  # the symlink is replaced, its target not written
        member("d", tarfile.SYMTYPE, link=str(outside)),
        member("d/", tarfile.DIRTYPE, mode=0o755),
        member("d/x", data=b"inside"),
    ], "w")
    dest = tmp_path / "out"
    import_tarball(str(tarball), str(dest))
    assert outside.read_text() == "untouched"
    assert tree(dest) == {"f": "replaced", "d": "dir", "d/x": "inside"}


def test_checksum(tmp_path: Path, home: Path) -> None:
    tarball = make_tar(tmp_path / "t.tar.gz", [member("f", data=b"x")])
    digest = hashlib.sha256(tarball.read_bytes()).hexdigest()
    wrong = "0" * 64
    out = run_cli("import", str(tarball), str(tmp_path / "bad"), "--sha256", wrong, home=home)
    assert out.returncode == 125, out.stderr
    assert out.stderr.startswith(f"sandboxer: error: checksum mismatch for {tarball}: expected sha256 {wrong}, "
                                 f"got {digest}")
    assert "Traceback" not in out.stderr and not (tmp_path / "bad").exists()
    out = run_cli("import", "--sha256", digest.upper(), str(tarball), str(tmp_path / "good"), home=home)
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"imported 1 entries into {tmp_path / 'good'}\n"
    assert (tmp_path / "good/f").read_text() == "x"
    out = run_cli("import", str(tarball), str(tmp_path / "x"), "--sha256", "abc", home=home)
    assert out.returncode == 125 and "is not a SHA-256 checksum" in out.stderr


def test_dir_must_be_empty(tmp_path: Path, home: Path) -> None:
    tarball = make_tar(tmp_path / "t.tar.gz", [member("f", data=b"x")])
    dest = tmp_path / "full"
    dest.mkdir()
    (dest / "keep").write_text("mine")
    out = run_cli("import", str(tarball), str(dest), home=home)
    assert out.returncode == 125
    assert out.stderr == f"sandboxer: error: {dest} is not empty (choose another DIR, which is created if " \
                         "missing, or empty this one)\n"
    assert tree(dest) == {"keep": "mine"}
    out = run_cli("import", str(tarball), str(dest / "keep"), home=home)
    assert out.returncode == 125 and "exists and is not a directory" in out.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_cli("import", str(tarball), str(empty), home=home).returncode == 0
    assert tree(empty) == {"f": "x"}


@pytest.mark.parametrize("content", [b"", b"this is not a tarball\n" * 100, b"\x1f\x8b\x08\x00garbage" * 50])
def test_not_a_tarball(tmp_path: Path, home: Path, content: bytes) -> None:
    bogus = tmp_path / "bogus.tar.gz"
    bogus.write_bytes(content)
    out = run_cli("import", str(bogus), str(tmp_path / "new" / "rootfs"), home=home)
    assert out.returncode == 125
    assert out.stderr.startswith("sandboxer: error: ") and out.stderr.count("\n") == 1, out.stderr
    assert "is not a tar archive" in out.stderr
    assert not (tmp_path / "new").exists()


def test_truncated_tarball_leaves_nothing(tmp_path: Path, home: Path) -> None:
    good = make_tar(tmp_path / "t.tar.gz", [member(f"d/f{i}", data=os.urandom(50_000)) for i in range(20)])
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    out = run_cli("import", str(cut), str(tmp_path / "new" / "rootfs"), home=home)
    assert out.returncode == 125, out.stderr
    assert "corrupt or truncated archive" in out.stderr and out.stderr.count("\n") == 1, out.stderr
    assert not (tmp_path / "new").exists()
    # an existing empty DIR is emptied again, not removed
    empty = tmp_path / "empty"
    empty.mkdir()
    assert run_cli("import", str(cut), str(empty), home=home).returncode == 125
    assert empty.is_dir() and list(empty.iterdir()) == []


def test_missing_tarball(tmp_path: Path, home: Path) -> None:
    out = run_cli("import", str(tmp_path / "nope.tar.gz"), str(tmp_path / "d"), home=home)
    assert out.returncode == 125
    assert out.stderr == f"sandboxer: error: tarball not found: {tmp_path / 'nope.tar.gz'}\n"
    assert not (tmp_path / "d").exists()
    with pytest.raises(SandboxerError, match="is a directory, not a tarball"):
        import_tarball(str(tmp_path), str(tmp_path / "d"))


@pytest.mark.parametrize("argv, message", [
    (["rootfs"], "rootfs needs a verb"),
    (["rootfs", "export", "a", "b"], "unknown rootfs verb 'export'"),
    (["rootfs", "import", "a"], "rootfs import needs TARBALL and DIR, got 1"),
    (["rootfs", "import", "a", "b", "c"], "rootfs import needs TARBALL and DIR, got 3"),
    (["rootfs", "import", "a", "b", "--map", "root"], "unknown option '--map' for 'rootfs'"),
    (["run", "--sha256", "x"], "unknown option '--sha256' for 'run'"),
])
def test_usage(argv: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        parse(argv)


def test_parse() -> None:
    args = parse(["rootfs", "import", "--sha256", "ab", "t.tar", "--debug", "--", "-odd-dir"])
    assert args.positionals == ["import", "t.tar", "-odd-dir"]
    assert args.values == {"sha256": "ab"} and args.overrides == []
    assert args.flags == {"debug"}
    assert "help" in parse(["rootfs", "--help"]).flags


@pytest.mark.skipif(not BUSYBOX.exists(), reason="needs Debian's busybox-static (/bin/busybox)")
def test_busybox_tree(tmp_path: Path, home: Path) -> None:
    src = tmp_path / "src"
    (src / "bin").mkdir(parents=True)
    (src / "etc").mkdir()
    shutil.copy2(BUSYBOX, src / "bin/busybox")
    for applet in ("sh", "ls", "cat"):
        (src / "bin" / applet).symlink_to("busybox")
    (src / "etc/os-release").write_text("NAME=busybox-test\n")
    tarball = tmp_path / "busybox-rootfs.tar.xz"
    with tarfile.open(tarball, "w:xz") as tar:
        tar.add(src, arcname=".")
    dest = tmp_path / "share" / "rootfs" / "busybox"
    out = run_cli("import", str(tarball), str(dest), "--sha256",
                  hashlib.sha256(tarball.read_bytes()).hexdigest(), home=home)
    assert out.returncode == 0, out.stderr
    assert out.stdout == f"imported 7 entries into {dest}\n" and out.stderr == ""
    assert {p: v for p, v in tree(dest).items() if p != "bin/busybox"} == {
        "bin": "dir", "etc": "dir", "bin/sh": "-> busybox", "bin/ls": "-> busybox",
        "bin/cat": "-> busybox", "etc/os-release": "NAME=busybox-test\n"}
    assert (dest / "bin/busybox").read_bytes() == BUSYBOX.read_bytes()
    assert os.access(dest / "bin/busybox", os.X_OK)
    ran = subprocess.run([str(dest / "bin/sh"), "-c", "echo ok"], capture_output=True, text=True, timeout=10)
    assert ran.stdout == "ok\n"


def _sparse_tarball(tmp_path: Path, apparent: int) -> Path:
    """A GNU sparse tarball (made by GNU tar, as an attacker would) of a file of `apparent` bytes
    with two small islands of data: a few KiB on disk."""
    src = tmp_path / "sparse-src"
    src.mkdir()
    with open(src / "hole", "wb") as f:
        f.seek(4096)
        f.write(b"start")
        f.seek(apparent - 3)
        f.write(b"end")
    tarball = tmp_path / "sparse.tar.gz"
    subprocess.run(["tar", "--sparse", "--format=gnu", "-C", str(src), "-czf", str(tarball), "hole"],
                   check=True, timeout=120)
    return tarball


def test_a_sparse_member_stays_sparse(tmp_path: Path, home: Path) -> None:
    # the attack: ~10 KiB of tarball that expands to 21 GB when its holes are written out
    apparent = 21 * 10**9
    tarball = _sparse_tarball(tmp_path, apparent)
    assert tarball.stat().st_size < 64 * 1024
    dest = tmp_path / "rootfs"
    out = run_cli("import", str(tarball), str(dest), home=home)
    assert out.returncode == 0, out.stderr
    st = (dest / "hole").stat()
    assert st.st_size == apparent
    assert st.st_blocks * 512 < 1024 * 1024, "the holes were written out"
    with open(dest / "hole", "rb") as f:
        assert f.read(4101)[4096:] == b"start"
        f.seek(apparent - 3)
        assert f.read() == b"end"


def test_an_import_stops_at_its_size_bound_and_leaves_nothing(tmp_path: Path, home: Path) -> None:
    tarball = make_tar(tmp_path / "big.tar.gz", [member(f"d/f{i}", data=b"x" * 300_000) for i in range(8)])
    out = run_cli("import", "--max-size", "1M", str(tarball), str(tmp_path / "new" / "rootfs"), home=home)
    assert out.returncode == 125, out.stderr
    assert out.stderr.count("\n") == 1 and "would write more than 1.0M (--max-size)" in out.stderr
    assert "nothing was left behind" in out.stderr
    assert not (tmp_path / "new").exists()
    assert run_cli("import", "--max-size", "4M", str(tarball), str(tmp_path / "ok"), home=home).returncode == 0


def test_the_default_bound_is_half_the_free_space(tmp_path: Path) -> None:
    # a sparse file's data counts, its holes do not; a plain member counts its whole size
    st = os.statvfs(tmp_path)
    half = st.f_bavail * st.f_frsize // 2
    info, _ = member("huge")
    info.size = half + 1
    tarball = tmp_path / "huge.tar"
    with tarfile.open(tarball, "w", format=tarfile.GNU_FORMAT) as tar:
        tar.addfile(info)  # header only: the archive is truncated, but the bound comes first
    with pytest.raises(SandboxerError, match=r"would write more than .*half the free space"):
        import_tarball(str(tarball), str(tmp_path / "dest"))
    assert not (tmp_path / "dest").exists()
