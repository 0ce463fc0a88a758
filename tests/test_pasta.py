"""pasta networking with real namespaces, unprivileged, inside a network namespace each test
builds itself.

pasta gives a sandbox the host's addresses, routes and gateway. So every test runs in a private
network namespace made with `unshare -rn`: a veth pair with a TEST-NET-2 address and a default
route into it, so that nothing can leave the machine; sandboxer itself then runs as the user
again (a nested `unshare --map-user`), with its plan cache, as a user would. Only loopback and
the sandbox's own addresses are ever used; no name is ever resolved.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import BIN, PROFILES, REQUIRE, caller_env

pytestmark = pytest.mark.usefixtures("integration", "pasta")
ADDR, GATEWAY = "198.51.100.10", "198.51.100.1"
SETUP = (
    "set -e; ip link add ext0 type veth peer name ext1; ip link set ext1 up; "
    f"ip addr add {ADDR}/24 dev ext0; ip link set ext0 up; ip link set lo up; "
    f"ip route add default via {GATEWAY} dev ext0; "
    "ip -6 addr add 2001:db8::10/64 dev ext0 nodad; ip -6 route add default via 2001:db8::1 dev ext0; "
    # back to the user's own uid (and so its HOME, its plan cache), in the same network namespace
    f'exec unshare --user --map-user={os.getuid()} --map-group={os.getgid()} -- "$@"'
)

# Runs inside the test's network namespace: the scenario's helpers, then the scenario itself.
PRELUDE = r"""
import json, os, signal, socket, subprocess, sys, time
SBX = sys.argv[1]
ARGS = json.loads(sys.argv[2])

def run(*args, **kw):
    return subprocess.run([SBX, "run", *args], capture_output=True, text=True, timeout=60, **kw)

