"""Profile file + command-line options -> a validated Profile, or errors naming file:line and key.

Imported only off the hot path (it pulls in pydantic): on a plan-cache hit nothing here runs.
"""

from __future__ import annotations

import difflib
import os
import re
import stat
import tomllib
import types
import typing
from collections.abc import Sequence
from typing import Any

from pydantic import BaseModel, ValidationError

from .errors import SandboxerError
from .options import Opt
from .profile import Profile, parse_size

MAX_PROFILE_BYTES = 1024 * 1024
Loc = tuple[str | int, ...]


class ProfileError(SandboxerError):
    """One or more problems with a profile; each is one complete line."""

    def __init__(self, problems: list[str]) -> None:
        first = problems[0]
        more = f" (and {len(problems) - 1} more problem(s))" if len(problems) > 1 else ""
        super().__init__(first + more)
        self.problems = problems


def read_profile(path: str) -> bytes:
    """Read a profile file defensively: no FIFOs, devices, directories or huge files."""
    try:
        # O_NONBLOCK: opening a FIFO must not hang waiting for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        raise ProfileError([f"{path}: profile not found; check the path"]) from None
    except PermissionError:
        raise ProfileError([f"{path}: cannot read the profile: permission denied; check its mode"]) from None
    except OSError as e:
        raise ProfileError([f"{path}: cannot open the profile: {e.strerror}"]) from None
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ProfileError([f"{path}: is a directory, not a profile; name a .toml file"])
        if not stat.S_ISREG(st.st_mode):
            raise ProfileError([f"{path}: is a {_kind(st.st_mode)}, not a regular file; name a .toml file"])
        if st.st_size > MAX_PROFILE_BYTES:
            raise ProfileError(
                [f"{path}: profile is too large ({st.st_size} bytes; the limit is {MAX_PROFILE_BYTES})"]
            )
        chunks = []
        total = 0
        while total <= MAX_PROFILE_BYTES:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
        if total > MAX_PROFILE_BYTES:
            raise ProfileError([f"{path}: profile is too large (the limit is {MAX_PROFILE_BYTES} bytes)"])
        return b"".join(chunks)
    except OSError as e:
        raise ProfileError([f"{path}: cannot read the profile: {e.strerror}"]) from None
    finally:
        os.close(fd)


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "device"
    return "special file"


_AT_RE = re.compile(r"\s*\(at line (\d+), column (\d+)\)$|\s*\(at end of document\)$")


