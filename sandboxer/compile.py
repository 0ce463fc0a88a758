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
    MountOp,
    NetworkPlan,
    Plan,
    RootfsPlan,
    UserMap,
)
from .profile import MIB, Profile

TMPFS_DEFAULT_SIZE = 64 * MIB
HIDE_SIZE = 4096
HARDENING = (
    "no_new_privs",
    "seccomp: ioctl TIOCSTI/TIOCLINUX -> EPERM",
    "only fds 0-2",
    "no capabilities outside its own user namespace",
)


def compile(profile: Profile, host: HostFacts) -> Plan:  # noqa: A001 - the name is the concept
    """Turn a validated profile and host facts into a Plan."""
    unshare = host.tools.get("unshare", "")
    if not unshare:
        raise SandboxerError(
            "unshare(1) not found in /usr/bin, /bin, /usr/sbin or /sbin",
            "install util-linux (apt install util-linux)",
        )
    ns = profile.namespaces
    namespaces = ["user", "mount"]
    outer = [unshare, "--user", "--map-root-user", "--mount", "--propagation", "private"]
    if ns.pid:
        namespaces.append("pid")
        # --kill-child: unshare's child (our stage, PID 1) gets SIGKILL when unshare dies,
        # and unshare itself gets SIGKILL when the supervisor dies (PR_SET_PDEATHSIG).
        outer += ["--pid", "--fork", "--kill-child", "--mount-proc"]
    if profile.network.mode in ("none", "slirp4netns"):
        namespaces.append("net")
        outer.append("--net")
    if ns.uts:
        namespaces.append("uts")
        outer.append("--uts")
    if ns.ipc:
        namespaces.append("ipc")
        outer.append("--ipc")
    outer += ["--", host.stage]

    rootfs = _rootfs(profile, host)
    mounts = _mounts(profile, host, rootfs_mode=rootfs is not None)
    home = host.home
    if rootfs is not None:
        cwd = expand(profile.command.cwd, host) if profile.command.cwd is not None else home
    else:
        cwd = _cwd(profile, host, mounts)
    shell = "/bin/sh" if rootfs is not None else host.shell
    return Plan(
        description=profile.description,
        namespaces=tuple(namespaces),
        outer=tuple(outer),
        mounts=tuple(mounts),
        hostname=ns.hostname if ns.uts else "",
        loopback_up=profile.network.mode in ("none", "slirp4netns"),
        inner=_usermap(profile, host),
        cwd=cwd,
        env=_env(profile, host, home, shell),
        command=tuple(profile.command.argv or (shell,)),
        pid=ns.pid,
        hardening=HARDENING,
        cache_dir=host.cache_dir,
        network=_network(profile, host),
        rootfs=rootfs,
    )


def _rootfs(profile: Profile, host: HostFacts) -> RootfsPlan | None:
    """Mounts inside another root: targets are paths in it, sources are the host's."""
    spec = profile.rootfs
    if spec.path is None:
        return None
    path = expand(spec.path, host)
    if path == "/":
        raise SandboxerError("rootfs.path: / is the host's own root", "name a root filesystem's directory")
    if spec.writes == "overlay" and any(c in path for c in ",:\\"):
        raise SandboxerError(f"rootfs.path: {path} contains ',', ':' or a backslash, which overlayfs "
                             "cannot take as a lower directory", "move or link the tree elsewhere")
    ops: list[MountOp] = []
    if profile.namespaces.pid:
        ops.append(MountOp("proc", "/proc", create=True, why="the PID namespace's own"))
    else:
        ops.append(MountOp("procbind", "/proc", create=True))
    ops.append(MountOp("dev", "/dev", create=True))
    ops.append(MountOp("tmpfs", "/tmp", size=TMPFS_DEFAULT_SIZE, mode="1777", create=True))
    if profile.home.mode == "tmpfs":
        ops.append(MountOp("tmpfs", host.home, size=profile.home.size, mode="0700", create=True,
                           why="HOME"))
    else:
        ops.append(MountOp("bind", host.home, source=host.home, create=True, why="HOME (the host's)"))
    for index, mount in enumerate(profile.mounts):
        key = f"mounts[{index}]"
        target = expand(mount.target or mount.source or "", host)
        if target == "/":
            raise SandboxerError(f"{key}.target: cannot mount over /", "name a directory below /")
        if mount.type == "tmpfs":
            ops.append(MountOp("tmpfs", target, size=mount.size or TMPFS_DEFAULT_SIZE, mode="0755",
                               create=True))
            continue
        source = _bind_source(mount.source or "", key, host)
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
    for fwd in forwards:
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


def _mounts(profile: Profile, host: HostFacts, rootfs_mode: bool = False) -> list[MountOp]:
    ops: list[MountOp] = []
    # The plan cache must not be writable from inside: pin every user-owned ancestor (the
    # kernel refuses to rename a mount point with EBUSY) and hide the cache itself, before any
    # mount of the profile, so that binds of its ancestors carry both along (rbind).
    for path in host.cache_pins:
        ops.append(MountOp("pin", path, why="the payload cannot rename it"))
    if host.cache_dir:
        ops.append(
            MountOp("hide", host.cache_dir, readonly=True, size=HIDE_SIZE, mode="0555",
                    why="sandboxer's plan cache, out of the payload's reach")
        )
    if rootfs_mode:
        return ops  # HOME and the profile's mounts go inside the new root (see _rootfs)
    fresh: list[str] = []  # targets of tmpfs mounts made by this plan: we may create under them
    if profile.home.mode == "tmpfs":
        ops.append(MountOp("tmpfs", host.home, size=profile.home.size, mode="0700", why="HOME"))
        fresh.append(host.home)
    for index, mount in enumerate(profile.mounts):
        key = f"mounts[{index}]"
        target = expand(mount.target or mount.source or "", host)
        if target == "/":
            raise SandboxerError(f"{key}.target: cannot mount over /", "name a directory below /")
        create = any(_under(target, top) and target != top for top in fresh)
        if mount.type == "tmpfs":
            size = mount.size or TMPFS_DEFAULT_SIZE
            ops.append(MountOp("tmpfs", target, size=size, mode="0755", create=create))
            fresh.append(target)
            continue
        source = _bind_source(mount.source or "", key, host)
        ops.append(
            MountOp("bind", target, source=source, readonly=mount.type == "ro-bind", create=create)
        )
        # a bind hides what a tmpfs put there before; creating under it would write the host
        fresh = [top for top in fresh if not _under(top, target)]
    return ops


def _bind_source(path: str, key: str, host: HostFacts) -> str:
    source = expand(path, host)
    if host.cache_dir and _under(source, host.cache_dir):
        raise SandboxerError(
            f"{key}.source: {source} is sandboxer's plan cache, which no sandbox may see",
            "bind another directory",
        )
    return source


def _cwd(profile: Profile, host: HostFacts, mounts: list[MountOp]) -> str:
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
    return host.home


def _env(profile: Profile, host: HostFacts, home: str, shell: str) -> EnvRule:
    root = profile.user.map == "root"
    name = "root" if root else host.user
    fixed = (("HOME", home), ("USER", name), ("LOGNAME", name), ("SHELL", shell))
    keep = tuple(dict.fromkeys((*DEFAULT_KEEP, *profile.env.keep)))
    fixed_names = {k for k, _ in fixed}
    keep = tuple(k for k in keep if k not in fixed_names)
    return EnvRule(keep=keep, set=tuple(sorted(profile.env.set.items())), fixed=fixed)
