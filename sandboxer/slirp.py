"""The network helper: slirp4netns, run by the supervisor against the sandbox's net namespace.

Imported by the supervisor only when the plan has a network (never on the hot path otherwise).
Fail closed: any problem before the payload starts is one SandboxerError (exit 125); there is
never a fallback to the host's network.
"""

from __future__ import annotations

import os
import select
import sys

from . import children
from .errors import SandboxerError

READY_TIMEOUT = 5.0  # slirp4netns is ready ~4 ms after it starts
API_TIMEOUT = 5.0  # per API request
STOP_TIMEOUT = 2.0  # from closing --exit-fd to slirp4netns's exit
READY_FD, EXIT_FD = 3, 4


def _status_text(wstatus: int) -> str:
    if os.WIFSIGNALED(wstatus):
        return f"killed by signal {os.WTERMSIG(wstatus)}"
    if os.WIFEXITED(wstatus):
        return f"exit status {os.WEXITSTATUS(wstatus)}"
    return "ended"


class Slirp:
    """One slirp4netns process and its private API socket directory."""

    def __init__(self, spec: dict[str, object], stage_pid: int, *, debug: bool = False) -> None:
        self.spec = spec
        self.stage_pid = stage_pid
        self.debug = debug
        self.pid = 0
        self.pidfd = -1
        self.exit_w = -1
        self.log = -1
        self.api = ""

    # ---- start -----------------------------------------------------------------------------
    def start(self) -> None:
        forwards = self.spec["forwards"]
        assert isinstance(forwards, list)
        if forwards:
            # the stage's private, detached directory: see private_api_dir() in stage.c
            self.api = f"/proc/{self.stage_pid}/cwd/api.sock"
        argv = [w.replace("{stage}", str(self.stage_pid)) for w in self.spec["argv"]]  # type: ignore[attr-defined]
        if self.debug:
            import shlex

            print(f"sandboxer: debug: starting {shlex.join(argv)}", file=sys.stderr)
        ready_r, ready_w = os.pipe()
        exit_r, exit_w = os.pipe()
        self.log = os.memfd_create("slirp4netns-log", os.MFD_CLOEXEC)
        null = os.open("/dev/null", os.O_RDONLY | os.O_CLOEXEC)
        try:
            # own process group: a Ctrl-C on the terminal must not kill the network under the payload
            pid = children.spawn(argv, {READY_FD: ready_w, EXIT_FD: exit_r, 0: null, 1: self.log,
                                        2: self.log})
        finally:
            os.close(null)
        self.pid = pid
        os.close(ready_w)
        os.close(exit_r)
        self.exit_w = exit_w  # closing it (or our death) makes slirp4netns exit
        try:
            self.pidfd = os.pidfd_open(pid)
            self._wait_ready(ready_r)
        finally:
            os.close(ready_r)
        for request, shown in zip(forwards, self.spec["shown"], strict=True):  # type: ignore[call-overload]
            self._forward(request, shown)
        self._remove_socket()  # not needed any more (and nothing but us could reach it anyway)

    def said(self) -> str:
        """The last line slirp4netns wrote, for error messages."""
        if self.log < 0:
            return ""
        try:
            size = os.fstat(self.log).st_size
            text = os.pread(self.log, 4096, max(0, size - 4096)).decode("utf-8", "replace")
        except OSError:
            return ""
        lines = [line.strip() for line in text.splitlines()
                 if line.strip() and not line.startswith(("WARNING", "* "))]
        return lines[-1] if lines else ""

    def _failed(self, what: str) -> SandboxerError:
        said = self.said()
        detail = f" (slirp4netns said: {said})" if said else ""
        hint = "check 'slirp4netns --version' (1.x needed); rerun with --debug"
        if "/dev/net/tun" in said:
            hint = "slirp4netns needs /dev/net/tun readable and writable by you (mode 0666)"
        return SandboxerError(f"network helper {what}{detail}", hint)

    def _wait_ready(self, ready_r: int) -> None:
        import time

        deadline = time.monotonic() + READY_TIMEOUT
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise self._failed(f"slirp4netns was not ready within {READY_TIMEOUT:.0f} s")
            readable, _, _ = select.select([ready_r, self.pidfd], [], [], left)
            if ready_r in readable:
                try:
                    data = os.read(ready_r, 16)
                except OSError:
                    data = b""
                if data:
                    return
            if readable:
                # the ready pipe closed without a word, or slirp4netns exited: wait for its status
                select.select([self.pidfd], [], [], 1.0)
                status = self._collect()
                text = _status_text(status) if status is not None else "closed its ready fd"
                raise self._failed(f"slirp4netns exited before it was ready ({text})")

    def _collect(self) -> int | None:
        """Reap slirp4netns if it has ended; its wait status, or None."""
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

    def _forward(self, request: str, shown: str) -> None:
        import json
        import socket

        reply = b""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.settimeout(API_TIMEOUT)
                sock.connect(self.api)
                sock.sendall(request.encode())
                sock.shutdown(socket.SHUT_WR)
                while chunk := sock.recv(65536):
                    reply += chunk
                    if len(reply) > 1 << 20:
                        break
        except OSError as e:
            raise self._failed(f"cannot add the forward {shown}: API socket: {e.strerror or e}") from None
        try:
            answer = json.loads(reply.decode("utf-8", "replace"))
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            raise self._failed(f"cannot add the forward {shown}: unexpected reply {reply[:200]!r}")
        if "error" in answer:
            error = answer["error"]
            desc = error.get("desc", error) if isinstance(error, dict) else error
            raise SandboxerError(
                f"network helper cannot forward {shown}: {desc}",
                "is the host port already in use? pick another one",
            )

    # ---- end -------------------------------------------------------------------------------
    def died(self) -> SandboxerError:
        select.select([self.pidfd], [], [], 1.0)
        status = self._collect()
        text = f"slirp4netns {_status_text(status)}" if status is not None else "slirp4netns ended"
        return SandboxerError("network helper died", f"{text}; the sandbox was stopped")

    def _remove_socket(self) -> None:
        if self.api:
            try:
                os.unlink(self.api)
            except OSError:
                pass
        self.api = ""

    def stop(self) -> None:
        """Always safe: stop slirp4netns (close --exit-fd, then SIGKILL), remove the socket."""
        if self.exit_w >= 0:
            os.close(self.exit_w)
            self.exit_w = -1
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
        self._remove_socket()
