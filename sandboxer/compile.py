"""compile(profile, host facts) -> Plan. Pure: no I/O, no subprocess, no environment reads."""

from __future__ import annotations

import posixpath

from .errors import SandboxerError
from .host import HostFacts
from .plan import (
    API_SOCKET,
    DEFAULT_KEEP,
    NAMESERVER,
    SLIRP_EXIT_FD,
    SLIRP_READY_FD,
    STAGE_PID,
    EnvRule,
    Forward,
    Isolation,
    MountOp,
    NetworkPlan,
    Plan,
    RootfsPlan,
    UserMap,
)
from .profile import MIB, Profile

TMPFS_DEFAULT_SIZE = 64 * MIB
RUNTIME_SIZE = 64 * MIB
SHM_SIZE = 64 * MIB
HIDE_SIZE = 4096
HARDENING = (
    "no_new_privs",
    "seccomp: ioctl TIOCSTI/TIOCLINUX -> EPERM",
    "only fds 0-2",
    "no capabilities outside its own user namespace",
    "Landlock domain: no ptrace of processes outside the sandbox",
)
SCOPES = {
    "abstract-sockets": "Landlock scope: no connecting to abstract unix sockets made outside the sandbox",
    "signals": "Landlock scope: no signals to processes outside the sandbox",
}


class ProfileKeyError(SandboxerError):
    """A problem with one profile key that only compiling finds; build.py adds file:line."""

    def __init__(self, loc: tuple[str | int, ...], message: str, hint: str = "") -> None:
        super().__init__(message, hint)
        self.loc = loc


def compile(profile: Profile, host: HostFacts) -> Plan:  # noqa: A001 - the name is the concept
    """Turn a validated profile and host facts into a Plan."""
    unshare = host.tools.get("unshare", "")
    if not unshare:
        raise SandboxerError(
            "unshare(1) not found in /usr/bin, /bin, /usr/sbin or /sbin",
            "install util-linux (apt install util-linux)",
        )
    ns = profile.namespaces
    own_net = profile.network.mode in ("none", "slirp4netns")
    namespaces = ["user", "mount"]
    outer = [unshare, "--user", "--map-root-user", "--mount", "--propagation", "private"]
    if ns.pid:
        namespaces.append("pid")
        # --kill-child: unshare's child (our stage, PID 1) gets SIGKILL when unshare dies,
        # and unshare itself gets SIGKILL when the supervisor dies (PR_SET_PDEATHSIG).
        outer += ["--pid", "--fork", "--kill-child", "--mount-proc"]
    if own_net:
        namespaces.append("net")
        outer.append("--net")
    if ns.uts:
        namespaces.append("uts")
        outer.append("--uts")
    if ns.ipc:
        namespaces.append("ipc")
        outer.append("--ipc")
    outer += ["--", host.stage]

    guards = _guards(host)
    rootfs = _rootfs(profile, host)
    warnings: list[str] = []
    if rootfs is not None:
        mounts: list[MountOp] = []
        cwd = expand(profile.command.cwd, host) if profile.command.cwd is not None else host.home
    else:
        mounts = _mounts(profile, host, own_net=own_net)
        cwd = _cwd(profile, host, mounts, warnings)
    network = _network(profile, host)
    if network is not None:
        warnings[:0] = network.warnings
    shell = "/bin/sh" if rootfs is not None else host.shell
    return Plan(
        description=profile.description,
        namespaces=tuple(namespaces),
        outer=tuple(outer),
        guards=tuple(guards),
        mounts=tuple(mounts),
        hostname=ns.hostname if ns.uts else "",
        loopback_up=own_net,
        inner=_usermap(profile, host),
        cwd=cwd,
        env=_env(profile, host, host.home, shell),
        command=tuple(profile.command.argv or (shell,)),
        pid=ns.pid,
        hardening=HARDENING,
        isolation=_isolation(profile, host, own_net=own_net),
        warnings=tuple(warnings),
        network=network,
        rootfs=rootfs,
    )


def _isolation(profile: Profile, host: HostFacts, *, own_net: bool) -> Isolation:
    """Which Landlock scopes the payload must get, and what the profile says it accepts instead.

    Abstract unix sockets belong to a network namespace, so an own one already keeps the host's
    out of reach; signals (and ptrace) reach only what a PID namespace shows. Where neither
    namespace is there, only Landlock's scoping closes the hole; on kernels without it the run
    fails unless the profile accepts the exposure."""
    needed = []
    if not own_net:
        needed.append("abstract-sockets")
    if not profile.namespaces.pid:
        needed.append("signals")
    accepted = tuple(e for e in needed if e in profile.security.accept_exposures)
    return Isolation(
        required=tuple(e for e in needed if e not in accepted),
        accepted=accepted,
    )


