"""The compiled plan: frozen data, and its renderings (describe lines, JSON; the shell script
is shell.py's), and the run spec derived from it.

A Plan says everything that will happen, in order. compile() builds it without touching the
host; supervise and stage carry out its spec (spec.py) and nothing else.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
from dataclasses import dataclass
from typing import Literal

from .idmap import OVERFLOW_ID, IdMap, proc_text, to_outside
from .idmap import describe as describe_map
from .netplan import API_SOCKET, NetworkPlan
from .profile import RootSwitch, RootWrites
from .spec import EnvSpec, MountSpec, RootfsSpec, RunSpec, UserSpec
from .wire import DEV_LINKS, DEV_NODES, LANDLOCK, RLIMITS

# Variables every sandbox keeps from the caller, besides the profile's own list.
DEFAULT_KEEP = ("PATH", "TERM", "LANG", "LC_*")
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
# root's PATH in another root filesystem (Debian's, for uid 0)
ROOT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# The LC_* names, for the shell rendering (a shell has no prefix expansion of names).
LC_NAMES = (
    "LC_ALL", "LC_CTYPE", "LC_COLLATE", "LC_MESSAGES", "LC_NUMERIC", "LC_TIME", "LC_MONETARY",
    "LC_PAPER", "LC_NAME", "LC_ADDRESS", "LC_TELEPHONE", "LC_MEASUREMENT", "LC_IDENTIFICATION",
)

MountKind = Literal["pin", "hide", "protect", "readonly-root", "sysfs", "tmpfs", "bind", "proc",
                    "procbind", "dev", "mask", "seal", "overlay"]


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
    # a tmpfs's owner, in the outer namespace's ids (None: the caller, who mounts it)
    owner: tuple[int, int] | None = None

    def options(self) -> str:
        opts = ["ro"] if self.readonly else []
        if self.kind in ("tmpfs", "hide"):
            opts += ["nosuid", "nodev"]
            if self.kind == "hide":
                opts.append("noexec")
            opts += [f"size={self.size}", f"mode={self.mode}"]
            if self.owner:
                opts += [f"uid={self.owner[0]}", f"gid={self.owner[1]}"]
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
        elif self.kind == "mask":
            text = (f"hide {self.target} where it exists, and what its symlinks name (a directory: empty, "
                    "read-only; else /dev/null)")
        elif self.kind == "seal":
            text = f"read-only {self.target} where it exists (bind onto itself)"
        elif self.kind == "overlay":
            text = (f"overlay on {self.target}: {self.source} below, writes to a tmpfs above "
                    f"(size={self.size}, or run --keep DIR{create})")
        else:
            what = "read-only bind" if self.readonly else "bind"
            text = f"{what} {self.source} on {self.target}{create}"
        return f"{text}: {self.why}" if self.why else text

    def spec(self) -> MountSpec:
        return MountSpec(self.kind, self.source, self.target, self.readonly, self.size, self.mode, self.create,
                         self.owner or (-1, -1))

@dataclass(frozen=True)
class RootfsPlan:
    """Another root filesystem: its mounts (targets inside it) and how the stage switches to it.

    Every target is resolved inside the new root one component at a time without following
    symlinks; a symlink anywhere on the way is refused, so nothing lands outside the tree.
    """

    path: str
    switch: RootSwitch
    writes: RootWrites
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

@dataclass(frozen=True)
class UserMap:
    """The payload's user namespace: its maps (idmap.py), in the outer namespace's ids (0 = the
    caller; 1..N = the caller's first subordinate range, for 'auto' and 'keep-id') and as host
    ids, and the ids the payload runs as."""

    mode: Literal["self", "root", "auto", "keep-id"]
    uid_map: IdMap
    gid_map: IdMap
    host_uids: IdMap
    host_gids: IdMap
    own: tuple[int, int]  # the caller's uid and gid on the host
    run_as: tuple[int, int]  # inside
    # the stage writes the maps (several ids need CAP_SETUID over the outer namespace), with
    # setgroups allowed
    by_stage: bool
    outer_args: tuple[str, ...]  # for the outer unshare: the subordinate ranges
    # run_as in the outer namespace's ids, when it is not the caller (whom the map makes the
    # payload): the payload switches to it, with its gid as the only group, and owns a tmpfs HOME
    switch_to: tuple[int, int] | None

    def unshare_args(self) -> list[str]:
        """unshare(1)'s options for a map of one id (what util-linux can write by itself)."""
        if self.mode == "root":
            return ["--map-root-user"]
        return [f"--map-user={self.uid_map[0][0]}", f"--map-group={self.gid_map[0][0]}"]

    def describe(self) -> list[str]:
        ids = (f"{describe_map(self.host_uids, self.own[0], 'uid')}, "
               f"{describe_map(self.host_gids, self.own[1], 'gid')} (inside -> host)")
        if not self.by_stage:
            return [f"payload: unshare --user {' '.join(self.unshare_args())} (a nested user "
                    f"namespace: every mount above is locked): {ids}"]
        lines = [
            "payload: unshare(CLONE_NEWUSER) (a nested user namespace: every mount above is locked); "
            f"the stage writes its maps: {ids}; setgroups stays allowed",
        ]
        if self.switch_to:
            uid, gid = self.run_as
            lines.append(f"payload: setgroups [{gid}]; setresgid {gid}; setresuid {uid}")
        return lines

    def summary(self) -> str:
        uid, gid = self.run_as
        on_host = (to_outside(self.host_uids, uid), to_outside(self.host_gids, gid))
        return (f"ids: runs as {uid}:{gid} inside ({on_host[0]}:{on_host[1]} on the host); "
                f"{describe_map(self.host_uids, self.own[0], 'uid')}; "
                f"{describe_map(self.host_gids, self.own[1], 'gid')}; any other id shows as "
                f"{OVERFLOW_ID} inside")

    def spec(self) -> UserSpec:
        return UserSpec(proc_text(self.uid_map), proc_text(self.gid_map), self.by_stage,
                        self.run_as if self.switch_to else (-1, -1))


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
    users: UserMap
    cwd: str
    env: EnvRule
    command: tuple[str, ...]
    pid: bool
    hardening: tuple[str, ...]
    isolation: Isolation
    warnings: tuple[str, ...]  # printed on every run
    network: NetworkPlan | None = None
    rootfs: RootfsPlan | None = None
    limits: tuple[tuple[str, int], ...] = ()  # setrlimit(2) of the payload: (wire.LIMITS name, value)
    timeout: float = 0.0  # seconds; 0: none
    kill_after: float = 5.0
    worktree: tuple[str, str] = ("", "none")  # path and mode, for the run's report
    name: str = ""  # the running sandbox's name (profile key name, --name)

    # ---- renderings -------------------------------------------------------------------------
    def describe(self) -> list[str]:
        """One line per step, in the order they happen."""
        lines = [f"supervisor: warning: {w}" for w in self.warnings]
        if self.name:
            lines.append(f"supervisor: register the sandbox as {self.name} (its directory in the registry of "
                         "named sandboxes, locked while it runs, with a control socket for stop and port)")
        lines.append(f"supervisor: spawn {shlex.join(self.outer)}")
        lines.append(f"  namespaces: {', '.join(self.namespaces)}")
        if self.pid:
            lines.append("stage: runs as PID 1: forwards signals to the payload, reaps orphans")
        if self.network:
            lines += self.network.tap_describe()
        for op in (*self.guards, *self.mounts):
            lines.append(f"stage: {op.describe()}")
        if self.rootfs:
            lines += self.rootfs.describe()
        if self.network:
            lines += self.network.stage_describe()
        if self.loopback_up:
            lines.append("stage: bring lo up in the new network namespace")
        if self.hostname:
            lines.append(f"stage: set hostname {self.hostname}")
        if self.network and self.network.api:
            lines.append("stage: make a private directory for slirp4netns's API socket: a tmpfs, "
                         "detached and kept as the stage's working directory, so that only the "
                         f"supervisor reaches it (as {API_SOCKET})")
        if self.network and not self.network.api:
            lines.append(f"stage: report ready; supervisor: parent-side work, then go once {self.network.backend} "
                         "is ready too")
        else:
            lines.append("stage: report ready; supervisor: parent-side work, then go")
        if self.network and self.network.api:
            lines += self.network.describe()
        lines.append(
            "stage: fork the payload: own session (or own foreground job on a terminal), "
            "fresh session keyring"
        )
        lines += self.users.describe()
        lines.append(f"payload: {', '.join(self.hardening)}")
        lines += self.isolation.describe()
        if self.limits:
            lines.append("payload: limits (soft = hard): " + ", ".join(f"{RLIMITS[n]} {v}" for n, v in self.limits))
        lines.append(f"payload: {self.env.describe()}")
        lines.append(f"payload: cd {shlex.quote(self.cwd)}; exec {shlex.join(['--', *self.command])}")
        if self.timeout:
            lines.append(f"supervisor: after {self.timeout:g} s SIGTERM to the payload, after {self.kill_after:g} s "
                         "more SIGKILL to the sandbox; exit status 124")
        if self.worktree[1] == "overlay":
            lines.append("stage: after the payload, list the overlay's upper layer: what it added, changed "
                         "and deleted in the work tree")
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
        masked = [op.target for op in ops if op.kind == "mask"]
        if masked:
            lines.append("hidden where they exist: " + ", ".join(masked))
        if any(op.kind == "sysfs" for op in self.mounts):
            lines.append("hidden: the host's network interfaces (/sys is the sandbox's own)")
        sealed = [op.target for op in ops if op.kind == "seal"]
        if sealed:
            lines.append("read-only inside the work tree, where they exist: " + ", ".join(sealed))
        protected = [op.target for op in self.guards if op.kind == "protect"]
        if protected:
            lines.append("read-only even inside writable binds: " + ", ".join(protected)
                         + " (sandboxer's own installation)")
        writable = [op.target for op in ops if op.kind == "tmpfs" and not op.why.startswith("private")]
        writable += [f"{op.target} (an overlay: writes discarded)" for op in ops if op.kind == "overlay"]
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
        lines.append(self.users.summary())
        if self.isolation.accepted:
            lines.append("accepted exposures, on kernels without Landlock ABI 6: "
                         + ", ".join(self.isolation.accepted))
        return lines

    def shell(self) -> str:
        """The same chain as a POSIX shell script a person can read and run."""
        from .shell import render

        return render(self)

    def to_json(self) -> str:
        data = dataclasses.asdict(self)
        data["steps"] = self.describe()
        return json.dumps(data, indent=2) + "\n"

    def spec(self) -> RunSpec:
        """What a run of this plan needs: the supervisor's and the stage's input."""
        return RunSpec(
            outer=self.outer, pid=self.pid, hostname=self.hostname, lo=self.loopback_up,
            users=self.users.spec(), cwd=self.cwd,
            env=EnvSpec(self.env.keep, self.env.set, self.env.fixed, self.env.default_path),
            command=self.command, mounts=tuple(op.spec() for op in (*self.guards, *self.mounts)),
            rootfs=None if self.rootfs is None else RootfsSpec(
                self.rootfs.path, self.rootfs.switch, self.rootfs.writes,
                tuple(op.spec() for op in self.rootfs.mounts)),
            network=None if self.network is None else self.network.spec(),
            landlock=sum(LANDLOCK[name] for name in self.isolation.required),
            apidir=bool(self.network and self.network.api),
            warnings=self.warnings,
            limits=self.limits, timeout=self.timeout, kill_after=self.kill_after, worktree=self.worktree,
            name=self.name,
        )
