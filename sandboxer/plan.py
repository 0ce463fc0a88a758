"""The compiled plan: frozen data, and its renderings (describe lines, shell script, JSON, recipe).

A Plan says everything that will happen, in order. compile() builds it without touching the
host; supervise and stage carry out its recipe (a marshal-able dict) and nothing else.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
from dataclasses import dataclass
from typing import Literal

RECIPE_VERSION = 5
# Landlock scopes the stage must apply or fail (stage.c: the bits of its "landlock" field)
LANDLOCK_SCOPES = {"abstract-sockets": 1, "signals": 2}

# Variables every sandbox keeps from the caller, besides the profile's own list.
DEFAULT_KEEP = ("PATH", "TERM", "LANG", "LC_*")
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
# The LC_* names, for the shell rendering (a shell has no prefix expansion of names).
LC_NAMES = (
    "LC_ALL", "LC_CTYPE", "LC_COLLATE", "LC_MESSAGES", "LC_NUMERIC", "LC_TIME", "LC_MONETARY",
    "LC_PAPER", "LC_NAME", "LC_ADDRESS", "LC_TELEPHONE", "LC_MEASUREMENT", "LC_IDENTIFICATION",
)

MountKind = Literal["pin", "hide", "protect", "readonly-root", "sysfs", "tmpfs", "bind", "proc",
                    "procbind", "dev"]
# what the stage puts in a minimal /dev: host devices bound onto files, and links
DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")
DEV_LINKS = (("ptmx", "pts/ptmx"), ("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
             ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"))


@dataclass(frozen=True)
class MountOp:
    """One mount made by the stage inside the new mount namespace, before the payload's userns."""

    kind: MountKind
    target: str
    source: str = ""
    readonly: bool = False
    size: int = 0
    mode: str = ""
    # create the target (and missing parents) first: only under a tmpfs this plan made
    create: bool = False
    why: str = ""

    def options(self) -> str:
        opts = ["ro"] if self.readonly else []
        if self.kind in ("tmpfs", "hide"):
            opts += ["nosuid", "nodev"]
            if self.kind == "hide":
                opts.append("noexec")
            opts += [f"size={self.size}", f"mode={self.mode}"]
        return ",".join(opts)

    def describe(self) -> str:
        create = ", creating it" if self.create else ""
        if self.kind == "proc":
            text = f"mount a fresh proc on {self.target} (nosuid,nodev,noexec{create})"
        elif self.kind == "procbind":
            text = f"bind /proc on {self.target} (rbind; no PID namespace{create})"
        elif self.kind == "dev":
            text = (f"mount a minimal /dev on {self.target}: tmpfs; host {', '.join(DEV_NODES)} bound "
                    "onto files; devpts (newinstance,ptmxmode=0666) on pts; tmpfs shm; links "
                    f"{', '.join(n + ' -> ' + t for n, t in DEV_LINKS)}{create}")
        elif self.kind == "pin":
            text = f"pin {self.target} (bind it onto itself{create})"
        elif self.kind == "hide":
            text = f"hide {self.target} (empty read-only tmpfs)"
        elif self.kind == "protect":
            text = f"read-only bind {self.target} onto itself"
        elif self.kind == "readonly-root":
            text = ("take every bind source below from the host's tree as it is now (open_tree), then "
                    "make the whole tree read-only (mount_setattr, recursive; /proc stays writable)")
        elif self.kind == "sysfs":
            text = f"mount a fresh sysfs on {self.target} (ro,nosuid,nodev,noexec)"
        elif self.kind == "tmpfs":
            text = f"mount tmpfs on {self.target} ({self.options()}{create})"
        else:
            what = "read-only bind" if self.readonly else "bind"
            text = f"{what} {self.source} on {self.target}{create}"
        return f"{text}: {self.why}" if self.why else text

    def shell(self, root: bool = False, source: str = "") -> list[str]:
        """Shell lines for this mount; source: a shell word naming the bind's source instead of
        its path (an fd opened before anything covered the path)."""
        q = shlex.quote
        lines = []
        target = q(self.target)
        source = source or q(self.source)
        if root:
            target = '"$root"' + q(self.target)
        if self.create:
            if self.kind == "bind":
                lines.append(f"[ -e {target} ] || {{ if [ -d {source} ]; then mkdir -p -- {target}; "
                             f"else mkdir -p -- \"$(dirname -- {target})\"; touch -- {target}; fi; }}")
            else:
                lines.append(f"[ -e {target} ] || mkdir -p -- {target}")
        if self.kind == "proc":
            lines.append(f"mount -t proc -o nosuid,nodev,noexec proc {target}")
            return lines
        if self.kind == "sysfs":
            lines.append(f"mount -t sysfs -o ro,nosuid,nodev,noexec -- sysfs {target}")
            return lines
        if self.kind == "readonly-root":
            return [
                "# every mount read-only (sandboxer: one recursive mount_setattr); /proc stays writable",
                "awk '{print $5}' /proc/self/mountinfo | while read -r m; do",
                '    m=$(printf %b "$m"); case $m in /proc|/proc/*) continue;; esac',
                '    mount -o remount,bind,ro -- "$m" 2>/dev/null || true',
                "done",
            ]
        if self.kind == "procbind":
            lines.append(f"mount --rbind /proc {target}")
            return lines
        if self.kind == "dev":
            d = target
            lines.append(f"mount -t tmpfs -o nosuid,noexec,mode=0755,size=1m tmpfs {d}")
            for name in DEV_NODES:
                lines.append(f"touch {d}/{name}; mount --bind /dev/{name} {d}/{name}")
            lines += [f"mkdir {d}/pts {d}/shm",
                      f"mount -t devpts -o newinstance,ptmxmode=0666,mode=620 devpts {d}/pts",
                      f"mount -t tmpfs -o nosuid,nodev,mode=1777,size=64m tmpfs {d}/shm"]
            lines += [f"ln -s {q(t)} {d}/{n}" for n, t in DEV_LINKS]
            return lines
        if self.kind in ("pin", "bind", "protect"):
            if self.kind != "bind":
                source = q(self.target)
            by_fd = source.startswith('"')
            lines.append(f"mount {'-c ' if by_fd else ''}--rbind -- {source} {target}")
            if by_fd and not self.readonly:
                # the fd was opened before the tree was made read-only; a bind copies that flag
                lines.append(f"mount -o remount,bind,rw -- {target}")
            if self.readonly:
                lines.append(f"mount -o remount,bind,ro -- {target}")
        else:
            lines.append(f"mount -t tmpfs -o {q(self.options())} -- tmpfs {target}")
        return lines

    def recipe(self) -> tuple[str, str, str, bool, int, str, bool]:
        return (self.kind, self.source, self.target, self.readonly, self.size, self.mode, self.create)


