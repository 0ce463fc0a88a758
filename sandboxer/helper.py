"""A network helper the supervisor runs against the sandbox: the verbs every backend has.

spawn (against the stage's pid, as soon as its tap exists), poll_ready (the supervisor's loop
watches it, bounded, next to the stage's own setup; ready: the forwards are added), died (the
error to report when it ended under the payload), stop (always safe; nothing left). A backend
(slirp.py, pasta.py) says how it reports ready, how it is told to stop and how forwards are
added. Imported by the supervisor only when the plan has a network.

Fail closed: any problem before the payload starts is one SandboxerError (exit 125); there is
never a fallback to the host's network.
"""

from __future__ import annotations

import os
import select
import sys

from . import children
from .errors import SandboxerError

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .spec import NetSpec

READY_TIMEOUT = 5.0  # slirp4netns is ready ~4 ms after it starts, pasta ~20 ms
STOP_TIMEOUT = 2.0  # from asking it to stop to its exit
READY_FD, EXIT_FD = 3, 4


def status_text(wstatus: int) -> str:
    if os.WIFSIGNALED(wstatus):
        return f"killed by signal {os.WTERMSIG(wstatus)}"
    if os.WIFEXITED(wstatus):
        return f"exit status {os.WEXITSTATUS(wstatus)}"
    return "ended"


