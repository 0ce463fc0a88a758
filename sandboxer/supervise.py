"""The supervisor: with children.py (which starts and ends its helpers), the only module with
side effects on the host.

It spawns the plan's outer hop (unshare ... -- sandboxer-stage) as a child that dies with
it, hands the stage its config, waits (bounded) for "ready", does parent-side work, says "go",
forwards signals, and turns the outcome into sandboxer's exit status.

On the hot path: imports only os, signal, select and children.
"""

from __future__ import annotations

# _signal, not signal: the wrapper imports enum, ~3 ms on every run
import _signal as signal
import os
import select
import sys

from . import children
from .errors import EXIT_FAILURE, SandboxerError, printable

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .slirp import Slirp

SETUP_TIMEOUT = 30.0  # from spawn to "ready": namespaces and mounts take milliseconds
REAP_TIMEOUT = 5.0  # from the payload's end to unshare's exit
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2)
STAGE_MAGIC = "sandboxer-stage 2"  # must match CONFIG_MAGIC in stage.c


def stage_config(recipe: dict[str, object], *, tty: bool, env: dict[str, str], argv: list[str],
                 ppid: int) -> bytes:
    """The stage's config: NUL-terminated fields, in the order stage.c's read_config() takes them.

    Values come from the plan and the caller, never from a shell; a NUL in one cannot shift
    the fields (it is refused here).
    """
    fields: list[object] = [STAGE_MAGIC, int(bool(recipe["pid"])), ppid, int(tty), int(recipe["landlock"]),  # type: ignore[call-overload]
                            int(bool(recipe["apidir"])), recipe["hostname"], int(bool(recipe["lo"]))]
    netfiles = recipe["netfiles"]
    fields += [1, *netfiles] if netfiles else [0]  # type: ignore[misc]
    fields += [*recipe["inner"], recipe["cwd"]]  # type: ignore[misc]

    def mounts(ops: object) -> list[object]:
        assert isinstance(ops, list | tuple)
        out: list[object] = [len(ops)]
        for kind, source, target, readonly, size, mode, create in ops:
            out += [kind, source, target, int(readonly), size, mode, int(create)]
        return out

    fields += mounts(recipe["mounts"])
    rootfs = recipe["rootfs"]
    if rootfs:
        assert isinstance(rootfs, dict)
        fields += [1, rootfs["dir"], rootfs["switch"], rootfs["writes"], *mounts(rootfs["mounts"])]
    else:
        fields.append(0)
    fields += [len(argv), *argv, len(env), *(f"{k}={v}" for k, v in env.items())]
    texts = [str(f) for f in fields]
    if any("\0" in t for t in texts):
        raise SandboxerError("a NUL byte in the command, its environment or the profile",
                             "remove it")
    return b"".join(t.encode("utf-8", "surrogateescape") + b"\0" for t in texts)


