"""Named sandboxes: the per-user registry that `run --name`, ps, exec, stop, logs and port share.

The registry is a directory of the user's (host.state_path: the runtime directory's
sandboxer/, else /tmp/sandboxer-UID, made 0700 and checked: a directory, the user's, private,
not a symlink). Every sandbox hides it (host.private_dirs), so no payload can read, plant or
swap what sandboxer later trusts. Each running named sandbox has NAME/ in it (0700):

  lock      flock()ed by its supervisor for as long as it runs: an entry whose lock can be taken
            is stale (its supervisor is provably gone, whatever way it died) and is removed
  info      what ps shows, and what exec needs (pids with their start times, the payload's ids,
            cwd, environment policy...), written once the command has started; marshal, not
            JSON: exec reads it on its way in, and json's import alone takes ~7 ms
  ctl.sock  the supervisor's control socket (stop, port)
  log       a detached sandbox's stdout and stderr

Before anything signals or joins a sandbox, the process is identified by pid *and* start time
(field 22 of /proc/PID/stat), so a recycled pid is never touched.

Off the hot path of unnamed runs: imported only by named runs and the commands above.
"""

from __future__ import annotations

import errno
import fcntl
import marshal
import os
import stat

from .errors import SandboxerError
from .host import state_path

NAME_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-"
MAX_INFO = 1 << 20


def valid(name: str) -> bool:
    return 0 < len(name) <= 64 and name[0].isalnum() and name.isascii() and all(c in NAME_CHARS for c in name)


def root(environ: dict[str, str] | os._Environ[str] | None = None, *, create: bool = False) -> str:
    """The registry's directory, checked (and made, with create); "" when it does not exist."""
    path = state_path(os.environ if environ is None else environ, os.getuid())
    if create:
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
        except OSError as e:
            raise SandboxerError(f"cannot create {path}: {e.strerror}", "check its parent directory") from None
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return ""
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
        raise SandboxerError(f"{path} is not a private directory of yours (a symlink, another user's, or "
                             "open to others), so named sandboxes cannot be kept in it",
                             f"remove it if you did not make it: rm -r {path}")
    return path


def start_time(pid: int) -> int:
    """A process's start time (clock ticks after boot), 0 if it is gone: with the pid, it names
    one process for good."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
        return int(data[data.rindex(b")") + 2:].split()[19])
    except (OSError, ValueError, IndexError):
        return 0


class Registration:
    """A running sandbox's entry, made by its supervisor: the lock held until close()."""

    def __init__(self, name: str | None, directory: str) -> None:
        self.root = directory
        self.lock = -1
        self.name = ""
        self.dir = ""
        if name is not None:
            if not valid(name):
                raise SandboxerError(f"bad sandbox name {name!r}", "use letters, digits, '.', '_' and '-'")
            self._claim(name)
        else:
            for _ in range(20):
                try:
                    self._claim(generate())
                    break
                except SandboxerError:
                    continue
            else:
                raise SandboxerError("cannot find a free name for the sandbox", "give one with --name")

    def _claim(self, name: str) -> None:
        path = os.path.join(self.root, name)
        for _ in range(3):
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                if not remove_if_stale(path):
                    raise SandboxerError(f"a sandbox named {name!r} is running", "pick another --name, or "
                                         f"end it: sandboxer stop {name}") from None
                continue
            fd = os.open(os.path.join(path, "lock"), os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
                         | os.O_NOFOLLOW, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            self.lock = fd
            self.name = name
            self.dir = path
            return
        raise SandboxerError(f"cannot register the sandbox {name!r}", "try again")

    def path(self, leaf: str) -> str:
        return os.path.join(self.dir, leaf)

    def write_info(self, info: dict[str, object]) -> None:
        temp = self.path(".info.tmp")
        fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, marshal.dumps(info))
        finally:
            os.close(fd)
        os.rename(temp, self.path("info"))

    def close(self) -> None:
        """The sandbox has ended: its entry goes, and the lock last."""
        if self.lock < 0:
            return
        for leaf in ("info", ".info.tmp", "ctl.sock", "log"):
            try:
                os.unlink(self.path(leaf))
            except OSError:
                pass
        try:
            os.unlink(self.path("lock"))
            os.rmdir(self.dir)
        except OSError:
            pass
        os.close(self.lock)
        self.lock = -1


