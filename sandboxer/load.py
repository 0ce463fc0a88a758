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
        section, _, leaf = opt.key.partition(".")
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


class Loaded:
    """A validated profile, and where each of its keys came from (for errors found later)."""

    def __init__(self, profile: Profile, path: str, locator: Locator, origin: dict[Loc, str]) -> None:
        self.profile = profile
        self.path = path
        self.locator = locator
        self.origin = origin

    def where(self, loc: Loc) -> str:
        """'file:line: dotted.key' or 'option --flag', for a problem with the key at loc."""
        return _where(loc, self.path, self.locator, self.origin)


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
    (the very bytes the plan cache key was computed from): the file is not read again."""
    raw: dict[str, Any] = {}
    text = ""
    shown = path or "(command line)"
    if path is not None:
        raw, text = parse_toml(path, read_profile(path) if data is None else data)
    origin = apply_overrides(raw, overrides)
    locator = Locator(text)
    try:
        profile = Profile.model_validate(raw)
    except ValidationError as e:
        problems = [f"{_where(tuple(err['loc']), shown, locator, origin)}: {_what(err, tuple(err['loc']))}"
                    for err in e.errors()]
        raise ProfileError(problems) from None
    except RecursionError:
        raise ProfileError([f"{shown}: nesting is too deep"]) from None
    return Loaded(profile, shown, locator, origin)


def _where(loc: Loc, path: str, locator: Locator, origin: dict[Loc, str]) -> str:
    for end in range(len(loc), 0, -1):
        if loc[:end] in origin:
            return f"option {origin[loc[:end]]}"
    line = locator.line(loc)
    where = f"{path}:{line}" if line else path
    return f"{where}: {_dotted(loc) or '(top level)'}"


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
