"""The plan cache: validated, compiled recipes keyed by everything they depend on, and
authenticated, so that no payload can make a later run execute a plan of its own.

Validation (pydantic) and compilation cost ~150 ms; a cache hit costs well under 1 ms. The key
covers sandboxer's own code, the Python version, the command-line options, the profile's path
and bytes, and every host fact, so any change recompiles.

A payload runs as the user, so it can write any file of the user's that its sandbox shows: a
cache directory under /tmp, a CI workspace bound into the sandbox, `XDG_CACHE_HOME` pointed
anywhere. Hiding the cache a run uses protects that one only. So every entry carries an
HMAC-SHA256 tag, under a per-user key that lives in one fixed place (~/.local/state/sandboxer/key,
from the passwd entry, whatever the environment says), which every sandbox hides. An entry whose
tag does not verify (forged, altered, truncated, made under another key) is never used: it is
recompiled, with a one-line warning.
"""

from __future__ import annotations

import marshal
import os
import stat
import sys

# builtin: hmac.compare_digest without importing hmac (and hashlib's OpenSSL backend, ~3 ms)
from _operator import _compare_digest

from . import __version__

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .spec import Data

try:  # the builtin module: hashlib's OpenSSL backend costs ~3 ms to load on every run
    from _sha256 import sha256 as _sha256
except ImportError:  # Python 3.12+ (_sha2)
    from hashlib import sha256 as _sha256

MAX_ENTRIES = 64
MAX_PROFILE_BYTES = 1024 * 1024
MAX_ENTRY_BYTES = 1 << 20
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
MAGIC = b"sandboxer-plan 4\n"
TAG_BYTES = 32
KEY_BYTES = 32
KEY_FILE = "key"


def _private_dir(path: str) -> bool:
    """path is a real directory (not a symlink) of ours that nobody else can enter."""
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077


def ensure_dir(path: str, sub: str = "", *, private: bool = True) -> bool:
    """Create path (and sub below it), 0700; False if that is impossible (e.g. a read-only home)
    or if what is there is not a directory of ours (private: that nobody else can enter)."""
    try:
        os.makedirs(os.path.join(path, sub) if sub else path, mode=0o700, exist_ok=True)
        st = os.lstat(path)
    except OSError:
        return False
    if private:
        return _private_dir(path)
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()


def read_key(key_dir: str) -> bytes | None:
    """The user's plan-cache key, created on first use; None if it cannot be had safely."""
    path = os.path.join(key_dir, KEY_FILE)
    key = _read_key_file(path)
    if key is not None or not _private_dir(key_dir):
        return key
    tmp = os.path.join(key_dir, f".{KEY_FILE}.{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, os.urandom(KEY_BYTES))
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)  # never replaces a key another run made meanwhile
        except FileExistsError:
            pass
    except OSError:
        return None
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass
    return _read_key_file(path)


def _read_key_file(path: str) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
            return None
        key = os.read(fd, KEY_BYTES + 1)
        return key if len(key) == KEY_BYTES else None
    except OSError:
        return None
    finally:
        os.close(fd)


def _hmac(key: bytes, message: bytes) -> bytes:
    """HMAC-SHA256 (RFC 2104) on the builtin sha256, as hmac.new(key, message, 'sha256')."""
    block = key.ljust(64, b"\0")
    inner = _sha256(bytes(b ^ 0x36 for b in block))
    inner.update(message)
    outer = _sha256(bytes(b ^ 0x5C for b in block))
    outer.update(inner.digest())
    return bytes(outer.digest())


def read_profile_for_key(path: str) -> bytes | None:
    """The profile's bytes, or None if anything is unusual (the slow path then explains it)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_PROFILE_BYTES:
            return None
        data = os.read(fd, MAX_PROFILE_BYTES + 1)
        return data if len(data) <= MAX_PROFILE_BYTES else None
    except OSError:
        return None
    finally:
        os.close(fd)


def digest(data: bytes) -> str:
    return str(_sha256(data).hexdigest())


def unchanged(deps: object) -> bool:
    """deps: ((path, digest), ...) of the files a profile extends; True if each still holds the
    bytes the plan was compiled from."""
    if not isinstance(deps, tuple):
        return False
    for dep in deps:
        if not (isinstance(dep, tuple) and len(dep) == 2 and all(isinstance(x, str) for x in dep)):
            return False
        content = read_profile_for_key(dep[0])
        if content is None or digest(content) != dep[1]:
            return False
    return True


def _code_stamp() -> list[tuple[str, int, int]]:
    stamp = []
    for name in sorted(os.listdir(PACKAGE_DIR)):
        if name.endswith(".py"):
            st = os.stat(os.path.join(PACKAGE_DIR, name))
            stamp.append((name, st.st_mtime_ns, st.st_size))
    return stamp


def key(tokens: list[str], profile: str | None, data: bytes | None, host_key: tuple[object, ...]) -> str:
    material = repr((
        __version__, sys.version, _code_stamp(), tokens,
        os.path.abspath(profile) if profile else None, host_key,
    )).encode()
    digest = _sha256(material)
    digest.update(data or b"")
    return str(digest.hexdigest())


class Rejected(Exception):
    """A cache entry exists but must not be used; the message says why."""


def load(cache_dir: str, entry: str, secret: bytes) -> object:
    """The data stored under entry; None if there is none; Rejected if one is there that this
    user's sandboxer did not write (or that was changed since)."""
    path = os.path.join(cache_dir, "plans", entry)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise Rejected(f"cannot open it ({e.strerror})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Rejected("it is not a regular file")
        if st.st_uid != os.getuid() or st.st_mode & 0o077:
            raise Rejected("it is not a private file of yours")
        blob = os.read(fd, MAX_ENTRY_BYTES + 1)
    except OSError as e:
        raise Rejected(f"cannot read it ({e.strerror})") from None
    finally:
        os.close(fd)
    head = len(MAGIC) + TAG_BYTES
    if len(blob) > MAX_ENTRY_BYTES or len(blob) < head or not blob.startswith(MAGIC):
        raise Rejected("it is not a sandboxer plan of this version")
    tag, body = blob[len(MAGIC):head], blob[head:]
    if not _compare_digest(tag, _hmac(secret, entry.encode() + b"\0" + body)):
        raise Rejected("its authentication tag does not match (changed, forged or made under another key)")
    try:
        return marshal.loads(body)
    except (ValueError, EOFError, TypeError):
        raise Rejected("it does not decode") from None


def store(cache_dir: str, entry: str, data: Data, secret: bytes) -> None:
    """Write atomically (private temp file + rename); failures only cost speed."""
    plans = os.path.join(cache_dir, "plans")
    tmp = os.path.join(plans, f".{entry}.{os.getpid()}")
    body = marshal.dumps(data)
    blob = MAGIC + _hmac(secret, entry.encode() + b"\0" + body) + body
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            view = memoryview(blob)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.rename(tmp, os.path.join(plans, entry))
        _prune(plans)
    except OSError:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def _prune(plans: str) -> None:
    entries = []
    with os.scandir(plans) as it:
        for e in it:
            try:
                entries.append((e.stat(follow_symlinks=False).st_mtime_ns, e.path))
            except OSError:
                pass
    if len(entries) > MAX_ENTRIES:
        for _mtime, path in sorted(entries)[: len(entries) - MAX_ENTRIES]:
            try:
                os.unlink(path)
            except OSError:
                pass
