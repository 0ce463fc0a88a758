"""Network plans, one per backend: slirp4netns and pasta. Pure: no I/O.

Both give the sandbox its own network namespace with a user-mode network stack, started by the
supervisor against the sandbox's first process once the namespace exists, and both get the same
safe defaults: the host's loopback unreachable (unless allow_host_loopback), no automatic port
forwards in either direction, forwards bound to 127.0.0.1 unless an address is written, a
resolv.conf naming the helper's own DNS forwarder (never the host's stub resolver).
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass
from typing import Literal

from .errors import ProfileKeyError, SandboxerError
from .host import HostFacts, ToolInfo
from .profile import Profile
from .spec import NetSpec

# Placeholders in a helper's argv, filled in by the supervisor at run time.
STAGE_PID = "{stage}"  # the stage's pid as the host sees it
API_SOCKET = "/proc/{stage}/cwd/api.sock"  # in the stage's private, detached working directory
READY_FD, EXIT_FD = 3, 4  # the helper's: readiness (slirp4netns --ready-fd, pasta --pid), exit
TAP = "tap0"  # made by the stage, persistent: the helper attaches to it (see stage.c)
HOSTS_HEAD = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"

SLIRP_MIN = (1, 0, 0)  # --enable-seccomp, --exit-fd, --ready-fd and the API's add_hostfwd
SLIRP_GUEST, SLIRP_GATEWAY, SLIRP_DNS = "10.0.2.100", "10.0.2.2", "10.0.2.3"

# pasta copies the host's addresses and routes into the namespace; DNS queries to this address
# are forwarded to the host's first resolver (what podman does)
PASTA_DNS = "169.254.1.1"
# what sandboxer passes pasta; a pasta whose --help lacks one is too old (Debian 12's
# 0.0~git20230309 has them all, and says "unknown version" to --version)
PASTA_OPTIONS = ("--foreground", "--quiet", "--log-file", "--pid", "--config-net", "--ns-ifname",
                 "--tcp-ports", "--udp-ports", "--tcp-ns", "--udp-ns", "--no-map-gw", "--dns-forward",
                 "--no-netns-quit")


@dataclass(frozen=True)
class Forward:
    """One host port forwarded into the sandbox."""

    proto: Literal["tcp", "udp"]
    host_addr: str
    host_port: int
    guest_port: int

    def describe(self) -> str:
        addr = f"[{self.host_addr}]" if ":" in self.host_addr else self.host_addr
        return f"{addr}:{self.host_port} -> {self.guest_port}/{self.proto}"

    def request(self) -> str:
        """slirp4netns's API request, one line of JSON (built by the encoder: nothing spliced)."""
        return json.dumps({"execute": "add_hostfwd", "arguments": {
            "proto": self.proto, "host_addr": self.host_addr, "host_port": int(self.host_port),
            "guest_port": int(self.guest_port)}})

    def pasta_spec(self) -> str:
        """pasta's -t/-u SPEC: ADDR/HOST_PORT:GUEST_PORT."""
        return f"{self.host_addr}/{self.host_port}:{self.guest_port}"


