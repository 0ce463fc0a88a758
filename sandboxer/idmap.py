"""User and group id mappings: subordinate ranges from /etc/subuid and /etc/subgid, the maps of
each user mapping mode, and the id calculator behind `sandboxer idmap`.

A map is a tuple of lines (inside, outside, count), as the kernel's /proc/PID/uid_map takes
them: ids inside..inside+count-1 of a user namespace are ids outside..outside+count-1 of its
parent. A sandbox has two user namespaces: the outer one (made by unshare(1), which maps 0 to
you and, for 'auto' and 'keep-id', 1..N to your subordinate range through the setuid
newuidmap/newgidmap) and the payload's, nested in it, whose map is written in the outer
namespace's ids. host_map() composes the two: what an id inside is on the host.

Pure functions, but for read_ranges(), which reads the subordinate id files.
"""

from __future__ import annotations

from typing import NamedTuple

from .errors import SandboxerError
from .host import SUBGID, SUBUID

OVERFLOW_ID = 65534  # what an unmapped id shows as inside (/proc/sys/kernel/overflowuid)
MAX_ID = 2**32 - 2  # (uid_t)-1 is never a valid id
MAX_FILE = 1 << 20  # a subordinate id file larger than this is not one

IdMap = tuple[tuple[int, int, int], ...]  # (inside, outside, count) lines
MODES = ("self", "root", "auto", "keep-id")
SCHEMES = ("rootless", "remap")


class Range(NamedTuple):
    """One subordinate range of a user: where it is written, and its ids."""

    file: str
    line: int
    start: int
    size: int

    @property
    def end(self) -> int:  # one past the last id
        return self.start + self.size

    def text(self) -> str:
        return f"{self.start}-{self.end - 1}"


class Ranges(NamedTuple):
    """A user's subordinate uids and gids: the first range of each is the one a sandbox maps
    (unshare(1) takes one range per namespace); the others are listed for explain."""

    uids: tuple[Range, ...]
    gids: tuple[Range, ...]


def parse(text: str, file: str) -> list[tuple[str, Range]]:
    """The lines of a subordinate id file: (owner, range), owner a name or a uid as written.
    Blank lines and #-comments are skipped; any other malformed line is an error (newuidmap
    would skip it: a range the admin meant to grant would silently be missing)."""
    entries = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        owner, start, count = ([*line.split(":"), "", ""])[:3]
        ok = line.count(":") == 2 and owner and start.isdigit() and count.isdigit()
        if ok and (int(count) < 1 or int(start) + int(count) - 1 > MAX_ID):
            ok = False
        if not ok:
            raise SandboxerError(
                f"{file}:{number}: expected NAME:FIRST_ID:COUNT (e.g. alice:100000:65536), got {raw!r}",
                f"as root, fix or remove that line of {file}",
            )
        entries.append((owner, Range(file, number, int(start), int(count))))
    return entries


def ranges_of(entries: list[tuple[str, Range]], user: str, uid: int) -> tuple[Range, ...]:
    """user's ranges (lines naming the user or its uid), checked against every other line:
    a range shared with another user would let that user's sandboxes reach this one's files."""
    mine = tuple(r for owner, r in entries if owner in (user, str(uid)))
    for r in mine:
        for owner, other in entries:
            if other is r or owner in (user, str(uid)):
                continue
            if r.start < other.end and other.start < r.end:
                raise SandboxerError(
                    f"{r.file}:{r.line}: {user}'s range {r.text()} overlaps {owner}'s {other.text()} "
                    f"(line {other.line}): each could reach the other's sandboxed files",
                    f"as root, give one of them a range no one else has, e.g. usermod --del-subuids "
                    f"{r.text()} {user} && usermod --add-subuids {suggest(entries)} {user}",
                )
        if r.start <= uid < r.end:
            raise SandboxerError(
                f"{r.file}:{r.line}: {user}'s range {r.text()} holds {user}'s own id {uid}",
                f"as root, give {user} a range above every user's id, e.g. {suggest(entries)}",
            )
    return mine


def suggest(entries: list[tuple[str, Range]]) -> str:
    """A free range of 65536 ids above every range in use (and above 100000, as useradd picks)."""
    start = max([100000, *(r.end for _owner, r in entries)])
    return f"{start}-{start + 65535}"


def privileged(path: str) -> bool:
    """newuidmap/newgidmap can map subordinate ids: setuid root, or file capabilities (as
    Fedora ships them)."""
    import os
    import stat

    try:
        st = os.stat(path)
    except OSError:
        return False
    if st.st_mode & stat.S_ISUID and st.st_uid == 0:
        return True
    try:
        return bool(os.getxattr(path, "security.capability"))
    except OSError:
        return False


