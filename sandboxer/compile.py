"""compile(profile, host facts) -> Plan. Pure: no I/O, no subprocess, no environment reads."""

from __future__ import annotations

import posixpath

from . import idmap
from .errors import ProfileKeyError, SandboxerError
from .host import HostFacts
from .netplan import plan_network
from .plan import (
    DEFAULT_KEEP,
    DEFAULT_PATH,
    ROOT_PATH,
    EnvRule,
    Isolation,
    MountOp,
    Plan,
    RootfsPlan,
    UserMap,
)
from .profile import MIB, Profile, RootSwitch, RootWrites, parse_ids

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


def compile(profile: Profile, host: HostFacts, files: tuple[str, ...] = ()) -> Plan:  # noqa: A001
    """Turn a validated profile (read from files: its own, then those it extends) and host
    facts into a Plan."""
    unshare = host.tools.get("unshare", "")
    if not unshare:
        raise SandboxerError(
            "unshare(1) not found on PATH or in /usr/bin, /bin, /usr/sbin, /sbin",
            "install util-linux (apt install util-linux)",
        )
    ns = profile.namespaces
    own_net = profile.network.mode != "host"
    namespaces = ["user", "mount"]
    users = _usermap(profile, host)
    outer = [unshare, "--user", "--map-root-user", *users.outer_args, "--mount", "--propagation", "private"]
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

    root = _rootfs(profile, host)
    mounts = _mounts(profile, host, own_net=own_net, rootfs=root is not None, home_owner=users.switch_to,
                     files=files)
    warnings: list[str] = []
    if root is not None:
        path, switch, writes = root
        rootfs: RootfsPlan | None = RootfsPlan(path=path, switch=switch, writes=writes, mounts=tuple(mounts))
        mounts = []
        cwd = expand(profile.command.cwd, host) if profile.command.cwd is not None else host.home
    else:
        rootfs = None
        cwd = _cwd(profile, host, mounts, warnings)
    network = plan_network(profile, host)
    if network is not None:
        warnings[:0] = network.warnings
    shell = "/bin/sh" if rootfs is not None else host.shell
    return Plan(
        description=profile.description,
        namespaces=tuple(namespaces),
        outer=tuple(outer),
        guards=tuple(_guards(host)),
        mounts=tuple(mounts),
        hostname=ns.hostname if ns.uts else "",
        loopback_up=own_net,
        users=users,
        cwd=cwd,
        env=_env(profile, host, users, shell, rootfs=rootfs is not None),
        command=tuple(profile.command.argv or (shell,)),
        pid=ns.pid,
        hardening=HARDENING,
        isolation=_isolation(profile, host, own_net=own_net),
        warnings=tuple(warnings),
        network=network,
        rootfs=rootfs,
        limits=_limits(profile),
        timeout=profile.limits.timeout or 0.0,
        kill_after=profile.limits.kill_after,
        worktree=_worktree(profile, host),
        name=profile.name or "",
    )


def _limits(profile: Profile) -> tuple[tuple[str, int], ...]:
    lim = profile.limits
    values = {"nproc": lim.nproc, "nofile": lim.nofile, "fsize": lim.fsize, "as": lim.address_space,
              "cpu": lim.cpu}
    return tuple((name, value) for name, value in values.items() if value is not None)


def _worktree(profile: Profile, host: HostFacts) -> tuple[str, str]:
    """The work tree's path and mode, for the run's report; ("", "none") without one."""
    if profile.worktree.mode == "none":
        return ("", "none")
    return (expand(profile.worktree.path, host), profile.worktree.mode)


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
    whats = {host.cache_dir: "sandboxer's plan cache", host.key_dir: "the key of sandboxer's plan cache",
             host.state_dir: "the registry of named sandboxes (their control sockets and logs)"}
    for path in host.private_dirs:
        ops.append(MountOp("hide", path, readonly=True, size=HIDE_SIZE, mode="0555",
                           why=f"{whats[path]}, out of the payload's reach"))
    for path in host.own_paths:
        ops.append(MountOp("protect", path, readonly=True,
                           why="sandboxer's own installation, read-only even inside a writable bind"))
    return ops


