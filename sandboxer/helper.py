"""A network helper the supervisor runs against the sandbox: the verbs every backend has.

start (spawn against the stage's pid, wait, bounded, until ready, add the forwards), died (the
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

READY_TIMEOUT = 5.0  # slirp4netns is ready ~4 ms after it starts, pasta ~15 ms
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

    def start(self) -> None:
        argv = self.argv()
        if self.debug:
            import shlex

            print(f"sandboxer: debug: starting {shlex.join(argv)}", file=sys.stderr)
        ready_r, ready_w = os.pipe()
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
        try:
            self.pidfd = os.pidfd_open(self.pid)
            self._wait_ready(ready_r)
        finally:
            os.close(ready_r)
        self.forward()

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

    def _wait_ready(self, ready_r: int) -> None:
        import time

        name = self.spec.backend
        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise self.failed(f"{name} was not ready within {READY_TIMEOUT:.0f} s")
            readable, _, _ = select.select([ready_r, self.pidfd], [], [], left)
            if ready_r in readable:
                try:
                    data = os.read(ready_r, 64)
                except OSError:
                    data = b""
                if data:
                    return
            if readable:
                # the ready pipe closed without a word, or the helper exited: wait for its status
                select.select([self.pidfd], [], [], 1.0)
                status = self._collect()
                text = status_text(status) if status is not None else "closed its ready fd"
                raise self.not_ready(text)

    def not_ready(self, text: str) -> SandboxerError:
        return self.failed(f"{self.spec.backend} exited before it was ready ({text})")

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
        select.select([self.pidfd], [], [], 1.0)
        status = self._collect()
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
        for fd in (self.pidfd, self.log):
            if fd >= 0:
                try:
                    os.close(fd)
                except OSError:
                    pass
        self.pidfd = self.log = -1


def start(spec: NetSpec, stage_pid: int, *, debug: bool = False, keep_api: bool = False) -> Helper:
    """Start spec's backend against the stage; raises SandboxerError (and leaves nothing) if it
    cannot be made ready. keep_api: a named sandbox keeps slirp4netns's API socket."""
    if spec.backend == "pasta":
        from .pasta import Pasta

        helper: Helper = Pasta(spec, stage_pid, debug=debug)
    else:
        from .slirp import Slirp4netns

        slirp = Slirp4netns(spec, stage_pid, debug=debug)
        slirp.keep_api = keep_api
        helper = slirp
    try:
        helper.start()
    except BaseException:
        helper.stop()
        raise
    return helper