@dataclass(frozen=True)
class RootfsPlan:
    """Another root filesystem: its mounts (targets inside it) and how the stage switches to it.

    Every target is resolved inside the new root one component at a time without following
    symlinks; a symlink anywhere on the way is refused, so nothing lands outside the tree.
    """

    path: str
    switch: Literal["pivot_root", "chroot"]
    writes: Literal["persist", "read-only", "overlay"]
    mounts: tuple[MountOp, ...]

    def describe(self) -> list[str]:
        if self.writes == "overlay":
            lines = [f"stage: mount overlayfs on {self.path} (lower: {self.path}; upper and work "
                     "dirs on a throwaway tmpfs): the new root, writes vanish on exit"]
        else:
            lines = [f"stage: bind {self.path} onto itself (rbind): the new root"]
        lines.append("stage: resolve every target below inside the new root without following "
                     "symlinks (a symlinked target or parent is refused); create missing ones")
        if self.writes == "read-only":
            lines.append("stage: make the new root and every mount already inside it read-only "
                         "(mount_setattr, recursive), after creating the mount points below; the "
                         "mounts below go on top and stay as asked")
        for op in self.mounts:
            lines.append(f"stage: in the new root: {op.describe()}")
        if self.switch == "pivot_root":
            lines.append(f"stage: cd {self.path}; pivot_root . .; umount -l . (the old root is "
                         "detached: nothing of the host remains but the binds above)")
        else:
            lines.append(f"payload: after its user namespace: cd {self.path}; chroot . (the old "
                         "root stays mounted outside the new root)")
        lines.append("payload: drop CAP_SYS_CHROOT from the bounding set (no chroot escape; "
                     "a chrooted process cannot make a new user namespace to regain it)")
        return lines

    def shell(self) -> list[str]:
        q = shlex.quote
        lines = [f"root={q(self.path)}"]
        if self.writes == "overlay":
            lines += [
                "ovl=$(mktemp -d)",
                'mount -t tmpfs -o mode=0700 tmpfs "$ovl"; mkdir "$ovl/upper" "$ovl/work"',
                'mount -t overlay -o "lowerdir=$root,upperdir=$ovl/upper,workdir=$ovl/work" overlay "$root"',
                'umount -l "$ovl"',
            ]
        else:
            lines.append('mount --rbind -- "$root" "$root"')
        lines.append("# (sandboxer also refuses symlinks on the way to each target below)")
        for op in self.mounts:
            lines += [f"# {op.describe()}", *op.shell(root=True)]
        if self.writes == "read-only":
            lines += ["# sandboxer makes mounts already inside $root read-only too (mount_setattr,",
                      "# recursive, before the mounts above); util-linux 2.38's mount cannot",
                      'mount -o remount,bind,ro -- "$root"']
        if self.switch == "pivot_root":
            lines += ['cd -- "$root"', "pivot_root . .", "umount -l .", "cd /"]
        else:
            lines += ['cd -- "$root"', "# chroot: 'unshare --root=.' below, after the user namespace"]
        return lines

    def recipe(self) -> dict[str, object]:
        return {"dir": self.path, "switch": self.switch, "writes": self.writes,
                "mounts": [op.recipe() for op in self.mounts]}


