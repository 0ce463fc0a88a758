"""`sandboxer rootfs import TARBALL DIR [--sha256 HEX]`: unpack a root filesystem tarball, safely, as the user.

tarfile only parses the archive here; it never extracts. Every entry is created relative to a directory
file descriptor reached from DIR one component at a time with O_NOFOLLOW|O_DIRECTORY, so nothing in the
archive can make a write land outside DIR:

- names lose any leading "/" and "./" (an absolute member /a/b is imported as DIR/a/b, as GNU tar does);
  ".." is resolved lexically and a member that would climb above DIR is skipped with a warning;
- a member whose parent is a symlink (planted earlier, e.g. `etc -> /tmp/x` then `etc/passwd`) or not a
  directory is skipped with a warning: symlinks are never followed while extracting;
- symlinks are created as symlinks with their target stored verbatim (absolute targets are meant for
  inside the rootfs, where they are resolved later);
- hard links are made only to non-directories this import already created inside DIR;
- device nodes and FIFOs are skipped (one summary warning); ownership is not kept (all is the user's);
- modes are kept except the setuid and setgid bits, which are dropped: the files belong to the user, so
  the bits could only ever grant the user's own identity to whoever runs them. The sticky bit is kept
  (for tmp directories). Directories stay writable for the user while unpacking and get their modes at
  the end.

With --sha256 the tarball is hashed before anything is unpacked, through the same open file that is
then read, so what is unpacked is what was checked. DIR is created (with parents) when missing; an
existing DIR must be an empty directory. On failure everything this import created is removed again.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import stat
import sys
import tarfile
import zlib
from typing import IO

from .errors import SandboxerError

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_KEEP_MODE = 0o7777 & ~(stat.S_ISUID | stat.S_ISGID)
_CHUNK = 1 << 20


def _decoder_errors() -> tuple[type[Exception], ...]:
    """What a damaged compressed stream raises besides tarfile's own errors."""
    found: list[type[Exception]] = [tarfile.TarError, EOFError, zlib.error]
    try:
        import lzma

        found.append(lzma.LZMAError)
    except ImportError:  # pragma: no cover - Python built without lzma
        pass
    return tuple(found)


class _Skip(Exception):
    """This member is refused; the message says why."""


class TooLarge(Exception):
    """The archive unpacks to more than the import may write."""


def _human(size: int) -> str:
    for unit, factor in (("G", 1 << 30), ("M", 1 << 20), ("k", 1 << 10)):
        if size >= factor:
            return f"{size / factor:.1f}{unit}"
    return f"{size} bytes"


