"""HostFacts: everything compile() needs to know about this machine and caller, probed once.

On the hot path: imports only os, pwd and sys.
"""

from __future__ import annotations

import os
import pwd
import sys

from .errors import SandboxerError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .idmap import Ranges

SUBUID, SUBGID = "/etc/subuid", "/etc/subgid"
# For tests only: other subordinate id files ("SUBUID:SUBGID"). They only change what sandboxer
# asks for; newuidmap and newgidmap still grant nothing the real files do not.
SUBID_FILES_ENV = "SANDBOXER_SUBID_FILES"

# Tools are found the way a user expects: the caller's PATH first (absolute entries only), then
# the system directories, sbin included (where distributions may put network helpers).
SYSTEM_PATH = ("/usr/local/bin", "/usr/bin", "/bin", "/usr/local/sbin", "/usr/sbin", "/sbin")
TOOLS = ("unshare", "slirp4netns", "pasta", "newuidmap", "newgidmap")
PROBE_TIMEOUT = 5.0


class ToolInfo:
    """What a tool says of itself (--version, and the options its --help lists), probed only
    when a plan is compiled: the plan cache key holds each tool's path and stat, so a changed
    binary is probed again."""

    __slots__ = ("path", "version", "options")

    def __init__(self, path: str, version: str, options: frozenset[str]) -> None:
        self.path = path
        self.version = version
        self.options = options
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
# The stage: a small C program built with the package (sandboxer/stage.c), run inside.
STAGE = os.path.join(PACKAGE_DIR, "sandboxer-stage")
# Shared scratch places of the host that every sandbox replaces with a private tmpfs.
SCRATCH = ("/tmp", "/var/tmp", "/dev/shm")


