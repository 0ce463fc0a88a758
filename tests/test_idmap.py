"""Whole id ranges: 'auto' and 'keep-id' through /etc/subuid and /etc/subgid, --user, and the id
calculator. Pure tests of the maps, then real sandboxes as an unprivileged user with a range."""

from __future__ import annotations

import getpass
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from sandboxer import idmap
from sandboxer.errors import SandboxerError
from sandboxer.host import SUBID_FILES_ENV
from sandboxer.idmap import Range, calculate, compose, inner_map, outer_map, parse, read_ranges, remap_map
from sandboxer.load import ProfileError

from .conftest import BIN, REQUIRE, caller_env, sbx
from .test_compile import plan_for
from .test_rootfs import busybox_tree

# ---- the maps ----------------------------------------------------------------------------------

RANGE = Range("/etc/subuid", 1, 200000, 65536)


def host_map(mode: str, own: int = 1000, first: Range | None = RANGE) -> idmap.IdMap:
    own_inside = 0 if mode in ("root", "auto") else own
    return compose(inner_map(mode, own_inside, first.size if first else 0), outer_map(own, first))


def test_auto_maps_root_to_you_and_the_rest_to_your_range() -> None:
    m = host_map("auto")
    assert m == ((0, 1000, 1), (1, 200000, 65536))
    # the example: with a range from 200000, container user 1000 is host 200999
    assert idmap.to_outside(m, 1000) == 200999
    assert idmap.to_inside(m, 200999) == 1000
    assert idmap.to_outside(m, 65537) is None and idmap.to_inside(m, 5) is None


def test_keep_id_keeps_you_and_fills_every_other_id() -> None:
    m = host_map("keep-id")
    assert idmap.to_outside(m, 1000) == 1000
    assert idmap.to_outside(m, 0) == 200000  # root inside: the range's first id
    assert idmap.to_outside(m, 999) == 200999 and idmap.to_outside(m, 1001) == 201000
    assert idmap.to_outside(m, 65536) == 265535 and idmap.to_outside(m, 65537) is None
    outside = sorted(idmap.to_outside(m, i) for i in range(65537))
    assert outside == [1000, *range(200000, 265536)]  # every id once


def test_each_inner_line_lies_within_one_outer_line() -> None:
    """The kernel maps each line of a nested map through one line of its parent's (else EPERM)."""
    for mode in ("self", "root", "auto", "keep-id"):
        outer = outer_map(1000, RANGE if mode in ("auto", "keep-id") else None)
        own_inside = 0 if mode in ("root", "auto") else 1000
        for start, lower, count in inner_map(mode, own_inside, RANGE.size if mode in ("auto", "keep-id") else 0):
            assert any(o <= lower and lower + count <= o + c for o, _l, c in outer), (mode, start)


def test_single_id_maps() -> None:
    assert host_map("self", first=None) == ((1000, 1000, 1),)
    assert host_map("root", first=None) == ((0, 1000, 1),)


def test_docker_userns_remap() -> None:
    """The issue's example: dockremap's range from 165536; 405:100 inside is 165941:165636."""
    m = remap_map(Range("/etc/subuid", 1, 165536, 65536))
    assert (idmap.to_outside(m, 405), idmap.to_outside(m, 100)) == (165941, 165636)
    assert idmap.to_outside(m, 0) == 165536


# ---- the subordinate id files --------------------------------------------------------------------

def test_parse_and_pick_a_users_ranges() -> None:
    text = "# comment\n\nalice:100000:65536\n1001:165536:65536\nbob:231072:65536\n"
    entries = parse(text, "/etc/subuid")
    assert idmap.ranges_of(entries, "alice", 1000) == (Range("/etc/subuid", 3, 100000, 65536),)
    assert idmap.ranges_of(entries, "carol", 1001) == (Range("/etc/subuid", 4, 165536, 65536),)  # by uid
    assert idmap.suggest(entries) == "296608-362143"


@pytest.mark.parametrize("line", ["alice:100000", "alice:x:10", "alice:100000:0", ":1:2", "alice:1:2:3",
                                  "alice:4294967290:100"])
def test_malformed_lines_are_errors_with_their_line(line: str) -> None:
    with pytest.raises(SandboxerError) as e:
        parse(f"bob:1:2\n{line}\n", "/etc/subuid")
    assert e.value.message.startswith("/etc/subuid:2: expected NAME:FIRST_ID:COUNT")


