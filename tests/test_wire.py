"""The plan that runs is the plan that is tested: the run spec, the wire to the stage, and the
stage's own decoding of it (`sandboxer-stage --print-config`), without namespaces."""

from __future__ import annotations

import json
import marshal
import os
import signal
import subprocess
import typing
from pathlib import Path

import pytest

from sandboxer import wire
from sandboxer.build import build_plan
from sandboxer.host import STAGE, HostFacts
from sandboxer.options import parse
from sandboxer.plan import MountKind
from sandboxer.spec import RunSpec, SpecError
from sandboxer.supervise import FORWARDED, stage_config

from .conftest import PROFILES, REPO

GOLDEN = REPO / "tests" / "golden" / "stage"
SHIPPED = sorted(PROFILES.glob("*.toml"))
ENV = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": "/home/alice"}


def spec_for(argv: list[str], **host: object) -> RunSpec:
    args = parse(["explain", *argv])
    plan = build_plan(args.profiles[0] if args.profiles else None, args.overrides,
                      HostFacts.example(**host), args.argv)
    return plan.spec()


def decode(blob: bytes) -> dict[str, object]:
    out = subprocess.run([STAGE, "--print-config"], input=blob, capture_output=True, timeout=10)
    assert out.returncode == 0, out.stderr
    assert out.stderr == b""
    result = json.loads(out.stdout.decode("utf-8", "surrogateescape"))
    assert isinstance(result, dict)
    return result


def refused(blob: bytes) -> str:
    out = subprocess.run([STAGE, "--print-config"], input=blob, capture_output=True, timeout=10)
    assert out.returncode == 125 and out.stdout == b"", out
    text = out.stderr.decode()
    assert text.startswith("sandboxer-stage: error: ") and text.count("\n") == 1, text
    return text


def expected(spec: RunSpec, *, tty: bool, env: dict[str, str], argv: list[str], ppid: int,
             keep: str = "") -> dict[str, object]:
    """What the stage must understand of encode(spec, ...), in --print-config's shape."""
    def mounts(ops: tuple[typing.Any, ...]) -> list[dict[str, object]]:
        return [{"kind": op.kind, "source": op.source, "target": op.target, "readonly": op.readonly,
                 "size": op.size, "mode": op.mode, "create": op.create, "owner": list(op.owner)}
                for op in ops]

    net = spec.network
    return {
        "version": wire.VERSION, "pid": spec.pid, "ppid": ppid, "tty": tty, "landlock": spec.landlock,
        "apidir": spec.apidir, "hostname": spec.hostname, "lo": spec.lo,
        "tap": net.tap if net and net.tap else None,
        "netfiles": [net.resolv_conf, net.hosts] if net else None,
        "userns": {"uid_map": spec.users.uid_map, "gid_map": spec.users.gid_map,
                   "by_stage": spec.users.by_stage},
        "runas": list(spec.users.run_as) if spec.users.run_as[0] >= 0 else None,
        "limits": [list(limit) for limit in spec.limits], "keep": keep or None,
        "cwd": spec.cwd, "mounts": mounts(spec.mounts),
        "rootfs": None if spec.rootfs is None else {
            "path": spec.rootfs.path, "switch": spec.rootfs.switch, "writes": spec.rootfs.writes,
            "mounts": mounts(spec.rootfs.mounts)},
        "argv": argv, "env": [f"{k}={v}" for k, v in env.items()],
    }