def start(*args):
    return subprocess.Popen([SBX, "run", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)

def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

def listening():
    return subprocess.run(["ss", "-ltnuH"], capture_output=True, text=True).stdout

def fetch(host, port, path, tries=100):
    for _ in range(tries):
        try:
            with socket.create_connection((host, port), timeout=2) as s:
                s.sendall(f"GET {path} HTTP/1.0\r\nHost: x\r\n\r\n".encode())
                body = b""
                s.settimeout(5)
                while chunk := s.recv(65536):
                    body += chunk
                if body:
                    return body.decode(errors="replace")
        except OSError:
            pass
        time.sleep(0.1)
    return ""

HELPERS = ("passt.avx2", "passt", "pasta")

def ours(*marks):
    # processes whose name is one of marks, or whose command line holds one (a "61.25")
    found = []
    for p in os.listdir("/proc"):
        try:
            if not p.isdigit() or int(p) == os.getpid():  # this script's own command line has the marks
                continue
            comm = open(f"/proc/{p}/comm").read().strip()
            cmdline = open(f"/proc/{p}/cmdline", "rb").read().decode(errors="replace")
            if comm in marks or any(m in cmdline for m in marks if "." in m and m[0].isdigit()):
                found.append(int(p))
        except OSError:
            pass
    return found

def gone(*marks, seconds=10):
    deadline = time.monotonic() + seconds
    while ours(*marks) and time.monotonic() < deadline:
        time.sleep(0.05)
    return ours(*marks) == []

out = {}
"""


@pytest.fixture
def pasta() -> None:
    if not shutil.which("pasta", path="/usr/bin:/bin:/usr/sbin:/sbin"):
        if REQUIRE:
            pytest.fail("pasta is not installed (apt install passt)")
        pytest.skip("pasta is not installed")


def scenario(home: Path, body: str, *, path: str = "/usr/local/bin:/usr/bin:/bin", **args: object) -> dict[str, object]:
    """Run body (Python, which fills `out`) in a network namespace of its own; return out."""
    script = PRELUDE + body + "\nprint(json.dumps(out))\n"
    proc = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--net", "--", "/bin/sh", "-c", SETUP, "sh",
         sys.executable, "-c", script, str(BIN), json.dumps(args)],
        capture_output=True, text=True, timeout=120, cwd=home, env=caller_env(home, PATH=path))
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.splitlines()[-1])
    assert isinstance(result, dict)
    return result


def test_interfaces_routes_and_files(home: Path) -> None:
    out = scenario(home, """
r = run("--net", "pasta", "--", "/bin/sh", "-c",
        "ip -o -4 addr show dev tap0; echo ROUTE; ip route; echo RESOLV; cat /etc/resolv.conf; "
        "echo HOSTS; cat /etc/hosts; echo PORT; cat /proc/sys/net/ipv4/ip_unprivileged_port_start; "
        "echo LINKS; ls /sys/class/net")
out["rc"], out["stdout"], out["stderr"] = r.returncode, r.stdout, r.stderr
""")
    assert out["rc"] == 0, out["stderr"]
    text = str(out["stdout"])
    addr, rest = text.split("ROUTE")
    assert f"inet {ADDR}/24" in addr  # the host's (here: the test namespace's) address
    route, rest = rest.split("RESOLV")
    assert f"default via {GATEWAY} dev tap0" in route
    resolv, rest = rest.split("HOSTS")
    assert resolv.split() == ["nameserver", "169.254.1.1"]  # pasta's forwarder, never the host's stub
    hosts, rest = rest.split("PORT")
    assert "127.0.1.1\tsandbox" in hosts and "localhost" in hosts
    port, links = rest.split("LINKS")
    assert port.strip() == "0" and sorted(links.split()) == ["lo", "tap0"]
    assert out["stderr"] == ""


@pytest.mark.parametrize("switch", ["pivot_root", "chroot"])
def test_pasta_in_a_rootfs(home: Path, tmp_path: Path, switch: str) -> None:
    # tap0 is made before the tree is entered (its /dev has no net/tun), pasta starts meanwhile,
    # and the network files land in the tree's /etc
    from .test_rootfs import busybox_tree

    tree = busybox_tree(tmp_path)
    out = scenario(home, """
r = run("--rootfs", ARGS["tree"], "--root-switch", ARGS["switch"], "--net", "pasta", "--", "/bin/sh", "-c",
        "cat /etc/resolv.conf; grep -c sandbox /etc/hosts; grep tap0 /proc/net/route | head -1")
out["rc"], out["stdout"], out["stderr"] = r.returncode, r.stdout, r.stderr
out["left"] = gone(*HELPERS)
""", tree=str(tree), switch=switch)
    assert out["rc"] == 0, out["stderr"]
    resolv, hosts, route = str(out["stdout"]).splitlines()
    assert (resolv, hosts) == ("nameserver 169.254.1.1", "1")
    assert route.split()[:2] == ["tap0", "00000000"]  # the default route, via tap0
    assert out["left"] is True


PROBE_GATEWAY = """
family = socket.AF_INET6 if ":" in ARGS["loopback"] else socket.AF_INET
listener = socket.socket(family); listener.bind((ARGS["loopback"], 0)); listener.listen(8)
port = listener.getsockname()[1]
probe = ("import socket, sys\\n"
         "try:\\n    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3); print('CONNECTED')\\n"
         "except OSError as e:\\n    print('REFUSED', e.errno)\\n")
r = run("--net", "pasta", *ARGS["extra"], "--", "python3", "-c", probe, ARGS["gateway"], str(port))
out["rc"], out["stdout"], out["stderr"] = r.returncode, r.stdout, r.stderr
"""
# the host's loopback, and the gateway the sandbox would reach it through: IPv4 and IPv6
LOOPBACKS = [("127.0.0.1", GATEWAY), ("::1", "2001:db8::1")]


@pytest.mark.parametrize("loopback,gateway", LOOPBACKS)
def test_host_loopback_unreachable_by_default(home: Path, loopback: str, gateway: str) -> None:
    out = scenario(home, PROBE_GATEWAY, extra=[], gateway=gateway, loopback=loopback)
    assert out["rc"] == 0, out["stderr"]
    assert str(out["stdout"]).startswith("REFUSED"), out
    assert out["stderr"] == ""


@pytest.mark.parametrize("loopback,gateway", LOOPBACKS)
def test_host_loopback_reachable_when_allowed(home: Path, loopback: str, gateway: str) -> None:
    out = scenario(home, PROBE_GATEWAY, extra=["--allow-host-loopback"], gateway=gateway, loopback=loopback)
    assert out["rc"] == 0, out["stderr"]
    assert str(out["stdout"]).strip() == "CONNECTED"
    assert "sandboxer: warning: the sandbox can reach services on the host's 127.0.0.1" in str(out["stderr"])


@pytest.mark.parametrize("pidns", ["--pid", "--no-pid"])
def test_the_network_works_from_the_commands_first_packet(home: Path, pidns: str) -> None:
    # pasta starts while the stage mounts; the command may run only once pasta is ready: its
    # very first datagram (to a UDP echo on the host's loopback, through the gateway) is answered.
    # (pasta targets the stage: with a PID namespace unshare's child, without one what unshare became)
    out = scenario(home, """
import threading
srv = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); srv.bind(("127.0.0.1", 0))
def echo():
    while True:
        data, peer = srv.recvfrom(64); srv.sendto(data, peer)
