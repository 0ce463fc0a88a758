"""Pure tests of the compiler: golden plans for the shipped profiles, and plan properties."""

from __future__ import annotations

import json
import os
import shlex

import pytest

from sandboxer.build import build_plan
from sandboxer.compile import compile
from sandboxer.errors import SandboxerError
from sandboxer.host import HostFacts
from sandboxer.load import load
from sandboxer.options import parse
from sandboxer.supervise import STAGE_MAGIC, stage_config

from .conftest import PROFILES, REPO

GOLDEN = REPO / "tests" / "golden"
SHIPPED = sorted(PROFILES.glob("*.toml"))


def plan_for(argv: list[str], **host: object):  # type: ignore[no-untyped-def]
    args = parse(["explain", *argv])
    return build_plan(args.profiles[0] if args.profiles else None, args.overrides,
                      HostFacts.example(**host), args.argv)


@pytest.mark.parametrize("profile", SHIPPED, ids=lambda p: p.name)
def test_golden_plans(profile) -> None:  # type: ignore[no-untyped-def]
    plan = compile(load(str(profile)), HostFacts.example())
    rendered = {"json": json.loads(plan.to_json()), "shell": plan.shell().splitlines()}
    golden = GOLDEN / f"{profile.stem}.json"
    text = json.dumps(rendered, indent=2) + "\n"
    if os.environ.get("SANDBOXER_UPDATE_GOLDEN") == "1":
        golden.write_text(text)
    assert golden.exists(), f"no golden file for {profile.name}; run with SANDBOXER_UPDATE_GOLDEN=1"
    assert text == golden.read_text(), f"plan for {profile.name} changed; review and update {golden}"


def test_every_golden_has_a_profile() -> None:
    assert {p.stem for p in GOLDEN.glob("*.json")} == {p.stem for p in SHIPPED}


def test_clean_home_chain() -> None:
    plan = plan_for([str(PROFILES / "clean-home.toml")])
    assert plan.outer[:6] == ("/usr/bin/unshare", "--user", "--map-root-user", "--mount",
                              "--propagation", "private")
    assert "--net" not in plan.outer and "--kill-child" in plan.outer
    assert plan.outer[plan.outer.index("--") + 1:] == (
        "/usr/lib/python3/dist-packages/sandboxer/sandboxer-stage",)
    kinds = [(op.kind, op.target) for op in plan.mounts]
    assert kinds == [("pin", "/home/alice"), ("pin", "/home/alice/.cache"),
                     ("hide", "/home/alice/.cache/sandboxer"), ("tmpfs", "/home/alice")]
    assert plan.inner.unshare_args() == ["--map-user=1000", "--map-group=1000"]
    assert dict(plan.env.fixed)["USER"] == "alice"


def test_flags_alone_are_safe_defaults() -> None:
    plan = plan_for(["--", "make"])
    assert {"user", "mount", "pid", "net", "uts", "ipc"} <= set(plan.namespaces)
    assert plan.mounts[-1].kind == "tmpfs" and plan.mounts[-1].target == "/home/alice"
    assert plan.command == ("make",)


def test_flags_override_profile_before_and_after() -> None:
    before = plan_for(["--net", "none", "--map", "root", str(PROFILES / "clean-home.toml")])
    after = plan_for([str(PROFILES / "clean-home.toml"), "--net", "none", "--map", "root"])
    for plan in (before, after):
        assert "net" in plan.namespaces
        assert plan.inner.mode == "root" and plan.inner.unshare_args() == ["--map-root-user"]
        assert dict(plan.env.fixed)["USER"] == "root"


def test_no_pid_no_uts_no_ipc() -> None:
    plan = plan_for(["--no-pid", "--no-uts", "--no-ipc", "--net", "host"])
    assert plan.namespaces == ("user", "mount")
    assert not plan.pid and plan.hostname == ""


def test_mount_flags_and_paths() -> None:
    plan = plan_for(["--bind", "src:~/work", "--ro-bind", "/etc/ssl", "--tmpfs", "/tmp:16M",
                     "--bind=-rf", "--", "true"])
    ops = [op for op in plan.mounts if op.kind in ("bind", "tmpfs")][1:]
    assert (ops[0].source, ops[0].target, ops[0].readonly, ops[0].create) == (
        "/home/alice/src/project/src", "/home/alice/work", False, True)
    assert (ops[1].source, ops[1].target, ops[1].readonly, ops[1].create) == (
        "/etc/ssl", "/etc/ssl", True, False)
    assert (ops[2].target, ops[2].size) == ("/tmp", 16 * 1024 * 1024)
    # a value starting with '-' is a path, never an option of any tool
    assert ops[3].source == "/home/alice/src/project/-rf"
    for op in plan.mounts:
        assert op.target.startswith("/") and (not op.source or op.source.startswith("/"))
    for line in plan.shell().splitlines():
        if line.startswith("mount "):
            assert " -- " in line