@dataclass(frozen=True)
class NetworkPlan:
    """A user-mode network helper, started by the supervisor once the sandbox's net namespace
    exists, and what the stage prepares for it."""

    backend: Literal["slirp4netns", "pasta"]
    argv: tuple[str, ...]  # with STAGE_PID (and API_SOCKET) placeholders
    forwards: tuple[Forward, ...]
    warnings: tuple[str, ...]
    resolv_conf: str
    hosts: str
    nameserver: str
    tap: str = TAP

    @property
    def api(self) -> bool:
        """The helper has an API socket (forwards are added through it after start, and a named
        sandbox's later by `sandboxer port`); pasta's forwards are in its argv."""
        return self.backend == "slirp4netns"

    def describe(self) -> list[str]:
        name = self.backend
        lines = [f"supervisor: start {shlex.join(self.argv)} ({STAGE_PID}: the stage's pid; {name} "
                 "joins its network namespace and the user namespace owning it)"]
        if self.backend == "slirp4netns":
            lines.append("supervisor: wait (bounded) for slirp4netns to be ready: tap0 "
                         f"{SLIRP_GUEST}/24, default route via {SLIRP_GATEWAY}, DNS at {SLIRP_DNS}")
            lines += [f"supervisor: forward {fwd.describe()} (add_hostfwd over {API_SOCKET})"
                      for fwd in self.forwards]
            lines.append(f"supervisor: remove {API_SOCKET} (a named sandbox keeps it, for sandboxer port)")
        else:
            lines.append("supervisor: wait (bounded) for pasta to be ready (it writes its pid to "
                         "--pid once set up): tap0 with the host's addresses and routes, DNS "
                         f"forwarded from {PASTA_DNS}")
            lines += [f"supervisor: forward {fwd.describe()} (pasta's own, fixed at start: this "
                      "pasta has no API to change forwards later)" for fwd in self.forwards]
        lines.append(f"supervisor: watch {name}: if it dies, kill the sandbox (exit 125)")
        return lines

    def tap_describe(self) -> list[str]:
        """The stage's first step: the tap; a helper without an API socket starts right then."""
        lines = [f"stage: create {self.tap}, persistent ({self.backend} attaches to it; it goes away with "
                 f"the namespace, not synchronously when {self.backend} exits)"]
        if not self.api:
            lines.append(f"stage: report that {self.tap} exists; supervisor: start {self.backend} now, its "
                         "start overlapping the stage's mounts")
            lines += self.describe()
        return lines

    def stage_describe(self) -> list[str]:
        return [
            f"stage: mount a resolv.conf naming {self.nameserver} over /etc/resolv.conf",
            "stage: mount an /etc/hosts naming localhost and the hostname over /etc/hosts",
            "stage: set net.ipv4.ip_unprivileged_port_start=0 in the new network namespace",
        ]

    def spec(self) -> NetSpec:
        return NetSpec(
            backend=self.backend, argv=self.argv,
            requests=tuple(fwd.request() for fwd in self.forwards) if self.api else (),
            shown=tuple(fwd.describe() for fwd in self.forwards), tap=self.tap,
            resolv_conf=self.resolv_conf, hosts=self.hosts,
        )

    # ---- the shell rendering ---------------------------------------------------------------
    def shell_ready(self) -> list[str]:
        """Inside the stage's script: wait (bounded) until the helper has configured the tap."""
        return [
            f"# wait (bounded) until {self.backend}, started outside, has configured {self.tap}",
            "i=0",
            f"until ip -o addr show dev {self.tap} 2>/dev/null | grep -q ' inet '; do",
            "    i=$((i + 1)); [ $i -le 200 ] || { echo 'network not ready' >&2; exit 125; }",
            "    sleep 0.05",
            "done",
        ]

    def shell_outside(self) -> list[str]:
        """Start the helper from outside once the sandbox exists: a background job that finds
        the stage (unshare, exec'd by the script, keeps the shell's pid $$)."""
        q = shlex.quote
        argv = []
        for word in self.argv:
            if word == STAGE_PID:
                argv.append("$$")
            elif word.startswith(("--ready-fd", "--exit-fd")):
                continue
            elif self.backend == "pasta" and word in ("/proc/self/fd/2", "/proc/self/fd/3"):
                argv.append("/dev/null")  # --log-file, --pid: not needed by hand
            elif API_SOCKET in word:
                if self.forwards:  # by hand, an API socket is only needed for them
                    argv.append(q(word.split(API_SOCKET)[0]) + '"$api"')
            else:
                argv.append(q(word))
        lines = [
            f"# network: {self.backend}, started from outside against the sandbox's first process",
        ]
        if self.api and self.forwards:
            lines += ["netdir=$(mktemp -d)  # private (0700): holds the API socket", 'api="$netdir/api.sock"']
        lines += [
            "(",
            "    i=0",
            "    while :; do  # unshare (exec'd below with this shell's pid) made the namespaces,",
            f"        # and the stage made {self.tap} in its network namespace",
            '        if [ "$(readlink /proc/$$/ns/net)" != "$(readlink /proc/self/ns/net)" ] &&',
            f"            grep -q '{self.tap}:' /proc/$$/net/dev 2>/dev/null; then break; fi",
            "        i=$((i + 1)); [ $i -le 200 ] || exit 1; sleep 0.05",
            "    done",
            "    " + " ".join(argv) + " >/dev/null 2>&1 &",
            "    helper=$!",
        ]
        if self.api and self.forwards:
            lines.append('    i=0; until [ -S "$api" ]; do i=$((i + 1)); [ $i -le 200 ] || exit 1; sleep 0.05; done')
            for fwd in self.forwards:
                lines += [
                    f"    # forward {fwd.describe()}",
                    "    python3 -c 'import socket, sys; s = socket.socket(socket.AF_UNIX); "
                    "s.connect(sys.argv[1]); s.sendall(sys.argv[2].encode()); "
                    "s.shutdown(socket.SHUT_WR); print(s.recv(4096).decode())' "
                    f'"$api" {q(fwd.request())} >&2',
                ]
            lines.append('    rm -f "$api"; rmdir "$netdir"')
        lines += [
            f"    # {self.backend} does not exit when the namespace dies: stop it when unshare ends",
            "    # (a dead unshare, even a zombie, has no namespaces left to show)",
            '    while [ -n "$(readlink /proc/$$/ns/net 2>/dev/null)" ]; do sleep 0.2; done',
            '    kill -KILL "$helper"; wait "$helper" 2>/dev/null || true',
            ") </dev/null &",
        ]
        return lines