@dataclass(frozen=True)
class UserMap:
    """The payload's user namespace: inside ids, each mapped to the caller's own id."""

    mode: Literal["self", "root"]
    inside_uid: int
    inside_gid: int
    outside_uid: int
    outside_gid: int

    def unshare_args(self) -> list[str]:
        if self.mode == "root":
            return ["--map-root-user"]
        return [f"--map-user={self.inside_uid}", f"--map-group={self.inside_gid}"]


@dataclass(frozen=True)
class Isolation:
    """Landlock scopes the payload must get (the run fails where the kernel has none), and the
    exposures the profile accepts instead on such kernels."""

    required: tuple[str, ...]
    accepted: tuple[str, ...]

    def describe(self) -> list[str]:
        lines = [f"payload: Landlock scope {name} (required: the kernel must have Landlock ABI 6, "
                 "Linux 6.12+, or the run fails)" for name in self.required]
        lines += [f"payload: Landlock scope {name} where the kernel has it (the profile accepts the "
                  "exposure elsewhere)" for name in self.accepted]
        return lines


@dataclass(frozen=True)
class EnvRule:
    """How the payload's environment is built at run time from the caller's."""

    keep: tuple[str, ...]
    set: tuple[tuple[str, str], ...]
    fixed: tuple[tuple[str, str], ...]
    default_path: str = DEFAULT_PATH

    def describe(self) -> str:
        parts = [f"{k}={v}" for k, v in self.fixed] + [f"{k}={v}" for k, v in self.set]
        return f"environment: keep {' '.join(self.keep)}; set {shlex.join(parts)}"


