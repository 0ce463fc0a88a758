"""The slow path: profile + options -> Plan (imports pydantic; off the hot path of `run`).

The I/O a compile needs happens here, not in compile(): reading the profile, and asking the
network helper the plan would run for its version and options.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence

from .compile import compile
from .errors import ProfileKeyError, SandboxerError
from .host import HostFacts, probe
from .idmap import RANGED
from .load import ProfileError, load_located
from .options import Opt
from .plan import Plan


def build_plan(
    profile: str | None,
    overrides: Sequence[tuple[Opt, str, str | None]],
    host: HostFacts,
    argv: Sequence[str] | None = None,
    data: bytes | None = None,
) -> Plan:
    """Load (from data, when given: the bytes the plan cache key was computed from), validate,
    probe the tools the plan needs, compile. Every problem found is a SandboxerError; one with a
    profile key names its file:line (or the option that set it)."""
    return build(profile, overrides, host, argv, data)[0]


def build(
    profile: str | None,
    overrides: Sequence[tuple[Opt, str, str | None]],
    host: HostFacts,
    argv: Sequence[str] | None = None,
    data: bytes | None = None,
) -> tuple[Plan, list[tuple[str, bytes]]]:
    """build_plan(), and the files the profile was read from (its own first, then those it
    extends), with the bytes the plan was compiled from."""
    loaded = load_located(profile, overrides, data)
    mode = loaded.profile.network.mode
    if mode in ("slirp4netns", "pasta"):
        probe(host, (mode,))
    try:
        if loaded.profile.user.map in RANGED and host.ranges is None:
            subordinate_ids(host)
        plan = compile(loaded.profile, host, tuple(os.path.abspath(path) for path, _data in loaded.sources))
    except ProfileKeyError as e:
        raise ProfileError([f"{loaded.where(e.loc)}: {e.message}" + (f"; {e.hint}" if e.hint else "")]) from None
    if argv:
        plan = dataclasses.replace(plan, command=tuple(argv))
    return plan, loaded.sources


def subordinate_ids(host: HostFacts) -> None:
    """Read the caller's subordinate ranges into host.ranges, and check the setuid helpers that
    map them (unshare(1) runs them): a ProfileKeyError of user.map saying how to fix what is
    missing."""
    from .idmap import privileged, read_ranges

    for tool in ("newuidmap", "newgidmap"):
        path = host.tools.get(tool, "")
        if not path:
            continue  # compile() names what is missing
        if not privileged(path):
            raise ProfileKeyError(("user", "map"), f"{path} is neither setuid root nor has file "
                                  "capabilities, so it cannot map subordinate ids",
                                  f"as root: chmod u+s {path} (or reinstall it: apt install --reinstall uidmap)")
    try:
        host.ranges = read_ranges(host.user, host.uid, host.subid_files)
    except SandboxerError as e:
        raise ProfileKeyError(("user", "map"), e.message, e.hint) from None
