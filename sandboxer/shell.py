"""`sandboxer explain --shell`: a plan as a POSIX shell script a person can read and run.

The script does by hand, with util-linux, what the stage does; it lacks what util-linux has no
verb for (the TIOCSTI filter, the fresh session keyring, the new session, the Landlock domain,
an init that forwards signals), and says so in its header.
"""

from __future__ import annotations

import shlex

from .idmap import proc_text
from .plan import LC_NAMES, MountOp, Plan, RootfsPlan, UserMap
from .wire import DEV_LINKS, DEV_NODES


def mount(op: MountOp, root: bool = False, source: str = "") -> list[str]:
    """Shell lines for one mount; source: a shell word naming the bind's source instead of its
    path (an fd opened before anything covered the path)."""
    q = shlex.quote
    lines = []
    target = q(op.target)
    source = source or q(op.source)
    if root:
        target = '"$root"' + q(op.target)
    if op.create:
        if op.kind == "bind":
            lines.append(f"[ -e {target} ] || {{ if [ -d {source} ]; then mkdir -p -- {target}; "
                         f"else mkdir -p -- \"$(dirname -- {target})\"; touch -- {target}; fi; }}")
        else:
            lines.append(f"[ -e {target} ] || mkdir -p -- {target}")
    if op.kind == "proc":
        return [*lines, f"mount -t proc -o nosuid,nodev,noexec proc {target}"]
    if op.kind == "sysfs":
        return [*lines, f"mount -t sysfs -o ro,nosuid,nodev,noexec -- sysfs {target}"]
    if op.kind == "readonly-root":
        return [
            "# every mount read-only (sandboxer: one recursive mount_setattr); /proc stays writable",
            "awk '{print $5}' /proc/self/mountinfo | while read -r m; do",
            '    m=$(printf %b "$m"); case $m in /proc|/proc/*) continue;; esac',
            '    mount -o remount,bind,ro -- "$m" 2>/dev/null || true',
            "done",
        ]
    if op.kind == "procbind":
        return [*lines, f"mount --rbind /proc {target}"]
    if op.kind == "dev":
        d = target
        lines.append(f"mount -t tmpfs -o nosuid,noexec,mode=0755,size=1m tmpfs {d}")
        for name in DEV_NODES:
            lines.append(f"touch {d}/{name}; mount --bind /dev/{name} {d}/{name}")
        lines += [f"mkdir {d}/pts {d}/shm",
                  f"mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts {d}/pts",
                  f"mount -t tmpfs -o nosuid,nodev,mode=1777,size=64m tmpfs {d}/shm"]
        return lines + [f"ln -s {q(t)} {d}/{n}" for n, t in DEV_LINKS]
    if op.kind == "mask":
        return [f"for p in {target} \"$(realpath -m -- {target})\"; do",
                '    if [ -d "$p" ]; then mount -t tmpfs -o ro,nosuid,nodev,noexec,size=4k,mode=0555 tmpfs "$p"',
                '    elif [ -e "$p" ]; then mount --bind /dev/null "$p" && mount -o remount,bind,ro -- "$p"; fi',
                "done"]
    if op.kind == "seal":
        return [f"if [ -e {target} ]; then mount --rbind -- {target} {target} && "
                f"mount -o remount,bind,ro -- {target}; fi"]
    if op.kind == "overlay":
        by_fd = source.startswith('"')
        return [*lines, f"mount {'-c ' if by_fd else ''}--rbind -- {source} {target}",
                "ovl=$(mktemp -d)",
                f'mount -t tmpfs -o size={op.size},mode=0700 tmpfs "$ovl"; mkdir "$ovl/upper" "$ovl/work"',
                f'mount -t overlay -o "lowerdir={op.target},upperdir=$ovl/upper,workdir=$ovl/work,userxattr" '
                f"overlay {target}",
                'umount -l "$ovl"']
    if op.kind in ("pin", "bind", "protect"):
        if op.kind != "bind":
            source = q(op.target)
        by_fd = source.startswith('"')
        lines.append(f"mount {'-c ' if by_fd else ''}--rbind -- {source} {target}")
        if by_fd and not op.readonly:
            # the fd was opened before the tree was made read-only; a bind copies that flag
            lines.append(f"mount -o remount,bind,rw -- {target}")
        if op.readonly:
            lines.append(f"mount -o remount,bind,ro -- {target}")
        return lines
    return [*lines, f"mount -t tmpfs -o {q(op.options())} -- tmpfs {target}"]