def _guards(host: HostFacts) -> list[MountOp]:
    """Mounts on the host's own tree before anything else, so that every later bind (an rbind
    of an ancestor, say) carries them along: sandboxer's state hidden, its install read-only."""
    ops = [MountOp("pin", path, why="the payload cannot rename it: it leads to sandboxer's state or "
                   "installation") for path in host.pins]
    whats = {host.cache_dir: "sandboxer's plan cache", host.key_dir: "the key of sandboxer's plan cache"}
    for path in host.private_dirs:
        ops.append(MountOp("hide", path, readonly=True, size=HIDE_SIZE, mode="0555",
                           why=f"{whats[path]}, out of the payload's reach"))
    for path in host.own_paths:
        ops.append(MountOp("protect", path, readonly=True,
                           why="sandboxer's own installation, read-only even inside a writable bind"))
    return ops


def _rootfs(profile: Profile, host: HostFacts) -> RootfsPlan | None:
    """Mounts inside another root: targets are paths in it, sources are the host's."""
    spec = profile.rootfs
    if spec.path is None:
        return None
    path = expand(spec.path, host)
    if path == "/":
        raise ProfileKeyError(("rootfs", "path"), "/ is the host's own root", "name a root filesystem's directory")
    if spec.writes == "overlay" and any(c in path for c in ",:\\"):
        raise ProfileKeyError(("rootfs", "path"), f"{path} contains ',', ':' or a backslash, which overlayfs "
                        "cannot take as a lower directory", "move or link the tree elsewhere")
    ops: list[MountOp] = []
    if profile.namespaces.pid:
        ops.append(MountOp("proc", "/proc", create=True, why="the PID namespace's own"))
    else:
        ops.append(MountOp("procbind", "/proc", create=True))
    ops.append(MountOp("dev", "/dev", create=True))
    ops.append(MountOp("tmpfs", "/tmp", size=profile.tmp.size, mode="1777", create=True))
    if profile.home.mode == "tmpfs":
        ops.append(MountOp("tmpfs", host.home, size=profile.home.size, mode="0700", create=True,
                           why="HOME"))
    else:
        ops.append(MountOp("bind", host.home, source=host.home, create=True, why="HOME (the host's)"))
    for index, mount in enumerate(profile.mounts):
        loc = ("mounts", index)
        target = expand(mount.target or mount.source or "", host)
        if target == "/":
            raise ProfileKeyError((*loc, "target"), "cannot mount over /", "name a directory below /")
        if mount.type == "tmpfs":
            ops.append(MountOp("tmpfs", target, size=mount.size or TMPFS_DEFAULT_SIZE, mode="0755",
                               create=True))
            continue
        source = _bind_source(mount.source or "", loc, host)
        ops.append(MountOp("bind", target, source=source, readonly=mount.type == "ro-bind",
                           create=True))
    return RootfsPlan(path=path, switch=spec.switch, writes=spec.writes, mounts=tuple(ops))


def _network(profile: Profile, host: HostFacts) -> NetworkPlan | None:
    net = profile.network
    if net.mode != "slirp4netns":
        return None
    slirp = host.tools.get("slirp4netns", "")
    if not slirp:
        raise SandboxerError(
            "slirp4netns not found in /usr/bin, /bin, /usr/sbin or /sbin (network.mode = 'slirp4netns')",
            "install slirp4netns 1.x (apt install slirp4netns), or use --net none",
        )
    argv = [slirp, "--configure", "--mtu=65520"]
    warnings = []
    if net.allow_host_loopback:
        warnings.append("the sandbox can reach services on the host's 127.0.0.1 through 10.0.2.2 "
                        "(network.allow_host_loopback)")
    else:
        argv.append("--disable-host-loopback")
    argv += ["--enable-sandbox", "--enable-seccomp", f"--ready-fd={SLIRP_READY_FD}",
             f"--exit-fd={SLIRP_EXIT_FD}"]
    if net.forwards:
        argv.append(f"--api-socket={API_SOCKET}")
    # The target is the stage's pid: slirp4netns joins its net namespace and the user namespace
    # that owns it (the outer one, the stage's; not the payload's nested one). The explicit
    # --userns-path/--netns-type=path form breaks --enable-sandbox in slirp4netns 1.2.
    argv += [STAGE_PID, "tap0"]
    forwards = tuple(Forward(f.proto, f.host_addr, f.host_port, f.guest_port) for f in net.forwards)
    for index, fwd in enumerate(forwards):
        if ":" in fwd.host_addr:
            # slirp4netns's add_hostfwd parses host_addr with inet_pton(AF_INET) (1.2 and older)
            raise ProfileKeyError(("network", "forwards", index, "host_addr"),
                            f"{fwd.host_addr} is an IPv6 address, and slirp4netns forwards from IPv4 "
                            "addresses only", "use 127.0.0.1 (or another IPv4 address)")
        if fwd.host_addr != "127.0.0.1":
            warnings.append(f"forward {fwd.describe()} listens on {fwd.host_addr}, not only 127.0.0.1: "
                            "other hosts or users may reach the sandbox")
    name = profile.namespaces.hostname if profile.namespaces.uts else ""
    hosts = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n"
    if name:
        hosts += f"10.0.2.100\t{name}\n"
    return NetworkPlan(
        mode="slirp4netns",
        argv=tuple(argv),
        forwards=forwards,
        warnings=tuple(warnings),
        resolv_conf=f"nameserver {NAMESERVER}\n",
        hosts=hosts,
    )