def test_overlapping_ranges_are_errors() -> None:
    entries = parse("bob:100000:65536\nalice:165000:65536\n", "/etc/subuid")
    with pytest.raises(SandboxerError) as e:
        idmap.ranges_of(entries, "alice", 1000)
    assert "/etc/subuid:2: alice's range 165000-230535 overlaps bob's 100000-165535 (line 1)" in e.value.message
    assert "usermod --del-subuids 165000-230535 alice && usermod --add-subuids 230536-296071 alice" in e.value.hint


def test_a_range_holding_your_own_id_is_an_error() -> None:
    with pytest.raises(SandboxerError, match="holds alice's own id 1000"):
        idmap.ranges_of(parse("alice:0:65536\n", "/etc/subuid"), "alice", 1000)


def test_no_range_says_how_to_add_one(tmp_path: Path) -> None:
    (tmp_path / "subuid").write_text("bob:100000:65536\n")
    (tmp_path / "subgid").write_text("bob:100000:65536\nalice:165536:65536\n")
    with pytest.raises(SandboxerError) as e:
        read_ranges("alice", 1000, (str(tmp_path / "subuid"), str(tmp_path / "subgid")))
    assert e.value.message == f"alice has no subordinate uids in {tmp_path / 'subuid'}, so only one id can be mapped"
    assert e.value.hint == "as root: usermod --add-subuids 231072-296607 --add-subgids 231072-296607 alice"


# ---- compile -------------------------------------------------------------------------------------

def test_auto_outer_namespace_maps_the_range() -> None:
    plan = plan_for(["--map", "auto", "--", "id"])
    assert plan.outer[:5] == ("/usr/bin/unshare", "--user", "--map-root-user", "--map-users=100000,1,65536",
                              "--map-groups=100000,1,65536")
    spec = plan.spec()
    assert spec.users.uid_map == "0 0 1\n1 1 65536\n" and spec.users.by_stage
    assert spec.users.run_as == (-1, -1)  # root inside is you: nothing to switch to
    assert dict(plan.env.fixed)["USER"] == "root"


def test_run_as_another_id_owns_its_home_and_has_no_user_name() -> None:
    plan = plan_for(["--map", "auto", "--user", "1000:100", "--", "id"])
    assert plan.spec().users.run_as == (1000, 100)
    home = [op for op in plan.mounts if op.why == "HOME"][0]
    assert home.owner == (1000, 100) and "uid=1000,gid=100" in home.options()
    fixed = dict(plan.env.fixed)
    assert "USER" not in fixed and "LOGNAME" not in fixed and "USER" not in plan.env.keep
    assert "ids: runs as 1000:100 inside (100999:100099 on the host)" in "\n".join(plan.describe())


def test_keep_id_as_root_inside() -> None:
    plan = plan_for(["--map", "keep-id", "--user", "0", "--", "id"])
    assert plan.users.switch_to == (1, 1)  # outer ids: the range's first
    assert plan.spec().users.uid_map == "0 1 1000\n1000 0 1\n1001 1001 64536\n"


def test_rootfs_path_is_the_identitys_not_the_callers() -> None:
    root = dict(plan_for(["--rootfs", "/srv/tree", "--map", "auto", "--", "dpkg"]).env.fixed)["PATH"]
    user = dict(plan_for(["--rootfs", "/srv/tree", "--map", "auto", "--user", "1000", "--", "id"]).env.fixed)
    assert root == "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
    assert user["PATH"] == "/usr/local/bin:/usr/bin:/bin"
    assert "PATH" in plan_for(["--", "id"]).env.keep  # the host's tree: your PATH, as before


@pytest.mark.parametrize("argv,says", [
    (["--map", "root", "--user", "1000"], "option --user: with user.map = 'root' only 0:0 exists inside"),
    (["--user", "0"], "option --user: with user.map = 'self' only 1000:1000 exists inside, not 0:0"),
    (["--map", "auto", "--user", "65537"], "uid 65537 is not mapped inside (user.map = 'auto' maps uids 0 to 65536)"),
    (["--map", "auto", "--user", "1:x"], "expected UID or UID:GID in numbers"),
])
def test_run_as_outside_the_mapping_is_refused(argv: list[str], says: str) -> None:
    with pytest.raises(ProfileError) as e:
        plan_for([*argv, "--", "id"])
    assert says in str(e.value.problems)