def rootfs(plan: RootfsPlan) -> list[str]:
    q = shlex.quote
    lines = [f"root={q(plan.path)}"]
    if plan.writes == "overlay":
        lines += [
            "ovl=$(mktemp -d)",
            'mount -t tmpfs -o mode=0700 tmpfs "$ovl"; mkdir "$ovl/upper" "$ovl/work"',
            'mount -t overlay -o "lowerdir=$root,upperdir=$ovl/upper,workdir=$ovl/work" overlay "$root"',
            'umount -l "$ovl"',
        ]
    else:
        lines.append('mount --rbind -- "$root" "$root"')
    lines.append("# (sandboxer also refuses symlinks on the way to each target below)")
    for op in plan.mounts:
        lines += [f"# {op.describe()}", *mount(op, root=True)]
    if plan.writes == "read-only":
        lines += ["# sandboxer makes mounts already inside $root read-only too (mount_setattr,",
                  "# recursive, before the mounts above); util-linux 2.38's mount cannot",
                  'mount -o remount,bind,ro -- "$root"']
    if plan.switch == "pivot_root":
        lines += ['cd -- "$root"', "pivot_root . .", "umount -l .", "cd /"]
    else:
        lines += ['cd -- "$root"', "# chroot: 'unshare --root=.' below, after the user namespace"]
    return lines


def _mounts(plan: Plan) -> list[str]:
    """The mounts; bind sources are opened first (fds 3-9; the rest, and sockets, by path),
    so that each shows the host's directory even where an earlier mount covers its path."""
    q = shlex.quote
    lines: list[str] = []
    sources: dict[int, str] = {}
    free = iter(range(3, 10))
    for index, op in enumerate(plan.mounts):
        if op.kind == "readonly-root":
            for later, bind in enumerate(plan.mounts[index + 1:], index + 1):
                if bind.kind not in ("bind", "overlay"):
                    continue
                fd = next(free, None)
                if fd is None:
                    lines.append("# (more binds than fds 3-9: the rest are bound by path)")
                    break
                var = f"src{fd}"
                lines.append(f'{var}={q(bind.source)}; [ -S "${var}" ] || '
                             f'{{ exec {fd}<"${var}"; {var}=/proc/self/fd/{fd}; }}')
                sources[later] = var
        lines.append(f"# {op.describe()}")
        lines += mount(op, source=f'"${sources[index]}"' if index in sources else "")
    if sources:
        lines.append("exec " + " ".join(f"{var[3:]}<&-" for var in sources.values()))
    return lines


def _network_stage(plan: Plan) -> list[str]:
    net = plan.network
    assert net is not None
    q = shlex.quote
    return [
        f"# {net.tap} made persistent ahead of {net.backend}: it then exits without tearing it down",
        f"ip tuntap add dev {net.tap} mode tap",
        "# resolv.conf and hosts: written in a throwaway tmpfs, bound over /etc's files",
        "netfiles=$(mktemp -d)",
        'mount -t tmpfs -o size=64k,mode=0755 tmpfs "$netfiles"',
        f'printf %s {q(net.resolv_conf)} > "$netfiles/resolv.conf"',
        f'printf %s {q(net.hosts)} > "$netfiles/hosts"',
        'mount --bind "$netfiles/resolv.conf" /etc/resolv.conf',
        'mount --bind "$netfiles/hosts" /etc/hosts',
        'umount -l "$netfiles"; rmdir "$netfiles"',
        "echo 0 > /proc/sys/net/ipv4/ip_unprivileged_port_start",
    ]