threading.Thread(target=echo, daemon=True).start()
# bash, whose start is ~1 ms (a Python's would hide a race of ~15 ms)
probe = 'exec 3<>"/dev/udp/$0/$1" && echo first >&3 && exec timeout 2 dd bs=64 count=1 status=none <&3'
out["replies"] = [run("--net", "pasta", ARGS["pidns"], "--allow-host-loopback", "--", "bash", "-c", probe,
                      ARGS["gateway"], str(srv.getsockname()[1])).stdout for _ in range(5)]
""", gateway=GATEWAY, pidns=pidns)
    assert out["replies"] == ["first\n"] * 5, out


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_http_round_trip_through_a_forward(home: Path, host: str) -> None:
    out = scenario(home, """
port = free_port()
bracket = f"[{ARGS['host']}]" if ":" in ARGS["host"] else ARGS["host"]
p = start("--net", "pasta", "--forward", f"{bracket}:{port}:80", "--", "python3", "-m", "http.server",
          "--bind", "::", "--directory", "/etc", "80")
try:
    out["body"] = fetch(ARGS["host"], port, "/hosts")
    out["listening"] = [l.split()[4] for l in listening().splitlines() if l.split()[4].endswith(f":{port}")]
finally:
    os.killpg(p.pid, signal.SIGTERM)
    _, out["stderr"] = p.communicate(timeout=20)
    out["rc"] = p.returncode
out["port"] = port
out["left"] = gone(*HELPERS)
""", host=host)
    assert str(out["body"]).startswith("HTTP/1.0 200"), out
    assert "127.0.1.1\tsandbox" in str(out["body"])
    bound = f"[{host}]:{out['port']}" if ":" in host else f"{host}:{out['port']}"
    assert out["listening"] == [bound], out  # the forward listens on the address asked, only
    assert out["rc"] == 128 + 15 and out["left"] is True, out
    assert "warning" not in str(out["stderr"])


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_a_host_port_in_use_is_an_error_before_the_command_runs(home: Path, tmp_path: Path, proto: str) -> None:
    marker = tmp_path / "ran"
    out = scenario(home, """
udp = ARGS["proto"] == "udp"
listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM if udp else socket.SOCK_STREAM)
listener.bind(("127.0.0.1", 0))
if not udp:
    listener.listen(8)
port = listener.getsockname()[1]
r = run("--net", "pasta", "--forward", f"{port}:80/{ARGS['proto']}", "--bind", ARGS["dir"], "--", "touch",
        ARGS["marker"])
out["rc"], out["stderr"], out["port"] = r.returncode, r.stderr, port
out["left"] = gone(*HELPERS)
""", dir=str(tmp_path), marker=str(marker), proto=proto)
    assert out["rc"] == 125, out
    assert out["stderr"] == (f"sandboxer: error: network helper cannot forward 127.0.0.1:{out['port']} -> "
                             f"80/{proto}: pasta cannot bind the host port (is the host port already in use? "
                             "pick another one)\n")
    assert not marker.exists() and out["left"] is True


def _fake_pasta(tmp_path: Path, body: str) -> str:
    """A directory, first on PATH, holding a fake pasta that knows the real one's options."""
    bindir = tmp_path / "fakebin"
    bindir.mkdir()
    said = subprocess.run(["pasta", "--help"], capture_output=True, text=True)
    helptext = "\n".join(line for line in (said.stdout + said.stderr).splitlines()
                         if not line.startswith("Failed to send"))
    (bindir / "help.txt").write_text(helptext)
    fake = bindir / "pasta"
    fake.write_text("#!/bin/sh\n"
                    f'[ "$1" = --help ] && {{ cat {bindir}/help.txt; exit 0; }}\n'
                    '[ "$1" = --version ] && { echo "pasta unknown version"; exit 0; }\n'
                    f"{body}\n")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    return f"{bindir}:/usr/local/bin:/usr/bin:/bin"