def test_run_as_your_own_ids_is_fine_with_map_self() -> None:
    assert plan_for(["--user", "1000:1000", "--", "id"]).spec().users.run_as == (-1, -1)


def test_missing_newuidmap() -> None:
    tools = {"unshare": "/usr/bin/unshare", "newgidmap": "/usr/bin/newgidmap"}
    with pytest.raises(ProfileError, match=r"newuidmap\(1\), which is not installed; apt install uidmap"):
        plan_for(["--map", "auto", "--", "id"], tools=tools)


# ---- the calculator ------------------------------------------------------------------------------

def files(tmp_path: Path, text: str) -> tuple[str, str]:
    for name in ("subuid", "subgid"):
        (tmp_path / name).write_text(text)
    return str(tmp_path / "subuid"), str(tmp_path / "subgid")


def test_calculate_both_ways(tmp_path: Path) -> None:
    me = getpass.getuser()
    f = files(tmp_path, f"{me}:200000:65536\n")
    lines, ok = calculate("1000:1000", user=None, mode="auto", scheme="rootless", reverse=False, files=f)
    assert ok and lines[-2:] == ["inside uid 1000 -> 200999 on the host", "inside gid 1000 -> 200999 on the host"]
    lines, ok = calculate("200999", user=None, mode="auto", scheme="rootless", reverse=True, files=f)
    assert ok and lines[-2] == "host uid 200999 -> 1000 inside"
    lines, ok = calculate(f"{os.getuid()}", user=None, mode="auto", scheme="rootless", reverse=True, files=f)
    assert lines[-2] == f"host uid {os.getuid()} -> 0 inside"
    lines, ok = calculate("3", user=None, mode="auto", scheme="rootless", reverse=True, files=f)
    assert not ok and lines[-2] == "host uid 3 -> not mapped: it shows as 65534 inside (and cannot be set there)"
    lines, ok = calculate("0", user=None, mode="root", scheme="rootless", reverse=False, files=f)
    assert ok and lines[-2] == f"inside uid 0 -> {os.getuid()} on the host (you)"


def test_calculate_remap(tmp_path: Path) -> None:
    f = files(tmp_path, "dockremap:165536:65536\n")
    lines, ok = calculate("405:100", user=None, mode=None, scheme="remap", reverse=False, files=f)
    assert ok and lines[-2:] == ["inside uid 405 -> 165941 on the host", "inside gid 100 -> 165636 on the host"]
    with pytest.raises(SandboxerError, match="--map is for the rootless scheme"):
        calculate("1", user=None, mode="auto", scheme="remap", reverse=False, files=f)


# ---- real sandboxes ------------------------------------------------------------------------------

@pytest.fixture
def base() -> int:
    """The first id of the test user's subordinate uid range (CI's suite gives it one)."""
    try:
        ranges = read_ranges(getpass.getuser(), os.getuid())
    except SandboxerError as e:
        if REQUIRE:
            pytest.fail(f"the test user needs subordinate ids: {e.line()}")
        pytest.skip(e.message)
    assert ranges.uids[0].start == ranges.gids[0].start, "the tests assume equal uid and gid ranges"
    return ranges.uids[0].start


@pytest.fixture
def reclaim(home: Path) -> Iterator[list[Path]]:
    """Directories whose files the test's sandboxes give to subordinate ids: given back to the
    test user afterwards (from inside, as root of a range), or pytest could not remove them."""
    paths: list[Path] = []
    yield paths
    for path in paths:
        if path.exists():
            out = sbx(["--map", "auto", "--bind", str(path), "--", "chown", "-R", "0:0", str(path)], home)
            assert out.returncode == 0, out.stderr


def owners(path: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.lstat().st_uid, p.lstat().st_gid) for p in sorted(path.iterdir())}


@pytest.mark.usefixtures("integration")
def test_map_root_files_are_yours(home: Path, tmp_path: Path) -> None:
    work = home / "work"
    work.mkdir()
    out = sbx(["--map", "root", "--bind", str(work), "--", "sh", "-c", f"id -u; touch {work}/f"], home)
    assert out.returncode == 0 and out.stdout == "0\n", out.stderr
    assert owners(work) == {"f": (os.getuid(), os.getgid())}


