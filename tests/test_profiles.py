"""Bad input never produces a traceback: one located line, exit 125 for run, 1 for check."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from sandboxer.load import ProfileError, load
from sandboxer.options import UsageError, parse

from .conftest import BIN, PROFILES, caller_env


def problems(tmp_path: Path, content: str | bytes, *options: str) -> list[str]:
    path = tmp_path / "p.toml"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    args = parse(["run", *options, str(path)])
    with pytest.raises(ProfileError) as info:
        load(str(path), args.overrides)
    return info.value.problems


@pytest.mark.parametrize(
    "content, expected",
    [
        ("[home]\nmode = \n", r"p.toml:2: invalid TOML: Invalid value \(column 8\)"),
        ("[netwrok]\nmode = 'none'\n", r"p.toml:1: netwrok: unknown key 'netwrok'; did you mean 'network'\?"),
        ("[home]\nmoed = 'host'\n", r"p.toml:2: home.moed: unknown key 'moed'; did you mean 'mode'\?"),
        ("[namespaces]\n\npid = 'yes'\n", r"p.toml:3: namespaces.pid: expected a boolean \(true or false\), got 'yes'"),
        ("[network]\nmode = 'slirp'\n", r"p.toml:2: network.mode: expected one of 'host', 'none', 'slirp4netns' or 'pasta', got 'slirp'"),
        ("[home]\nsize = '1T'\n", r"p.toml:2: home.size: expected a size such as"),
        ("[home]\nsize = 10\n", r"p.toml:2: home.size: out of range: expected at least 1048576, got 10"),
        ("[home]\nsize = '100G'\n", r"p.toml:2: home.size: out of range: expected at most"),
        ("[namespaces]\nhostname = '-x'\n", r"p.toml:2: namespaces.hostname: expected a hostname"),
        ('description = "ok"\n[command]\ncwd = "a\\u0000b"\n', r"p.toml:3: command.cwd: NUL bytes are not allowed"),
        ("[[mounts]]\ntype = 'bind'\n[[mounts]]\ntype = 'bind'\ntarget = '/x'\nsorce = 'y'\n",
         r"p.toml:6: mounts\[1\].sorce: unknown key 'sorce'; did you mean 'source'\?"),
        ("[[mounts]]\ntype = 'tmpfs'\nsource = '/x'\ntarget = '/y'\n", r"p.toml:1: mounts\[0\]: a tmpfs mount has no source"),
        ("[env]\nset = { 'A B' = 'x' }\n", r"p.toml:2: env.set: expected a variable name"),
        ("user = 'root'\n", r"p.toml:1: user: expected a table, got 'root'"),
        ("mounts = 3\n", r"p.toml:1: mounts: expected a list, got 3"),
    ],
)
def test_bad_values(tmp_path: Path, content: str, expected: str) -> None:
    import re

    found = problems(tmp_path, content)
    assert any(re.search(expected, f) for f in found), found


def test_bad_bytes(tmp_path: Path) -> None:
    assert problems(tmp_path, b"a = 1\n\xff\xfe = 2\n")[0].endswith(
        "p.toml:2: invalid UTF-8 (byte 0xff); save the profile as UTF-8")
    assert problems(tmp_path, b"description = 'x'\n\n\x00\n")[0].endswith("p.toml:3: NUL byte in the profile; remove it")


@pytest.mark.parametrize("nest", ["a = " + "[" * 5000 + "]" * 5000, "a = " + "{b=" * 5000 + "1" + "}" * 5000])
def test_deep_nesting(tmp_path: Path, nest: str) -> None:
    found = problems(tmp_path, nest + "\n")
    assert "p.toml" in found[0] and ("too deep" in found[0] or "invalid TOML" in found[0] or "unknown key" in found[0])


def test_file_kinds(tmp_path: Path) -> None:
    with pytest.raises(ProfileError, match="is a directory"):
        load(str(tmp_path))
    fifo = tmp_path / "f.toml"
    os.mkfifo(fifo)
    with pytest.raises(ProfileError, match="is a FIFO"):
        load(str(fifo))
    big = tmp_path / "big.toml"
    big.write_bytes(b"#" * (2 * 1024 * 1024))
    with pytest.raises(ProfileError, match="too large"):
        load(str(big))
    with pytest.raises(ProfileError, match="profile not found"):
        load(str(tmp_path / "missing.toml"))


@pytest.mark.skipif(os.getuid() == 0, reason="root reads files whatever their mode")
def test_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "secret.toml"
    path.write_text("")
    path.chmod(0)
    with pytest.raises(ProfileError, match="permission denied"):
        load(str(path))


def test_errors_from_flags_name_the_flag(tmp_path: Path) -> None:
    assert problems(tmp_path, "", "--net", "wifi")[0] == (
        "option --net: expected one of 'host', 'none', 'slirp4netns' or 'pasta', got 'wifi'")
    assert problems(tmp_path, "", "--home-size", "3")[0].startswith("option --home-size: out of range")
    assert problems(tmp_path, "", "--hostname", "a b")[0].startswith("option --hostname: expected a hostname")
    assert problems(tmp_path, "", "--env", "noequals")[0] == "option --env: expected NAME=VALUE, got 'noequals'"


def test_usage_errors() -> None:
    with pytest.raises(UsageError, match="did you mean --net"):
        parse(["run", "--nett", "none"])
    with pytest.raises(UsageError, match="needs a value"):
        parse(["run", "--map"])
    with pytest.raises(UsageError, match="unknown command"):
        parse(["runn"])
    args = parse(["run", "--net", "none", "p.toml", "--map=root", "--", "ls", "--net"])
    assert args.profiles == ["p.toml"] and args.argv == ["ls", "--net"]
    assert [(o.name, v) for o, _s, v in args.overrides] == [("net", "none"), ("map", "root")]
    args = parse(["run", "p.toml", "make", "--net", "none"])  # the command's own options
    assert args.argv == ["make", "--net", "none"] and not args.overrides


def test_shipped_profiles_check_ok(tmp_path: Path) -> None:
    out = subprocess.run([str(BIN), "check", *map(str, sorted(PROFILES.glob("*.toml")))],
                         capture_output=True, text=True, env=caller_env(tmp_path))
    assert out.returncode == 0, out.stderr
    assert out.stdout.count(": ok") == len(list(PROFILES.glob("*.toml")))


@pytest.mark.parametrize("content", ["[home]\nmode = 'tmp'\n", "x = [", b"\xff", b"a = 1\x00"])
def test_cli_one_line_no_traceback(tmp_path: Path, content: str | bytes) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(content.encode() if isinstance(content, str) else content)
    env = caller_env(tmp_path)
    for command, code in (("check", 1), ("run", 125), ("explain", 125)):
        out = subprocess.run([str(BIN), command, str(path)], capture_output=True, text=True, env=env)
        assert out.returncode == code, (command, out.stderr)
        lines = out.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("sandboxer: error: "), out.stderr
        assert str(path) in lines[0] and "Traceback" not in out.stderr


def test_cli_directory_and_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo.toml"
    os.mkfifo(fifo)
    env = caller_env(tmp_path)
    for target in (tmp_path, fifo):
        out = subprocess.run([str(BIN), "run", "--profile", str(target), "--", "true"],
                             capture_output=True, text=True, env=env, timeout=20)
        assert out.returncode == 125 and out.stderr.count("\n") == 1, out.stderr


@pytest.mark.parametrize("value,expected", [
    ("8080:80", {"host_port": 8080, "guest_port": 80, "proto": "tcp"}),
    ("0.0.0.0:53:53/udp", {"host_addr": "0.0.0.0", "host_port": 53, "guest_port": 53, "proto": "udp"}),
    ("[::1]:8080:80/tcp", {"host_addr": "::1", "host_port": 8080, "guest_port": 80, "proto": "tcp"}),
])
def test_forward_option(value: str, expected: dict[str, object]) -> None:
    from sandboxer.load import _forward_from_option

    assert _forward_from_option("--forward", value) == expected


def test_forward_problems(tmp_path: Path) -> None:
    assert problems(tmp_path, "", "--forward", "8080")[0].startswith(
        "option --forward: expected [ADDR:]HOST_PORT:GUEST_PORT[/tcp|udp]")
    assert problems(tmp_path, "", "--net", "slirp4netns", "--forward", "70000:80")[0].startswith(
        "option --forward: out of range: expected at most 65535")
    assert "need mode = 'slirp4netns' or 'pasta'" in problems(tmp_path, "", "--forward", "8080:80")[0]
    assert "expected an IPv4 or IPv6 address" in problems(tmp_path, "[network]\nmode = 'slirp4netns'\n"
                                         "[[network.forwards]]\nhost_addr = 'localhost'\n"
                                         "host_port = 1\nguest_port = 2\n")[0]
