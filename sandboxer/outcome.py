"""What a run leaves for the caller besides its exit status: the work tree overlay's changes
(a summary, --diff, --keep DIR) and the --report FILE.

Both files are written where the payload may have been busy: a build's work tree is writable, so
it could put a symlink where the report goes (report.json -> ~/.bashrc) or swap a directory on
the way for one. The directory of each is opened before the payload starts, and what is written
lands in that directory, never through a symlink: the report via a new temporary file renamed
over the name, which replaces whatever the payload put there rather than following it.

Off the hot path: imported only when a run has a work tree overlay, --keep or --report.
"""

from __future__ import annotations

import json
import os
import signal
import time

from .errors import SandboxerError, printable

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .spec import RunSpec

MAX_LISTED = 100_000  # changes kept for --diff and the report; counts stay exact beyond it
CODES = {"A": "added", "M": "changed", "D": "deleted", "?": "unlisted"}


def prepare_keep(path: str, spec: RunSpec) -> str:
    """--keep DIR: checked and made (empty, 0700) before the run; its absolute path."""
    tree, mode = spec.worktree
    if mode != "overlay":
        raise SandboxerError("--keep needs a work tree overlay", "add --worktree overlay")
    full = os.path.abspath(path)
    if full == tree or full.startswith(tree.rstrip("/") + "/"):
        raise SandboxerError(f"--keep {path}: inside the work tree {tree}, where the build would see it",
                             "keep it outside the work tree")
    try:
        os.makedirs(os.path.dirname(full), exist_ok=True)
        os.mkdir(full, 0o700)
    except FileExistsError:
        if os.path.islink(full) or not os.path.isdir(full) or os.listdir(full):
            raise SandboxerError(f"--keep {path}: exists and is not an empty directory",
                                 "name a new or empty directory") from None
    except OSError as e:
        raise SandboxerError(f"--keep {path}: cannot create it: {e.strerror}") from None
    return full


class Changes:
    """The overlay's changes as the stage reports them, counted, and listed up to MAX_LISTED."""

    def __init__(self) -> None:
        self.counts = {"A": 0, "M": 0, "D": 0, "?": 0}
        self.listed: list[tuple[str, str]] = []

    def add(self, message: str) -> None:
        code, escaped = message[:1], message[1:]
        if code not in self.counts:
            return
        self.counts[code] += 1
        if len(self.listed) < MAX_LISTED:
            self.listed.append((code, _unescape(escaped)))

    def summary(self, keep: str) -> str:
        parts = ", ".join(f"{self.counts[c]} {CODES[c]}" for c in "AMD")
        if self.counts["?"]:
            parts += (f", and {self.counts['?']} place(s) too deeply nested to walk (unlisted: "
                      "they may hold more changes)")
        where = (f"kept in {keep}/upper (deleted files as 0/0 character devices)" if keep else
                 "discarded (--keep DIR keeps them, --diff lists them)")
        return f"sandboxer: work tree overlay: {parts}; {where}"

    def as_json(self, keep: str) -> dict[str, object]:
        codes = "AMD?" if self.counts["?"] else "AMD"
        out: dict[str, object] = {CODES[c]: [p for code, p in self.listed if code == c] for c in codes}
        out["counts"] = {CODES[c]: self.counts[c] for c in codes}
        out["truncated"] = sum(self.counts.values()) > len(self.listed)
        out["kept"] = keep or None
        return out


def _unescape(text: str) -> str:
    out, i = [], 0
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text):
            out.append("\n" if text[i + 1] == "n" else text[i + 1])
            i += 2
            continue
        out.append(c)
        i += 1
    return "".join(out)


def finish_keep(keep: str, *, failed: bool = False) -> None:
    """The overlay's work directory is of no use once it is unmounted: remove it; after a run
    that failed, DIR too if nothing is in it (best effort)."""
    import shutil

    work = os.path.join(keep, "work")
    try:  # overlayfs leaves work/work mode 0, with cached whiteouts in it
        os.chmod(os.path.join(work, "work"), 0o700)
    except OSError:
        pass
    shutil.rmtree(work, ignore_errors=True)
    if failed:
        for path in (os.path.join(keep, "upper"), keep):
            try:
                os.rmdir(path)
            except OSError:
                pass


class Report:
    """--report FILE: its directory opened now, the file written at the end."""

    def __init__(self, path: str) -> None:
        self.path = path
        directory, self.name = os.path.split(os.path.abspath(path))
        if not self.name:
            raise SandboxerError(f"--report {path}: names a directory", "name a file, e.g. report.json")
        try:
            self.dirfd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as e:
            raise SandboxerError(f"--report {path}: cannot open its directory: {e.strerror}",
                                 "create the directory first") from None
        self.started = time.time()
        self.clock = time.monotonic()

    def write(self, data: dict[str, object]) -> None:
        body = json.dumps({"started": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(self.started)),
                           "duration_s": round(time.monotonic() - self.clock, 3), **data},
                          indent=2, ensure_ascii=False) + "\n"
        temp = f".{self.name}.{os.getpid()}.tmp"
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                         dir_fd=self.dirfd)
            try:
                os.write(fd, body.encode())
            finally:
                os.close(fd)
            # rename replaces whatever is at the name, a symlink included, and follows nothing
            os.rename(temp, self.name, src_dir_fd=self.dirfd, dst_dir_fd=self.dirfd)
        except OSError as e:
            try:
                os.unlink(temp, dir_fd=self.dirfd)
            except OSError:
                pass
            raise SandboxerError(f"--report {printable(self.path)}: cannot write it: {e.strerror}") from None
        finally:
            os.close(self.dirfd)


def ending(code: int, exit_status: int | None, *, timed_out: bool, limits: dict[str, int],
           error: str = "") -> dict[str, object]:
    """How the run ended, for the report."""
    out: dict[str, object] = {"code": code, "cause": "exit", "signal": None, "timeout": timed_out,
                              "limit": None}
    if error:
        out.update(cause="error", message=error)
    elif timed_out:
        out["cause"] = "timeout"
    if exit_status is not None and os.WIFSIGNALED(exit_status):
        sig = os.WTERMSIG(exit_status)
        try:
            out["signal"] = signal.Signals(sig).name
        except ValueError:
            out["signal"] = sig
        if not timed_out:
            out["cause"] = "signal"
            limit = _LIMIT_SIGNALS.get(sig)
            if limit and limit in limits:
                out.update(cause="limit", limit=limit)
    elif not error and not timed_out and code - 128 in _LIMIT_SIGNALS and _LIMIT_SIGNALS[code - 128] in limits:
        # a shell reports its child's death by signal N as 128+N
        out["limit"] = _LIMIT_SIGNALS[code - 128]
    return out


_LIMIT_SIGNALS = {int(signal.SIGXCPU): "cpu", int(signal.SIGXFSZ): "fsize"}