@pytest.mark.usefixtures("integration")
def test_map_auto_a_container_user_and_chown_back(home: Path, base: int, reclaim: list[Path]) -> None:
    work = home / "work"
    work.mkdir()
    reclaim.append(work)
    script = (f"cd {work} && id -u && cat /proc/self/setgroups && touch byroot && mkdir d && "
              "chown 1000:1000 d && setpriv --reuid 1000 --regid 1000 --clear-groups touch d/f && ls -ln d")
    out = sbx(["--map", "auto", "--bind", str(work), "--", "sh", "-c", script], home)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[:2] == ["0", "allow"]
    assert " 1000 1000 " in lines[-1]  # ls -ln inside: the container's ids
    me = (os.getuid(), os.getgid())
    assert owners(work) == {"byroot": me, "d": (base + 999, base + 999)}
    assert owners(work / "d") == {"f": (base + 999, base + 999)}
    # the calculator says what ls -ln shows on both sides
    said = sbx(["idmap", "--map", "auto", "1000:1000"], home)
    assert said.stdout.splitlines()[-2:] == [f"inside uid 1000 -> {base + 999} on the host",
                                            f"inside gid 1000 -> {base + 999} on the host"]
    said = sbx(["idmap", "--map", "auto", "--host", f"{base + 999}"], home)
    assert said.stdout.splitlines()[-2] == f"host uid {base + 999} -> 1000 inside"
    # podman unshare's workflow: chown back, from inside
    out = sbx(["--map", "auto", "--bind", str(work), "--", "chown", "-R", "0:0", str(work / "d")], home)
    assert out.returncode == 0, out.stderr
    assert owners(work) == {"byroot": me, "d": me} and owners(work / "d") == {"f": me}


def users_home(home: Path) -> dict[str, str]:
    """The caller's environment with HOME at the passwd entry's home: the sandbox's tmpfs HOME
    goes there, below /home (searchable by all), where another id inside can reach it; the
    tests' own HOME lies below private (0700) directories."""
    return caller_env(home, HOME=os.path.expanduser(f"~{getpass.getuser()}"))


@pytest.mark.usefixtures("integration")
def test_run_as_a_container_user(home: Path, base: int, reclaim: list[Path]) -> None:
    work = home / "work"
    work.mkdir()
    reclaim.append(work)
    os.chmod(work, 0o777)
    script = ("id; grep -E '^(Groups|CapEff)' /proc/self/status; touch $HOME/h /tmp/work/f && "
              "stat -c %u:%g:%a $HOME")
    out = sbx(["--map", "auto", "--user", "1000:1001", "--bind", f"{work}:/tmp/work", "--", "sh", "-c", script],
              home, env=users_home(home))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0].startswith("uid=1000") and "gid=1001" in lines[0]
    assert lines[1].split() == ["Groups:", "1001"] and lines[2].split() == ["CapEff:", "0000000000000000"]
    assert lines[3] == "1000:1001:700"  # a tmpfs HOME belongs to the user it runs as
    assert owners(work) == {"f": (base + 999, base + 1000)}


@pytest.mark.usefixtures("integration")
def test_keep_id_you_are_you_and_root_is_from_your_range(home: Path, base: int, reclaim: list[Path]) -> None:
    work = home / "work"
    work.mkdir()
    reclaim.append(work)
    out = sbx(["--map", "keep-id", "--bind", str(work), "--", "sh", "-c", f"id -u; id -G; touch {work}/mine"], home)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[0] == str(os.getuid())
    assert out.stdout.splitlines()[1].split()[0] == str(os.getgid())  # your groups, kept
    out = sbx(["--map", "keep-id", "--user", "0", "--bind", str(work), "--", "sh", "-c",
               f"touch {work}/byroot; ls -ln {work}"], home)
    assert out.returncode == 0, out.stderr
    assert owners(work) == {"byroot": (base, base), "mine": (os.getuid(), os.getgid())}
    inside = {line.split()[-1]: line.split()[2:4] for line in out.stdout.splitlines()[1:]}
    assert inside == {"byroot": ["0", "0"], "mine": [str(os.getuid()), str(os.getgid())]}
    said = sbx(["idmap", "--map", "keep-id", "--host", f"{base}:{os.getgid()}"], home)
    assert said.stdout.splitlines()[-2:] == [f"host uid {base} -> 0 inside",
                                            f"host gid {os.getgid()} -> {os.getgid()} inside"]