CASES = {
    **{p.stem: [str(p)] for p in SHIPPED},
    "pasta": ["--net", "pasta", "--forward", "8080:80", "--forward", "[::1]:5353:53/udp"],
    "binds": ["--bind", ".", "--ro-bind", "/etc/ssl:/etc/ssl", "--tmpfs", "/scratch:8M", "--no-pid",
              "--net", "host", "--map", "root"],
    "map-auto": ["--map", "auto", "--user", "1000:100", "--rootfs", "/srv/tree"],
    "keep-id": ["--map", "keep-id", "--home", "host"],
    "build-overlay": ["--worktree", "overlay", "--nproc", "10", "--fsize", "1M", "--cpu", "3", "--as", "1G",
                      "--nofile", "64", "--hide", "~/.ssh", "--timeout", "90s"],
    "rootfs-chroot": ["--rootfs", "/srv/tree", "--root-switch", "chroot", "--rootfs-writes", "overlay",
                      "--bind", "~/src:/src"],
    "odd-strings": ["--hostname", "h-1", "--env", "X=a\tb\nc \"q\" \\ é", "--bind", "/tmp/ü x:/y"],
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_stage_understands_what_the_supervisor_encodes(case: str) -> None:
    spec = spec_for(CASES[case])
    argv = ["cmd", "-x", "", "ü\nz"]
    env = {**ENV, "WEIRD": "a=b\x01é"}
    keep = "/home/alice/kept ü" if spec.worktree[1] == "overlay" else ""
    blob = stage_config(spec, tty=True, env=env, argv=argv, ppid=4242, keep=keep)
    assert decode(blob) == expected(spec, tty=True, env=env, argv=argv, ppid=4242, keep=keep)


@pytest.mark.parametrize("profile", SHIPPED, ids=lambda p: p.name)
def test_golden_stage_configs(profile: Path) -> None:
    """What the stage receives for each shipped profile, as the stage itself reads it."""
    spec = spec_for([str(profile)])
    decoded = decode(stage_config(spec, tty=False, env=ENV, argv=["true"], ppid=42))
    golden = GOLDEN / f"{profile.stem}.json"
    text = json.dumps(decoded, indent=2, ensure_ascii=False) + "\n"
    if os.environ.get("SANDBOXER_UPDATE_GOLDEN") == "1":
        GOLDEN.mkdir(exist_ok=True)
        golden.write_text(text)
    assert golden.exists(), f"no golden file for {profile.name}; run with SANDBOXER_UPDATE_GOLDEN=1"
    assert text == golden.read_text(), f"what the stage receives for {profile.name} changed; review {golden}"


def test_every_stage_golden_has_a_profile() -> None:
    assert {p.stem for p in GOLDEN.glob("*.json")} == {p.stem for p in SHIPPED}


def _words(blob: bytes) -> list[bytes]:
    assert blob.endswith(b"\0")
    return blob[:-1].split(b"\0")


def _join(words: list[bytes]) -> bytes:
    return b"\0".join(words) + b"\0"


def _good() -> list[bytes]:
    return _words(stage_config(spec_for([str(PROFILES / "clean-home.toml")]), tty=False, env=ENV,
                               argv=["true"], ppid=1))


def _replace_record(words: list[bytes], tag: bytes, new: list[bytes]) -> list[bytes]:
    i = words.index(tag)
    n = int(words[i + 1])
    return words[:i] + new + words[i + 2 + n:]


@pytest.mark.parametrize("mutate,says", [
    (lambda w: [b"sandboxer-stage-x", *w[1:]], "not for this stage"),
    (lambda w: [w[0], b"2", *w[2:]], f"is version 2, this stage reads version {wire.VERSION}"),
    (lambda w: _replace_record(w, b"hostname", [b"hostnme", b"1", b"x"]), "unknown record 'hostnme'"),
    (lambda w: _replace_record(w, b"hostname", [b"hostname", b"2", b"x", b"y"]), "2 values for 'hostname', expected 1"),
    (lambda w: _replace_record(w, b"pid", [b"pid", b"1", b"2"]), "has 2 for the boolean pid"),
    (lambda w: _replace_record(w, b"ppid", [b"ppid", b"1", b"12x"]), "bad number '12x' in ppid"),
    (lambda w: _replace_record(w, b"landlock", [b"landlock", b"1", b"8"]), "unknown Landlock bits 8"),
    (lambda w: _replace_record(w, b"cwd", [b"cwd", b"1", b"/", b"mount", b"9", b"tmpfsx", b"", b"/x",
                                           b"0", b"1", b"0755", b"0", b"-1", b"-1"]), "unknown mount kind 'tmpfsx'"),
    (lambda w: _replace_record(w, b"cwd", [b"cwd", b"1", b"/", b"runas", b"2", b"-1", b"0"]),
     "negative ids to run as"),
    (lambda w: _replace_record(w, b"userns", []), "has no 'userns' record"),
    (lambda w: _replace_record(w, b"cwd", [b"cwd", b"1", b"/", b"rootfs", b"3", b"/t", b"chroots",
                                           b"persist"]), "unknown root switch 'chroots'"),
    (lambda w: _replace_record(w, b"cwd", [b"cwd", b"1", b"/", b"cwd", b"1", b"/"]), "repeats the record 'cwd'"),
    (lambda w: _replace_record(w, b"cwd", []), "has no 'cwd' record"),
    (lambda w: _replace_record(w, b"arg", []), "has no 'arg' record"),
    (lambda w: w[:-2], "truncated"),
    (lambda w: w[:-1], "truncated"),
    (lambda w: [*w, b"x"], "goes on after its end"),
    (lambda w: [*w, b"end", b"0"], "goes on after its end"),
])
def test_the_stage_refuses_what_it_does_not_understand(mutate: typing.Any, says: str) -> None:
    assert says in refused(_join(mutate(_good())))


def test_a_config_cut_anywhere_is_refused() -> None:
    blob = _join(_good())
    for cut in range(0, len(blob) - 1, max(1, len(blob) // 97)):
        refused(blob[:cut])


def test_a_nul_in_a_value_never_reaches_the_stage() -> None:
    from sandboxer.errors import SandboxerError

    spec = spec_for([])
    for kw in ({"env": {"A": "x\0y"}, "argv": ["true"]}, {"env": {}, "argv": ["a\0b"]}):
        with pytest.raises(SandboxerError, match="NUL"):
            stage_config(spec, tty=False, ppid=1, **kw)  # type: ignore[arg-type]


def test_c_and_python_agree_on_the_shared_tables() -> None:
    assert (REPO / "sandboxer" / "wire.h").read_text() == wire.header(), \
        "sandboxer/wire.h is stale; run 'python -m sandboxer.wire'"
    assert FORWARDED == tuple(getattr(signal, name) for name in wire.FORWARDED_SIGNALS)
    assert set(typing.get_args(MountKind)) == set(wire.MOUNT_KINDS)
    stage_c = (REPO / "sandboxer" / "stage.c").read_text()
    assert '#include "wire.h"' in stage_c
    for name in ("CONFIG_MAGIC", "static const int FORWARDED", "DEV_NODES[] =", "enum { CONFIG_FD"):
        assert name not in stage_c, f"stage.c defines {name} itself instead of taking it from wire.h"


def test_the_run_spec_round_trips_and_refuses_other_shapes() -> None:
    for case in sorted(CASES):
        spec = spec_for(CASES[case])
        data = marshal.loads(marshal.dumps(spec.data()))
        assert RunSpec.from_data(data).data() == spec.data()
    data = list(spec_for([]).data())
    for bad, says in ((data[:-1], "tuple of 20"), ([99, *data[1:]], "version 99"),
                      ([*data[:2], "yes", *data[3:]], "boolean")):
        with pytest.raises(SpecError, match=says):
            RunSpec.from_data(tuple(bad))
    mounts = list(data[9])  # type: ignore[call-overload]
    mounts[0] = ("nope", *mounts[0][1:])
    with pytest.raises(SpecError, match="expected one of"):
        RunSpec.from_data(tuple([*data[:9], tuple(mounts), *data[10:]]))