class _Importer:
    def __init__(self, root_fd: int, limit: int, limit_why: str) -> None:
        self.root_fd = root_fd
        self.limit = limit
        self.limit_why = limit_why
        self.written = 0
        self.entries = 0
        self.unsafe = 0
        self.special = 0
        self.made: set[tuple[str, ...]] = set()  # non-directories created by this import
        self.dir_modes: dict[tuple[str, ...], int] = {}
        self.times: dict[tuple[str, ...], float] = {}

    # -- walking -----------------------------------------------------------------------------------
    def open_dir(self, parts: tuple[str, ...], *, create: bool) -> int:
        """An fd of DIR/parts, walked without following any symlink; missing directories are created
        when `create` (mode 0o755 at the end unless the archive says otherwise)."""
        fd = os.dup(self.root_fd)
        try:
            for n, name in enumerate(parts):
                try:
                    new = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise _Skip(f"{'/'.join(parts[:n + 1])} does not exist") from None
                    os.mkdir(name, 0o700, dir_fd=fd)
                    self.dir_modes.setdefault(parts[:n + 1], 0o755)
                    new = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except OSError as e:
                    if e.errno in (errno.ELOOP, errno.ENOTDIR):  # Linux says ENOTDIR for a symlink here
                        mode = os.stat(name, dir_fd=fd, follow_symlinks=False).st_mode
                        what = "a symlink" if stat.S_ISLNK(mode) else "not a directory"
                        raise _Skip(f"{'/'.join(parts[:n + 1])} is {what}") from None
                    raise
                os.close(fd)
                fd = new
        except BaseException:
            os.close(fd)
            raise
        return fd

    def clear_slot(self, dir_fd: int, name: str, *, for_dir: bool) -> bool:
        """Make room for a new entry `name`; return True if a directory is already there (kept)."""
        try:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        if stat.S_ISDIR(st.st_mode):
            if for_dir:
                return True
            raise _Skip("a directory of that name was already unpacked")
        os.unlink(name, dir_fd=dir_fd)  # a file or a symlink: the link itself goes, nothing is followed
        return False

    # -- members ------------------------------------------------------------------------------------
    def add(self, tar: tarfile.TarFile, member: tarfile.TarInfo, parts: tuple[str, ...]) -> None:
        if member.ischr() or member.isblk() or member.isfifo():
            self.special += 1
            return
        if not (member.isreg() or member.isdir() or member.issym() or member.islnk()):
            raise _Skip(f"unsupported member type {member.type!r}")
        parent = self.open_dir(parts[:-1], create=True)
        name = parts[-1]
        try:
            if member.isdir():
                if not self.clear_slot(parent, name, for_dir=True):
                    os.mkdir(name, 0o700, dir_fd=parent)
                self.dir_modes[parts] = member.mode & _KEEP_MODE
                self.times[parts] = member.mtime
                self.made.discard(parts)
            elif member.issym():
                if not member.linkname:
                    raise _Skip("symlink with an empty target")
                self.clear_slot(parent, name, for_dir=False)
                os.symlink(member.linkname, name, dir_fd=parent)
                self.made.add(parts)
                self.times[parts] = member.mtime
            elif member.islnk():
                self.hardlink(parent, name, parts, member.linkname)
            else:
                self.regular(tar, member, parent, name, parts)
        finally:
            os.close(parent)
        self.entries += 1

    def regular(self, tar: tarfile.TarFile, member: tarfile.TarInfo, parent: int, name: str,
                parts: tuple[str, ...]) -> None:
        """A file; a sparse member (GNU or PAX sparse) stays sparse: only its data blocks are
        written, each at its offset, and the holes stay holes."""
        # (offset, size) of each data block; typeshed does not know TarInfo.sparse's shape
        sparse: list[tuple[int, int]] | None = getattr(member, "sparse", None)
        blocks = sparse if sparse is not None else [(0, member.size)]
        self.charge(sum(size for _offset, size in blocks), member.name)
        self.clear_slot(parent, name, for_dir=False)
        source = tar.extractfile(member)
        assert source is not None
        fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                     dir_fd=parent)
        try:
            for offset, size in blocks:
                source.seek(offset)
                left = size
                while left > 0 and (chunk := source.read(min(_CHUNK, left))):
                    done = 0
                    while done < len(chunk):
                        done += os.pwrite(fd, chunk[done:], offset + done)
                    offset += len(chunk)
                    left -= len(chunk)
            os.ftruncate(fd, member.size)
            os.fchmod(fd, member.mode & _KEEP_MODE)
            os.utime(fd, (member.mtime, member.mtime))
        finally:
            os.close(fd)
        self.made.add(parts)

    def charge(self, size: int, what: str) -> None:
        """Count size bytes about to be written; refuse them beyond the import's limit."""
        if self.written + size > self.limit:
            raise TooLarge(f"unpacking {what!r} would write more than {_human(self.limit)} "
                           f"({self.limit_why})")
        self.written += size

    def hardlink(self, parent: int, name: str, parts: tuple[str, ...], linkname: str) -> None:
        target = normalise(linkname)
        if target is None or not target:
            raise _Skip(f"hard link to {linkname!r}, which is outside DIR")
        if target not in self.made:
            raise _Skip(f"hard link to {linkname!r}, which this archive has not unpacked (before it)")
        if target == parts:
            raise _Skip("hard link to itself")
        src_dir = self.open_dir(target[:-1], create=False)
        try:
            st = os.stat(target[-1], dir_fd=src_dir, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                raise _Skip(f"hard link to the directory {linkname!r}")
            self.clear_slot(parent, name, for_dir=False)
            # linkat without AT_SYMLINK_FOLLOW: a symlink is linked itself, never its target
            os.link(target[-1], name, src_dir_fd=src_dir, dst_dir_fd=parent, follow_symlinks=False)
        finally:
            os.close(src_dir)
        self.made.add(parts)

    def finish(self) -> None:
        """Directory modes and times, deepest first (so a read-only parent is set last); symlink times."""
        for parts, mtime in self.times.items():
            if parts in self.made and parts not in self.dir_modes:
                try:
                    parent = self.open_dir(parts[:-1], create=False)
                except _Skip:
                    continue
                try:
                    os.utime(parts[-1], (mtime, mtime), dir_fd=parent, follow_symlinks=False)
                except OSError:
                    pass
                finally:
                    os.close(parent)
        for parts in sorted(self.dir_modes, key=len, reverse=True):
            try:
                fd = self.open_dir(parts, create=False)
            except _Skip:
                continue
            try:
                os.fchmod(fd, self.dir_modes[parts])
                if parts in self.times:
                    os.utime(fd, (self.times[parts], self.times[parts]))
            finally:
                os.close(fd)


def normalise(name: str) -> tuple[str, ...] | None:
    """A member name as components inside DIR: leading "/" and "." dropped, ".." resolved lexically.
    None if it climbs above DIR; () for DIR itself."""
    out: list[str] = []
    for part in name.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not out:
                return None
            out.pop()
        else:
            out.append(part)
    return tuple(out)


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def _warn(text: str) -> None:
    print(f"sandboxer: warning: {text}", file=sys.stderr)


def _check_hex(sha256: str) -> str:
    value = sha256.strip().lower()
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise SandboxerError(f"--sha256 {sha256!r} is not a SHA-256 checksum", "expected 64 hex digits")
    return value


def _open_tarball(path: str) -> IO[bytes]:
    try:
        f = open(path, "rb")  # closed by the caller
    except FileNotFoundError:
        raise SandboxerError(f"tarball not found: {path}") from None
    except IsADirectoryError:
        raise SandboxerError(f"{path} is a directory, not a tarball") from None
    except OSError as e:
        raise SandboxerError(f"cannot read the tarball {path}: {e.strerror}") from None
    if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
        f.close()
        raise SandboxerError(f"{path} is not a regular file, so not a tarball")
    return f


def _verify(f: IO[bytes], path: str, expected: str) -> None:
    digest = hashlib.sha256()
    try:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
    except OSError as e:
        raise SandboxerError(f"cannot read the tarball {path}: {e.strerror}") from None
    actual = digest.hexdigest()
    if actual != expected:
        raise SandboxerError(f"checksum mismatch for {path}: expected sha256 {expected}, got {actual}",
                             "the download is corrupt or not the file you meant; nothing was unpacked")
    f.seek(0)


def _prepare_dir(directory: str) -> list[str]:
    """Check DIR (missing, or an empty directory); return the directories that will have to be created,
    outermost first (empty if DIR exists)."""
    path = os.path.abspath(directory)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        missing = [path]
        parent = os.path.dirname(path)
        while parent != missing[-1] and not os.path.lexists(parent):
            missing.append(parent)
            parent = os.path.dirname(parent)
        return missing[::-1]
    except OSError as e:
        raise SandboxerError(f"cannot use {directory} as the rootfs directory: {e.strerror}") from None
    if not stat.S_ISDIR(st.st_mode):
        raise SandboxerError(f"{directory} exists and is not a directory", "choose another DIR")
    try:
        if os.listdir(path):
            raise SandboxerError(f"{directory} is not empty",
                                 "choose another DIR, which is created if missing, or empty this one")
    except OSError as e:
        raise SandboxerError(f"cannot list {directory}: {e.strerror}") from None
    return []


def _undo(directory: str, created: list[str], root_fd: int | None) -> None:
    """Remove what this import created: the directories it made, or the contents of an existing DIR."""
    if created:
        shutil.rmtree(created[0], ignore_errors=True)
        return
    if root_fd is None:
        return
    for name in os.listdir(root_fd):
        try:
            if stat.S_ISDIR(os.stat(name, dir_fd=root_fd, follow_symlinks=False).st_mode):
                shutil.rmtree(name, dir_fd=root_fd, ignore_errors=True)
            else:
                os.unlink(name, dir_fd=root_fd)
        except OSError:
            pass


def import_tarball(tarball: str, directory: str, *, sha256: str | None = None,
                   max_size: int | None = None) -> str:
    """Unpack `tarball` into `directory`; return the one-line summary. Raises SandboxerError."""
    expected = _check_hex(sha256) if sha256 is not None else None
    to_create = _prepare_dir(directory)
    with _open_tarball(tarball) as f:
        if expected is not None:
            _verify(f, tarball, expected)
        try:
            tar = tarfile.open(fileobj=f, mode="r:*")
        except _decoder_errors() + (OSError,):
            raise SandboxerError(f"{tarball} is not a tar archive (plain, gzip, xz or bzip2)") from None
        with tar:
            return _unpack(tar, tarball, directory, to_create, max_size)


def _unpack(tar: tarfile.TarFile, tarball: str, directory: str, to_create: list[str],
            max_size: int | None) -> str:
    root_fd: int | None = None
    created: list[str] = []
    try:
        for path in to_create:
            try:
                os.mkdir(path, 0o755)
            except OSError as e:
                raise SandboxerError(f"cannot create {path}: {e.strerror}") from None
            created.append(path)
        try:
            root_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise SandboxerError(f"cannot open {directory}: {e.strerror}") from None
        if max_size is None:
            # well under the free space: a hostile archive (a sparse member of 21 GB, say) must
            # not fill the disk before the import notices
            st = os.fstatvfs(root_fd)
            limit, why = st.f_bavail * st.f_frsize // 2, "half the free space of its filesystem"
        else:
            limit, why = max_size, "--max-size"
        importer = _Importer(root_fd, limit, why)
        try:
            for member in tar:
                parts = normalise(member.name)
                if parts is None:
                    importer.unsafe += 1
                    _warn(f"skipped {member.name!r}: the path leads outside DIR")
                    continue
                if not parts:
                    continue  # DIR itself ("./")
                try:
                    importer.add(tar, member, parts)
                except _Skip as e:
                    importer.unsafe += 1
                    _warn(f"skipped {member.name!r}: {e}")
            importer.finish()
        except TooLarge as e:
            raise SandboxerError(f"{tarball}: {e}; nothing was left behind",
                                 "if the disk has the room, raise the limit with --max-size SIZE") from None
        except _decoder_errors() as e:
            raise SandboxerError(f"{tarball}: corrupt or truncated archive: {_one_line(e)}",
                                 "nothing was left behind; check the download") from None
        except OSError as e:
            if e.errno is None:  # gzip.BadGzipFile and bz2's "Invalid data stream" carry no errno
                raise SandboxerError(f"{tarball}: corrupt archive: {_one_line(e)}",
                                     "nothing was left behind; check the download") from None
            raise SandboxerError(f"cannot unpack {tarball} into {directory}: {e.strerror or e}") from None
    except BaseException:
        _undo(directory, created, root_fd)
        raise
    finally:
        if root_fd is not None:
            os.close(root_fd)
    skipped = []
    if importer.special:
        _warn(f"skipped {importer.special} device node(s) and FIFO(s); the sandbox makes its own /dev")
        skipped.append(f"{importer.special} device node(s)/FIFO(s)")
    if importer.unsafe:
        skipped.append(f"{importer.unsafe} unsafe or unsupported member(s)")
    return f"imported {importer.entries} entries into {directory}" + (
        f"; skipped {', '.join(skipped)}" if skipped else "")