@pytest.mark.parametrize("body,said", [
    ("exec sleep 61.25", "pasta was not ready within 5 s"),
    ("echo 'Failed to open tun: nope' >&2; exit 1", "pasta exited before it was ready (exit status 1) "
                                                      "(pasta said: Failed to open tun: nope)"),
    ("exit 0", "pasta exited before it was ready (exit status 0)"),
])
def test_a_helper_that_never_becomes_ready_fails_closed(home: Path, tmp_path: Path, body: str, said: str) -> None:
    marker = tmp_path / "ran"
    out = scenario(home, """
t = time.monotonic()
r = run("--net", "pasta", "--bind", ARGS["dir"], "--", "touch", ARGS["marker"])
out["rc"], out["stderr"], out["seconds"] = r.returncode, r.stderr, time.monotonic() - t
out["left"] = gone("61.25", "sandboxer-stage")
""", path=_fake_pasta(tmp_path, body), dir=str(tmp_path), marker=str(marker))
    assert out["rc"] == 125 and said in str(out["stderr"]), out
    assert str(out["stderr"]).count("\n") == 1
    assert not marker.exists() and out["left"] is True
    assert float(str(out["seconds"])) < 15


def test_a_stage_failing_after_pasta_started_leaves_nothing(home: Path, tmp_path: Path) -> None:
    # pasta starts as soon as the stage has made tap0, before the stage's mounts: a mount that
    # then fails must still end the run cleanly, pasta included. The plan is cached by a first
    # run; its bind source is gone for the second, so only the stage can notice.
    source = tmp_path / "src"
    source.mkdir()
    out = scenario(home, """
first = run("--net", "pasta", "--bind", ARGS["source"], "--", "true")
os.rmdir(ARGS["source"])
r = run("--debug", "--net", "pasta", "--bind", ARGS["source"], "--", "touch", ARGS["marker"])
out["first"], out["rc"], out["stderr"] = first.returncode, r.returncode, r.stderr
out["left"] = gone("61.75", "sandboxer-stage")
""", path=_fake_pasta(tmp_path, 'echo $$ >&3; exec sleep 61.75'), source=str(source),
        marker=str(tmp_path / "ran"))
    assert out["first"] == 0, out
    lines = str(out["stderr"]).splitlines()
    assert out["rc"] == 125 and any("debug: starting " in line and "/pasta " in line for line in lines), out
    assert lines[-1] == f"sandboxer: error: sandbox setup failed: bind source {source} does not exist"
    assert out["left"] is True and not (tmp_path / "ran").exists()


def test_a_pasta_too_old_is_refused(home: Path, tmp_path: Path) -> None:
    bindir = tmp_path / "old"
    bindir.mkdir()
    fake = bindir / "pasta"
    fake.write_text("#!/bin/sh\necho 'pasta 2022_01_01'\necho '  -t, --tcp-ports SPEC'\n")
    fake.chmod(0o755)
    out = scenario(home, """
r = run("--net", "pasta", "--", "true")
out["rc"], out["stderr"] = r.returncode, r.stderr
""", path=f"{bindir}:/usr/local/bin:/usr/bin:/bin")
    assert out["rc"] == 125, out
    assert "has no --foreground" in str(out["stderr"]) and "too old" in str(out["stderr"])
    assert "passt 2023-03-09" in str(out["stderr"]) and str(out["stderr"]).count("\n") == 1