class HostFacts:
    """Facts about the host and the caller. Plain data; compile() reads nothing else.

    private_dirs: sandboxer's own state (the plan cache, the directory of the key that
    authenticates it); hidden in every sandbox.
    pins: the user-owned ancestors of private_dirs and own_paths, which every sandbox pins (a
    payload renaming one could put its own state or installation in their place).
    runtime_dirs: the caller's runtime directories (/run/user/UID, $XDG_RUNTIME_DIR): session
    bus, systemd --user, agents; hidden in every sandbox unless a profile binds a socket back in.
    scratch_dirs: which of SCRATCH exist. own_paths: sandboxer's installation (package, stage,
    the Python environment running it) where the caller could write it; read-only in every
    sandbox.
    """

    __slots__ = (
        "uid", "gid", "user", "home", "shell", "cwd", "tools", "stage",
        "cache_dir", "key_dir", "pins", "runtime_dirs", "scratch_dirs", "own_paths", "subid_files",
        "state_dir", "probed", "ranges",
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
        key_dir: str,
        pins: tuple[str, ...],
        runtime_dirs: tuple[str, ...],
        scratch_dirs: tuple[str, ...],
        own_paths: tuple[str, ...],
        subid_files: tuple[str, str] = (SUBUID, SUBGID),
        state_dir: str = "",
        probed: dict[str, ToolInfo] | None = None,
        ranges: Ranges | None = None,
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
        self.key_dir = key_dir
        self.pins = pins
        self.runtime_dirs = runtime_dirs
        self.scratch_dirs = scratch_dirs
        self.own_paths = own_paths
        self.subid_files = subid_files
        self.state_dir = state_dir  # named sandboxes' registry (names.py), where it exists
        self.probed = probed or {}
        self.ranges = ranges  # the caller's subordinate ids: read by build.py when a plan maps them

    @property
    def private_dirs(self) -> tuple[str, ...]:
        return tuple(d for d in (self.cache_dir, self.key_dir, self.state_dir) if d)

    def find_pins(self) -> None:
        """(Re)compute pins, once private_dirs exist (or were given up)."""
        self.pins = pins_for((*self.private_dirs, *self.own_paths), self.uid)

    def key(self) -> tuple[object, ...]:
        """A stable tuple of every fact, for the plan cache key."""
        return (
            *(sorted(self.tools.items()) if name == "tools" else getattr(self, name)
              for name in self.__slots__ if name not in ("probed", "ranges")),
            tuple(_stamp(path) for _name, path in sorted(self.tools.items())),
            _stamp(self.stage),
            tuple(_stamp(path) for path in self.subid_files),
        )

    @classmethod
    def example(cls, **changes: object) -> HostFacts:
        """Fixed facts for golden tests and docs: Debian 12's tools, found in /usr/bin."""
        from .idmap import Range, Ranges
        from .netplan import PASTA_OPTIONS

        facts: dict[str, object] = dict(
            uid=1000, gid=1000, user="alice", home="/home/alice", shell="/bin/bash",
            cwd="/home/alice/src/project",
            tools={"unshare": "/usr/bin/unshare", "slirp4netns": "/usr/bin/slirp4netns",
                   "pasta": "/usr/bin/pasta", "newuidmap": "/usr/bin/newuidmap",
                   "newgidmap": "/usr/bin/newgidmap"},
            stage="/home/alice/.local/pipx/venvs/sandboxer/lib/python3.11/site-packages/sandboxer/"
                  "sandboxer-stage",
            cache_dir="/home/alice/.cache/sandboxer",
            key_dir="/home/alice/.local/state/sandboxer",
            pins=("/home/alice", "/home/alice/.cache", "/home/alice/.local", "/home/alice/.local/pipx",
                  "/home/alice/.local/state", "/home/alice/.local/pipx/venvs"),
            runtime_dirs=("/run/user/1000",),
            scratch_dirs=SCRATCH,
            own_paths=("/home/alice/.local/pipx/venvs/sandboxer",),
            probed={
                "slirp4netns": ToolInfo("/usr/bin/slirp4netns", "slirp4netns version 1.2.0\n", frozenset()),
                "pasta": ToolInfo("/usr/bin/pasta", "pasta unknown version\n", frozenset(PASTA_OPTIONS)),
            },
            ranges=Ranges((Range(SUBUID, 1, 100000, 65536),), (Range(SUBGID, 1, 100000, 65536),)),
        )
        facts.update(changes)
        return cls(**facts)  # type: ignore[arg-type]


def _stamp(path: str) -> tuple[int, int]:
    """A file's identity for the cache: a new or replaced binary (or an edited /etc/subuid) is
    checked again on compile."""
    try:
        st = os.stat(path)
    except OSError:
        return (0, 0)
    return (st.st_mtime_ns, st.st_size)


def find_tool(name: str, search_path: str = "") -> str:
    """name on search_path (a PATH value; its relative entries are skipped), then in SYSTEM_PATH."""
    dirs = [d for d in search_path.split(":") if d.startswith("/")]
    for directory in dict.fromkeys((*dirs, *SYSTEM_PATH)):
        path = os.path.join(directory, name)
        if os.access(path, os.X_OK) and not os.path.isdir(path):
            return path
    return ""


def probe(facts: HostFacts, names: tuple[str, ...]) -> None:
    """Ask each named tool found for its --version (and, for pasta, its --help's options)."""
    import re
    import subprocess

    for name in names:
        path = facts.tools.get(name, "")
        if not path or name in facts.probed:
            continue
        texts = []
        for flag in ("--version", "--help") if name == "pasta" else ("--version",):
            try:
                out = subprocess.run([path, flag], capture_output=True, text=True, timeout=PROBE_TIMEOUT,
                                     stdin=subprocess.DEVNULL, env={"LC_ALL": "C"}, errors="replace")
                # pasta without a syslog says "Failed to send N bytes to syslog" between lines
                texts.append("\n".join(line for line in (out.stdout + out.stderr).splitlines()
                                       if not line.startswith("Failed to send")))
            except (OSError, subprocess.TimeoutExpired) as e:
                texts.append(str(e))
        options = frozenset(re.findall(r"(--[a-z][a-z0-9-]*)", texts[1])) if len(texts) > 1 else frozenset()
        facts.probed[name] = ToolInfo(path, texts[0], options)


def cache_dir(environ: dict[str, str] | os._Environ[str], home: str) -> str:
    base = environ.get("XDG_CACHE_HOME", "")
    if not base.startswith("/"):
        base = os.path.join(home, ".cache")
    return os.path.join(base, "sandboxer")


def key_dir(pw_home: str) -> str:
    """Where the plan cache's key lives: below the home of the passwd entry, never below a
    directory the environment names ($HOME, $XDG_*), so that every run of the user, whatever
    its environment, hides the same key from its payload."""
    return os.path.join(pw_home, ".local", "state", "sandboxer")


def user_owned_ancestors(path: str, uid: int) -> tuple[str, ...]:
    """The ancestors of path that uid owns, outermost first, stopping at the first it doesn't.

    The payload runs as uid, so it could rename any of these and put its own directory in
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


def pins_for(paths: tuple[str, ...], uid: int) -> tuple[str, ...]:
    """The user-owned ancestors of every path, outermost first, each once."""
    found: dict[str, None] = {}
    for path in paths:
        found.update(dict.fromkeys(user_owned_ancestors(path, uid)))
    return tuple(sorted(found, key=lambda p: (p.count("/"), p)))


def _private_runtime_dir(path: str, uid: int) -> bool:
    """A runtime directory as pam_systemd makes it: a real directory of uid's, mode 0700."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return (st.st_mode & 0o170000) == 0o040000 and st.st_uid == uid and not st.st_mode & 0o077


def runtime_dirs(environ: dict[str, str] | os._Environ[str], uid: int) -> tuple[str, ...]:
    found = []
    for path in (f"/run/user/{uid}", environ.get("XDG_RUNTIME_DIR", "")):
        if path.startswith("/"):
            path = os.path.realpath(path)
            if path not in found and path != "/" and _private_runtime_dir(path, uid):
                found.append(path)
    return tuple(found)


def own_paths(uid: int) -> tuple[str, ...]:
    """sandboxer's own installation, where uid could change it: the package (with the stage),
    the Python environment running it (a venv, pipx's, a user-owned interpreter) and every
    module directory it imports from. Outermost directories only."""
    candidates = [PACKAGE_DIR, sys.prefix, sys.base_prefix, *sys.path]
    script = os.path.realpath(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    if script.startswith("/"):
        candidates.append(script)
    found: set[str] = set()
    for path in {p for p in candidates if p.startswith("/")}:
        try:  # the kernel's own resolution: cheaper than os.path.realpath's stat per component
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            real = os.readlink(f"/proc/self/fd/{fd}")
            if real != "/" and (os.fstat(fd).st_uid == uid or os.access(real, os.W_OK)):
                found.add(real)
        except OSError:
            pass
        finally:
            os.close(fd)
    outermost = [p for p in found if not any(p.startswith(q + "/") for q in found)]
    return tuple(sorted(outermost))


def subid_files(environ: dict[str, str] | os._Environ[str]) -> tuple[str, str]:
    """/etc/subuid and /etc/subgid, or the files SANDBOXER_SUBID_FILES names (tests only)."""
    files = environ.get(SUBID_FILES_ENV, "").split(":")
    if len(files) == 2 and all(f.startswith("/") for f in files):
        return files[0], files[1]
    return SUBUID, SUBGID


def state_path(environ: dict[str, str] | os._Environ[str], uid: int,
               dirs: tuple[str, ...] | None = None) -> str:
    """Where named sandboxes are registered: the runtime directory ($XDG_RUNTIME_DIR, else
    /run/user/UID, when private and yours), else /tmp/sandboxer-UID (checked before use)."""
    if dirs is None:
        dirs = runtime_dirs(environ, uid)
    xdg = environ.get("XDG_RUNTIME_DIR", "")
    mine = [d for d in dirs if d == os.path.realpath(xdg)] if xdg.startswith("/") else []
    if mine or dirs:
        return os.path.join((mine or list(dirs))[0], "sandboxer")
    return f"/tmp/sandboxer-{uid}"


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
    search = env.get("PATH", "")
    tools = {name: find_tool(name, search) for name in TOOLS}
    cache = os.path.realpath(cache_dir(env, home))
    keys = os.path.realpath(key_dir(pw_home)) if pw_home.startswith("/") and pw_home != "/" else ""
    facts = HostFacts(
        uid=uid, gid=gid, user=user, home=home, shell=shell or "/bin/sh", cwd=cwd,
        tools=tools, stage=STAGE, cache_dir=cache, key_dir=keys, pins=(),
        runtime_dirs=runtime_dirs(env, uid),
        scratch_dirs=tuple(d for d in SCRATCH if os.path.isdir(d)),
        own_paths=own_paths(uid),
    )
    state = state_path(env, uid, facts.runtime_dirs)
    if os.path.isdir(state):
        facts.state_dir = state
    facts.subid_files = subid_files(env)
    return facts  # pins: find_pins() once the private directories exist