# Placeholders in the slirp4netns argv, filled in by the supervisor at run time.
STAGE_PID = "{stage}"  # the stage's pid as the host sees it
API_SOCKET = "/proc/{stage}/cwd/api.sock"  # in the stage's private, detached working directory
SLIRP_READY_FD, SLIRP_EXIT_FD = 3, 4
GUEST_ADDR, GATEWAY, NAMESERVER = "10.0.2.100", "10.0.2.2", "10.0.2.3"


@dataclass(frozen=True)
class Forward:
    """One host port forwarded into the sandbox through slirp4netns's API (add_hostfwd)."""

    proto: str
    host_addr: str
    host_port: int
    guest_port: int

    def describe(self) -> str:
        addr = f"[{self.host_addr}]" if ":" in self.host_addr else self.host_addr
        return f"{addr}:{self.host_port} -> {self.guest_port}/{self.proto}"

    def request(self) -> str:
        """The API request, one line of JSON (built by the encoder: no value is spliced in)."""
        return json.dumps({"execute": "add_hostfwd", "arguments": {
            "proto": self.proto, "host_addr": self.host_addr, "host_port": int(self.host_port),
            "guest_port": int(self.guest_port)}})


@dataclass(frozen=True)
class NetworkPlan:
    """slirp4netns: started by the supervisor once the sandbox's net namespace exists."""

    mode: str
    argv: tuple[str, ...]  # with STAGE_PID and API_SOCKET placeholders
    forwards: tuple[Forward, ...]
    warnings: tuple[str, ...]
    resolv_conf: str
    hosts: str

    def describe(self) -> list[str]:
        lines = [
            f"supervisor: start {shlex.join(self.argv)} ({STAGE_PID}: the stage's pid; slirp4netns "
            "joins its network namespace and the user namespace owning it)",
            "supervisor: wait (bounded) for slirp4netns to be ready: tap0 "
            f"{GUEST_ADDR}/24, default route via {GATEWAY}, DNS at {NAMESERVER}",
        ]
        lines += [f"supervisor: forward {fwd.describe()} (add_hostfwd over {API_SOCKET})"
                  for fwd in self.forwards]
        if self.forwards:
            lines.append(f"supervisor: remove {API_SOCKET}")
        lines.append("supervisor: watch slirp4netns: if it dies, kill the sandbox (exit 125)")
        return lines

    def recipe(self) -> dict[str, object]:
        return {
            "argv": list(self.argv),
            "forwards": [fwd.request() for fwd in self.forwards],
            "shown": [fwd.describe() for fwd in self.forwards],
        }


