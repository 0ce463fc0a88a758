"""The profile schema: the only definition of profile keys (docs are generated from it)."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, field_validator, model_validator

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

_SIZE_RE = re.compile(r"^([0-9]+)([kKmMgG]?)$")
_UNITS = {"": 1, "k": KIB, "m": MIB, "g": GIB}
TMPFS_MIN = 1 * MIB
TMPFS_MAX = 64 * GIB


def parse_size(value: object) -> object:
    """'256M' -> 268435456; ints pass through; anything else is left for the type check."""
    if isinstance(value, str):
        m = _SIZE_RE.match(value.strip())
        if not m:
            raise ValueError(f"expected a size such as 65536, '512k', '256M' or '2G', got {value!r}")
        return int(m.group(1)) * _UNITS[m.group(2).lower()]
    return value


Size = Annotated[
    int,
    BeforeValidator(parse_size),
    Field(ge=TMPFS_MIN, le=TMPFS_MAX, description="bytes, or a string with a k/M/G suffix"),
]

_DURATION_RE = re.compile(r"^([0-9]+(?:\.[0-9]+)?)(ms|s|m|h)?$")
_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, None: 1}


def parse_duration(value: object) -> object:
    """'90s', '10m', '1.5h', '500ms' or a number of seconds -> seconds (a float)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        m = _DURATION_RE.match(value.strip())
        if not m:
            raise ValueError(f"expected a duration such as 90s, 10m, 1h or 500ms, got {value!r}")
        return float(m.group(1)) * _SECONDS[m.group(2)]
    return value


def parse_count(value: object) -> object:
    """'100' (from a command-line flag) -> 100; ints pass through."""
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return value


def parse_bytes(value: object) -> object:
    """A size limit of any size: '64M', '2G', '512k' or bytes."""
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    return parse_size(value)


Duration = Annotated[float, BeforeValidator(parse_duration),
                     Field(gt=0, le=366 * 86400, description="seconds, or 90s, 10m, 1h, 500ms")]
Bytes = Annotated[int, BeforeValidator(parse_bytes),
                  Field(ge=1, le=2**62, description="bytes, or a string with a k/M/G suffix")]


Count = Annotated[int, BeforeValidator(parse_count)]


NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")  # a running sandbox's name
_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_KEEP_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*\*?$")
_HOST_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,62})(\.[A-Za-z0-9]([A-Za-z0-9-]{0,62}))*$")


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError("NUL bytes are not allowed")
    return value


def _path(value: str) -> str:
    """A path as written: absolute, ~/..., or relative to the caller's working directory."""
    _no_nul(value)
    if not value:
        raise ValueError("expected a path, got an empty string")
    if len(value) > 4000:
        raise ValueError("path is too long")
    return value


Path = Annotated[str, BeforeValidator(lambda v: _path(v) if isinstance(v, str) else v)]
Text = Annotated[str, BeforeValidator(lambda v: _no_nul(v) if isinstance(v, str) else v)]


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)


class User(_Section):
    """[user]: who the command is inside the sandbox."""

    map: Literal["self", "root", "auto", "keep-id"] = Field(
        "self",
        description="'self': your own uid/gid inside; 'root': uid/gid 0 inside, still you outside; "
        "'auto': 0 inside is you, 1-N your subordinate ranges (/etc/subuid, /etc/subgid), as "
        "rootless Podman; 'keep-id': your own ids inside, your ranges fill every other id, root "
        "included, as Podman's --userns=keep-id",
    )
    run_as: Text | None = Field(
        None,
        description="'UID[:GID]' (numbers; GID defaults to UID): the ids the command runs as "
        "inside, any the mapping has ('auto' and 'keep-id': 0 to the range's size); default: "
        "root for 'root' and 'auto', you for 'self' and 'keep-id'",
    )

    @field_validator("run_as")
    @classmethod
    def _run_as(cls, value: str | None) -> str | None:
        if value is not None:
            parse_ids(value)
        return value