def build_env(recipe: dict[str, object], environ: dict[str, str] | os._Environ[str]) -> dict[str, str]:
    """The payload's environment: the allowlist from the caller, then fixed and set values."""
    keep = recipe["keep"]
    assert isinstance(keep, list)
    exact = {k for k in keep if not k.endswith("*")}
    prefixes = tuple(k[:-1] for k in keep if k.endswith("*"))
    env = {k: v for k, v in environ.items() if k in exact or (prefixes and k.startswith(prefixes))}
    env.setdefault("PATH", str(recipe["path"]))
    for pairs in (recipe["fixed"], recipe["set"]):
        assert isinstance(pairs, list)
        env.update((str(k), str(v)) for k, v in pairs)
    return env


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
    def __init__(self, recipe: dict[str, object], argv: list[str] | None, *, debug: bool = False):
        self.recipe = recipe
        self.argv = argv or list(recipe["command"])  # type: ignore[call-overload]
        self.debug = debug
        self.tty = _interactive()
        self.child = 0
        self.stage = 0
        self.pending: list[int] = []
        self.buffer = b""
        self.messages: list[str] = []
        self.net: Slirp | None = None

    # ---- spawning ------------------------------------------------------------------------------
    def _spawn(self) -> tuple[int, int, int, int]:
        outer = list(self.recipe["outer"])  # type: ignore[call-overload]
        blob = stage_config(self.recipe, tty=self.tty, env=build_env(self.recipe, os.environ),
                            argv=self.argv, ppid=os.getpid())
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
        pid = children.spawn(outer, {3: cfg_r, 4: st_w, 5: ctl_r, 6: 2, 2: err_w})
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
        return st_r, ctl_w, err_r, os.pidfd_open(pid)

    # ---- messages from the stage ------------------------------------------------------------
    def _read_status(self, fd: int) -> bool:
        """Read what is there; False at EOF."""
        try:
            data = os.read(fd, 4096)
        except OSError:
            data = b""
        if not data:
            return False
        self.buffer += data
        while self.buffer:
            if self.buffer[:1] == b"R":
                self.messages.append("R")
                self.buffer = self.buffer[1:]
                continue
            end = self.buffer.find(b"\n")
            if end < 0:
                break
            self.messages.append(self.buffer[:end].decode("utf-8", "replace"))
            self.buffer = self.buffer[end + 1:]
        return True

    def _on_signal(self, sig: int, _frame: object) -> None:
        self.pending.append(sig)

    # ---- the run -------------------------------------------------------------------------------
    def run(self) -> int:
        for warning in self.recipe["warnings"]:  # type: ignore[attr-defined]
            print(f"sandboxer: warning: {printable(warning)}", file=sys.stderr)
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        old_wakeup = signal.set_wakeup_fd(wake_w)
        old = {sig: signal.signal(sig, self._on_signal) for sig in FORWARDED}
        old_ttou = signal.signal(signal.SIGTTOU, signal.SIG_IGN)
        fds: list[int] = [wake_r, wake_w]
        try:
            st_r, ctl_w, err_r, pidfd = self._spawn()
            fds += [st_r, ctl_w, err_r, pidfd]
            return self._supervise(st_r, ctl_w, err_r, pidfd, wake_r)
        finally:
            if self.child:
                self._reap()
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

    def _reap(self) -> None:
        """unshare must be gone when we return; kill it (and so the sandbox) if it lingers."""
        children.reap(self.child, REAP_TIMEOUT)
        self.child = 0

    def _supervise(self, st_r: int, ctl_w: int, err_r: int, pidfd: int, wake_r: int) -> int:
        import time

        deadline = time.monotonic() + SETUP_TIMEOUT
        ready = False
        exit_status: int | None = None
        failure: SandboxerError | None = None
        code = 0
        st_open = True
        while True:
            timeout = None if ready else max(0.0, deadline - time.monotonic())
            watch = [pidfd, wake_r] + ([st_r] if st_open else [])
            if self.net is not None:
                watch.append(self.net.pidfd)
            readable, _, _ = select.select(watch, [], [], timeout)
            if self.net is not None and self.net.pidfd in readable and exit_status is None:
                # The network helper died under the payload: never leave it without one.
                self._kill_sandbox()
                raise self.net.died()
            if not readable and not ready:
                raise SandboxerError(
                    f"the sandbox was not ready within {SETUP_TIMEOUT:.0f} s", "try again with --debug"
                )
            if wake_r in readable:
                try:
                    os.read(wake_r, 512)
                except OSError:
                    pass
                sigs, self.pending = self.pending, []
                for sig in sigs:
                    if not ready:
                        # Interrupted during setup: nothing of the payload ran; end it all.
                        os.killpg(self.child, signal.SIGKILL)
                        return 128 + sig
                    try:
                        os.kill(self.stage, sig)
                    except OSError:
                        pass
            if st_r in readable:
                st_open = self._read_status(st_r)
            while self.messages:
                msg = self.messages.pop(0)
                kind, rest = msg[:1], msg[1:]
                if kind == "R" and not ready:
                    ready = True
                    self.stage = _find_child(self.child) if self.recipe["pid"] else self.child
                    try:
                        self.parent_side_work()
                    except BaseException:
                        self._kill_sandbox()  # the payload never runs
                        raise
                    os.write(ctl_w, b"G")
                elif kind == "E":
                    failure = SandboxerError(f"sandbox setup failed: {rest}")
                elif kind == "N":
                    number, _, text = rest.partition(" ")
                    failure = SandboxerError(text, code=int(number))
                elif kind == "S":
                    stopsig, _, nspid = rest.partition(" ")
                    self._suspend(int(stopsig), int(nspid))
                elif kind == "X":
                    exit_status = int(rest)
            if exit_status is not None or pidfd in readable:
                break
        if failure is not None:
            raise failure
        if exit_status is None:
            # unshare ended and the stage said nothing: it could not even start.
            _pid, wstatus = os.waitpid(self.child, 0)
            self.child = 0
            try:
                said = os.read(err_r, 4096).decode("utf-8", "replace").strip().splitlines()
            except OSError:
                said = []
            message = said[-1] if said else ""
            if not ready:
                raise diagnose(message)
            if os.WIFSIGNALED(wstatus):
                raise SandboxerError(f"the sandbox was killed by signal {os.WTERMSIG(wstatus)}")
            raise SandboxerError("the sandbox ended before the command did")
        if os.WIFSIGNALED(exit_status):
            code = 128 + os.WTERMSIG(exit_status)
        elif os.WIFEXITED(exit_status):
            code = os.WEXITSTATUS(exit_status)
        else:
            code = EXIT_FAILURE
        return code

    def _suspend(self, sig: int, nspid: int) -> None:
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

    def _kill_sandbox(self) -> None:
        try:
            if self.recipe["pid"]:
                os.killpg(self.child, signal.SIGKILL)  # PID 1 dies: the kernel kills the rest
            elif self.stage:
                # no PID namespace: the stage (a subreaper) kills what the payload started
                os.kill(self.stage, signal.SIGPWR)
            else:
                os.killpg(self.child, signal.SIGKILL)
        except OSError:
            pass

    def parent_side_work(self) -> None:
        """Work done from outside once the namespaces exist: the network helper."""
        net = self.recipe.get("net")
        if net:
            from .slirp import Slirp

            self.net = Slirp(net, self.stage, debug=self.debug)  # type: ignore[arg-type]
            self.net.start()


def run(recipe: dict[str, object], argv: list[str] | None, *, debug: bool = False) -> int:
    return Supervisor(recipe, argv, debug=debug).run()
