"""The run spec: what the supervisor and the stage consume, typed, derived from a Plan.

A Plan (plan.py) says everything a run does, for people and for tests; a RunSpec is the part of
it a run needs, in a shape mypy checks. The plan cache stores RunSpec.data() (plain tuples that
marshal can write) and rebuilds the spec with RunSpec.from_data(), which checks every field's
type: an entry of another shape is refused, never half-used.

On the hot path of `sandboxer run`: plain classes with __slots__ (dataclasses would import
inspect, several ms), no imports.
"""

from __future__ import annotations

from .wire import LANDLOCK, MOUNT_KINDS, RLIMITS, ROOT_SWITCHES, ROOT_WRITES

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TypeAlias

    # what data() returns: what marshal writes, and from_data() checks
    Data: TypeAlias = "str | int | float | bool | None | tuple[Data, ...]"


class SpecError(ValueError):
    """Data that is not a RunSpec of this version."""


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise SpecError(f"expected a string, got {type(value).__name__}")
    return value


def _int(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise SpecError(f"expected an integer, got {type(value).__name__}")
    return value


def _float(value: object) -> float:
    if not isinstance(value, float):
        raise SpecError(f"expected a number, got {type(value).__name__}")
    return value


def _pair(value: object) -> tuple[str, str]:
    first, second = _tuple(value, 2)
    return _str(first), _str(second)


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise SpecError(f"expected a boolean, got {type(value).__name__}")
    return value


def _tuple(value: object, size: int = -1) -> tuple[object, ...]:
    if not isinstance(value, tuple) or (size >= 0 and len(value) != size):
        raise SpecError(f"expected a tuple of {size if size >= 0 else 'any number of'} values")
    return value


def _strs(value: object) -> tuple[str, ...]:
    return tuple(_str(v) for v in _tuple(value))


def _pairs(value: object) -> tuple[tuple[str, str], ...]:
    return tuple((_str(k), _str(v)) for k, v in (_tuple(p, 2) for p in _tuple(value)))


def _one_of(value: object, allowed: tuple[str, ...]) -> str:
    text = _str(value)
    if text not in allowed:
        raise SpecError(f"expected one of {allowed}, got {text!r}")
    return text


class MountSpec:
    """One mount the stage makes (kind: one of wire.MOUNT_KINDS)."""

    __slots__ = ("kind", "source", "target", "readonly", "size", "mode", "create", "owner")

    def __init__(self, kind: str, source: str, target: str, readonly: bool, size: int, mode: str,
                 create: bool, owner: tuple[int, int] = (-1, -1)) -> None:
        self.kind = kind
        self.source = source
        self.target = target
        self.readonly = readonly
        self.size = size
        self.mode = mode
        self.create = create
        self.owner = owner  # a tmpfs's uid and gid in the outer namespace; -1: the mounter's

    def data(self) -> Data:
        return (self.kind, self.source, self.target, self.readonly, self.size, self.mode, self.create,
                self.owner)

    @classmethod
    def from_data(cls, data: object) -> MountSpec:
        kind, source, target, readonly, size, mode, create, owner = _tuple(data, 8)
        uid, gid = _tuple(owner, 2)
        return cls(_one_of(kind, MOUNT_KINDS), _str(source), _str(target), _bool(readonly), _int(size),
                   _str(mode), _bool(create), (_int(uid), _int(gid)))


class UserSpec:
    """The payload's user namespace: its uid_map and gid_map (as /proc takes them, in the outer
    namespace's ids), whether the stage writes them (several ids, setgroups allowed) rather
    than the payload itself (one id, setgroups denied), and the ids to switch to (-1: none)."""

    __slots__ = ("uid_map", "gid_map", "by_stage", "run_as")

    def __init__(self, uid_map: str, gid_map: str, by_stage: bool, run_as: tuple[int, int]) -> None:
        self.uid_map = uid_map
        self.gid_map = gid_map
        self.by_stage = by_stage
        self.run_as = run_as

    def data(self) -> Data:
        return (self.uid_map, self.gid_map, self.by_stage, self.run_as)

    @classmethod
    def from_data(cls, data: object) -> UserSpec:
        uid_map, gid_map, by_stage, run_as = _tuple(data, 4)
        uid, gid = _tuple(run_as, 2)
        return cls(_str(uid_map), _str(gid_map), _bool(by_stage), (_int(uid), _int(gid)))


class RootfsSpec:
    """Another root: its directory, how the stage enters it, its writes and its mounts."""

    __slots__ = ("path", "switch", "writes", "mounts")

    def __init__(self, path: str, switch: str, writes: str, mounts: tuple[MountSpec, ...]) -> None:
        self.path = path
        self.switch = switch
        self.writes = writes
        self.mounts = mounts

    def data(self) -> Data:
        return (self.path, self.switch, self.writes, tuple(op.data() for op in self.mounts))

    @classmethod
    def from_data(cls, data: object) -> RootfsSpec:
        path, switch, writes, mounts = _tuple(data, 4)
        return cls(_str(path), _one_of(switch, ROOT_SWITCHES), _one_of(writes, ROOT_WRITES),
                   tuple(MountSpec.from_data(op) for op in _tuple(mounts)))


class NetSpec:
    """The network helper: which backend, its argv (with the {stage} placeholder), the forwards
    it is asked for after start (requests; empty for a backend that takes them on its command
    line), how each is shown, the tap the stage makes for it, the files mounted over /etc's."""

    __slots__ = ("backend", "argv", "requests", "shown", "tap", "resolv_conf", "hosts")

    def __init__(self, backend: str, argv: tuple[str, ...], requests: tuple[str, ...],
                 shown: tuple[str, ...], tap: str, resolv_conf: str, hosts: str) -> None:
        self.backend = backend
        self.argv = argv
        self.requests = requests
        self.shown = shown
        self.tap = tap
        self.resolv_conf = resolv_conf
        self.hosts = hosts

    def data(self) -> Data:
        return (self.backend, self.argv, self.requests, self.shown, self.tap, self.resolv_conf, self.hosts)

    @classmethod
    def from_data(cls, data: object) -> NetSpec:
        backend, argv, requests, shown, tap, resolv_conf, hosts = _tuple(data, 7)
        return cls(_one_of(backend, BACKENDS), _strs(argv), _strs(requests), _strs(shown), _str(tap),
                   _str(resolv_conf), _str(hosts))


BACKENDS = ("slirp4netns", "pasta")


class EnvSpec:
    """How the payload's environment is built from the caller's: the names kept (NAME* keeps a
    prefix), then the fixed and the set values; PATH defaults to default_path."""

    __slots__ = ("keep", "set", "fixed", "default_path")

    def __init__(self, keep: tuple[str, ...], set: tuple[tuple[str, str], ...],  # noqa: A002
                 fixed: tuple[tuple[str, str], ...], default_path: str) -> None:
        self.keep = keep
        self.set = set
        self.fixed = fixed
        self.default_path = default_path

    def data(self) -> Data:
        return (self.keep, self.set, self.fixed, self.default_path)

    @classmethod
    def from_data(cls, data: object) -> EnvSpec:
        keep, set_, fixed, default_path = _tuple(data, 4)
        return cls(_strs(keep), _pairs(set_), _pairs(fixed), _str(default_path))

    def build(self, environ: dict[str, str]) -> dict[str, str]:
        """The payload's environment from the caller's."""
        exact = {k for k in self.keep if not k.endswith("*")}
        prefixes = tuple(k[:-1] for k in self.keep if k.endswith("*"))
        env = {k: v for k, v in environ.items() if k in exact or (prefixes and k.startswith(prefixes))}
        env.setdefault("PATH", self.default_path)
        env.update(self.fixed)
        env.update(self.set)
        return env


class RunSpec:
    """Everything a run of one plan needs."""

    __slots__ = ("outer", "pid", "hostname", "lo", "users", "cwd", "env", "command", "mounts",
                 "rootfs", "network", "landlock", "apidir", "warnings", "limits", "timeout", "kill_after",
                 "worktree", "name")

    VERSION = 4  # of data(): part of the plan cache key

    def __init__(self, *, outer: tuple[str, ...], pid: bool, hostname: str, lo: bool,
                 users: UserSpec, cwd: str, env: EnvSpec, command: tuple[str, ...],
                 mounts: tuple[MountSpec, ...], rootfs: RootfsSpec | None, network: NetSpec | None,
                 landlock: int, apidir: bool, warnings: tuple[str, ...],
                 limits: tuple[tuple[str, int], ...] = (), timeout: float = 0.0, kill_after: float = 5.0,
                 worktree: tuple[str, str] = ("", "none"), name: str = "") -> None:
        self.outer = outer  # unshare ... -- sandboxer-stage
        self.pid = pid
        self.hostname = hostname
        self.lo = lo
        self.users = users
        self.cwd = cwd
        self.env = env
        self.command = command
        self.mounts = mounts
        self.rootfs = rootfs
        self.network = network
        self.landlock = landlock
        self.apidir = apidir
        self.warnings = warnings
        self.limits = limits  # (wire.RLIMITS name, value)
        self.timeout = timeout  # seconds of the whole run; 0: none
        self.kill_after = kill_after
        self.worktree = worktree  # its path and mode, for the report
        self.name = name  # the profile's name for the running sandbox ("" none)

    def data(self) -> Data:
        return (
            self.VERSION, self.outer, self.pid, self.hostname, self.lo, self.users.data(), self.cwd,
            self.env.data(), self.command, tuple(op.data() for op in self.mounts),
            self.rootfs.data() if self.rootfs else None, self.network.data() if self.network else None,
            self.landlock, self.apidir, self.warnings, self.limits, self.timeout, self.kill_after,
            self.worktree, self.name,
        )

    @classmethod
    def from_data(cls, data: object) -> RunSpec:
        (version, outer, pid, hostname, lo, users, cwd, env, command, mounts, rootfs, network,
         landlock, apidir, warnings, limits, timeout, kill_after, worktree, name) = _tuple(data, 20)
        if version != cls.VERSION:
            raise SpecError(f"run spec version {version!r}, expected {cls.VERSION}")
        bits = _int(landlock)
        if bits & ~sum(LANDLOCK.values()):
            raise SpecError(f"unknown Landlock bits {bits}")
        return cls(
            outer=_strs(outer), pid=_bool(pid), hostname=_str(hostname), lo=_bool(lo),
            users=UserSpec.from_data(users), cwd=_str(cwd), env=EnvSpec.from_data(env),
            command=_strs(command), mounts=tuple(MountSpec.from_data(op) for op in _tuple(mounts)),
            rootfs=None if rootfs is None else RootfsSpec.from_data(rootfs),
            network=None if network is None else NetSpec.from_data(network),
            landlock=bits, apidir=_bool(apidir), warnings=_strs(warnings),
            limits=tuple((_one_of(n, tuple(RLIMITS)), _int(v)) for n, v in (_tuple(p, 2) for p in _tuple(limits))),
            timeout=_float(timeout), kill_after=_float(kill_after),
            worktree=_pair(worktree), name=_str(name),
        )