def parse_ids(value: str) -> tuple[int, int]:
    """'1000:1000' or '1000' (GID = UID) -> (uid, gid)."""
    uid, colon, gid = value.partition(":")
    if not uid.isdigit() or (colon and not gid.isdigit()) or not uid.isascii() or not gid.isascii():
        raise ValueError(f"expected UID or UID:GID in numbers, such as 1000:1000, got {value!r}")
    ids = (int(uid), int(gid) if colon else int(uid))
    if max(ids) > 2**32 - 2:
        raise ValueError(f"ids go up to {2**32 - 2}, got {value!r}")
    return ids


class Home(_Section):
    """[home]: what HOME is."""

    mode: Literal["host", "tmpfs"] = Field(
        "tmpfs", description="'host': your real home; 'tmpfs': an empty, throwaway home"
    )
    size: Size = Field(256 * MIB, description="size limit of a tmpfs home (1M to 64G)")


def _ip(value: str) -> str:
    import ipaddress

    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        raise ValueError(f"expected an IPv4 or IPv6 address such as 127.0.0.1, got {value!r}") from None


Port = Annotated[int, Field(ge=1, le=65535, description="a port number, 1 to 65535")]


class Forward(_Section):
    """[[network.forwards]]: one port of the host forwarded into the sandbox (slirp4netns, pasta)."""

    host_addr: Text = Field(
        "127.0.0.1",
        description="the host address to listen on; anything but 127.0.0.1 prints a warning",
    )
    host_port: Port = Field(description="the host port to listen on")
    guest_port: Port = Field(description="the port inside the sandbox")
    proto: Literal["tcp", "udp"] = Field("tcp", description="'tcp' or 'udp'")

    @field_validator("host_addr")
    @classmethod
    def _addr(cls, value: str) -> str:
        return _ip(value)


class Tmp(_Section):
    """[tmp]: the sandbox's own /tmp and /var/tmp (the host's are never shared)."""

    size: Size = Field(512 * MIB, description="size limit of the private tmpfs on /tmp and on /var/tmp "
                       "(1M to 64G)")


class Network(_Section):
    """[network]: what network the command sees."""

    mode: Literal["host", "none", "slirp4netns", "pasta"] = Field(
        "none",
        description="'host': the host's network; 'none': an own namespace with only lo; "
        "'slirp4netns': an own namespace with user-mode networking (tap0 10.0.2.100/24); "
        "'pasta': the same through pasta, with the host's addresses and routes, IPv6 too",
    )
    allow_host_loopback: bool = Field(
        False,
        description="slirp4netns and pasta: let the sandbox reach the host's 127.0.0.1 through the "
        "gateway address (10.0.2.2 with slirp4netns)",
    )
    forwards: list[Forward] = Field(
        default_factory=list, max_length=64,
        description="host ports forwarded into the sandbox (slirp4netns and pasta)",
    )

    @model_validator(mode="after")
    def _shape(self) -> Network:
        if self.mode not in ("slirp4netns", "pasta"):
            if self.forwards:
                raise ValueError(f"'forwards' need mode = 'slirp4netns' or 'pasta', not {self.mode!r}")
            if self.allow_host_loopback:
                raise ValueError(f"'allow_host_loopback' needs mode = 'slirp4netns' or 'pasta', "
                                 f"not {self.mode!r}")
        seen = set()
        for fwd in self.forwards:
            key = (fwd.proto, fwd.host_addr, fwd.host_port)
            if key in seen:
                raise ValueError(
                    f"two forwards of {fwd.proto} {fwd.host_addr}:{fwd.host_port}; keep one"
                )
            seen.add(key)
        return self


class Namespaces(_Section):
    """[namespaces]: which other namespaces the sandbox gets."""

    pid: bool = Field(True, description="own PID namespace with a fresh /proc")
    ipc: bool = Field(True, description="own IPC namespace (System V IPC, POSIX queues)")
    uts: bool = Field(True, description="own UTS namespace, so the hostname can differ")
    hostname: Text = Field("sandbox", description="hostname inside the UTS namespace")

    @field_validator("hostname")
    @classmethod
    def _hostname(cls, value: str) -> str:
        if len(value) > 64 or not _HOST_RE.match(value):
            raise ValueError(
                f"expected a hostname of letters, digits, '-' and '.' (at most 64), got {value!r}"
            )
        return value