def _write_maps(users: UserMap) -> list[str]:
    """Several ids in the payload's namespace: unshare(1) could only map them through newuidmap,
    which does not work inside a user namespace; the map is written from here (root of the
    outer namespace), by a background job that waits for this shell's pid to enter its new
    namespace (exec unshare keeps the pid)."""
    uid_map, gid_map = (proc_text(m) for m in (users.uid_map, users.gid_map))
    return [
        "# the payload's user namespace maps several ids: written from outside it, once it exists",
        "ns=$(readlink /proc/self/ns/user)",
        '( i=0; while [ "$(readlink /proc/$$/ns/user)" = "$ns" ] && [ $i -lt 1000 ]; do i=$((i+1)); '
        "sleep 0.01; done",
        f"  printf %s {shlex.quote(uid_map)} > /proc/$$/uid_map",
        f"  printf %s {shlex.quote(gid_map)} > /proc/$$/gid_map ) &",
    ]


def render(plan: Plan) -> str:
    """The whole plan as a script."""
    q = shlex.quote
    body = ["set -eu"]
    for op in plan.guards:
        body += [f"# {op.describe()}", *mount(op)]
    body += _mounts(plan)
    if plan.network:
        body += _network_stage(plan)
    if plan.loopback_up:
        body.append("ip link set lo up")
    if plan.hostname:
        body.append(f"hostname {q(plan.hostname)}")
    if plan.network:
        body += plan.network.shell_ready()
    switch = ""
    if plan.rootfs:
        body += rootfs(plan.rootfs)
        if plan.rootfs.switch == "chroot":
            switch = f"--root=. --wd={q(plan.cwd)} -- "
        else:
            body.append("# from here on, commands are the rootfs's own (sandboxer's stage needs none)")
    if not switch:
        body.append(f"cd -- {q(plan.cwd)}")
    env_words = ["env", "-i", "--"]
    for name in plan.env.keep:
        names = LC_NAMES if name == "LC_*" else (name,)
        if name.endswith("*") and name != "LC_*":
            body.append(f"# keep {name}: list the names you need; a shell cannot match a prefix")
            continue
        for n in names:
            if n == "PATH":
                env_words.append(f'"PATH=${{PATH-{plan.env.default_path}}}"')
            else:
                env_words.append(f'${{{n}+"{n}=${n}"}}')
    env_words += [q(f"{k}={v}") for k, v in (*plan.env.fixed, *plan.env.set)]
    users = plan.users
    setpriv = "setpriv"
    if users.by_stage:
        if users.switch_to:
            uid, gid = users.run_as
            setpriv += f" --reuid={uid} --regid={gid} --groups={gid}"
        body += _write_maps(users)
        userns = ("exec unshare --user -- sh -c 'i=0; until grep -q . /proc/self/uid_map; do "
                  "[ $i -lt 1000 ] || exit 125; i=$((i+1)); sleep 0.01; done; exec \"$@\"' sh")
    else:
        userns = "exec unshare --user " + " ".join(users.unshare_args()) + " --"
    body.append(
        userns + f" {setpriv} --no-new-privs"
        + (" --bounding-set=-sys_chroot -- unshare " + switch if plan.rootfs else " -- ")
        + " ".join(env_words) + ' "$@"'
    )
    delimiter = "SANDBOXER_STAGE"
    while delimiter in body:
        delimiter += "_"
    outer = [*plan.outer[: plan.outer.index("--")], "--", "/bin/sh", "-euc", '"$stage"', "sh"]
    head = [
        "#!/bin/sh",
        f"# sandboxer plan{': ' + plan.description if plan.description else ''}",
        "# Written by 'sandboxer explain --shell'. It sets up the same namespaces and mounts by",
        "# hand; it lacks what util-linux has no verb for: the TIOCSTI filter, the fresh session",
        "# keyring, the new session, the Landlock domain, and an init that forwards signals",
        "# (sandboxer's stage).",
        "set -eu",
        f"stage=$(cat <<'{delimiter}'",
        *body,
        delimiter,
        ")",
    ]
    if plan.network:
        head += plan.network.shell_outside()
    head.append(
        "exec " + " ".join(q(w) if w != '"$stage"' else w for w in outer) + " " + shlex.join(plan.command)
    )
    return "\n".join(head) + "\n"
