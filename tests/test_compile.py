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
    assert plan.outer[plan.outer.index("--") + 1:] == (HostFacts.example().stage,)
    guards = [(op.kind, op.target) for op in plan.guards]
    assert guards == [("pin", "/home/alice"), ("pin", "/home/alice/.cache"), ("pin", "/home/alice/.local"),
                      ("pin", "/home/alice/.local/pipx"), ("pin", "/home/alice/.local/state"),
                      ("pin", "/home/alice/.local/pipx/venvs"), ("hide", "/home/alice/.cache/sandboxer"),
                      ("hide", "/home/alice/.local/state/sandboxer"),
                      ("protect", "/home/alice/.local/pipx/venvs/sandboxer")]
    kinds = [(op.kind, op.target) for op in plan.mounts]
    assert kinds == [("readonly-root", "/"), ("tmpfs", "/tmp"), ("tmpfs", "/var/tmp"),
                     ("tmpfs", "/dev/shm"), ("tmpfs", "/run/user/1000"), ("tmpfs", "/home/alice")]
    assert plan.users.unshare_args() == ["--map-user=1000", "--map-group=1000"]
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
        assert plan.users.mode == "root" and plan.users.unshare_args() == ["--map-root-user"]
        assert dict(plan.env.fixed)["USER"] == "root"


def test_no_pid_no_uts_no_ipc() -> None:
    plan = plan_for(["--no-pid", "--no-uts", "--no-ipc", "--net", "host"])
    assert plan.namespaces == ("user", "mount")
    assert not plan.pid and plan.hostname == ""


def test_mount_flags_and_paths() -> None:
    plan = plan_for(["--bind", "src:~/work", "--ro-bind", "/etc/ssl", "--tmpfs", "/tmp:16M",
                     "--bind=-rf", "--", "true"])
    ops = [op for op in plan.mounts if op.kind in ("bind", "tmpfs") and op.target not in (
        "/tmp", "/var/tmp", "/dev/shm", "/run/user/1000", "/home/alice")]
    assert (ops[0].source, ops[0].target, ops[0].readonly, ops[0].create) == (
        "/home/alice/src/project/src", "/home/alice/work", False, True)
    assert (ops[1].source, ops[1].target, ops[1].readonly, ops[1].create) == (
        "/etc/ssl", "/etc/ssl", True, False)
    tmp = [op for op in plan.mounts if op.target == "/tmp"]
    assert [(op.why, op.size) for op in tmp] == [("private, not the host's", 512 * 1024 * 1024), ("", 16 * 1024 * 1024)]
    # a value starting with '-' is a path, never an option of any tool
    assert ops[2].source == "/home/alice/src/project/-rf"
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


@pytest.mark.parametrize("source", ["~/.cache/sandboxer/plans", "~/.local/state/sandboxer"])
def test_binding_sandboxers_state_is_refused(source: str) -> None:
    with pytest.raises(SandboxerError, match=r"^option --bind: .* is sandboxer's own state"):
        plan_for(["--bind", f"{source}:/x"])


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
    data = json.loads(plan_for([str(PROFILES / "offline.toml")], cwd="/home/alice").to_json())
    assert data["namespaces"] == ["user", "mount", "pid", "net", "uts", "ipc"]
    assert data["steps"][0].startswith("supervisor: spawn /usr/bin/unshare")


def test_missing_unshare_is_a_clear_error() -> None:
    with pytest.raises(SandboxerError, match="unshare.*not found"):
        plan_for([], tools={"unshare": ""})


def test_slirp4netns_plan() -> None:
    plan = plan_for([str(PROFILES / "web-dev.toml"), "--forward", "0.0.0.0:9000:9000/udp"])
    assert "--net" in plan.outer and "net" in plan.namespaces and plan.loopback_up
    net = plan.network
    assert net is not None
    assert net.argv[0] == "/usr/bin/slirp4netns" and net.argv[-2:] == ("{stage}", "tap0")
    assert "--disable-host-loopback" in net.argv and "--api-socket=/proc/{stage}/cwd/api.sock" in net.argv
    assert [f.describe() for f in net.forwards] == ["127.0.0.1:8080 -> 80/tcp", "0.0.0.0:9000 -> 9000/udp"]
    assert len(net.warnings) == 1 and "0.0.0.0" in net.warnings[0]
    assert plan.warnings[0] == net.warnings[0]
    steps = plan.describe()
    assert ("supervisor: forward 127.0.0.1:8080 -> 80/tcp (add_hostfwd over /proc/{stage}/cwd/api.sock)"
            in steps)
    spec = plan.spec()
    assert spec.network is not None
    assert (spec.network.resolv_conf, spec.network.hosts) == ("nameserver 10.0.2.3\n", net.hosts)
    assert json.loads(spec.network.requests[0]) == {
        "execute": "add_hostfwd",
        "arguments": {"proto": "tcp", "host_addr": "127.0.0.1", "host_port": 8080, "guest_port": 80}}
    assert spec.apidir is True


def test_slirp4netns_refuses_ipv6_forwards_while_compiling() -> None:
    # slirp4netns's API takes IPv4 host addresses only (inet_pton(AF_INET) in 1.2)
    with pytest.raises(SandboxerError, match=r"^option --forward: ::1 is an IPv6 address.*IPv4"):
        plan_for(["--net", "slirp4netns", "--forward", "[::1]:8080:80"])