class Command(_Section):
    """[command]: what runs, and where."""

    argv: list[Text] | None = Field(
        None, description="the command to run when none is given on the command line"
    )
    cwd: Path | None = Field(
        None, description="working directory inside (default: yours when visible, else HOME)"
    )

    @field_validator("argv")
    @classmethod
    def _argv(cls, value: list[str] | None) -> list[str] | None:
        if value is not None and (not value or not value[0]):
            raise ValueError("expected a non-empty list whose first item names the command")
        return value


class Env(_Section):
    """[env]: the environment inside (nothing else of yours gets in)."""

    keep: list[Text] = Field(
        default_factory=list,
        description="names of your variables to keep besides PATH, TERM, LANG and LC_* (NAME* keeps a prefix)",
    )
    set: dict[str, Text] = Field(default_factory=dict, description="variables to set inside")

    @field_validator("keep")
    @classmethod
    def _keep(cls, value: list[str]) -> list[str]:
        for name in value:
            if not _KEEP_RE.match(name):
                raise ValueError(f"expected a variable name (optionally ending in *), got {name!r}")
        return value

    @field_validator("set")
    @classmethod
    def _set(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not _NAME_RE.match(name):
                raise ValueError(f"expected a variable name of letters, digits and _, got {name!r}")
        return value


class Mount(_Section):
    """[[mounts]]: one extra mount, made in order after HOME."""

    type: Literal["bind", "ro-bind", "tmpfs"] = Field(
        description="'bind' (read-write), 'ro-bind' (read-only) or 'tmpfs' (empty)"
    )
    source: Path | None = Field(None, description="what to bind (bind and ro-bind only)")
    target: Path | None = Field(
        None, description="where it appears inside (default: the source's path)"
    )
    size: Size | None = Field(None, description="size limit of a tmpfs (default 64M)")

    @model_validator(mode="after")
    def _shape(self) -> Mount:
        if self.type == "tmpfs":
            if self.source is not None:
                raise ValueError("a tmpfs mount has no source; remove 'source'")
            if self.target is None:
                raise ValueError("a tmpfs mount needs a 'target'")
        else:
            if self.source is None:
                raise ValueError(f"a {self.type} mount needs a 'source'")
            if self.size is not None:
                raise ValueError(f"'size' applies to tmpfs mounts only, not {self.type}")
        return self


Exposure = Literal["abstract-sockets", "signals"]


class Security(_Section):
    """[security]: exposures a profile accepts where the kernel cannot close them.

    A payload is kept from the host's abstract unix sockets (with the host network) and from
    signalling or tracing your other processes (without a PID namespace) by Landlock's scoping,
    which needs Linux 6.12 or newer (Landlock ABI 6). On older kernels such a sandbox does not
    start, unless its profile names the exposure here."""

    accept_exposures: list[Exposure] = Field(
        default_factory=list,
        description="'abstract-sockets': with the host network, the host's abstract unix sockets "
        "(X11's @/tmp/.X11-unix/X0, say) stay reachable on kernels without Landlock ABI 6; "
        "'signals': without a PID namespace, your other processes can be signalled on such kernels",
    )


class Worktree(_Section):
    """[worktree]: the directory a build works in, typically a checkout under your home."""

    mode: Literal["none", "rw", "overlay", "ro"] = Field(
        "none",
        description="'none': no work tree; 'rw': writes land in the real tree, but for the paths "
        "of 'protect' (and the profile file), kept read-only; 'overlay': writes go to a throwaway "
        "upper layer (run --keep DIR saves it, --diff lists it); 'ro': read-only",
    )
    path: Path = Field(".", description="the work tree (default: the current directory)")
    size: Size = Field(1024 * MIB, description="size limit of the overlay's upper layer, a tmpfs (1M to 64G)")
    protect: list[Text] = Field(
        default_factory=lambda: [".git", ".envrc", ".hg"],
        max_length=64,
        description="paths in the tree kept read-only in 'rw' mode, where they exist: what would run "
        "later on the host (.git's hooks and config, direnv's .envrc)",
    )

    @field_validator("protect")
    @classmethod
    def _protect(cls, value: list[str]) -> list[str]:
        for rel in value:
            if not rel or rel.startswith("/") or ".." in rel.split("/"):
                raise ValueError(f"expected a path relative to the tree, without '..', got {rel!r}")
        return value


class Limits(_Section):
    """[limits]: resource limits of the command (setrlimit(2), like prlimit's), and a timeout."""

    nproc: Count | None = Field(None, ge=1, le=2**22, description="processes and threads of your uid "
                                "inside the sandbox (RLIMIT_NPROC, counted in the sandbox's own user "
                                "namespace, not among your others)")
    nofile: Count | None = Field(None, ge=3, le=2**20, description="open files per process (RLIMIT_NOFILE)")
    fsize: Bytes | None = Field(None, description="largest file a process may write (RLIMIT_FSIZE); "
                                "bytes or k/M/G")
    address_space: Bytes | None = Field(None, description="virtual memory per process (RLIMIT_AS); bytes "
                                        "or k/M/G")
    cpu: Count | None = Field(None, ge=1, le=2**31, description="CPU seconds per process (RLIMIT_CPU): "
                              "SIGXCPU, then SIGKILL a second later")
    timeout: Duration | None = Field(None, description="wall-clock limit of the whole run: then SIGTERM, "
                                     "and SIGKILL after kill_after; exit status 124")
    kill_after: Duration = Field(5.0, description="grace after the timeout's SIGTERM before SIGKILL")


class Hide(_Section):
    """[hide]: paths the sandbox must not show, wherever they would appear (a bind of your home
    or of a tree holding them): a directory becomes empty, anything else (a file, a socket)
    /dev/null; missing paths are skipped. Checked when the sandbox starts."""

    paths: list[Path] = Field(default_factory=list, max_length=256,
                              description="paths to hide ('~/' is your home)")


RootSwitch = Literal["pivot_root", "chroot"]
RootWrites = Literal["persist", "read-only", "overlay"]


class Rootfs(_Section):
    """[rootfs]: run inside another root filesystem (a directory tree such as a minirootfs)."""

    path: Path | None = Field(
        None, description="the root filesystem's directory; unset: the host's own root"
    )
    switch: RootSwitch = Field(
        "pivot_root",
        description="'pivot_root': the old root is detached and unreachable; 'chroot': the old "
        "root stays mounted outside the payload's root (which loses CAP_SYS_CHROOT)",
    )
    writes: RootWrites = Field(
        "persist",
        description="'persist': changes land in the directory; 'read-only': the tree cannot be "
        "changed; 'overlay': changes go to a throwaway tmpfs overlay",
    )


class Profile(_Section):
    """A sandboxer profile: how isolated a command should be."""

    description: Text = Field("", description="one line saying what the profile is for")
    name: Text | None = Field(
        None, description="a name the running sandbox is known by (sandboxer ps, exec, stop, logs, "
        "port); unique among your running sandboxes; letters, digits, '.', '_', '-'",
    )
    extends: list[Text] = Field(
        default_factory=list,
        description="profiles this one builds on, merged in order (names, or paths relative to this "
        "file); later over earlier, this file over all: tables merge key by key, [[mounts]] "
        "accumulate, any other value (lists included) is replaced",
    )
    user: User = User()
    home: Home = Home()
    tmp: Tmp = Tmp()
    network: Network = Network()
    namespaces: Namespaces = Namespaces()
    command: Command = Command()
    env: Env = Env()
    mounts: list[Mount] = Field(default_factory=list, max_length=256)
    rootfs: Rootfs = Rootfs()
    worktree: Worktree = Worktree()
    limits: Limits = Limits()
    hide: Hide = Hide()
    security: Security = Security()

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        if value is not None and not NAME_RE.match(value):
            raise ValueError(f"expected a name of letters, digits, '.', '_' and '-' (at most 64, starting "
                             f"with a letter or digit), got {value!r}")
        return value