@dataclass(frozen=True)
class Plan:
    """Everything one sandbox run does, in order."""

    description: str
    namespaces: tuple[str, ...]
    outer: tuple[str, ...]  # the first hop: unshare ... -- sandboxer-stage
    guards: tuple[MountOp, ...]  # on the host's tree first: sandboxer's own state and install
    mounts: tuple[MountOp, ...]
    hostname: str
    loopback_up: bool
    inner: UserMap
    cwd: str
    env: EnvRule
    command: tuple[str, ...]
    pid: bool
    hardening: tuple[str, ...]
    isolation: Isolation
    warnings: tuple[str, ...]  # printed on every run
    network: NetworkPlan | None = None
    rootfs: RootfsPlan | None = None

    # ---- renderings -------------------------------------------------------------------------
    def describe(self) -> list[str]:
        """One line per step, in the order they happen."""
        lines = [f"supervisor: warning: {w}" for w in self.warnings]
        lines.append(f"supervisor: spawn {shlex.join(self.outer)}")
        lines.append(f"  namespaces: {', '.join(self.namespaces)}")
        if self.pid:
            lines.append("stage: runs as PID 1: forwards signals to the payload, reaps orphans")
        for op in (*self.guards, *self.mounts):
            lines.append(f"stage: {op.describe()}")
        if self.rootfs:
            lines += self.rootfs.describe()
        if self.network:
            lines.append("stage: create tap0, persistent (slirp4netns attaches to it; it goes away "
                         "with the namespace, not synchronously when slirp4netns exits)")
            lines.append(f"stage: mount a resolv.conf naming {NAMESERVER} over /etc/resolv.conf")
            lines.append("stage: mount an /etc/hosts naming localhost and the hostname over /etc/hosts")
            lines.append("stage: set net.ipv4.ip_unprivileged_port_start=0 in the new network namespace")
        if self.loopback_up:
            lines.append("stage: bring lo up in the new network namespace")
        if self.hostname:
            lines.append(f"stage: set hostname {self.hostname}")
        if self.network and self.network.forwards:
            lines.append("stage: make a private directory for slirp4netns's API socket: a tmpfs, "
                         "detached and kept as the stage's working directory, so that only the "
                         f"supervisor reaches it (as {API_SOCKET})")
        lines.append("stage: report ready; supervisor: parent-side work, then go")
        if self.network:
            lines += self.network.describe()
        lines.append(
            "stage: fork the payload: own session (or own foreground job on a terminal), "
            "fresh session keyring"
        )
        lines.append(
            f"payload: unshare --user {' '.join(self.inner.unshare_args())} "
            "(a nested user namespace: every mount above is locked)"
        )
        lines.append(f"payload: {', '.join(self.hardening)}")
        lines += self.isolation.describe()
        lines.append(f"payload: {self.env.describe()}")
        lines.append(f"payload: cd {shlex.quote(self.cwd)}; exec {shlex.join(['--', *self.command])}")
        return lines + [f"summary: {line}" for line in self.summary()]

    def summary(self) -> list[str]:
        """What the payload can and cannot reach, in a few lines."""
        ops = (*self.guards, *self.mounts, *(self.rootfs.mounts if self.rootfs else ()))
        hidden = [op.target for op in ops if op.kind == "hide"]
        hidden += [op.target for op in self.mounts if op.kind == "tmpfs" and op.why.startswith("private")]
        lines = []
        if self.rootfs:
            lines.append(f"root: {self.rootfs.path} ({self.rootfs.switch}, writes {self.rootfs.writes}); "
                         "nothing else of the host's tree but the binds below")
        else:
            lines.append("read-only: the host's whole tree, except what is listed as writable")
        if hidden:
            lines.append("hidden (empty or private in the sandbox): " + ", ".join(hidden))
        if any(op.kind == "sysfs" for op in self.mounts):
            lines.append("hidden: the host's network interfaces (/sys is the sandbox's own)")
        protected = [op.target for op in self.guards if op.kind == "protect"]
        if protected:
            lines.append("read-only even inside writable binds: " + ", ".join(protected)
                         + " (sandboxer's own installation)")
        writable = [op.target for op in ops if op.kind == "tmpfs" and not op.why.startswith("private")]
        writable += [f"{op.target} (bind of {op.source})" if op.source != op.target else op.target
                     for op in ops if op.kind == "bind" and not op.readonly]
        if writable:
            lines.append("writable: " + ", ".join(writable))
        shared = [f"{op.source} (read-only bind)" for op in ops if op.kind == "bind" and op.readonly]
        if "net" not in self.namespaces:
            shared.append("the host's network (abstract unix sockets excepted: Landlock scope)")
        if not self.pid:
            shared.append("the host's PID namespace (signals and ptrace outside refused: Landlock)")
        if shared:
            lines.append("shared with the host: " + ", ".join(shared))
        if self.isolation.accepted:
            lines.append("accepted exposures, on kernels without Landlock ABI 6: "
                         + ", ".join(self.isolation.accepted))
        return lines

    def shell(self) -> str:
        """The same chain as a POSIX shell script a person can read and run."""
        q = shlex.quote
        body = ["set -eu"]
        for op in self.guards:
            body += [f"# {op.describe()}", *op.shell()]
        body += self._mounts_shell()
        if self.network:
            body += self._network_stage_shell()
        if self.loopback_up:
            body.append("ip link set lo up")
        if self.hostname:
            body.append(f"hostname {q(self.hostname)}")
        if self.network:
            body += [
                "# wait (bounded) until slirp4netns, started outside, has configured tap0",
                "i=0",
                f"until ip -4 -o addr show dev tap0 2>/dev/null | grep -q {GUEST_ADDR}; do",
                "    i=$((i + 1)); [ $i -le 200 ] || { echo 'network not ready' >&2; exit 125; }",
                "    sleep 0.05",
                "done",
            ]
        switch = ""
        if self.rootfs:
            body += self.rootfs.shell()
            if self.rootfs.switch == "chroot":
                switch = f"--root=. --wd={q(self.cwd)} -- "
            else:
                body.append("# from here on, commands are the rootfs's own (sandboxer's stage needs none)")
        if not switch:
            body.append(f"cd -- {q(self.cwd)}")
        env_words = ["env", "-i", "--"]
        for name in self.env.keep:
            names = LC_NAMES if name == "LC_*" else (name,)
            if name.endswith("*") and name != "LC_*":
                body.append(f"# keep {name}: list the names you need; a shell cannot match a prefix")
                continue
            for n in names:
                if n == "PATH":
                    env_words.append(f'"PATH=${{PATH-{self.env.default_path}}}"')
                else:
                    env_words.append(f'${{{n}+"{n}=${n}"}}')
        env_words += [q(f"{k}={v}") for k, v in (*self.env.fixed, *self.env.set)]
        body.append(
            "exec unshare --user " + " ".join(self.inner.unshare_args())
            + " -- setpriv --no-new-privs"
            + (" --bounding-set=-sys_chroot -- unshare " + switch if self.rootfs else " -- ")
            + " ".join(env_words) + ' "$@"'
        )
        delimiter = "SANDBOXER_STAGE"
        while delimiter in body:
            delimiter += "_"
        outer = [*self.outer[: self.outer.index("--")], "--", "/bin/sh", "-euc", '"$stage"', "sh"]
        head = [
            "#!/bin/sh",
            f"# sandboxer plan{': ' + self.description if self.description else ''}",
            "# Written by 'sandboxer explain --shell'. It sets up the same namespaces and mounts by",
            "# hand; it lacks what util-linux has no verb for: the TIOCSTI filter, the fresh session",
            "# keyring, the new session, and an init that forwards signals (sandboxer's stage).",
            "set -eu",
            f"stage=$(cat <<'{delimiter}'",
            *body,
            delimiter,
            ")",
        ]
        if self.network:
            head += self._network_outside_shell()
        head.append(
            "exec " + " ".join(q(w) if w != '"$stage"' else w for w in outer) + " "
            + shlex.join(self.command)
        )
        return "\n".join(head) + "\n"

    def _mounts_shell(self) -> list[str]:
        """The mounts; bind sources are opened first (fds 3-9; the rest, and sockets, by path),
        so that each shows the host's directory even where an earlier mount covers its path."""
        q = shlex.quote
        lines: list[str] = []
        sources: dict[int, str] = {}
        free = iter(range(3, 10))
        for index, op in enumerate(self.mounts):
            if op.kind == "readonly-root":
                for later, bind in enumerate(self.mounts[index + 1:], index + 1):
                    if bind.kind != "bind":
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
            if index in sources:
                lines += op.shell(source=f'"${sources[index]}"')
            else:
                lines += op.shell()
        if sources:
            lines.append("exec " + " ".join(f"{var[3:]}<&-" for var in sources.values()))
        return lines

    def _network_stage_shell(self) -> list[str]:
        assert self.network is not None
        q = shlex.quote
        return [
            "# tap0 made persistent ahead of slirp4netns: it then exits without tearing it down",
            "ip tuntap add dev tap0 mode tap",
            "# resolv.conf and hosts: written in a throwaway tmpfs, bound over /etc's files",
            "netfiles=$(mktemp -d)",
            'mount -t tmpfs -o size=64k,mode=0755 tmpfs "$netfiles"',
            f'printf %s {q(self.network.resolv_conf)} > "$netfiles/resolv.conf"',
            f'printf %s {q(self.network.hosts)} > "$netfiles/hosts"',
            'mount --bind "$netfiles/resolv.conf" /etc/resolv.conf',
            'mount --bind "$netfiles/hosts" /etc/hosts',
            'umount -l "$netfiles"; rmdir "$netfiles"',
            "echo 0 > /proc/sys/net/ipv4/ip_unprivileged_port_start",
        ]

    def _network_outside_shell(self) -> list[str]:
        """Start slirp4netns from outside once the sandbox exists: a background job that finds
        the stage (unshare, exec'd below, keeps this shell's pid $$)."""
        assert self.network is not None
        q = shlex.quote
        argv = []
        for word in self.network.argv:
            word = "$$" if word == STAGE_PID else q(word).replace(API_SOCKET, "'\"$api\"'")
            argv.append(word)
        argv = [w for w in argv if not w.startswith(("--ready-fd", "--exit-fd"))]
        lines = [
            "# network: slirp4netns, started from outside against the sandbox's first process",
            "netdir=$(mktemp -d)  # private (0700): holds the API socket",
            'api="$netdir/api.sock"',
            "(",
            "    i=0",
            "    while :; do  # unshare (exec'd below with this shell's pid) made the namespaces",
            '        if [ "$(readlink /proc/$$/ns/net)" != "$(readlink /proc/self/ns/net)" ] &&',
            "            grep -q . /proc/$$/uid_map 2>/dev/null; then break; fi",
            "        i=$((i + 1)); [ $i -le 200 ] || exit 1; sleep 0.05",
            "    done",
            "    " + " ".join(argv) + " >/dev/null 2>&1 &",
            "    slirp=$!",
        ]
        if self.network.forwards:
            lines += [
                '    i=0; until [ -S "$api" ]; do i=$((i + 1)); [ $i -le 200 ] || exit 1; sleep 0.05; done',
            ]
            for fwd in self.network.forwards:
                lines += [
                    f"    # forward {fwd.describe()}",
                    "    python3 -c 'import socket, sys; s = socket.socket(socket.AF_UNIX); "
                    "s.connect(sys.argv[1]); s.sendall(sys.argv[2].encode()); "
                    "s.shutdown(socket.SHUT_WR); print(s.recv(4096).decode())' "
                    f'"$api" {q(fwd.request())} >&2',
                ]
        lines += [
            '    rm -f "$api"; rmdir "$netdir"',
            "    # slirp4netns does not exit when the namespace dies: stop it when unshare ends",
            "    while kill -0 $$ 2>/dev/null; do sleep 0.5; done",
            '    kill "$slirp"; wait "$slirp" 2>/dev/null || true',
            ") </dev/null &",
        ]
        return lines

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["steps"] = self.describe()
        return json.dumps(data, indent=2) + "\n"

    def recipe(self) -> dict[str, object]:
        """What supervise and stage need, as plain marshal-able data."""
        return {
            "v": RECIPE_VERSION,
            "outer": list(self.outer),
            "pid": self.pid,
            "mounts": [op.recipe() for op in (*self.guards, *self.mounts)],
            "hostname": self.hostname,
            "lo": self.loopback_up,
            "inner": (self.inner.inside_uid, self.inner.inside_gid),
            "cwd": self.cwd,
            "keep": list(self.env.keep),
            "set": list(self.env.set),
            "fixed": list(self.env.fixed),
            "path": self.env.default_path,
            "command": list(self.command),
            "landlock": sum(bit for name, bit in LANDLOCK_SCOPES.items() if name in self.isolation.required),
            "apidir": bool(self.network and self.network.forwards),
            "warnings": list(self.warnings),
            "net": self.network.recipe() if self.network else None,
            "netfiles": (self.network.resolv_conf, self.network.hosts) if self.network else None,
            "rootfs": self.rootfs.recipe() if self.rootfs else None,
        }
