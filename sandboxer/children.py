"""Starting and ending the helpers the supervisor runs: unshare (the sandbox) and slirp4netns.

On the hot path: imports only os, signal, select, fcntl (and python-prctl's _prctl in the child).
"""

from __future__ import annotations

# _signal, not signal: the wrapper imports enum, ~3 ms on every run
import _signal as signal
import fcntl
import os
import select

from .errors import EXIT_FAILURE

# what the helper gets back at their defaults (the supervisor handles or ignores these)
RESET_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1,
                 signal.SIGUSR2, signal.SIGPIPE, signal.SIGXFSZ, signal.SIGTTOU)


def preload() -> None:
    """Import what spawn's child needs, now (while waiting on something else): a second child
    then forks with it loaded, and starts ~1.5 ms sooner."""
    import _prctl  # noqa: F401


def spawn(argv: list[str], fds: dict[int, int]) -> int:
    """Fork and exec argv as a helper that dies with us; fds maps its fd numbers to ours.

    The helper gets its own process group, so that a Ctrl-C on the terminal reaches the
    supervisor (which decides what to do with it) rather than the helper; SIGKILL when the
    supervisor dies (PR_SET_PDEATHSIG), whatever way it dies; only the fds given; the signals
    the supervisor handles or ignores back at their defaults, and none blocked; LC_ALL=C.
    """
    parent = os.getpid()
    pid = os.fork()
    if pid:
        return pid
    try:  # pragma: no cover - replaced by exec
        # python-prctl's C module: its Python wrapper builds capability tables on import (~1.3 ms)
        import _prctl

        os.setpgid(0, 0)
        _prctl.prctl(_prctl.PR_SET_PDEATHSIG, signal.SIGKILL)
        if os.getppid() != parent:
            os._exit(EXIT_FAILURE)  # the supervisor died before the death signal was armed
        # via copies above every target and source first, so that no target overwrites a source
        # still to be placed (not at a fixed number: a low RLIMIT_NOFILE would refuse it)
        above = max(*fds, *fds.values()) + 1
        high = {target: fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, above) for target, fd in fds.items()}
        for target, fd in high.items():
            os.dup2(fd, target)
        os.closerange(max(fds) + 1, 65536)
        for sig in RESET_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        try:
            os.execve(argv[0], argv, {"LC_ALL": "C"})
        except OSError as e:
            os.write(2, f"cannot execute {argv[0]}: {e.strerror}\n".encode())
    finally:
        os._exit(EXIT_FAILURE)


def reap(pid: int, timeout: float, pidfd: int = -1) -> None:
    """Wait up to timeout for pid to exit, SIGKILL it if it lingers, and collect it."""
    own = pidfd < 0
    if own:
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            pidfd = -1
    ready: list[int] = []
    if pidfd >= 0:
        ready, _, _ = select.select([pidfd], [], [], timeout)
        if own:
            os.close(pidfd)
    if not ready:
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass
    try:
        os.waitpid(pid, 0)
    except ChildProcessError:
        pass