def generate() -> str:
    return "sbx-" + os.urandom(3).hex()


def remove_if_stale(path: str) -> bool:
    """Remove an entry whose supervisor is gone (its lock is free, or it never made one and is
    older than a second: a supervisor killed between mkdir and lock). True if removed."""
    try:
        fd = os.open(os.path.join(path, "lock"), os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        try:
            import time

            if time.time() - os.lstat(path).st_mtime < 1.0:
                return False
        except OSError:
            return True
        fd = -1
    except OSError:
        return False
    try:
        if fd >= 0 and _held(fd):
            return False
        for leaf in os.listdir(path):
            try:
                os.unlink(os.path.join(path, leaf))
            except OSError:
                pass
        os.rmdir(path)
        return True
    except OSError:
        return False
    finally:
        if fd >= 0:
            os.close(fd)


def _held(fd: int) -> bool:
    """Another process (a supervisor) holds the lock on fd; else we hold it now."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True
        raise
    return False


def alive(path: str) -> bool:
    """The entry's supervisor still runs (holds its lock)."""
    try:
        fd = os.open(os.path.join(path, "lock"), os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        return _held(fd)
    except OSError:
        return False
    finally:
        os.close(fd)


def read_info(path: str) -> dict[str, object] | None:
    try:
        fd = os.open(os.path.join(path, "info"), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        data = os.read(fd, MAX_INFO)
    finally:
        os.close(fd)
    try:
        info = marshal.loads(data)
    except (ValueError, EOFError, TypeError):
        return None
    return info if isinstance(info, dict) else None


def running(environ: dict[str, str] | os._Environ[str] | None = None) -> list[tuple[str, dict[str, object]]]:
    """Every running named sandbox, name and info, by name; stale entries are removed on the way.
    A sandbox still starting (no info yet) is left out."""
    top = root(environ)
    if not top:
        return []
    out = []
    for name in sorted(os.listdir(top)):
        path = os.path.join(top, name)
        if not valid(name) or not os.path.isdir(path) or os.path.islink(path):
            continue
        if remove_if_stale(path):
            continue
        info = read_info(path)
        if info is not None:
            out.append((name, info))
    return out


def lookup(name: str, environ: dict[str, str] | os._Environ[str] | None = None) -> tuple[str, dict[str, object]]:
    """The entry directory and info of a running sandbox; a SandboxerError (exit 125) if there is
    none by that name."""
    top = root(environ)
    path = os.path.join(top, name) if top and valid(name) else ""
    if not path or not os.path.isdir(path) or remove_if_stale(path):
        raise SandboxerError(f"no running sandbox named {name!r}", "see sandboxer ps")
    info = read_info(path)
    if info is None:
        raise SandboxerError(f"the sandbox {name!r} is still starting", "try again in a moment")
    return path, info


def request(path: str, message: dict[str, object], timeout: float | None = 10.0) -> dict[str, object]:
    """One request to a sandbox's supervisor over its control socket, and its answer."""
    import json
    import socket

    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    sock.settimeout(timeout)
    try:
        sock.connect(os.path.join(path, "ctl.sock"))
        sock.sendall(json.dumps(message).encode() + b"\n")
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
            if len(data) > MAX_INFO:
                break
    except OSError as e:
        raise SandboxerError(f"cannot reach the sandbox's supervisor: {e.strerror or e}",
                             "is it still running? see sandboxer ps") from None
    finally:
        sock.close()
    try:
        answer = json.loads(data)
    except ValueError:
        raise SandboxerError("the sandbox's supervisor ended before it answered") from None
    if not isinstance(answer, dict):
        raise SandboxerError("the sandbox's supervisor gave an answer of another shape")
    if "error" in answer:
        raise SandboxerError(str(answer["error"]), str(answer.get("hint", "")))
    return answer