def test_pasta_killed_mid_run_stops_the_sandbox(home: Path) -> None:
    out = scenario(home, """
p = start("--net", "pasta", "--", "/bin/sh", "-c", "echo started; exec sleep 31.5")
assert p.stdout.readline().strip() == "started"
helpers = ours(*HELPERS)
out["helpers"] = len(helpers)
for pid in helpers:
    os.kill(pid, signal.SIGKILL)
_, out["stderr"] = p.communicate(timeout=20)
out["rc"] = p.returncode
out["left"] = gone("31.5", "sandboxer-stage")
""")
    assert out["helpers"] == 1, out
    assert out["rc"] == 125 and "sandboxer: error: network helper died" in str(out["stderr"]), out
    assert out["left"] is True


def test_nothing_left_after_the_supervisor_is_killed(home: Path) -> None:
    out = scenario(home, """
port = free_port()
for n in range(8):  # at staggered moments: during pasta's start, and once it runs
    p = start("--net", "pasta", "--forward", f"{port}:80", "--", "sleep", "32.5")
    time.sleep(0.01 * n)
    p.kill()
    p.wait(timeout=10)
out["left"] = gone(*HELPERS, "32.5", "sandboxer-stage")
out["listening"] = f":{port} " in listening()
""")
    assert out == {"left": True, "listening": False}


def test_explain_shows_the_pasta_command(home: Path) -> None:
    out = subprocess.run([str(BIN), "explain", str(PROFILES / "web-dev.toml"), "--net", "pasta",
                          "--forward", "[::1]:9000:9000/udp"], capture_output=True, text=True, timeout=30,
                         cwd=home, env=caller_env(home))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    start = next(line for line in lines if "supervisor: start /" in line)
    assert "/pasta --foreground --quiet" in start and "--tcp-ports 127.0.0.1/8080:80" in start
    assert "--udp-ports ::1/9000:9000" in start and "--no-map-gw" in start and "--no-netns-quit" in start
    # started as soon as the stage has made tap0, before its mounts
    assert lines.index(start) < next(i for i, line in enumerate(lines) if "stage: mount tmpfs" in line)
    assert "--tcp-ns none --udp-ns none" in start and "--dns-forward 169.254.1.1" in start
    assert "fixed at start" in out.stdout
    script = subprocess.run([str(BIN), "explain", "--shell", "--net", "pasta"], capture_output=True,
                            text=True, timeout=30, cwd=home, env=caller_env(home)).stdout
    assert "ip tuntap add dev tap0 mode tap" in script and "--config-net" in script and " $$ " in script


def test_the_shell_rendering_runs_with_pasta(home: Path, tmp_path: Path) -> None:
    script = subprocess.run([str(BIN), "explain", "--shell", "--net", "pasta", "--", "/bin/sh", "-c",
                             "ip -o -4 addr show dev tap0; cat /etc/resolv.conf"], capture_output=True,
                            text=True, timeout=30, cwd=home, env=caller_env(home))
    assert script.returncode == 0, script.stderr
    path = tmp_path / "plan.sh"
    path.write_text(script.stdout)
    out = scenario(home, """
r = subprocess.run(["/bin/sh", ARGS["script"]], capture_output=True, text=True, timeout=60)
out["rc"], out["stdout"], out["stderr"] = r.returncode, r.stdout, r.stderr
out["left"] = gone(*HELPERS, seconds=5)
""", script=str(path))
    assert out["rc"] == 0, out["stderr"]
    assert f"inet {ADDR}/24" in str(out["stdout"]) and "nameserver 169.254.1.1" in str(out["stdout"])


def test_a_named_pasta_sandbox_says_its_forwards_are_fixed(home: Path) -> None:
    out = scenario(home, """
name = "pasta-" + str(os.getpid())
r = run("-d", "--name", name, "--net", "pasta", "--", "sleep", "60")
out["started"] = [r.returncode, r.stdout, r.stderr]
p = subprocess.run([SBX, "port", "add", name, "9999:80"], capture_output=True, text=True, timeout=60)
out["port"] = [p.returncode, p.stderr]
s = subprocess.run([SBX, "stop", name], capture_output=True, text=True, timeout=60)
out["stop"] = [s.returncode, s.stdout]
out["gone"] = gone(*HELPERS)
""")
    assert out["started"][0] == 0, out
    code, err = out["port"]
    assert code == 125 and "uses pasta, whose forwards are fixed when it starts" in err and err.count("\n") == 1
    assert out["stop"] == [0, f"{out['started'][1].strip()}: killed by signal 15\n"]
    assert out["gone"]