@pytest.mark.usefixtures("integration")
def test_the_payload_cannot_remap_itself_or_unlock_mounts(home: Path, base: int) -> None:
    """Root inside with a whole range is still boxed: its maps are written once, by the stage,
    and the mounts above its namespace stay locked."""
    script = ("echo '0 0 1' > /proc/self/uid_map && echo remapped; "
              "umount /tmp && echo unmounted; mount -t tmpfs none /mnt && echo mounted; "
              "echo x > /proc/1/uid_map && echo stage-remapped; "
              "unshare --user --map-users=0,0,100 true && echo nested-range; true")
    out = sbx(["--map", "auto", "--", "sh", "-c", script], home)
    assert out.returncode == 0, out.stderr
    assert out.stdout == "", out.stdout


@pytest.mark.usefixtures("integration")
def test_in_a_rootfs_root_switches_users(home: Path, tmp_path: Path, base: int, reclaim: list[Path]) -> None:
    """chown and su in a busybox tree (owned by you: root's inside)."""
    root = busybox_tree(tmp_path)
    reclaim.append(root)
    for applet in ("su", "chown", "mkdir"):
        if not (root / "bin" / applet).exists():
            (root / "bin" / applet).symlink_to("busybox")
    (root / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\nbuilder:x:1000:1000::/work:/bin/sh\n")
    (root / "etc" / "group").write_text("root:x:0:\nbuilder:x:1000:\n")
    script = ("echo $PATH; mkdir /work && chown builder:builder /work && "
              "su builder -c 'id -u; touch /work/built'")
    out = sbx(["--map", "auto", "--rootfs", str(root), "--net", "none", "--", "/bin/sh", "-c", script], home)
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "1000"]
    assert owners(root / "work") == {"built": (base + 999, base + 999)}
    assert (root / "bin").stat().st_uid == os.getuid()


def debian_like_tree(tmp_path: Path) -> Path:
    """A tree with the host's /usr (bound read-only at run time), dpkg's and apt's state dirs."""
    root = tmp_path / "debian"
    for d in ("etc/apt/apt.conf.d", "etc/apt/preferences.d", "etc/apt/sources.list.d", "var/lib/dpkg/info",
              "var/lib/dpkg/updates", "var/lib/apt/lists/partial", "var/cache/apt/archives/partial",
              "var/log/apt", "usr", "tmp"):
        (root / d).mkdir(parents=True)
    for d in ("bin", "sbin", "lib", "lib64", "lib32", "libx32"):
        if os.path.islink(f"/{d}"):
            (root / d).symlink_to(os.readlink(f"/{d}"))
        elif os.path.isdir(f"/{d}"):
            (root / d).mkdir()
    for name in ("status", "available"):
        (root / "var/lib/dpkg" / name).write_text("")
    (root / "etc/apt/sources.list").write_text("")
    (root / "etc/passwd").write_text("root:x:0:0:root:/root:/bin/sh\n_apt:x:42:65534::/nonexistent:/bin/false\n")
    (root / "etc/group").write_text("root:x:0:\nnogroup:x:65534:\n")
    return root