def read_ranges(user: str, uid: int, files: tuple[str, str] = (SUBUID, SUBGID)) -> Ranges:
    """user's subordinate uids and gids; a SandboxerError that says how to fix a missing or
    broken file or a user without ranges."""
    found = []
    every: list[tuple[str, Range]] = []
    for file in files:
        try:
            with open(file, "rb") as f:
                data = f.read(MAX_FILE + 1)
        except FileNotFoundError:
            data = b""
        except OSError as e:
            raise SandboxerError(f"cannot read {file}: {e.strerror}",
                                 "as root: chmod 644 /etc/subuid /etc/subgid") from None
        if len(data) > MAX_FILE:
            raise SandboxerError(f"{file} is larger than {MAX_FILE} bytes", "is it really a subordinate id file?")
        entries = parse(data.decode("utf-8", "replace"), file)
        every += entries
        found.append(ranges_of(entries, user, uid))
    for kind, file, ranges in (("uids", files[0], found[0]), ("gids", files[1], found[1])):
        if not ranges:
            free = suggest(every)
            raise SandboxerError(
                f"{user} has no subordinate {kind} in {file}, so only one id can be mapped",
                f"as root: usermod --add-subuids {free} --add-subgids {free} {user}",
            )
    return Ranges(found[0], found[1])


# ---- maps --------------------------------------------------------------------------------------

def outer_map(own: int, first: Range | None) -> IdMap:
    """The outer namespace's map (in host ids): 0 is you, 1..N your first subordinate range."""
    if first is None:
        return ((0, own, 1),)
    return ((0, own, 1), (1, first.start, first.size))


def inner_map(mode: str, own_inside: int, size: int) -> IdMap:
    """The payload's namespace map, in the outer namespace's ids (0 = you, 1..size = your range).

    self: your id inside is you; root: 0 inside is you; auto: 0 is you and 1..size your range,
    as rootless Podman maps a container; keep-id: your id inside is you, the range fills every
    other id from 0 (so root inside is the range's first id), as Podman's --userns=keep-id."""
    if mode == "self":
        return ((own_inside, 0, 1),)
    if mode == "root":
        return ((0, 0, 1),)
    if mode == "auto":
        # two lines, not "0 0 size+1": each line must lie within one line of the parent's map
        return ((0, 0, 1), (1, 1, size)) if size else ((0, 0, 1),)
    lines = [(0, 1, min(own_inside, size))] if own_inside else []
    lines.append((own_inside, 0, 1))
    if size > own_inside:
        lines.append((own_inside + 1, own_inside + 1, size - own_inside))
    return tuple(line for line in lines if line[2] > 0)


RANGED = ("auto", "keep-id")  # the modes that map subordinate ranges


def inside_ids(mode: str, own: tuple[int, int]) -> tuple[int, int]:
    """Whom the map makes the caller inside: root for 'root' and 'auto', itself otherwise."""
    return (0, 0) if mode in ("root", "auto") else own


class Maps(NamedTuple):
    """A mode's maps for one user: the payload namespace's (in the outer namespace's ids) and
    the same composed to host ids, for uids and gids."""

    uid_map: IdMap
    gid_map: IdMap
    host_uids: IdMap
    host_gids: IdMap


def maps(mode: str, own: tuple[int, int], ranges: Ranges | None) -> Maps:
    """The maps of mode for the user with host ids own (and, for RANGED modes, ranges)."""
    first_uids, first_gids = (ranges.uids[0], ranges.gids[0]) if ranges is not None else (None, None)
    inside = inside_ids(mode, own)
    uid_map = inner_map(mode, inside[0], first_uids.size if first_uids else 0)
    gid_map = inner_map(mode, inside[1], first_gids.size if first_gids else 0)
    return Maps(uid_map, gid_map, compose(uid_map, outer_map(own[0], first_uids)),
                compose(gid_map, outer_map(own[1], first_gids)))


def remap_map(first: Range) -> IdMap:
    """Docker's userns-remap: the daemon maps 0 to the remap user's first subordinate id."""
    return ((0, first.start, first.size),)


def to_outside(idmap: IdMap, inside: int) -> int | None:
    for start, outside, count in idmap:
        if start <= inside < start + count:
            return outside + inside - start
    return None