def plan_network(profile: Profile, host: HostFacts) -> NetworkPlan | None:
    mode = profile.network.mode
    if mode == "slirp4netns":
        return _slirp4netns(profile, host)
    if mode == "pasta":
        return _pasta(profile, host)
    return None


def _helper(host: HostFacts, name: str, package: str) -> tuple[str, ToolInfo]:
    path = host.tools.get(name, "")
    if not path:
        raise SandboxerError(
            f"{name} not found on PATH or in /usr/sbin, /sbin (network.mode = '{name}')",
            f"install it (apt install {package}), or use --net none",
        )
    return path, host.probed.get(name) or ToolInfo(path, "", frozenset())


def _forwards(profile: Profile) -> tuple[tuple[Forward, ...], list[str]]:
    forwards = tuple(Forward(f.proto, f.host_addr, f.host_port, f.guest_port) for f in profile.network.forwards)
    warnings = [f"forward {fwd.describe()} listens on {fwd.host_addr}, not only 127.0.0.1: other hosts "
                "or users may reach the sandbox" for fwd in forwards if fwd.host_addr not in ("127.0.0.1", "::1")]
    return forwards, warnings


def _hosts(profile: Profile, address: str) -> str:
    name = profile.namespaces.hostname if profile.namespaces.uts else ""
    return HOSTS_HEAD + (f"{address}\t{name}\n" if name else "")