class Helper:
    """One helper process: its pid and pidfd, its log (a memfd on its stdout and stderr)."""

    name = "network helper"
    exit_fd = False  # it stops when its EXIT_FD closes (else: SIGTERM)
    keep_api = False  # a named sandbox keeps the helper's API socket, for sandboxer port

    def __init__(self, spec: NetSpec, stage_pid: int, *, debug: bool = False) -> None:
        self.spec = spec
        self.stage_pid = stage_pid
        self.debug = debug
        self.pid = 0
        self.pidfd = -1
        self.exit_w = -1
        self.log = -1

    # ---- start -----------------------------------------------------------------------------
    def argv(self) -> list[str]:
        return [w.replace("{stage}", str(self.stage_pid)) for w in self.spec.argv]

    def spawn(self) -> None:
        """Start the helper; poll_ready() then tells when it is ready (the supervisor watches
        ready_fd and pidfd in its loop, so that the helper's start overlaps the stage's)."""
        import time

        argv = self.argv()
        if self.debug:
            import shlex

            print(f"sandboxer: debug: starting {shlex.join(argv)}", file=sys.stderr)
        ready_r, ready_w = os.pipe()
        self.ready_fd = ready_r
        os.set_blocking(ready_r, False)
        fds = {READY_FD: ready_w}
        exit_r = -1
        if self.exit_fd:
            exit_r, self.exit_w = os.pipe()  # closing exit_w (or our death) makes it exit
            fds[EXIT_FD] = exit_r
        self.log = os.memfd_create(f"{self.spec.backend}-log", os.MFD_CLOEXEC)
        null = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        try:
            # own process group: a Ctrl-C on the terminal must not kill the network under the payload
            self.pid = children.spawn(argv, {**fds, 0: null, 1: self.log, 2: self.log})
        finally:
            os.close(null)
            os.close(ready_w)
            if exit_r >= 0:
                os.close(exit_r)
        self.pidfd = os.pidfd_open(self.pid)
        self.ready_by = time.monotonic() + READY_TIMEOUT

    ready = False
    ready_fd = -1
    ready_by = 0.0  # time.monotonic() by which it must be ready

    def poll_ready(self) -> bool:
        """After ready_fd or pidfd became readable: True once the helper is ready (its forwards
        then added); raises SandboxerError if it ended, or closed its ready fd, before."""
        status = None
        try:
            data = os.read(self.ready_fd, 64)
        except BlockingIOError:
            status = self._collect()
            if status is None:
                return False  # neither ready nor ended (yet)
            data = b""
        except OSError:
            data = b""
        os.close(self.ready_fd)
        self.ready_fd = -1
        if not data:
            # the ready pipe closed without a word, or the helper exited: wait for its status
            if status is None:
                status = self._collect_soon(1.0)
            raise self.not_ready(status_text(status) if status is not None else "closed its ready fd")
        self.ready = True
        self.forward()
        return True

    def late(self) -> SandboxerError:
        """It was not ready by ready_by."""
        return self.failed(f"{self.spec.backend} was not ready within {READY_TIMEOUT:.0f} s")

    def forward(self) -> None:
        """Add the forwards the spec asks for after start (a backend with an API does)."""

    def said(self) -> str:
        """The last line the helper wrote, for error messages."""
        if self.log < 0:
            return ""
        try:
            size = os.fstat(self.log).st_size
            text = os.pread(self.log, 4096, max(0, size - 4096)).decode("utf-8", "replace")
        except OSError:
            return ""
        lines = [self.clean(line) for line in text.splitlines()]
        lines = [line for line in lines if line]
        return lines[-1] if lines else ""

    def clean(self, line: str) -> str:
        """A line of the helper's log as the user should see it; "" to skip it."""
        return line.strip()

    def failed(self, what: str) -> SandboxerError:
        said = self.said()
        detail = f" ({self.spec.backend} said: {said})" if said else ""
        return SandboxerError(f"network helper {what}{detail}", self.hint(said))

    def hint(self, said: str) -> str:
        return "rerun with --debug"

    def not_ready(self, text: str) -> SandboxerError:
        return self.failed(f"{self.spec.backend} exited before it was ready ({text})")

    def _collect_soon(self, wait: float) -> int | None:
        """Reap the helper if it ends within wait seconds; its wait status, or None."""
        if wait and self.pidfd >= 0:
            select.select([self.pidfd], [], [], wait)
        return self._collect()

    def _collect(self) -> int | None:
        """Reap the helper if it has ended; its wait status, or None."""
        if not self.pid:
            return None
        try:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
        except ChildProcessError:
            self.pid = 0
            return None
        if pid == 0:
            return None
        self.pid = 0
        return status

    # ---- end -------------------------------------------------------------------------------
    def died(self) -> SandboxerError:
        status = self._collect_soon(1.0)
        name = self.spec.backend
        text = f"{name} {status_text(status)}" if status is not None else f"{name} ended"
        return SandboxerError("network helper died", f"{text}; the sandbox was stopped")

    def ask_stop(self) -> None:
        """Ask the helper to stop (its exit fd, else SIGTERM), without waiting: its exit (a few
        ms of namespace teardown in the kernel) then overlaps the sandbox's own."""
        if self.exit_w >= 0:
            os.close(self.exit_w)
            self.exit_w = -1
        elif self.pid and not self.asked:
            try:
                os.kill(self.pid, 15)  # SIGTERM
            except OSError:
                pass
        self.asked = True

    asked = False

    def stop(self) -> None:
        """Always safe: ask the helper to stop, SIGKILL it if it lingers, collect it."""
        self.ask_stop()
        if self.pid:
            children.reap(self.pid, STOP_TIMEOUT, self.pidfd)
            self.pid = 0
        for fd in (self.pidfd, self.log, self.ready_fd):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.pidfd = self.log = self.ready_fd = -1


def spawn(spec: NetSpec, stage_pid: int, *, debug: bool = False, keep_api: bool = False) -> Helper:
    """Start spec's backend against the stage (Helper.poll_ready: when it is ready); raises
    SandboxerError, leaving nothing, if it cannot be started. keep_api: a named sandbox keeps
    slirp4netns's API socket."""
    helper = backend(spec.backend)(spec, stage_pid, debug=debug)
    helper.keep_api = keep_api
    try:
        helper.spawn()
    except BaseException:
        helper.stop()
        raise
    return helper


def backend(name: str) -> type[Helper]:
    """The backend's class (importing its module: the supervisor does that early, while the
    stage sets up, so that none of it is on the way to the helper's start)."""
    if name == "pasta":
        from .pasta import Pasta

        return Pasta
    from .slirp import Slirp4netns

    return Slirp4netns
