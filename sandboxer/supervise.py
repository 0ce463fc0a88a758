"""The supervisor: with children.py (which starts and ends its helpers), the only module with
side effects on the host.

It spawns the plan's outer hop (unshare ... -- sandboxer-stage) as a child that dies with it,
hands the stage its config (wire.encode), starts the network helper as soon as the stage's tap
exists, waits (bounded) for both to be ready, says "go", forwards signals, and turns the outcome
into sandboxer's exit status.

The run is an event loop over a few fds; each kind of event has its handler (a signal, a
message from the stage, the stage's end, the network helper's readiness or death, the setup
deadline), so that another source (a control channel) is one more fd and one more handler.

On the hot path: imports only os, signal, select, children, wire and spec.
"""

from __future__ import annotations

# _signal, not signal: the wrapper imports enum, ~3 ms on every run
import _signal as signal
import os
import select
import sys

from . import children
from .errors import EXIT_FAILURE, SandboxerError, printable
from .wire import CONFIG_FD, CONTROL_FD, GO, STATUS, STATUS_FD, STDERR_FD, WireError, encode

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .control import Named
    from .helper import Helper
    from .outcome import Changes
    from .spec import RunSpec

SETUP_TIMEOUT = 30.0  # from spawn to "ready": namespaces and mounts take milliseconds
EXIT_TIMEOUT = 124  # the run's --timeout ended it, as timeout(1)
REAP_TIMEOUT = 5.0  # from the payload's end to unshare's exit
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2)


def stage_config(spec: RunSpec, *, tty: bool, env: dict[str, str], argv: list[str], ppid: int,
                 keep: str = "", announce: bool = False) -> bytes:
    """The stage's config for this run (wire.py); a NUL in a value is refused, not passed on."""
    try:
        return encode(spec, tty=tty, env=env, argv=argv, ppid=ppid, keep=keep, announce=announce)
    except WireError as e:
        raise SandboxerError(str(e), "remove it") from None


def _interactive() -> bool:
    """stdin is a terminal and we are its foreground job: the payload takes the foreground."""
    return os.isatty(0) and _interactive_pgrp()


def diagnose(unshare_message: str) -> SandboxerError:
    """Why could no user namespace be made? Name the setting to change."""

    def read(path: str) -> str:
        try:
            with open(path) as f:
                return f.read().strip()
        except OSError:
            return ""

    said = f" (unshare said: {unshare_message})" if unshare_message else ""
    if not os.path.exists("/proc/self/ns/user"):
        return SandboxerError(
            f"this kernel has no user namespaces{said}",
            "use a kernel built with CONFIG_USER_NS=y",
        )
    if read("/proc/sys/user/max_user_namespaces") == "0":
        return SandboxerError(
            f"user namespaces are disabled: user.max_user_namespaces is 0{said}",
            "run: sudo sysctl -w user.max_user_namespaces=15000",
        )
    if read("/proc/sys/kernel/unprivileged_userns_clone") == "0":
        return SandboxerError(
            f"unprivileged user namespaces are disabled: kernel.unprivileged_userns_clone is 0{said}",
            "run: sudo sysctl -w kernel.unprivileged_userns_clone=1",
        )
    if read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == "1":
        return SandboxerError(
            f"AppArmor restricts unprivileged user namespaces{said}",
            "run: sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0, "
            "or install an AppArmor profile that allows userns for /usr/bin/unshare",
        )
    if "No space left on device" in unshare_message:
        return SandboxerError(
            f"the limit on user namespaces is reached{said}",
            "raise user.max_user_namespaces, or end other sandboxes/containers",
        )
    return SandboxerError(f"cannot create the sandbox's namespaces{said}", "see --debug")


def _interactive_pgrp() -> bool:
    try:
        return os.tcgetpgrp(0) == os.getpgrp()
    except OSError:
        return False


def _host_pid(stage: int, nspid: int) -> int:
    """The pid on the host of the stage's child that the stage calls nspid (NSpid in status)."""
    try:
        with open(f"/proc/{stage}/task/{stage}/children") as f:
            kids = f.read().split()
    except OSError:
        return 0
    for kid in kids:
        try:
            with open(f"/proc/{kid}/status") as f:
                for line in f:
                    if line.startswith("NSpid:"):
                        ids = line.split()[1:]
                        if ids and int(ids[-1]) == nspid:
                            return int(ids[0])
        except (OSError, ValueError):
            continue
    return 0