def _slirp4netns(profile: Profile, host: HostFacts) -> NetworkPlan:
    path, info = _helper(host, "slirp4netns", "slirp4netns")
    _check_slirp_version(path, info)
    net = profile.network
    argv = [path, "--configure", "--mtu=65520"]
    forwards, warnings = _forwards(profile)
    if net.allow_host_loopback:
        warnings.insert(0, f"the sandbox can reach services on the host's 127.0.0.1 through "
                        f"{SLIRP_GATEWAY} (network.allow_host_loopback)")
    else:
        argv.append("--disable-host-loopback")
    argv += ["--enable-sandbox", "--enable-seccomp", f"--ready-fd={READY_FD}", f"--exit-fd={EXIT_FD}"]
    argv.append(f"--api-socket={API_SOCKET}")
    # The target is the stage's pid: slirp4netns joins its net namespace and the user namespace
    # that owns it (the outer one, the stage's; not the payload's nested one). The explicit
    # --userns-path/--netns-type=path form breaks --enable-sandbox in slirp4netns 1.2.
    argv += [STAGE_PID, TAP]
    for index, fwd in enumerate(forwards):
        if ":" in fwd.host_addr:
            # slirp4netns's add_hostfwd parses host_addr with inet_pton(AF_INET) (1.2 and older)
            raise ProfileKeyError(("network", "forwards", index, "host_addr"),
                                  f"{fwd.host_addr} is an IPv6 address, and slirp4netns forwards from "
                                  "IPv4 addresses only", "use 127.0.0.1, or --net pasta")
    return NetworkPlan(
        backend="slirp4netns", argv=tuple(argv), forwards=forwards, warnings=tuple(warnings),
        resolv_conf=f"nameserver {SLIRP_DNS}\n", hosts=_hosts(profile, SLIRP_GUEST),
        nameserver=SLIRP_DNS,
    )


def _check_slirp_version(path: str, info: ToolInfo) -> None:
    m = re.search(r"slirp4netns version (\d+)\.(\d+)\.(\d+)", info.version)
    if not m:
        raise SandboxerError(
            f"cannot tell the version of {path} (its --version said {info.version.strip()[:80]!r})",
            "install slirp4netns 1.x (apt install slirp4netns)",
        )
    version = tuple(int(g) for g in m.groups())
    if version < SLIRP_MIN:
        raise SandboxerError(
            f"{path} is version {'.'.join(m.groups())}, too old: sandboxer needs "
            f"{'.'.join(map(str, SLIRP_MIN))} or newer",
            "upgrade slirp4netns, or use --net none",
        )


def _pasta(profile: Profile, host: HostFacts) -> NetworkPlan:
    path, info = _helper(host, "pasta", "passt")
    missing = [opt for opt in PASTA_OPTIONS if opt not in info.options]
    if missing:
        said = f" (it says: {info.version.strip()[:60]})" if info.version.strip() else ""
        raise SandboxerError(
            f"{path} has no {', '.join(missing)}: too old{said}; sandboxer needs the pasta of "
            "passt 2023-03-09 (Debian 12's) or newer",
            "upgrade passt, or use --net slirp4netns",
        )
    net = profile.network
    forwards, warnings = _forwards(profile)
    # --foreground: our child, so it dies with us (PR_SET_PDEATHSIG) and we see it die;
    # --log-file: its complaints in our memfd (else syslog); --pid: written once set up, to our
    # pipe: that is its readiness
    argv = [path, "--foreground", "--quiet", "--log-file", "/proc/self/fd/2", "--pid",
            f"/proc/self/fd/{READY_FD}", "--config-net", "--ns-ifname", TAP]
    for proto, flag in (("tcp", "--tcp-ports"), ("udp", "--udp-ports")):
        specs = [fwd.pasta_spec() for fwd in forwards if fwd.proto == proto]
        for spec in specs or ["none"]:
            argv += [flag, spec]
    # nothing of the host forwarded into the namespace's view of "the host" automatically
    argv += ["--tcp-ns", "none", "--udp-ns", "none"]
    # pasta watches the namespace's directory with inotify, to quit when it is deleted: useless
    # here (we stop it, and it dies with us), and closing an inotify instance waits for an SRCU
    # grace period (fsnotify's mark reaper): ~11 ms of every run's exit
    argv.append("--no-netns-quit")
    if net.allow_host_loopback:
        warnings.insert(0, "the sandbox can reach services on the host's 127.0.0.1 through the "
                        "gateway address (network.allow_host_loopback)")
    else:
        argv.append("--no-map-gw")
    argv += ["--dns-forward", PASTA_DNS, STAGE_PID]
    return NetworkPlan(
        backend="pasta", argv=tuple(argv), forwards=forwards, warnings=tuple(warnings),
        resolv_conf=f"nameserver {PASTA_DNS}\n", hosts=_hosts(profile, "127.0.1.1"),
        nameserver=PASTA_DNS,
    )
