"""The slow path: profile + options -> Plan (imports pydantic; off the hot path of `run`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from .compile import compile
from .errors import SandboxerError
from .host import HostFacts
from .load import load
from .options import Opt
from .plan import Plan


def build_plan(
    profile: str | None,
    overrides: Sequence[tuple[Opt, str, str | None]],
    host: HostFacts,
    argv: Sequence[str] | None = None,
) -> Plan:
    plan = compile(load(profile, overrides), host)
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
