"""The commands on named sandboxes: run --name/--detach, ps, exec, stop, logs, port.

run --detach forks a supervisor that lives on in its own session (stdin /dev/null, stdout and
stderr to the entry's log) and waits until it says the command has started ("K NAME") or why
it could not ("E CODE LINE"); the registration is made before the fork, so a taken name is
said at once.

exec runs `sandboxer-stage --join`, which enters the running sandbox itself (stage.c, join_main):
this module only finds the sandbox, builds the command's environment by the sandbox's policy,
and hands over.

Off the hot path of unnamed runs.
"""

from __future__ import annotations

import os
import sys
import time

from . import names
from .errors import EXIT_FAILURE, SandboxerError, printable

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .options import Args
    from .spec import RunSpec

FOLLOW_INTERVAL = 0.2  # seconds between reads of a followed log


def run(spec: RunSpec, argv: list[str] | None, profile: str, *, debug: bool, keep: str, report: str,
        diff: bool, detach: bool) -> int:
    """A named run, in the foreground or detached."""
    from . import supervise
    from .control import Named

    command = argv or list(spec.command)
    if not detach:
        named = Named(spec, command, profile)
        try:
            return supervise.run(spec, argv, debug=debug, keep=keep, report=report, diff=diff, named=named)
        finally:
            named.close()
    read_end, write_end = os.pipe()
    named = Named(spec, command, profile, detached=True, started_fd=write_end)
    log = os.open(named.log_path(), os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the detached supervisor
        code = EXIT_FAILURE
        try:
            os.close(read_end)
            os.setsid()
            if os.fork():
                os._exit(0)  # the supervisor is reparented: nobody waits for it
            null = os.open("/dev/null", os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(log, 1)
            os.dup2(log, 2)
            os.close(null)
            os.close(log)
            try:
                code = supervise.run(spec, argv, debug=debug, keep=keep, report=report, diff=diff, named=named)
            except SandboxerError as e:
                print(e.line(), file=sys.stderr)
                code = e.code
            finally:
                named.close()
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)
    # the caller: its copies of the registration's fds go, the entry stays the supervisor's
    os.close(write_end)
    os.close(log)
    named.sock.close()
    os.close(named.reg.lock)
    os.waitpid(pid, 0)
    said = b""
    while chunk := os.read(read_end, 4096):
        said += chunk
    os.close(read_end)
    text = said.decode("utf-8", "replace").strip()
    if text.startswith("K "):
        print(text[2:])
        return 0
    if text.startswith("E "):
        code_text, _, line = text[2:].partition(" ")
        print(line, file=sys.stderr)
        return int(code_text) if code_text.isdigit() else EXIT_FAILURE
    raise SandboxerError(f"the sandbox {named.name!r} ended before its command started",
                         "rerun it without --detach to see why")


def command(args: Args) -> int:
    if args.command == "ps":
        return ps(as_json="json" in args.flags, names_only="names" in args.flags)
    if args.command == "exec":
        return execute(args.positionals[0], args.argv or [])
    if args.command == "stop":
        return stop(args.positionals[0], args.values.get("timeout", "10"))
    if args.command == "logs":
        return logs(args.positionals[0], follow="follow" in args.flags)
    return port(*args.positionals)


# ---- ps ----------------------------------------------------------------------------------------

def ps(*, as_json: bool, names_only: bool) -> int:
    found = names.running()
    if names_only:
        for name, _info in found:
            print(name)
        return 0
    if as_json:
        import json

        rows = [{"name": name, "profile": info.get("profile"), "pid": _pair(info.get("payload"))[0],
                 "init": _pair(info.get("stage"))[0], "started": info.get("started"),
                 "command": info.get("command"), "network": info.get("network"),
                 "forwards": info.get("forwards"), "detached": info.get("detached"), "state": "running"}
                for name, info in found]
        print(json.dumps(rows, indent=2))
        return 0
    if not found:
        print("no running named sandboxes", file=sys.stderr)
        return 0
    header = ("NAME", "PID", "STARTED", "NETWORK", "FORWARDS", "PROFILE", "COMMAND")
    rows_text = [header]
    for name, info in found:
        started = info.get("started")
        when = time.strftime("%H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) else "?"
        forwards = info.get("forwards") or []
        command_words = info.get("command") or []
        rows_text.append((name, str(_pair(info.get("payload"))[0]), when, str(info.get("network", "?")),
                          ", ".join(map(str, forwards)) if isinstance(forwards, list) else "-",
                          str(info.get("profile") or "-"),
                          " ".join(map(str, command_words)) if isinstance(command_words, list) else "?"))
    widths = [max(len(row[i]) for row in rows_text) for i in range(len(header) - 1)]
    for row in rows_text:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])] + [row[-1]]
        print(printable("  ".join(c or "-" for c in cells).rstrip()))
    return 0