def _rootfs(profile: Profile, host: HostFacts) -> tuple[str, RootSwitch, RootWrites] | None:
    """Another root: its path (checked), switch and writes; None for the host's own."""
    spec = profile.rootfs
    if spec.path is None:
        return None
    path = expand(spec.path, host)
    if path == "/":
        raise ProfileKeyError(("rootfs", "path"), "/ is the host's own root", "name a root filesystem's directory")
    if spec.writes == "overlay" and any(c in path for c in ",:\\"):
        raise ProfileKeyError(("rootfs", "path"), f"{path} contains ',', ':' or a backslash, which overlayfs "
                              "cannot take as a lower directory", "move or link the tree elsewhere")
    return path, spec.switch, spec.writes


def _usermap(profile: Profile, host: HostFacts) -> UserMap:
    """The payload's ids: its namespace's maps, who it runs as, and what the outer namespace
    needs for them (unshare's --map-users/--map-groups: the setuid newuidmap/newgidmap)."""
    mode = profile.user.map
    loc = ("user", "map")
    outer_args: tuple[str, ...] = ()
    if mode in idmap.RANGED:
        for tool in ("newuidmap", "newgidmap"):
            if not host.tools.get(tool):
                raise ProfileKeyError(loc, f"user.map = {mode!r} maps your subordinate ids through "
                                      f"{tool}(1), which is not installed", "apt install uidmap")
        if host.ranges is None:
            raise ProfileKeyError(loc, f"user.map = {mode!r} needs your subordinate ids, which were not read",
                                  "sandboxer bug: report it")
        first_uids, first_gids = host.ranges.uids[0], host.ranges.gids[0]
        # util-linux's old syntax (outer,inner,count): 2.38 takes no other, later ones take both
        outer_args = (f"--map-users={first_uids.start},1,{first_uids.size}",
                      f"--map-groups={first_gids.start},1,{first_gids.size}")
    ids = idmap.maps(mode, (host.uid, host.gid), host.ranges if mode in idmap.RANGED else None)
    uid_map, gid_map = ids.uid_map, ids.gid_map
    own = idmap.inside_ids(mode, (host.uid, host.gid))
    run_as = own
    if profile.user.run_as is not None:
        run_as = parse_ids(profile.user.run_as)
        where = ("user", "run_as")
        if mode in ("self", "root") and run_as != own:
            raise ProfileKeyError(where, f"with user.map = {mode!r} only {own[0]}:{own[1]} exists inside, "
                                  f"not {run_as[0]}:{run_as[1]}",
                                  "use --map auto or --map keep-id to run as another id (they map your "
                                  "subordinate ids from /etc/subuid)")
        for what, value, table in (("uid", run_as[0], uid_map), ("gid", run_as[1], gid_map)):
            if idmap.to_outside(table, value) is None:
                top = max(start + count - 1 for start, _lower, count in table)
                raise ProfileKeyError(where, f"{what} {value} is not mapped inside (user.map = {mode!r} "
                                      f"maps {what}s 0 to {top})",
                                      f"pick one up to {top}, or ask for more subordinate ids")
    outer_uid = idmap.to_outside(uid_map, run_as[0]) or 0
    outer_gid = idmap.to_outside(gid_map, run_as[1]) or 0
    return UserMap(
        mode=mode,
        uid_map=uid_map,
        gid_map=gid_map,
        host_uids=ids.host_uids,
        host_gids=ids.host_gids,
        own=(host.uid, host.gid),
        run_as=run_as,
        by_stage=mode in idmap.RANGED,
        outer_args=outer_args,
        switch_to=(outer_uid, outer_gid) if (outer_uid, outer_gid) != (0, 0) else None,
    )


def expand(path: str, host: HostFacts) -> str:
    """A profile path -> absolute and normalised: '~' is your home, relative is from your cwd."""
    if path == "~" or path.startswith("~/"):
        path = host.home + path[1:]
    elif not path.startswith("/"):
        path = posixpath.join(host.cwd, path)
    return posixpath.normpath(path).replace("//", "/")