@pytest.mark.usefixtures("integration")
def test_dpkg_and_apt_in_a_rootfs(home: Path, tmp_path: Path, base: int, reclaim: list[Path]) -> None:
    """The issue's failure: dpkg -i as root in a tree ('ldconfig' not found in PATH with the
    caller's PATH), and a package's files owned by a container user."""
    if not shutil.which("dpkg") or not shutil.which("apt-get"):
        if REQUIRE:
            pytest.fail("dpkg and apt-get are required (Debian)")
        pytest.skip("not a Debian host")
    root = debian_like_tree(tmp_path)
    reclaim.append(root)
    binds = [f"--ro-bind=/{d}:/{d}" for d in ("bin", "sbin", "lib", "lib64") if os.path.isdir(f"/{d}")
             and not os.path.islink(f"/{d}")]
    script = """set -e
mkdir -p /pkg/DEBIAN /pkg/opt/demo
echo hi > /pkg/opt/demo/file
chown 1000:1000 /pkg/opt/demo/file
printf 'Package: demo\\nVersion: 1.0\\nArchitecture: all\\nMaintainer: t <t@example.org>\\nDescription: d\\n' > /pkg/DEBIAN/control
dpkg-deb --build /pkg /tmp/demo.deb >/dev/null
dpkg -i /tmp/demo.deb >/dev/null
sed -i s/demo/demo2/ /pkg/DEBIAN/control
mv /pkg/opt/demo /pkg/opt/demo2
dpkg-deb --build /pkg /tmp/demo2.deb >/dev/null
chmod 644 /tmp/demo2.deb
apt-get install -y /tmp/demo2.deb 2>&1
dpkg -s demo demo2 | grep ^Status"""
    # the caller's PATH first names a venv: what the user had
    env = caller_env(home, PATH=f"{BIN.parent}:/usr/local/bin:/usr/bin:/bin")
    out = sbx(["--map", "auto", "--rootfs", str(root), "--net", "none", "--ro-bind", "/usr:/usr", *binds,
               "--", "/bin/sh", "-c", script], home, env=env, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.splitlines()[-2:] == ["Status: install ok installed"] * 2
    assert "unsandboxed" not in out.stdout  # apt dropped to _apt for the file
    assert owners(root / "opt" / "demo") == {"file": (base + 999, base + 999)}


# ---- errors, as the command line shows them -------------------------------------------------------

@pytest.mark.usefixtures("integration")
@pytest.mark.parametrize("content,says", [
    ("", "has no subordinate uids in {f}, so only one id can be mapped; as root: usermod --add-subuids"),
    ("{me}:100000\n", "{f}:1: expected NAME:FIRST_ID:COUNT"),
    ("someone:100000:10\n{me}:100005:65536\n", "{f}:2: {me}'s range 100005-165540 overlaps someone's"),
])
def test_range_errors(home: Path, tmp_path: Path, content: str, says: str) -> None:
    me = getpass.getuser()
    f = tmp_path / "subuid"
    f.write_text(content.format(me=me))
    env = caller_env(home, **{SUBID_FILES_ENV: f"{f}:/etc/subgid"})
    out = sbx(["--map", "auto", "--", "true"], home, env=env)
    assert out.returncode == 125 and out.stdout == ""
    assert out.stderr.startswith("sandboxer: error: option --map: ") and out.stderr.count("\n") == 1
    assert says.format(f=f, me=me) in out.stderr


@pytest.mark.usefixtures("integration")
def test_newuidmap_not_setuid(home: Path, tmp_path: Path) -> None:
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "newuidmap").write_text("#!/bin/sh\nexit 1\n")
    (fake / "newuidmap").chmod(0o755)
    env = caller_env(home, PATH=f"{fake}:/usr/local/bin:/usr/bin:/bin")
    out = sbx(["--map", "keep-id", "--", "true"], home, env=env)
    assert out.returncode == 125
    assert (f"{fake}/newuidmap is neither setuid root nor has file capabilities, so it cannot map "
            f"subordinate ids; as root: chmod u+s {fake}/newuidmap") in out.stderr


@pytest.mark.usefixtures("integration")
def test_idmap_of_a_user_without_ranges(home: Path) -> None:
    out = sbx(["idmap", "--user", "root", "1000"], home)
    assert out.returncode == 125
    assert "root has no subordinate uids in /etc/subuid" in out.stderr
    out = sbx(["idmap", "--user", "root", "--map", "root", "0"], home)
    assert out.returncode == 0 and out.stdout.splitlines()[-1] == "inside gid 0 -> 0 on the host (root)"


@pytest.mark.usefixtures("integration")
def test_explain_shell_runs_with_a_range(home: Path, base: int) -> None:
    script = sbx(["explain", "--shell", "--map", "auto", "--user", "1000", "--", "sh", "-c",
                  "id -u; touch $HOME/x && stat -c %u $HOME/x"], home, env=users_home(home))
    assert script.returncode == 0, script.stderr
    out = subprocess.run(["sh", "-s"], input=script.stdout, capture_output=True, text=True, timeout=60,
                         cwd=home, env=users_home(home))
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines() == ["1000", "1000"]