def _find_child(pid: int) -> int:
    """unshare --fork's child (our stage), from the kernel's list of its children."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            kids = f.read().split()
        if kids:
            return int(kids[0])
    except OSError:
        pass
    for entry in os.listdir("/proc"):  # kernels without CONFIG_PROC_CHILDREN
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    return int(entry)
            except (OSError, IndexError, ValueError):
                continue
    return pid


class Supervisor:
    def __init__(self, spec: RunSpec, argv: list[str] | None, *, debug: bool = False, keep: str = "",
                 named: Named | None = None):
        self.spec = spec
        self.keep = keep
        self.named = named  # a named sandbox: its registry entry and control socket
        self.changes: Changes | None = None
        if spec.worktree[1] == "overlay":
            from .outcome import Changes

            self.changes = Changes()
        self.timed_out = False
        self.deadline = 0.0  # of the run's timeout, then of its grace; 0: none
        self.argv = argv or list(spec.command)
        self.debug = debug
        self.tty = _interactive()  # (a detached sandbox's stdin is /dev/null)
        self.child = 0  # unshare
        self.stage = 0  # the stage, as the host sees it
        self.pending: list[int] = []  # signals caught, not yet handled
        self.buffer = b""
        self.net: Helper | None = None
        # the run's state, changed by the handlers
        self.stage_ready = False  # the stage said "ready"
        self.ready = False  # ... and the network helper is: "go" was said
        self.exit_status: int | None = None
        self.failure: SandboxerError | None = None
        self.status_open = True
        self.ctl_w = -1

    # ---- spawning ------------------------------------------------------------------------------
    def _spawn(self) -> tuple[int, int, int]:
        outer = list(self.spec.outer)
        blob = stage_config(self.spec, tty=self.tty, env=self.spec.env.build(dict(os.environ)),
                            argv=self.argv, ppid=os.getpid(), keep=self.keep, announce=self.named is not None)
        cfg_r, cfg_w = os.pipe()
        st_r, st_w = os.pipe()
        ctl_r, ctl_w = os.pipe()
        err_r, err_w = os.pipe()
        if self.debug:
            import shlex

            print(f"sandboxer: debug: spawning {shlex.join(outer)}", file=sys.stderr)
        # Own process group: the terminal's Ctrl-C reaches the supervisor (which forwards it),
        # not unshare, which would die of it and take the stage down without the payload getting
        # its signal. unshare dies with us: --kill-child then takes the stage (PID 1) and with it
        # the namespaces.
        pid = children.spawn(outer, {CONFIG_FD: cfg_r, STATUS_FD: st_w, CONTROL_FD: ctl_r, STDERR_FD: 2,
                                     2: err_w})
        self.child = pid
        for fd in (cfg_r, st_w, ctl_r, err_w):
            os.close(fd)
        try:
            os.write(cfg_w, blob)
        except BrokenPipeError:
            pass  # unshare failed early; its exit explains why
        finally:
            os.close(cfg_w)
        os.set_blocking(err_r, False)
        self.ctl_w = ctl_w
        return st_r, err_r, os.pidfd_open(pid)

    # ---- the run -------------------------------------------------------------------------------
    def run(self) -> int:
        for warning in self.spec.warnings:
            print(f"sandboxer: warning: {printable(warning)}", file=sys.stderr)
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        old_wakeup = signal.set_wakeup_fd(wake_w)
        old = {sig: signal.signal(sig, self._on_signal) for sig in FORWARDED}
        old_ttou = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
        fds: list[int] = [wake_r, wake_w]
        try:
            st_r, err_r, pidfd = self._spawn()
            fds += [st_r, err_r, pidfd, self.ctl_w]
            if self.spec.network is not None:
                from . import helper

                helper.backend(self.spec.network.backend)  # its imports, while the stage sets up
                children.preload()
            code = self._loop(st_r, err_r, pidfd, wake_r)
            if self.named is not None:
                self.named.ended(code, self.exit_status)
            return code
        except SandboxerError as e:
            if self.named is not None:
                self.named.failed(e)
            raise
        finally:
            if self.net is not None:
                self.net.ask_stop()
            if self.child:
                children.reap(self.child, REAP_TIMEOUT)  # unshare must be gone when we return
                self.child = 0
            if self.net is not None:
                self.net.stop()
                self.net = None
            if self.tty:
                try:
                    os.tcsetpgrp(0, os.getpgrp())  # take the terminal back from the payload
                except OSError:
                    pass
            signal.set_wakeup_fd(old_wakeup)
            for sig, handler in old.items():
                signal.signal(sig, handler)
            signal.signal(signal.SIGTTOU, old_ttou)
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass

    def _loop(self, st_r: int, err_r: int, pidfd: int, wake_r: int) -> int:
        import time

        deadline = time.monotonic() + SETUP_TIMEOUT
        while True:
            net = self.net
            starting = net is not None and not net.ready
            until = min(deadline, net.ready_by) if net is not None and starting else deadline
            if not self.ready:
                timeout: float | None = max(0.0, until - time.monotonic())
            elif self.deadline:
                timeout = max(0.0, self.deadline - time.monotonic())
            else:
                timeout = None
            watch = [pidfd, wake_r] + ([st_r] if self.status_open else [])
            if net is not None:
                watch += [net.pidfd, net.ready_fd] if starting else [net.pidfd]
            if self.named is not None and self.ready:
                watch.append(self.named.listener)
            readable, _, _ = select.select(watch, [], [], timeout)
            if not readable:
                now = time.monotonic()
                if self.ready:
                    self.on_timeout(now)
                    continue
                if now < until:
                    continue  # woken a hair early
                self.on_setup_timeout(now)
            if net is not None and starting and (net.ready_fd in readable or net.pidfd in readable):
                self.on_helper_ready()
            elif net is not None and net.pidfd in readable:
                self.on_helper_died()
            if wake_r in readable and self.on_signals(wake_r):
                return self.interrupted
            if st_r in readable:
                self.on_status(st_r)
            if self.named is not None and self.named.listener in readable:
                self.on_control(time.monotonic())
            if self.exit_status is not None or pidfd in readable:
                break
        return self.on_end(err_r)

    # ---- the handlers --------------------------------------------------------------------------
    def _on_signal(self, sig: int, _frame: object) -> None:
        self.pending.append(sig)

    def on_setup_timeout(self, now: float) -> None:
        if self.net is not None and not self.net.ready and now >= self.net.ready_by:
            self._kill_sandbox()  # the payload never runs
            raise self.net.late()
        raise SandboxerError(f"the sandbox was not ready within {SETUP_TIMEOUT:.0f} s", "try again with --debug")

    def on_timeout(self, now: float) -> None:
        """The run's --timeout: SIGTERM to the payload (through the stage), and when the grace
        is over too, SIGKILL to the whole sandbox. (sandboxer stop's grace ends here too.)"""
        if self.exit_status is not None:
            self.deadline = 0.0
            return
        if not self.timed_out and not self.stopping:
            self.timed_out = True
            print(f"sandboxer: the command ran for {self.spec.timeout:g} s (--timeout): sending it SIGTERM"
                  + (f", SIGKILL in {self.spec.kill_after:g} s" if self.spec.kill_after else ""), file=sys.stderr)
            try:
                os.kill(self.stage, signal.SIGTERM)
            except OSError:
                pass
            self.deadline = now + self.spec.kill_after
            return
        self.deadline = 0.0
        self._kill_sandbox()

    stopping = False

    def on_control(self, now: float) -> None:
        """A request on a named sandbox's control socket (sandboxer stop, port)."""
        assert self.named is not None
        request = self.named.accept()
        if request is None:
            return
        conn, message = request
        op = message.get("op")
        if op == "stop":
            self.named.stoppers.append(conn)
            if not self.stopping and self.exit_status is None:
                self.stopping = True
                grace = message.get("timeout")
                grace = float(grace) if isinstance(grace, (int, float)) and not isinstance(grace, bool) else 10.0
                try:
                    os.kill(self.stage, signal.SIGTERM)  # the stage forwards it to the payload
                except OSError:
                    pass
                self.deadline = now + max(0.0, grace)
            return
        self.named.reply(conn, self.named.port(op, message, self.net))

    def on_helper_died(self) -> None:
        """The network helper died: never leave the payload without the network it was given."""
        if self.exit_status is None and self.net is not None:
            self._kill_sandbox()
            raise self.net.died()

    interrupted = 0

    def on_signals(self, wake_r: int) -> bool:
        """Forward the signals caught to the stage (which forwards them to the payload). During
        setup nothing of the payload has run: end it all. True when the run is over."""
        try:
            os.read(wake_r, 512)
        except OSError:
            pass
        sigs, self.pending = self.pending, []
        for sig in sigs:
            if not self.ready:
                os.killpg(self.child, signal.SIGKILL)
                self.interrupted = 128 + sig
                return True
            try:
                os.kill(self.stage, sig)
            except OSError:
                pass
        return False

    def on_status(self, st_r: int) -> None:
        """Messages from the stage (wire.STATUS), each to its handler."""
        try:
            data = os.read(st_r, 4096)
        except OSError:
            data = b""
        if not data:
            self.status_open = False
            return
        self.buffer += data
        while self.buffer:
            if self.buffer[:1] == STATUS["tap"].encode():
                self.buffer = self.buffer[1:]
                self.on_tap()
                continue
            if self.buffer[:1] == STATUS["ready"].encode():
                self.buffer = self.buffer[1:]
                self.on_ready()
                continue
            end = self.buffer.find(b"\n")
            if end < 0:
                break
            message = self.buffer[:end].decode("utf-8", "replace")
            self.buffer = self.buffer[end + 1:]
            kind, rest = message[:1], message[1:]
            if kind == STATUS["error"]:
                self.failure = SandboxerError(f"sandbox setup failed: {rest}")
            elif kind == STATUS["exec"]:
                number, _, text = rest.partition(" ")
                self.failure = SandboxerError(text, code=int(number))
            elif kind == STATUS["stopped"]:
                stopsig, _, nspid = rest.partition(" ")
                self.on_stopped(int(stopsig), int(nspid))
            elif kind == STATUS["started"]:
                if self.named is not None and self.failure is None:
                    inside = int(rest)
                    self.named.started(self, _host_pid(self.stage, inside) if self.spec.pid else inside)
            elif kind == STATUS["change"]:
                if self.changes is not None:
                    self.changes.add(rest)
            elif kind == STATUS["exit"]:
                self.exit_status = int(rest)
                if self.net is not None:
                    self.net.ask_stop()  # the payload is done with the network

    def on_tap(self) -> None:
        """The stage's network namespace and tap exist: start the network helper now, so that
        its start overlaps the stage's mounts (pasta takes ~20 ms to be ready)."""
        if self.net is not None or self.spec.network is None:
            return
        self.find_stage()
        from . import helper

        try:
            self.net = helper.spawn(self.spec.network, self.stage, debug=self.debug,
                                    keep_api=self.named is not None)
        except BaseException:
            self._kill_sandbox()  # the payload never runs
            raise

    def on_ready(self) -> None:
        """The namespaces and mounts are made: start the network helper if the stage did not
        say "tap" earlier (a helper with an API socket waits for its directory), then go once
        the helper is ready too."""
        if self.stage_ready:
            return
        self.stage_ready = True
        self.find_stage()
        self.on_tap()
        self.go()

    def find_stage(self) -> None:
        if not self.stage:
            self.stage = _find_child(self.child) if self.spec.pid else self.child

    def on_helper_ready(self) -> None:
        """The network helper's ready fd or pidfd: ready (its forwards added), or it failed."""
        assert self.net is not None
        try:
            if not self.net.poll_ready():
                return
        except BaseException:
            self._kill_sandbox()  # the payload never runs
            raise
        self.go()

    def go(self) -> None:
        """Once the stage and the network helper are both ready: the payload may start."""
        if self.ready or not self.stage_ready or (self.net is not None and not self.net.ready):
            return
        self.ready = True
        if self.spec.timeout:
            import time

            self.deadline = time.monotonic() + self.spec.timeout
        os.write(self.ctl_w, GO.encode())

    def on_stopped(self, sig: int, nspid: int) -> None:
        """The payload, the terminal's foreground job, was stopped (Ctrl-Z, or it read the
        terminal in the background). Stop ourselves too, so that the caller's shell sees its job
        stopped and takes the terminal back; when continued (fg or bg), continue the payload, and
        hand it the terminal again if we are in the foreground."""
        if not self.tty:
            return
        pgid = _host_pid(self.stage, nspid)
        try:
            # only if the payload holds it: after `bg` the shell does, and must keep it
            if pgid > 0 and os.tcgetpgrp(0) == pgid:
                os.tcsetpgrp(0, os.getpgrp())
        except OSError:
            pass
        # Stop the way Ctrl-Z does (SIGTTOU is ignored here, and after SIGTTIN the shell would
        # say "tty input"); kill() returns once we are continued.
        os.kill(os.getpid(), signal.SIGSTOP if sig == signal.SIGSTOP else signal.SIGTSTP)
        if pgid <= 0:
            return
        if _interactive_pgrp():
            try:
                os.tcsetpgrp(0, pgid)
            except OSError:
                pass
        try:
            os.killpg(pgid, signal.SIGCONT)
        except OSError:
            pass

    def on_end(self, err_r: int) -> int:
        """The payload's exit status (or the stage said why it could not run it, or unshare
        ended without a word from the stage) -> sandboxer's exit status."""
        if self.failure is not None:
            raise self.failure
        if self.exit_status is None:
            _pid, wstatus = os.waitpid(self.child, 0)
            self.child = 0
            try:
                said = os.read(err_r, 4096).decode("utf-8", "replace").strip().splitlines()
            except OSError:
                said = []
            message = said[-1] if said else ""
            if not self.ready:
                raise diagnose(message)  # it could not even start
            if self.timed_out:
                return EXIT_TIMEOUT  # the grace was over: SIGKILL took the sandbox
            if self.stopping:  # sandboxer stop's grace was over
                self.exit_status = int(signal.SIGKILL)
                return 128 + int(signal.SIGKILL)
            if os.WIFSIGNALED(wstatus):
                raise SandboxerError(f"the sandbox was killed by signal {os.WTERMSIG(wstatus)}")
            raise SandboxerError("the sandbox ended before the command did")
        if self.timed_out:
            return EXIT_TIMEOUT
        if os.WIFSIGNALED(self.exit_status):
            return 128 + os.WTERMSIG(self.exit_status)
        if os.WIFEXITED(self.exit_status):
            return os.WEXITSTATUS(self.exit_status)
        return EXIT_FAILURE

    def _kill_sandbox(self) -> None:
        try:
            if self.spec.pid and self.stage and self.stage != self.child:
                # PID 1 dies: the kernel kills the rest, and unshare reaps it and exits (killing
                # unshare too would leave the stage a zombie for the host's init to reap)
                os.kill(self.stage, signal.SIGKILL)
            elif self.spec.pid:
                os.killpg(self.child, signal.SIGKILL)
            elif self.stage:
                # no PID namespace: the stage (a subreaper) kills what the payload started
                os.kill(self.stage, signal.SIGPWR)
            else:
                os.killpg(self.child, signal.SIGKILL)
        except OSError:
            pass


def run(spec: RunSpec, argv: list[str] | None, *, debug: bool = False, keep: str = "", report: str = "",
        diff: bool = False, named: Named | None = None) -> int:
    """Run spec; with a work tree overlay, say what the command changed (--diff: list it; --keep
    DIR: keep it); with --report FILE, write how it ended."""
    if not (keep or report or diff or spec.worktree[1] == "overlay"):
        return Supervisor(spec, argv, debug=debug, named=named).run()
    from . import outcome

    if (keep or diff) and spec.worktree[1] != "overlay":
        raise SandboxerError(f"{'--keep' if keep else '--diff'} needs a work tree overlay", "add --worktree overlay")
    reporter = outcome.Report(report) if report else None
    kept = outcome.prepare_keep(keep, spec) if keep else ""
    sup = Supervisor(spec, argv, debug=debug, keep=kept, named=named)
    limits = dict(spec.limits)
    failed = True
    try:
        code = sup.run()
        failed = False
    except SandboxerError as e:
        if reporter is not None:
            reporter.write({"command": sup.argv, "exit": outcome.ending(e.code, None, timed_out=sup.timed_out,
                                                                         limits=limits, error=e.message)})
        raise
    finally:
        if kept:
            outcome.finish_keep(kept, failed=failed)
    changes = sup.changes
    if changes is not None:
        print(changes.summary(kept), file=sys.stderr)
        if diff:
            for change, path in changes.listed:
                print(printable(f"{change} {path}"), file=sys.stderr)
    if reporter is not None:
        data: dict[str, object] = {"command": sup.argv,
                                   "exit": outcome.ending(code, sup.exit_status, timed_out=sup.timed_out,
                                                          limits=limits),
                                   "limits": limits, "timeout_s": spec.timeout or None}
        if spec.worktree[1] != "none":
            data["worktree"] = {"path": spec.worktree[0], "mode": spec.worktree[1],
                                "changes": changes.as_json(kept) if changes is not None else None}
        reporter.write(data)
    return code