def test_cwd_rules() -> None:
    # cwd under a tmpfs HOME is not visible: fall back to HOME
    assert plan_for(["--home", "tmpfs"]).cwd == "/home/alice"
    assert plan_for(["--home", "host"]).cwd == "/home/alice/src/project"
    # a bind of the cwd's directory keeps it visible at its new place
    assert plan_for(["--bind", ".:~/p"]).cwd == "/home/alice/p"
    assert plan_for(["--cwd", "/tmp"]).cwd == "/tmp"
    assert plan_for(["--home", "tmpfs"], cwd="/srv/x").cwd == "/srv/x"


def test_env_rule() -> None:
    plan = plan_for(["--env", "A=1", "--keep-env", "SSH_*", "--keep-env", "EDITOR"])
    assert plan.env.keep == ("PATH", "TERM", "LANG", "LC_*", "SSH_*", "EDITOR")
    assert plan.env.set == (("A", "1"),)


def test_binding_the_cache_is_refused() -> None:
    with pytest.raises(SandboxerError, match="plan cache"):
        plan_for(["--bind", "~/.cache/sandboxer/plans:/x"])


def test_mount_over_root_is_refused() -> None:
    with pytest.raises(SandboxerError, match="cannot mount over /"):
        plan_for(["--tmpfs", "/"])


def test_shell_rendering_quotes_values() -> None:
    plan = plan_for(["--env", "X=a'b $(rm -rf ~)\nSANDBOXER_STAGE", "--", "echo", "$HOME"])
    script = plan.shell()
    assert "'X=a'\"'\"'b $(rm -rf ~)\nSANDBOXER_STAGE'" in script
    # the heredoc delimiter never occurs as a line of the body
    delimiter = script.split("<<'", 1)[1].split("'", 1)[0]
    assert script.splitlines().count(delimiter) == 1
    assert script.rstrip().endswith(shlex.join(["echo", "$HOME"]))


def test_json_round_trip() -> None:
    data = json.loads(plan_for([str(PROFILES / "offline.toml")]).to_json())
    assert data["namespaces"] == ["user", "mount", "pid", "net", "uts", "ipc"]
    assert data["steps"][0].startswith("supervisor: spawn /usr/bin/unshare")


def test_missing_unshare_is_a_clear_error() -> None:
    with pytest.raises(SandboxerError, match="unshare.*not found"):
        plan_for([], tools={"unshare": ""})


def test_slirp4netns_plan() -> None:
    plan = plan_for([str(PROFILES / "web-dev.toml"), "--forward", "[::1]:9000:9000/udp"])
    assert "--net" in plan.outer and "net" in plan.namespaces and plan.loopback_up
    net = plan.network
    assert net is not None
    assert net.argv[0] == "/usr/bin/slirp4netns" and net.argv[-2:] == ("{stage}", "tap0")
    assert "--disable-host-loopback" in net.argv and "--api-socket={api}" in net.argv
    assert [f.describe() for f in net.forwards] == ["127.0.0.1:8080 -> 80/tcp", "[::1]:9000 -> 9000/udp"]
    assert len(net.warnings) == 1 and "::1" in net.warnings[0]
    steps = plan.describe()
    assert "supervisor: forward 127.0.0.1:8080 -> 80/tcp (add_hostfwd over {api})" in steps
    recipe = plan.recipe()
    assert recipe["netfiles"] == ("nameserver 10.0.2.3\n", net.hosts)
    assert '"host_port": 8080' in recipe["net"]["forwards"][0]  # type: ignore[index]


def test_slirp4netns_allow_host_loopback_and_no_forwards() -> None:
    plan = plan_for(["--net", "slirp4netns", "--allow-host-loopback"])
    assert plan.network is not None
    assert "--disable-host-loopback" not in plan.network.argv
    assert not any(w.startswith("--api-socket") for w in plan.network.argv)
    assert plan.network.warnings and "10.0.2.2" in plan.network.warnings[0]


def test_slirp4netns_missing() -> None:
    with pytest.raises(SandboxerError, match="slirp4netns not found"):
        plan_for(["--net", "slirp4netns"], tools={"unshare": "/usr/bin/unshare"})


def test_stage_config_fields() -> None:
    # the stage (C) reads NUL-terminated fields in a fixed order; the magic names the layout
    assert f'#define CONFIG_MAGIC "{STAGE_MAGIC}"' in (REPO / "sandboxer" / "stage.c").read_text()
    plan = plan_for([str(PROFILES / "clean-home.toml")])
    blob = stage_config(plan.recipe(), tty=False, env={"PATH": "/usr/bin"}, argv=["true", "-x"], ppid=42)
    fields = blob.split(b"\0")
    assert fields[:4] == [STAGE_MAGIC.encode(), b"1", b"42", b"0"] and fields[-1] == b""
    assert fields[-6:-1] == [b"2", b"true", b"-x", b"1", b"PATH=/usr/bin"]
    for bad in ({"env": {"A": "x\0y"}}, {"argv": ["a\0b"]}):
        kw: dict[str, object] = {"env": {}, "argv": ["true"], **bad}
        with pytest.raises(SandboxerError, match="NUL"):
            stage_config(plan.recipe(), tty=False, ppid=1, **kw)  # type: ignore[arg-type]
