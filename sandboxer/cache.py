"""The plan cache: validated, compiled recipes keyed by everything they depend on.

Validation (pydantic) and compilation cost ~150 ms; a cache hit costs well under 1 ms. The key
covers sandboxer's own code, the Python version, the command-line options, the profile's path
and bytes, and every host fact, so any change recompiles. Entries live in the user's cache
directory, which every sandbox hides (see compile: pin + hide), so a payload cannot plant one.
"""

from __future__ import annotations

import marshal
import os
import stat
import sys

from . import __version__

try:  # the builtin module: hashlib's OpenSSL backend costs ~3 ms to load on every run
    from _sha256 import sha256 as _sha256
except ImportError:  # Python 3.12+ (_sha2)
    from hashlib import sha256 as _sha256

MAX_ENTRIES = 64
MAX_PROFILE_BYTES = 1024 * 1024
PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def ensure_dir(path: str) -> bool:
    """Create the cache directory (0700); False if that is impossible (e.g. read-only home)."""
    try:
        os.makedirs(os.path.join(path, "plans"), mode=0o700, exist_ok=True)
        st = os.lstat(path)
        return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()
    except OSError:
        return False


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


def load(cache_dir: str, entry: str) -> dict[str, object] | None:
    path = os.path.join(cache_dir, "plans", entry)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        # only our own, private, regular files
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.getuid() or st.st_mode & 0o077:
            return None
        recipe = marshal.loads(os.read(fd, 1 << 20))
        return recipe if isinstance(recipe, dict) else None
    except (OSError, ValueError, EOFError, TypeError):
        return None
    finally:
        os.close(fd)


def store(cache_dir: str, entry: str, recipe: dict[str, object]) -> None:
    """Write atomically (private temp file + rename); failures only cost speed."""
    plans = os.path.join(cache_dir, "plans")
    tmp = os.path.join(plans, f".{entry}.{os.getpid()}")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, marshal.dumps(recipe))
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