def to_inside(idmap: IdMap, outside: int) -> int | None:
    for start, lower, count in idmap:
        if lower <= outside < lower + count:
            return start + outside - lower
    return None


def compose(inner: IdMap, outer: IdMap) -> IdMap:
    """inner (in outer's inside ids) through outer: one map straight to the host's ids."""
    lines = []
    for start, lower, count in inner:
        pos = 0
        while pos < count:
            # the outer line holding lower+pos, and how much of this line it covers
            for o_start, o_lower, o_count in outer:
                if o_start <= lower + pos < o_start + o_count:
                    span = min(count - pos, o_start + o_count - (lower + pos))
                    lines.append((start + pos, o_lower + lower + pos - o_start, span))
                    pos += span
                    break
            else:
                raise ValueError(f"id {lower + pos} of the inner map is not mapped outside")
    return tuple(lines)


def proc_text(idmap: IdMap) -> str:
    """The map as /proc/PID/uid_map takes it."""
    return "".join(f"{a} {b} {c}\n" for a, b, c in idmap)


def describe(idmap: IdMap, own: int, what: str = "uid", who: str = "you") -> str:
    """'uids 0 -> 1000 (you); 1-65536 -> 100000-165535' (host ids)."""
    parts = []
    for start, lower, count in idmap:
        inside = f"{start}" if count == 1 else f"{start}-{start + count - 1}"
        outside = f"{lower}" if count == 1 else f"{lower}-{lower + count - 1}"
        mark = f" ({who})" if count == 1 and lower == own else ""
        parts.append(f"{inside} -> {outside}{mark}")
    return f"{what}s " + "; ".join(parts)


# ---- the calculator (`sandboxer idmap`) --------------------------------------------------------

def calculate(ids: str, *, user: str | None, mode: str | None, scheme: str, reverse: bool,
              files: tuple[str, str] | None = None) -> tuple[list[str], bool]:
    """The lines `sandboxer idmap` prints, and whether every id was mapped."""
    import os
    import pwd

    from .host import subid_files
    from .profile import parse_ids

    if files is None:
        files = subid_files(os.environ)
    try:
        uid, gid = parse_ids(ids)
    except ValueError as e:
        raise SandboxerError(f"idmap: {e}") from None
    if scheme == "remap":
        if mode is not None:
            raise SandboxerError("idmap: --map is for the rootless scheme; Docker's userns-remap maps "
                                 "one way only", "drop --map, or drop --scheme remap")
        name = user or "dockremap"
        owner = _account(name)
        ranges = read_ranges(name, owner[0] if owner else -1, files)
        uids, gids = remap_map(ranges.uids[0]), remap_map(ranges.gids[0])
        title = f"# {name}'s userns-remap (Docker daemon): 0 inside is {name}'s first subordinate id"
        own = (-1, -1)
    else:
        mode = mode or "auto"
        if user is None:
            name = pwd.getpwuid(os.getuid()).pw_name if _has_passwd(os.getuid()) else str(os.getuid())
            own = (os.getuid(), os.getgid())
        else:
            found = _account(user)
            if found is None:
                raise SandboxerError(f"idmap: no user {user!r} in the password database",
                                     "name an existing user (see getent passwd)")
            name, own = user, found
        both = maps(mode, own, read_ranges(name, own[0], files) if mode in RANGED else None)
        uids, gids = both.host_uids, both.host_gids
        title = f"# {name}, map {mode} (rootless: sandboxer, Podman, rootless Docker)"
    who = "you" if user is None else name
    lines = [title, f"# {describe(uids, own[0], 'uid', who)}", f"# {describe(gids, own[1], 'gid', who)}"]
    ok = True
    for what, value, table, mine in (("uid", uid, uids, own[0]), ("gid", gid, gids, own[1])):
        if reverse:
            inside = to_inside(table, value)
            if inside is None:
                ok = False
                lines.append(f"host {what} {value} -> not mapped: it shows as {OVERFLOW_ID} inside "
                             "(and cannot be set there)")
            else:
                lines.append(f"host {what} {value} -> {inside} inside")
        else:
            outside = to_outside(table, value)
            you = f" ({who})" if outside == mine else ""
            if outside is None:
                ok = False
                lines.append(f"inside {what} {value} -> not mapped: no process or file can have it inside")
            else:
                lines.append(f"inside {what} {value} -> {outside} on the host{you}")
    return lines, ok


def _account(name: str) -> tuple[int, int] | None:
    import pwd

    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        return None
    return pw.pw_uid, pw.pw_gid


def _has_passwd(uid: int) -> bool:
    import pwd

    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True