def parse_toml(path: str, data: bytes) -> tuple[dict[str, Any], str]:
    """Bytes -> (table, text), with every parser failure turned into one located line."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[: e.start].count(b"\n") + 1
        raise ProfileError(
            [f"{path}:{line}: invalid UTF-8 (byte 0x{data[e.start]:02x}); save the profile as UTF-8"]
        ) from None
    nul = text.find("\x00")
    if nul >= 0:
        line = text.count("\n", 0, nul) + 1
        raise ProfileError([f"{path}:{line}: NUL byte in the profile; remove it"])
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as e:
        msg = str(e)
        m = _AT_RE.search(msg)
        where = f"{path}:{m.group(1)}" if m and m.group(1) else f"{path}:{text.count(chr(10)) + 1}"
        reason = _AT_RE.sub("", msg)
        col = f" (column {m.group(2)})" if m and m.group(2) else ""
        raise ProfileError([f"{where}: invalid TOML: {reason}{col}"]) from None
    except RecursionError:
        raise ProfileError([f"{path}: invalid TOML: nesting is too deep"]) from None
    except (ValueError, UnicodeError) as e:  # tomllib raises these on some malformed numbers/dates
        raise ProfileError([f"{path}: invalid TOML: {e}"]) from None


class Locator:
    """Maps a dotted key path to the line that defines it, by scanning table headers and keys."""

    _ARRAY = re.compile(r"^\s*\[\[\s*([^\]]+?)\s*\]\]")
    _TABLE = re.compile(r"^\s*\[\s*([^\]]+?)\s*\]")
    _KEY = re.compile(r"^\s*([A-Za-z0-9_\-\"'. ]+?)\s*=")

    def __init__(self, text: str) -> None:
        self.lines: dict[Loc, int] = {}
        counts: dict[Loc, int] = {}
        current: Loc = ()
        for n, line in enumerate(text.splitlines(), 1):
            if m := self._ARRAY.match(line):
                base = _split_key(m.group(1))
                index = counts.get(base, 0)
                counts[base] = index + 1
                current = (*base, index)
                self.lines.setdefault(base, n)
                self.lines.setdefault(current, n)
            elif m := self._TABLE.match(line):
                current = _split_key(m.group(1))
                self.lines.setdefault(current, n)
            elif m := self._KEY.match(line):
                self.lines.setdefault((*current, *_split_key(m.group(1))), n)

    def line(self, loc: Loc) -> int | None:
        for end in range(len(loc), 0, -1):
            if loc[:end] in self.lines:
                return self.lines[loc[:end]]
        return None


def _split_key(key: str) -> tuple[str, ...]:
    return tuple(part.strip().strip("\"'") for part in key.split("."))


def apply_overrides(
    raw: dict[str, Any], overrides: Sequence[tuple[Opt, str, str | None]]
) -> dict[Loc, str]:
    """Apply command-line options onto the raw profile table; return key path -> option spelling."""
    origin: dict[Loc, str] = {}
    for opt, spelled, value in overrides:
        if opt.kind == "set":
            _set(raw, origin, value or "")
            continue
        section, dot, leaf = opt.key.partition(".")
        if not dot and opt.kind == "value":  # a top-level key (name)
            raw[section] = value
            origin[(section,)] = spelled
            continue
        if opt.kind == "mount":
            mounts = raw.setdefault("mounts", [])
            if not isinstance(mounts, list):
                raise ProfileError([f"option {spelled}: the profile's 'mounts' is not a list"])
            origin[("mounts", len(mounts))] = spelled
            mounts.append(_mount_from_option(opt.name, spelled, value or ""))
            continue
        table = raw.setdefault(section, {})
        if not isinstance(table, dict):
            raise ProfileError([f"option {spelled}: the profile's '{section}' is not a table"])
        if opt.kind == "forward":
            sub = table.setdefault(leaf, [])
            if not isinstance(sub, list):
                raise ProfileError([f"option {spelled}: the profile's '{opt.key}' is not a list"])
            origin[(section, leaf, len(sub))] = spelled
            sub.append(_forward_from_option(spelled, value or ""))
            continue
        if opt.kind == "bool":
            table[leaf] = not spelled.startswith("--no-")
            origin[(section, leaf)] = spelled
        elif opt.kind == "env":
            name, eq, val = (value or "").partition("=")
            if not eq:
                raise ProfileError([f"option {spelled}: expected NAME=VALUE, got {value!r}"])
            sub = table.setdefault(leaf, {})
            sub[name] = val
            origin[(section, leaf, name)] = spelled
        elif opt.kind == "append":
            sub = table.setdefault(leaf, [])
            origin[(section, leaf, len(sub))] = spelled
            sub.append(value)
        else:
            table[leaf] = value
            origin[(section, leaf)] = spelled
    return origin


_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*$")


def _set(raw: dict[str, Any], origin: dict[Loc, str], assignment: str) -> None:
    """--set dotted.key=VALUE: VALUE is a TOML value when it parses as one (1G does not: it is
    the string "1G"), set into the raw table as the file would have it."""
    key, eq, text = assignment.partition("=")
    key = key.strip()
    if not eq or not _KEY_RE.match(key):
        raise ProfileError([f"option --set: expected KEY=VALUE with a dotted KEY such as home.size, "
                            f"got {assignment!r}"])
    try:
        value = tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        value = text
    parts = key.split(".")
    if parts[0] == "extends":
        raise ProfileError(["option --set extends: extends is read from profile files only; name the "
                            "profile to build on in a file, or give the settings as --set"])
    table = raw
    for depth, part in enumerate(parts[:-1]):
        sub = table.setdefault(part, {})
        if not isinstance(sub, dict):
            shown = ".".join(parts[:depth + 1])
            raise ProfileError([f"option --set {key}: {shown} is not a table, so it has no {parts[depth + 1]!r}"])
        table = sub
    table[parts[-1]] = value
    loc = tuple(parts)
    for other in [k for k in origin if k[:len(loc)] == loc]:
        del origin[other]  # the whole value is the --set's now
    origin[loc] = f"--set {key}"


_FORWARD_RE = re.compile(
    r"^(?:(?:\[(?P<v6>[0-9A-Fa-f:.]+)\]|(?P<addr>[0-9.]+)):)?(?P<host>[0-9]+):(?P<guest>[0-9]+)"
    r"(?:/(?P<proto>tcp|udp))?$"
)


def _forward_from_option(spelled: str, value: str) -> dict[str, Any]:
    """[ADDR:]HOST_PORT:GUEST_PORT[/tcp|udp]; an IPv6 ADDR goes in brackets."""
    m = _FORWARD_RE.match(value.strip())
    if not m:
        raise ProfileError([
            f"option {spelled}: expected [ADDR:]HOST_PORT:GUEST_PORT[/tcp|udp] "
            f"(e.g. 8080:80 or 127.0.0.1:8080:80/tcp), got {value!r}"
        ])
    fwd: dict[str, Any] = {"host_port": int(m.group("host")), "guest_port": int(m.group("guest")),
                           "proto": m.group("proto") or "tcp"}
    addr = m.group("v6") or m.group("addr")
    if addr:
        fwd["host_addr"] = addr
    return fwd


def _mount_from_option(name: str, spelled: str, value: str) -> dict[str, Any]:
    if name == "tmpfs":
        target, sep, size = value.partition(":")
        mount: dict[str, Any] = {"type": "tmpfs", "target": target}
        if sep:
            try:
                mount["size"] = parse_size(size)
            except ValueError as e:
                raise ProfileError([f"option {spelled}: {e}"]) from None
        return mount
    # SRC[:DST] splits at the first ':'; paths containing ':' need a profile.
    source, sep, target = value.partition(":")
    mount = {"type": name, "source": source}
    if sep:
        mount["target"] = target
    return mount


MAX_CHAIN = 16  # profiles a chain of extends may hold


class Loaded:
    """A validated profile, the files it was merged from, and where each of its keys came from
    (for errors found later, and for `explain --resolved`)."""

    def __init__(self, profile: Profile, path: str, origin: dict[Loc, str], files: dict[Loc, str],
                 sources: list[tuple[str, bytes]]) -> None:
        self.profile = profile
        self.path = path
        self.origin = origin  # options: loc -> the spelling that set it
        self.files = files  # the chain's files: loc -> "file:line"
        self.sources = sources  # (path, bytes) of every file of the chain, the profile's own first

    def where(self, loc: Loc) -> str:
        """'file:line: dotted.key' or 'option --flag', for a problem with the key at loc."""
        return _where(loc, self.path, self.origin, self.files)

    def resolved(self) -> list[str]:
        """Every key of the merged profile, with its value and where it came from."""
        import json

        lines = []
        for loc, value in _leaves(self.profile.model_dump(mode="json", exclude={"extends"})):
            text = json.dumps(value, ensure_ascii=False)
            came = _came(loc, self.origin, self.files)
            lines.append(f"{_dotted(loc)} = {text}  # {came}")
        return lines


def load(
    path: str | None,
    overrides: Sequence[tuple[Opt, str, str | None]] = (),
    data: bytes | None = None,
) -> Profile:
    """Read, parse, override and validate. Raises ProfileError."""
    return load_located(path, overrides, data).profile


def load_located(
    path: str | None,
    overrides: Sequence[tuple[Opt, str, str | None]] = (),
    data: bytes | None = None,
) -> Loaded:
    """load(), keeping what is needed to locate a key. With data, those bytes are the profile's
    (the very bytes the plan cache key was computed from): the file is not read again. A profile
    that extends others is merged over them (see _merge)."""
    raw: dict[str, Any] = {}
    files: dict[Loc, str] = {}
    sources: list[tuple[str, bytes]] = []
    shown = path or "(command line)"
    if path is not None:
        raw, files, sources = _read_chain(path, data, [])
    origin = apply_overrides(raw, overrides)
    try:
        profile = Profile.model_validate(raw)
    except ValidationError as e:
        problems = [f"{_where(tuple(err['loc']), shown, origin, files)}: {_what(err, tuple(err['loc']))}"
                    for err in e.errors()]
        raise ProfileError(problems) from None
    except RecursionError:
        raise ProfileError([f"{shown}: nesting is too deep"]) from None
    return Loaded(profile, shown, origin, files, sources)


def _read_chain(path: str, data: bytes | None, chain: list[str]) -> tuple[dict[str, Any], dict[Loc, str],
                                                                         list[tuple[str, bytes]]]:
    """The profile at path merged over the profiles it extends, in order: (table, where each key
    came from, the files read)."""
    import os

    from . import search

    content = read_profile(path) if data is None else data
    raw, text = parse_toml(path, content)
    locator = Locator(text)
    # every table header and key the file spells, with its line (the longest prefix of a key's
    # path is where a problem with it is shown)
    files = {loc: f"{path}:{line}" for loc, line in locator.lines.items()}
    parents = raw.pop("extends", [])
    if isinstance(parents, str):
        parents = [parents]
    if not isinstance(parents, list) or not all(isinstance(p, str) and p for p in parents):
        raise ProfileError([f"{path}:{locator.line(('extends',)) or 1}: extends: expected a list of "
                            f"profile names or paths, got {_given(parents)}"])
    here = os.path.realpath(path)
    trail = [*chain, here]
    merged: dict[str, Any] = {}
    merged_files: dict[Loc, str] = {}
    sources = [(path, content)]
    for ref in parents:
        if search.is_path(ref):
            parent = ref if ref.startswith("/") else os.path.join(os.path.dirname(path), ref)
        else:
            try:
                parent = search.find(ref, os.environ, os.getcwd(), os.environ.get("HOME", "/"))
            except SandboxerError as e:
                raise ProfileError([f"{path}:{locator.line(('extends',)) or 1}: extends: {e.message}"]) from None
        if os.path.realpath(parent) in trail:
            names = " -> ".join([*chain, here, os.path.realpath(parent)])
            raise ProfileError([f"{path}: extends: a cycle: {names}; remove one of the links"])
        if len(trail) >= MAX_CHAIN:
            raise ProfileError([f"{path}: extends: more than {MAX_CHAIN} profiles in a chain"])
        praw, pfiles, psources = _read_chain(parent, None, trail)
        _merge(merged, praw, merged_files, pfiles, ())
        sources += psources
    _merge(merged, raw, merged_files, files, ())
    return merged, merged_files, sources


def _merge(dst: dict[str, Any], src: dict[str, Any], dst_files: dict[Loc, str], src_files: dict[Loc, str],
           prefix: Loc) -> None:
    """src over dst: tables merge key by key, `mounts` accumulate (dst's first), anything else
    (other lists included) is replaced whole."""
    for key, value in src.items():
        loc = (*prefix, key)
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            _merge(dst[key], value, dst_files, src_files, loc)
            continue
        if loc == ("mounts",) and isinstance(value, list) and isinstance(dst.get(key), list):
            offset = len(dst[key])
            dst[key] = [*dst[key], *value]
            for floc, where in src_files.items():
                if floc[:1] == loc and len(floc) > 1 and isinstance(floc[1], int):
                    dst_files[(key, floc[1] + offset, *floc[2:])] = where
            continue
        dst[key] = value
        for floc in [f for f in dst_files if f[:len(loc)] == loc]:
            del dst_files[floc]
        dst_files.update({f: w for f, w in src_files.items() if f[:len(loc)] == loc})


def _leaves(table: Any, prefix: Loc = ()) -> list[tuple[Loc, Any]]:
    """(loc, value) of every leaf: scalars and lists of scalars; tables and lists of tables are
    walked into."""
    out: list[tuple[Loc, Any]] = []
    if isinstance(table, dict) and table:
        for key, value in table.items():
            out += _leaves(value, (*prefix, key))
    elif isinstance(table, list) and table and all(isinstance(v, dict) for v in table):
        for index, value in enumerate(table):
            out += _leaves(value, (*prefix, index))
    else:
        out.append((prefix, table))
    return out


def _came(loc: Loc, origin: dict[Loc, str], files: dict[Loc, str]) -> str:
    """Where the value at loc was set: an option (which may set a whole table: --bind sets a
    mount), the file and line that spell the key, else the default."""
    for end in range(len(loc), 0, -1):
        if loc[:end] in origin:
            return origin[loc[:end]]
    return files.get(loc, "default")


def _where(loc: Loc, path: str, origin: dict[Loc, str], files: dict[Loc, str]) -> str:
    for end in range(len(loc), 0, -1):
        if loc[:end] in origin:
            return f"option {origin[loc[:end]]}"
    for key, spelled in origin.items():  # an option set something inside the table at loc
        if loc and key[:len(loc)] == loc:
            return f"option {spelled}"
    for end in range(len(loc), 0, -1):
        if loc[:end] in files:
            return f"{files[loc[:end]]}: {_dotted(loc) or '(top level)'}"
    return f"{path}: {_dotted(loc) or '(top level)'}"


def _dotted(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _given(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


_TYPE_WORDS = {
    "bool_type": "a boolean (true or false)",
    "int_type": "an integer",
    "string_type": "a string",
    "list_type": "a list",
    "dict_type": "a table",
    "model_type": "a table",
    "model_attributes_type": "a table",
    "int_from_float": "a whole number",
}


def _what(err: Any, loc: Loc) -> str:
    kind = err["type"]
    given = _given(err.get("input"))
    ctx = err.get("ctx") or {}
    if kind == "extra_forbidden":
        known = _known_keys(loc[:-1])
        best = difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.5)
        hint = f"did you mean {best[0]!r}?" if best else f"known keys: {', '.join(known)}"
        return f"unknown key {loc[-1]!r}; {hint}"
    if kind == "literal_error":
        return f"expected one of {ctx.get('expected', '?')}, got {given}"
    if kind in _TYPE_WORDS:
        return f"expected {_TYPE_WORDS[kind]}, got {given}"
    if kind in ("greater_than_equal", "less_than_equal", "greater_than", "less_than"):
        bound = ctx.get("ge", ctx.get("le", ctx.get("gt", ctx.get("lt"))))
        word = "at least" if kind.startswith("greater") else "at most"
        return f"out of range: expected {word} {bound}, got {given}"
    if kind == "too_long":
        return f"too many entries (at most {ctx.get('max_length')})"
    if kind == "missing":
        return "missing; this key is required"
    if kind == "value_error":
        return str(ctx.get("error", err["msg"]))
    return f"{err['msg']}, got {given}"


def _known_keys(loc: Loc) -> list[str]:
    model: Any = Profile
    for part in loc:
        if isinstance(part, int):
            continue
        fields = getattr(model, "model_fields", {})
        if part not in fields:
            return []
        model = _model_of(fields[part].annotation)
    return sorted(getattr(model, "model_fields", {}))


def _model_of(annotation: Any) -> Any:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    origin = typing.get_origin(annotation)
    if origin in (list, typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            found = _model_of(arg)
            if found is not None:
                return found
    return None