def _pair(value: object) -> tuple[int, int]:
    if (isinstance(value, list) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        return value[0], value[1]
    raise SandboxerError("a sandbox's info is damaged", "stop it and start it again")


# ---- exec --------------------------------------------------------------------------------------

def execute(name: str, argv: list[str]) -> int:
    """Run argv in the sandbox: `sandboxer-stage --join` in this process's place."""
    from .host import STAGE
    from .spec import EnvSpec, SpecError
    from .supervise import _interactive
    from .wire import CONFIG_FD, WireError, encode_join

    _path, info = names.lookup(name)
    spec = info.get("exec")
    if not isinstance(spec, dict):
        raise SandboxerError(f"the sandbox {name!r} has no exec information", "it was started by another version")
    try:
        env = EnvSpec.from_data(_tuples(spec.get("env"))).build(dict(os.environ))
        cwd, run_as, landlock, chroot = spec["cwd"], _pair(spec["run_as"]), spec["landlock"], spec["chroot"]
        if not (isinstance(cwd, str) and isinstance(landlock, int) and isinstance(chroot, bool)):
            raise SpecError("bad exec information")
        blob = encode_join(stage=_pair(info.get("stage")), payload=_pair(info.get("payload")), chroot=chroot,
                           tty=_interactive(), landlock=landlock, run_as=run_as, cwd=cwd, env=env, argv=argv)
    except (SpecError, KeyError) as e:
        raise SandboxerError(f"the sandbox {name!r}'s info is damaged: {e}", "stop it and start it again") from None
    except WireError as e:
        raise SandboxerError(str(e), "remove it") from None
    read_end, write_end = os.pipe()
    if len(blob) > 65536:
        raise SandboxerError("the command and its environment are too large to pass")
    os.write(write_end, blob)
    os.close(write_end)
    if read_end != CONFIG_FD:
        os.dup2(read_end, CONFIG_FD)  # inheritable: the stage reads it
        os.close(read_end)
    else:
        os.set_inheritable(CONFIG_FD, True)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        os.execv(STAGE, [STAGE, "--join"])
    except OSError as e:
        raise SandboxerError(f"cannot run sandboxer's stage {STAGE}: {e.strerror}", "reinstall sandboxer") from None


def _tuples(value: object) -> object:
    """JSON lists back into the tuples a spec's data is made of."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


# ---- stop, logs, port ---------------------------------------------------------------------------

def stop(name: str, timeout: str) -> int:
    try:
        grace = float(timeout)
        if not 0 <= grace <= 3600:
            raise ValueError
    except ValueError:
        raise SandboxerError(f"--timeout {timeout!r}: expected seconds, 0 to 3600") from None
    path, _info = names.lookup(name)
    answer = names.request(path, {"op": "stop", "timeout": grace}, timeout=grace + 30)
    print(printable(f"{name}: {answer.get('said', 'stopped')}"))
    return 0


def logs(name: str, *, follow: bool) -> int:
    path, info = names.lookup(name)
    if not info.get("detached"):
        raise SandboxerError(f"the sandbox {name!r} runs in the foreground: its output goes to its terminal",
                             "only sandboxes started with --detach have a log")
    try:
        fd = os.open(os.path.join(path, "log"), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError as e:
        raise SandboxerError(f"cannot read {name}'s log: {e.strerror}") from None
    out = sys.stdout.buffer
    try:
        while True:
            chunk = os.read(fd, 65536)
            if chunk:
                out.write(chunk)
                continue
            out.flush()
            if not follow or not names.alive(path):
                # one last read: what was written just before the end
                while chunk := os.read(fd, 65536):
                    out.write(chunk)
                out.flush()
                return 0
            time.sleep(FOLLOW_INTERVAL)
    finally:
        os.close(fd)


def port(verb: str, name: str, *rest: str) -> int:
    path, _info = names.lookup(name)
    if verb == "ls":
        answer = names.request(path, {"op": "port-ls"})
        entries = answer.get("forwards")
        print("ID  PROTO  HOST                 GUEST")
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, dict):
                host = f"{entry.get('host_addr')}:{entry.get('host_port')}"
                print(f"{entry.get('id')!s:<3} {entry.get('proto')!s:<6} {host:<20} {entry.get('guest_port')}")
        return 0
    if verb == "rm":
        if not rest[0].isdigit():
            raise SandboxerError(f"port rm: expected a forward's ID (a number), got {rest[0]!r}",
                                 f"see sandboxer port ls {name}")
        names.request(path, {"op": "port-rm", "id": int(rest[0])})
        print(f"{name}: removed forward {rest[0]}")
        return 0
    forward, shown, warning = _forward(rest[0])
    if warning:
        print(f"sandboxer: warning: {warning}", file=sys.stderr)
    answer = names.request(path, {"op": "port-add", "forward": forward, "shown": shown})
    print(printable(f"{name}: forward {answer.get('id')}: {shown}"))
    return 0


def _forward(text: str) -> tuple[dict[str, object], str, str]:
    """[ADDR:]HOST_PORT:GUEST_PORT[/tcp|udp], checked as a profile's forward (--forward's
    parser and the schema), as add_hostfwd's arguments; how it is shown; a warning."""
    from pydantic import ValidationError

    from .load import _forward_from_option
    from .netplan import Forward as Planned
    from .profile import Forward

    raw = _forward_from_option("port add", text)
    try:
        fwd = Forward.model_validate(raw)
    except ValidationError as e:
        raise SandboxerError(f"port add {text!r}: {e.errors()[0]['msg']}",
                             "expected [ADDR:]HOST_PORT:GUEST_PORT[/tcp|udp]") from None
    if ":" in fwd.host_addr:
        raise SandboxerError(f"port add {text!r}: slirp4netns forwards from IPv4 addresses only",
                             "use 127.0.0.1 or another IPv4 address")
    planned = Planned(fwd.proto, fwd.host_addr, fwd.host_port, fwd.guest_port)
    warning = "" if fwd.host_addr == "127.0.0.1" else (
        f"the forward listens on {fwd.host_addr}, not only on the host's loopback: other machines may reach it")
    return ({"proto": fwd.proto, "host_addr": fwd.host_addr, "host_port": fwd.host_port,
             "guest_port": fwd.guest_port}, planned.describe(), warning)
