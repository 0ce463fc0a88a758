"""HostFacts: everything compile() needs to know about this machine and caller, probed once.

On the hot path: imports only os and pwd.
"""

from __future__ import annotations

import os
import pwd

from .errors import SandboxerError

# Tools are looked up in fixed system directories, never in the caller's PATH:
# a PATH entry the payload could write must not decide what runs outside it.
SYSTEM_PATH = ("/usr/bin", "/bin", "/usr/sbin", "/sbin")
TOOLS = ("unshare", "slirp4netns")
# Testing hook only: a slirp4netns to use instead of the system one (for fakes in the tests).
SLIRP_OVERRIDE_ENV = "SANDBOXER_SLIRP4NETNS"
# The stage: a small C program built with the package (sandboxer/stage.c), run inside.
STAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandboxer-stage")


class HostFacts:
    """Facts about the host and the caller. Plain data; compile() reads nothing else."""

    __slots__ = (
        "uid", "gid", "user", "home", "shell", "cwd", "tools", "stage",
        "cache_dir", "cache_pins",
    )

    def __init__(
        self,
        *,
        uid: int,
        gid: int,
        user: str,
        home: str,
        shell: str,
        cwd: str,
        tools: dict[str, str],
        stage: str,
        cache_dir: str,
        cache_pins: tuple[str, ...],
    ) -> None:
        self.uid = uid
        self.gid = gid
        self.user = user
        self.home = home
        self.shell = shell
        self.cwd = cwd
        self.tools = tools
        self.stage = stage
        self.cache_dir = cache_dir
        self.cache_pins = cache_pins

    def key(self) -> tuple[object, ...]:
        """A stable tuple of every fact, for the plan cache key."""
        return (
            *(sorted(self.tools.items()) if name == "tools" else getattr(self, name)
              for name in self.__slots__),
            tuple(_stamp(path) for _name, path in sorted(self.tools.items())),
            _stamp(self.stage),
        )

    @classmethod
    def example(cls, **changes: object) -> HostFacts:
        """Fixed facts for golden tests and docs."""
        facts: dict[str, object] = dict(
            uid=1000, gid=1000, user="alice", home="/home/alice", shell="/bin/bash",
            cwd="/home/alice/src/project",
            tools={"unshare": "/usr/bin/unshare", "slirp4netns": "/usr/bin/slirp4netns"},
            stage="/usr/lib/python3/dist-packages/sandboxer/sandboxer-stage",
            cache_dir="/home/alice/.cache/sandboxer",
            cache_pins=("/home/alice", "/home/alice/.cache"),
        )
        facts.update(changes)
        return cls(**facts)  # type: ignore[arg-type]


def _stamp(path: str) -> tuple[int, int]:
    """A tool's identity for the cache: a new or replaced binary is checked again on compile."""
    try:
        st = os.stat(path)
    except OSError:
        return (0, 0)
    return (st.st_mtime_ns, st.st_size)


def find_tool(name: str) -> str:
    for directory in SYSTEM_PATH:
        path = os.path.join(directory, name)
        if os.access(path, os.X_OK):
            return path
    return ""


def cache_dir(environ: dict[str, str] | os._Environ[str], home: str) -> str:
    base = environ.get("XDG_CACHE_HOME", "")
    if not base.startswith("/"):
        base = os.path.join(home, ".cache")
    return os.path.join(base, "sandboxer")


def user_owned_ancestors(path: str, uid: int) -> tuple[str, ...]:
    """The ancestors of path that uid owns, outermost first, stopping at the first it doesn't.

    The payload runs as uid, so it could rename any of these and put its own plan cache in
    their place; the sandbox pins them (bind-mounts each onto itself, and the kernel refuses
    to rename a mount point of the caller's mount namespace with EBUSY).
    """
    found: list[str] = []
    current = os.path.dirname(path)
    while current != "/":
        try:
            st = os.lstat(current)
        except OSError:
            break
        if st.st_uid != uid:
            break
        found.append(current)
        current = os.path.dirname(current)
    return tuple(reversed(found))


def gather(environ: dict[str, str] | os._Environ[str] | None = None) -> HostFacts:
    """Probe the host. Raises SandboxerError when something essential is missing."""
    env = os.environ if environ is None else environ
    uid, gid = os.getuid(), os.getgid()
    try:
        pw = pwd.getpwuid(uid)
        user, pw_home, shell = pw.pw_name, pw.pw_dir, pw.pw_shell
    except KeyError:
        user, pw_home, shell = str(uid), "/", "/bin/sh"
    home = env.get("HOME", "")
    if not home.startswith("/"):
        home = pw_home
    home = os.path.realpath(home)
    try:
        cwd = os.getcwd()
    except OSError as e:
        raise SandboxerError(
            f"cannot read the current directory: {e.strerror}", "cd to a directory that exists"
        ) from None
    if not os.access(STAGE, os.X_OK):
        raise SandboxerError(
            f"sandboxer's stage {STAGE} is missing or not executable",
            "reinstall sandboxer; building it needs a C compiler: apt install gcc",
        )
    tools = {name: find_tool(name) for name in TOOLS}
    override = env.get(SLIRP_OVERRIDE_ENV, "")
    if override:
        # For the test suite's fake helpers; part of the facts, so of the plan cache key too.
        tools["slirp4netns"] = override
    cache = os.path.realpath(cache_dir(env, home))
    return HostFacts(
        uid=uid, gid=gid, user=user, home=home, shell=shell or "/bin/sh", cwd=cwd,
        tools=tools, stage=STAGE,
        cache_dir=cache, cache_pins=user_owned_ancestors(cache, uid),
    )