def _under(path: str, top: str) -> bool:
    return path == top or top == "/" or path.startswith(top.rstrip("/") + "/")


def _mounts(profile: Profile, host: HostFacts, *, own_net: bool, rootfs: bool,
            home_owner: tuple[int, int] | None = None, files: tuple[str, ...] = ()) -> list[MountOp]:
    """One pass for both kinds of root. On the host's tree: all of it read-only, the host's
    shared scratch places and runtime directories replaced by private tmpfs. In another root
    (targets are paths in it, resolved there by the stage): /proc, a minimal /dev, /tmp. Then
    HOME and the profile's mounts, whose sources are always the host's."""
    fresh: list[str] = []  # targets of tmpfs mounts made by this plan: we may create under them
    ops: list[MountOp] = []
    if rootfs:
        fresh.append("/")  # the tree is the sandbox's own: missing targets are made in it
        if profile.namespaces.pid:
            ops.append(MountOp("proc", "/proc", create=True, why="the PID namespace's own"))
        else:
            ops.append(MountOp("procbind", "/proc", create=True))
        ops.append(MountOp("dev", "/dev", create=True))
        ops.append(MountOp("tmpfs", "/tmp", size=profile.tmp.size, mode="1777", create=True))
    else:
        ops.append(MountOp("readonly-root", "/", readonly=True))
        if own_net:
            ops.append(MountOp("sysfs", "/sys", readonly=True,
                               why="the sandbox's own network interfaces, not the host's"))
        for path in host.scratch_dirs:
            size = SHM_SIZE if path == "/dev/shm" else profile.tmp.size
            ops.append(MountOp("tmpfs", path, size=size, mode="1777", why="private, not the host's"))
            fresh.append(path)
        for path in host.runtime_dirs:
            ops.append(MountOp("tmpfs", path, size=RUNTIME_SIZE, mode="0700", create=_creatable(path, fresh),
                               why="private: the host's session bus, systemd --user and agents stay out "
                                   "of reach"))
            fresh.append(path)

    if profile.home.mode == "tmpfs":
        ops.append(MountOp("tmpfs", host.home, size=profile.home.size, mode="0700", owner=home_owner,
                           create=_creatable(host.home, fresh), why="HOME"))
        fresh.append(host.home)
    else:
        ops.append(MountOp("bind", host.home, source=host.home, create=_creatable(host.home, fresh),
                           why="HOME (the host's, writable)"))
        fresh = [top for top in fresh if top == "/" or not _under(top, host.home)]
    seals: list[MountOp] = []
    tree = profile.worktree
    if tree.mode != "none":
        path = _bind_source(tree.path, ("worktree", "path"), host)
        shared = [d for d in (host.home, *host.scratch_dirs, *host.runtime_dirs) if _under(d, path)]
        if shared and path != "/":
            raise ProfileKeyError(("worktree", "path"), f"the work tree {path} holds {shared[0]}, which the "
                                  "sandbox keeps private (your HOME, a shared /tmp, your runtime directory)",
                                  "run it from the project's own directory (cd ~/src/project)")
        if tree.mode == "overlay" and any(c in path for c in ",:\\"):
            raise ProfileKeyError(("worktree", "path"), f"{path} contains ',', ':' or a backslash, which "
                                  "overlayfs cannot take as a layer", "move or link the tree elsewhere")
        if path == "/" or (rootfs and tree.mode == "overlay"):
            what = "/ is the whole host" if path == "/" else "an overlay work tree needs the host's root"
            raise ProfileKeyError(("worktree", "path") if path == "/" else ("worktree", "mode"), what,
                                  "name a project's directory" if path == "/" else "use mode 'rw' or 'ro'")
        create = _creatable(path, fresh)
        if tree.mode == "overlay":
            ops.append(MountOp("overlay", path, source=path, size=tree.size, create=create,
                               why="the work tree: it reads as the tree, writes go to a throwaway tmpfs"))
        else:
            ops.append(MountOp("bind", path, source=path, readonly=tree.mode == "ro", create=create,
                               why=f"the work tree ({'read-only' if tree.mode == 'ro' else 'writable'})"))
        fresh = [top for top in fresh if top == "/" or not _under(top, path)]
        if tree.mode == "rw":
            inside = [posixpath.join(path, rel) for rel in tree.protect]
            inside += [f for f in files if _under(f, path)]
            seals = [MountOp("seal", p, why="what would run later on the host stays as it is")
                     for p in dict.fromkeys(posixpath.normpath(p) for p in inside)]
    for index, mount in enumerate(profile.mounts):
        loc = ("mounts", index)
        target = expand(mount.target or mount.source or "", host)
        if target == "/":
            raise ProfileKeyError((*loc, "target"), "cannot mount over /", "name a directory below /")
        create = _creatable(target, fresh)
        if mount.type == "tmpfs":
            ops.append(MountOp("tmpfs", target, size=mount.size or TMPFS_DEFAULT_SIZE, mode="0755",
                               create=create))
            fresh.append(target)
            continue
        source = _bind_source(mount.source or "", loc, host)
        ops.append(MountOp("bind", target, source=source, readonly=mount.type == "ro-bind", create=create))
        # a bind hides what a tmpfs put there before; creating under it would write the host
        fresh = [top for top in fresh if top == "/" or not _under(top, target)]
    return ops + seals + _masks(profile, host, ops, rootfs=rootfs)


