"""The slow path: profile + options -> Plan (imports pydantic; off the hot path of `run`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from .compile import ProfileKeyError, compile
from .errors import SandboxerError
from .host import HostFacts
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
    compile, and check the tools the plan runs. Every problem found is a SandboxerError; one
    with a profile key names its file:line (or the option that set it)."""
    loaded = load_located(profile, overrides, data)
    try:
        plan = compile(loaded.profile, host)
    except ProfileKeyError as e:
        raise ProfileError([f"{loaded.where(e.loc)}: {e.message}" + (f"; {e.hint}" if e.hint else "")]) from None
    if plan.network is not None:
        check_slirp4netns(host.tools.get("slirp4netns", ""))
    if argv:
        plan = dataclasses.replace(plan, command=tuple(argv))
    return plan


SLIRP4NETNS_MIN = (1, 0, 0)  # --enable-seccomp, --exit-fd, --ready-fd and the API's add_hostfwd


def check_slirp4netns(path: str) -> None:
    """Refuse a slirp4netns too old for the options the plan passes (checked on compile only:
    the plan cache key includes the binary's stat, so an upgrade or a downgrade recompiles)."""
    import re
    import subprocess

    try:
        out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=5,
                             stdin=subprocess.DEVNULL, env={"LC_ALL": "C"})
        text = out.stdout + out.stderr
    except (OSError, subprocess.TimeoutExpired) as e:
        text = str(e)
    m = re.search(r"slirp4netns version (\d+)\.(\d+)\.(\d+)", text)
    if not m:
        raise SandboxerError(
            f"cannot tell the version of {path} (its --version said {text.strip()[:80]!r})",
            "install slirp4netns 1.x (apt install slirp4netns)",
        )
    version = tuple(int(g) for g in m.groups())
    if version < SLIRP4NETNS_MIN:
        raise SandboxerError(
            f"{path} is version {'.'.join(m.groups())}, too old: sandboxer needs "
            f"{'.'.join(map(str, SLIRP4NETNS_MIN))} or newer",
            "upgrade slirp4netns, or use --net none",
        )
