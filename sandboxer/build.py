"""The slow path: profile + options -> Plan (imports pydantic; off the hot path of `run`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from .compile import compile
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
    if argv:
        plan = dataclasses.replace(plan, command=tuple(argv))
    return plan