def _usermap(profile: Profile, host: HostFacts) -> UserMap:
    if profile.user.map == "root":
        return UserMap("root", 0, 0, host.uid, host.gid)
    return UserMap("self", host.uid, host.gid, host.uid, host.gid)


def expand(path: str, host: HostFacts) -> str:
    """A profile path -> absolute and normalised: '~' is your home, relative is from your cwd."""
    if path == "~" or path.startswith("~/"):
        path = host.home + path[1:]
    elif not path.startswith("/"):
        path = posixpath.join(host.cwd, path)
    return posixpath.normpath(path).replace("//", "/")


def _under(path: str, top: str) -> bool:
    return path == top or top == "/" or path.startswith(top.rstrip("/") + "/")


def _mounts(profile: Profile, host: HostFacts, *, own_net: bool) -> list[MountOp]:
    """The sandbox's view of the host's tree: all of it read-only, the host's shared scratch
    places and runtime directories replaced by private tmpfs, then HOME and the profile's mounts."""
    ops = [MountOp("readonly-root", "/", readonly=True)]
    if own_net:
        ops.append(MountOp("sysfs", "/sys", readonly=True,
                           why="the sandbox's own network interfaces, not the host's"))
    fresh: list[str] = []  # targets of tmpfs mounts made by this plan: we may create under them
    for path in host.scratch_dirs:
        size = SHM_SIZE if path == "/dev/shm" else profile.tmp.size
        ops.append(MountOp("tmpfs", path, size=size, mode="1777", why="private, not the host's"))
        fresh.append(path)
    for path in host.runtime_dirs:
        ops.append(MountOp("tmpfs", path, size=RUNTIME_SIZE, mode="0700",
                           create=any(_under(path, top) for top in fresh),
                           why="private: the host's session bus, systemd --user and agents stay out "
                               "of reach"))
        fresh.append(path)
    if profile.home.mode == "tmpfs":
        ops.append(MountOp("tmpfs", host.home, size=profile.home.size, mode="0700",
                           create=any(_under(host.home, top) for top in fresh), why="HOME"))
        fresh.append(host.home)
    else:
        ops.append(MountOp("bind", host.home, source=host.home,
                           create=any(_under(host.home, top) for top in fresh),
                           why="HOME (the host's, writable)"))
        fresh = [top for top in fresh if not _under(top, host.home)]
    for index, mount in enumerate(profile.mounts):
        loc = ("mounts", index)
        target = expand(mount.target or mount.source or "", host)
        if target == "/":
            raise ProfileKeyError((*loc, "target"), "cannot mount over /", "name a directory below /")
        create = any(_under(target, top) and target != top for top in fresh)
        if mount.type == "tmpfs":
            size = mount.size or TMPFS_DEFAULT_SIZE
            ops.append(MountOp("tmpfs", target, size=size, mode="0755", create=create))
            fresh.append(target)
            continue
        source = _bind_source(mount.source or "", loc, host)
        ops.append(
            MountOp("bind", target, source=source, readonly=mount.type == "ro-bind", create=create)
        )
        # a bind hides what a tmpfs put there before; creating under it would write the host
        fresh = [top for top in fresh if not _under(top, target)]
    return ops


def _bind_source(path: str, loc: tuple[str | int, ...], host: HostFacts) -> str:
    source = expand(path, host)
    for private in host.private_dirs:
        if _under(source, private):
            raise ProfileKeyError((*loc, "source"), f"{source} is sandboxer's own state ({private}), which "
                            "no sandbox may see", "bind another directory")
    return source


def _cwd(profile: Profile, host: HostFacts, mounts: list[MountOp], warnings: list[str]) -> str:
    if profile.command.cwd is not None:
        return expand(profile.command.cwd, host)
    # The caller's cwd stays if the last mount covering it shows the same directory.
    covering = [op for op in mounts if op.kind in ("tmpfs", "bind") and _under(host.cwd, op.target)]
    if not covering:
        return host.cwd
    last = max(covering, key=lambda op: len(op.target))
    if last.kind == "bind" and last.source == last.target:
        return host.cwd
    for op in reversed(mounts):
        if op.kind == "bind" and _under(host.cwd, op.source):
            inside = op.target + host.cwd[len(op.source):]
            return posixpath.normpath(inside)
    if host.cwd == host.home:
        return host.home  # the throwaway HOME stands in for yours: what a clean HOME means
    warnings.append(f"your working directory {host.cwd} is hidden in the sandbox (under "
                    f"{last.target}'s private tmpfs), so the command starts in HOME; "
                    "to work on it, bind it: --bind .")
    return host.home


def _env(profile: Profile, host: HostFacts, home: str, shell: str) -> EnvRule:
    root = profile.user.map == "root"
    name = "root" if root else host.user
    fixed = (("HOME", home), ("USER", name), ("LOGNAME", name), ("SHELL", shell))
    keep = tuple(dict.fromkeys((*DEFAULT_KEEP, *profile.env.keep)))
    fixed_names = {k for k, _ in fixed}
    keep = tuple(k for k in keep if k not in fixed_names)
    return EnvRule(keep=keep, set=tuple(sorted(profile.env.set.items())), fixed=fixed)