def test_forward_requests_are_json_from_an_encoder() -> None:
    from sandboxer.netplan import Forward

    request = Forward("tcp", 'fe80::1%"x}', 80, 8080).request()  # never valid, but never spliced
    assert json.loads(request)["arguments"]["host_addr"] == 'fe80::1%"x}'


def test_profile_errors_found_while_compiling_name_file_and_line(tmp_path) -> None:  # type: ignore[no-untyped-def]
    profile = tmp_path / "p.toml"
    profile.write_text('description = "x"\n[[mounts]]\ntype = "tmpfs"\ntarget = "/"\n')
    with pytest.raises(SandboxerError) as caught:
        plan_for([str(profile)])
    assert caught.value.message == f"{profile}:4: mounts[0].target: cannot mount over /; name a directory below /"
    profile.write_text('[rootfs]\npath = "/"\n')
    with pytest.raises(SandboxerError, match=r"p.toml:2: rootfs.path: / is the host's own root"):
        plan_for([str(profile)])


def test_host_is_read_only_and_its_services_private() -> None:
    plan = plan_for([str(PROFILES / "offline.toml")])
    first, *rest = plan.mounts
    assert first.kind == "readonly-root"
    private = {op.target: op.mode for op in rest if op.why.startswith("private")}
    assert private == {"/tmp": "1777", "/var/tmp": "1777", "/dev/shm": "1777", "/run/user/1000": "0700"}
    assert ("sysfs", "/sys") in [(op.kind, op.target) for op in rest]
    # the host network keeps the host's /sys (it describes the same interfaces)
    assert "sysfs" not in [op.kind for op in plan_for([str(PROFILES / "clean-home.toml")]).mounts]
    summary = plan.summary()
    assert summary[0].startswith("read-only: the host's whole tree")
    assert any("/run/user/1000" in line for line in summary if line.startswith("hidden"))


def test_a_bind_of_a_socket_in_the_runtime_dir_lands_in_the_private_one() -> None:
    plan = plan_for(["--bind", "/run/user/1000/wayland-0"])
    bind = plan.mounts[-1]
    assert (bind.kind, bind.source, bind.target, bind.create) == (
        "bind", "/run/user/1000/wayland-0", "/run/user/1000/wayland-0", True)


def test_sandboxers_own_installation_is_read_only_first() -> None:
    plan = plan_for(["--home", "host"], own_paths=("/opt/venv", "/home/alice/src/sandboxer"))
    protect = [op for op in plan.guards if op.kind == "protect"]
    assert [(op.target, op.readonly) for op in protect] == [("/opt/venv", True),
                                                           ("/home/alice/src/sandboxer", True)]
    # guards go first, so that the writable HOME bind (an rbind of a clone) carries them along
    assert [op.data() for op in plan.spec().mounts[:len(plan.guards)]] == [op.spec().data() for op in plan.guards]


@pytest.mark.parametrize("args,required,accepted", [
    (["--net", "host"], ("abstract-sockets",), ()),
    (["--net", "none", "--no-pid"], ("signals",), ()),
    (["--net", "host", "--no-pid", "--accept-exposure", "signals"], ("abstract-sockets",), ("signals",)),
    (["--net", "none"], (), ()),
    (["--net", "none", "--accept-exposure", "abstract-sockets"], (), ()),
])
def test_landlock_scopes_required_where_no_namespace_isolates(
        args: list[str], required: tuple[str, ...], accepted: tuple[str, ...]) -> None:
    plan = plan_for(args)
    assert (plan.isolation.required, plan.isolation.accepted) == (required, accepted)
    bits = {"abstract-sockets": 1, "signals": 2}
    assert plan.spec().landlock == sum(bits[name] for name in required)


def test_hidden_cwd_warns_and_starts_in_home() -> None:
    plan = plan_for(["--home", "tmpfs"])
    assert plan.cwd == "/home/alice"
    assert plan.warnings == ("your working directory /home/alice/src/project is hidden in the sandbox "
                             "(under /home/alice's private tmpfs), so the command starts in HOME; to "
                             "work on it, bind it: --bind .",)
    assert plan_for(["--home", "tmpfs"], cwd="/home/alice").warnings == ()
    assert plan_for(["--bind", "."]).cwd == "/home/alice/src/project"


def test_slirp4netns_allow_host_loopback_and_no_forwards() -> None:
    plan = plan_for(["--net", "slirp4netns", "--allow-host-loopback"])
    assert plan.network is not None
    assert "--disable-host-loopback" not in plan.network.argv
    # an API socket always (a named sandbox adds forwards later); an unnamed one removes it at once
    assert "--api-socket=/proc/{stage}/cwd/api.sock" in plan.network.argv
    assert plan.network.warnings and "10.0.2.2" in plan.network.warnings[0]


def test_slirp4netns_missing() -> None:
    with pytest.raises(SandboxerError, match="slirp4netns not found"):
        plan_for(["--net", "slirp4netns"], tools={"unshare": "/usr/bin/unshare"})


@pytest.mark.parametrize("mode,package", [("slirp4netns", "slirp4netns"), ("pasta", "passt")])
def test_a_missing_helper_names_its_package(mode: str, package: str) -> None:
    with pytest.raises(SandboxerError) as caught:
        plan_for(["--net", mode], tools={"unshare": "/usr/bin/unshare"})
    assert f"{mode} not found on PATH" in str(caught.value)
    assert f"apt install {package}" in caught.value.hint