def _masks(profile: Profile, host: HostFacts, ops: list[MountOp], *, rootfs: bool) -> list[MountOp]:
    """[hide] paths, wherever the sandbox would show them: at their own path (on the host's
    tree), and where a bind shows them (or shows something inside them) at another path. The
    stage masks each that exists when it starts, and what its symlinks name."""
    found: dict[str, None] = {}
    for index, raw in enumerate(profile.hide.paths):
        path = expand(raw, host)
        if path == "/":
            raise ProfileKeyError(("hide", "paths", index), "cannot hide /", "name what to hide below /")
        if not rootfs:
            found[path] = None
        for op in ops:
            if op.kind not in ("bind", "overlay") or op.source == op.target and not rootfs:
                continue
            if _under(path, op.source):
                found[posixpath.normpath(op.target + path[len(op.source.rstrip("/")):])] = None
            elif _under(op.source, path):
                found[op.target] = None  # the bind shows part of what is hidden: all of it goes
    return [MountOp("mask", p, size=HIDE_SIZE, mode="0555") for p in found]


def _creatable(target: str, fresh: list[str]) -> bool:
    """target may be made: it lies in a tmpfs this plan made (or anywhere in another root)."""
    return any(_under(target, top) and target != top for top in fresh)


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
    covering = [op for op in mounts if op.kind in ("tmpfs", "bind", "overlay") and _under(host.cwd, op.target)]
    if not covering:
        return host.cwd
    last = max(covering, key=lambda op: len(op.target))
    if last.kind in ("bind", "overlay") and last.source == last.target:
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


def _env(profile: Profile, host: HostFacts, users: UserMap, shell: str, *, rootfs: bool) -> EnvRule:
    uid = users.run_as[0]
    name = "root" if uid == 0 else host.user if uid == host.uid and users.mode in ("self", "keep-id") else ""
    fixed: tuple[tuple[str, str], ...] = (("HOME", host.home),)
    if name:
        fixed += (("USER", name), ("LOGNAME", name))
    fixed += (("SHELL", shell),)
    if rootfs:
        # the tree's own programs, for the identity inside (root: the sbin directories too, where
        # dpkg finds ldconfig), not the host's PATH with its venvs
        fixed += (("PATH", ROOT_PATH if uid == 0 else DEFAULT_PATH),)
    keep = tuple(dict.fromkeys((*DEFAULT_KEEP, *profile.env.keep)))
    fixed_names = {k for k, _ in fixed} | {"USER", "LOGNAME"}
    keep = tuple(k for k in keep if k not in fixed_names)
    return EnvRule(keep=keep, set=tuple(sorted(profile.env.set.items())), fixed=fixed)
