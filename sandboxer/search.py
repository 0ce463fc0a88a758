"""Profiles by name: where `sandboxer run clean-home -- ...` looks for clean-home.toml.

The search path, first match wins: ./profiles (of the working directory: a project's own),
$XDG_CONFIG_HOME/sandboxer/profiles (~/.config/sandboxer/profiles), /etc/sandboxer/profiles,
then the profiles shipped with sandboxer (in the package, so pip and pipx installs have them).

A reference is a path when it ends in .toml or holds a '/', else a name. On the command line a
name is told from the command by `--`: `sandboxer run NAME -- CMD` (see options.parse).

A project's ./profiles may add names, never redefine one found further along: the main use of
sandboxer is a build in a checkout you do not trust, and that checkout's profiles/build.toml
would otherwise decide how isolated `sandboxer run build` is. Such a name is an error; the
project's file is used only when named as a path.

On the hot path of `sandboxer run`: imports only os.
"""

from __future__ import annotations

import os

from .errors import SandboxerError

SHIPPED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "profiles")
SYSTEM = "/etc/sandboxer/profiles"
PROJECT = "./profiles"


def is_path(ref: str) -> bool:
    return ref.endswith(".toml") or "/" in ref


def valid_name(name: str) -> bool:
    return bool(name) and name[0] not in ".-" and all(c.isalnum() or c in "._-" for c in name)


def search_dirs(environ: dict[str, str] | os._Environ[str], cwd: str, home: str) -> list[tuple[str, str]]:
    """(directory, how it is shown) in search order; a directory listed twice (./profiles of a
    checkout is the shipped one) counts once, where it comes first."""
    config = environ.get("XDG_CONFIG_HOME", "")
    if not config.startswith("/"):
        config = os.path.join(home, ".config")
    dirs = [
        (os.path.join(cwd, "profiles"), PROJECT),
        (os.path.join(config, "sandboxer", "profiles"), "$XDG_CONFIG_HOME/sandboxer/profiles"),
        (SYSTEM, SYSTEM),
        (SHIPPED, "shipped with sandboxer"),
    ]
    seen: set[str] = set()
    out = []
    for path, shown in dirs:
        real = os.path.realpath(path)
        if real in seen:
            continue
        seen.add(real)
        out.append((path, shown))
    return out


def find(ref: str, environ: dict[str, str] | os._Environ[str], cwd: str, home: str) -> str:
    """The profile file a reference names; a path is returned as given."""
    if is_path(ref):
        return ref
    dirs = search_dirs(environ, cwd, home)
    if valid_name(ref):
        for index, (directory, shown) in enumerate(dirs):
            path = os.path.join(directory, ref + ".toml")
            if not os.path.isfile(path):
                continue
            trusted = _later(ref, dirs[index + 1:]) if shown == PROJECT else ""
            if trusted:
                raise SandboxerError(
                    f"{path} (this directory's) would replace the profile {ref!r} of {trusted}: a "
                    "project may add profiles, not redefine one you trust",
                    f"to use the project's on purpose, name its file: sandboxer run ./profiles/{ref}.toml -- ...",
                )
            return path
    searched = ", ".join(d for d, _ in dirs)
    raise SandboxerError(
        f"no profile named {ref!r} (searched {searched})",
        "see 'sandboxer profiles'; a path to a .toml file works too; to run a command named "
        f"{ref!r}, put it after --",
    )


def _later(name: str, dirs: list[tuple[str, str]]) -> str:
    """Where else on the search path a profile of this name is ("" if nowhere)."""
    for directory, _shown in dirs:
        path = os.path.join(directory, name + ".toml")
        if os.path.isfile(path):
            return path
    return ""


def every(environ: dict[str, str] | os._Environ[str], cwd: str, home: str) -> list[tuple[str, str, str, bool]]:
    """Every profile found: (name, path, where, shadowed by an earlier one of the same name).
    A project's profile that would redefine a later one is listed as refused, and the later
    one as in use."""
    found = []
    names: set[str] = set()
    dirs = search_dirs(environ, cwd, home)
    for index, (directory, shown) in enumerate(dirs):
        try:
            entries = sorted(os.listdir(directory))
        except OSError:
            continue
        for entry in entries:
            name = entry[:-5]
            if not entry.endswith(".toml") or not valid_name(name):
                continue
            path = os.path.join(directory, entry)
            if not os.path.isfile(path):
                continue
            if shown == PROJECT and _later(name, dirs[index + 1:]):
                found.append((name, path, f"{shown}  (refused by name: it would redefine the one below)", False))
                continue
            found.append((name, path, shown, name in names))
            names.add(name)
    return found
