"""What the supervisor (Python) and the stage (C) must agree on, defined once, here.

- The stage's config, read from fd 3: a self-describing stream of NUL-terminated words. It
  starts with MAGIC and VERSION; then records, each a tag, the number of its values, and the
  values (as TAGS says: s a string, i an integer, b 0 or 1, k a mount kind); it ends with the
  record `end 0`, and nothing may follow. The stage refuses an unknown tag, a wrong count, an
  unknown mount kind, a missing or repeated record, a short or over-long config: one error line,
  exit 125, never a guess.
- The mount kinds, the root switches and writes, the signals the stage forwards, the nodes and
  links of a rootfs's /dev, the status messages of the stage and the fds they travel on.

`python -m sandboxer.wire` writes sandboxer/wire.h, the C side of these tables, which stage.c
includes; a test fails when the committed header differs. encode() turns a RunSpec (and what
only the run knows: the terminal, the environment, the command, the supervisor's pid) into
the config bytes; `sandboxer-stage --print-config` decodes them back, without namespaces.

On the hot path of `sandboxer run`: imports nothing.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .spec import MountSpec, RunSpec

MAGIC = "sandboxer-stage"
VERSION = 4

# fds of the stage (stage.c's header comment says what travels on each)
CONFIG_FD, STATUS_FD, CONTROL_FD, STDERR_FD = 3, 4, 5, 6

# tag -> (value types, repeatable, required); in the order encode() writes them
TAGS: dict[str, tuple[str, bool, bool]] = {
    "pid": ("b", False, True),  # own PID namespace: the stage is its PID 1
    "ppid": ("i", False, True),  # the supervisor, whose death the stage watches without one
    "tty": ("b", False, True),  # the payload becomes the terminal's foreground job
    "landlock": ("i", False, True),  # Landlock scopes that must apply (LANDLOCK_* bits)
    "apidir": ("b", False, True),  # a private directory for the network helper's API socket
    "hostname": ("s", False, True),  # "" keeps the host's
    "lo": ("b", False, True),  # bring lo up
    "tap": ("s", False, False),  # create this tap device, persistent, for the network helper
    "netfiles": ("ss", False, False),  # resolv.conf and hosts to mount over /etc's
    # the payload's user namespace: uid_map, gid_map (as /proc takes them), written by the stage
    # (1: several ids, setgroups allowed) or by the payload (0: one id, setgroups denied)
    "userns": ("ssb", False, True),
    "runas": ("ii", False, False),  # the uid and gid the payload switches to, its only group
    "cwd": ("s", False, True),
    # kind, source, target, readonly, size, mode, create, and a tmpfs's owner (-1: the stage)
    "limit": ("si", True, False),  # a resource limit of the payload (RLIMITS), soft = hard
    "keep": ("s", False, False),  # the overlay's upper layer goes to this directory, not a tmpfs
    "announce": ("b", False, False),  # report the payload's pid once it has exec'd (named sandboxes)
    # --join (sandboxer exec): the stage's pid and start time, the payload's, and whether the
    # sandbox has another root; with it, only arg and cwd are required
    "join": ("iiiib", False, False),
    "mount": ("kssbisbii", True, False),
    "rootfs": ("sss", False, False),  # path, switch (ROOT_SWITCHES), writes (ROOT_WRITES)
    "rootmount": ("kssbisbii", True, False),  # a mount inside the rootfs; targets are paths in it
    "arg": ("s", True, True),  # the command, one word a record
    "env": ("s", True, False),  # NAME=VALUE
    "end": ("", False, True),
}

MOUNT_KINDS = ("pin", "hide", "protect", "readonly-root", "sysfs", "tmpfs", "bind", "proc",
               "procbind", "dev", "mask", "seal", "overlay")
# the payload's resource limits (the limit record's names), and setrlimit(2)'s resources
RLIMITS = {"nproc": "RLIMIT_NPROC", "nofile": "RLIMIT_NOFILE", "fsize": "RLIMIT_FSIZE", "as": "RLIMIT_AS",
           "cpu": "RLIMIT_CPU"}
ROOT_SWITCHES = ("pivot_root", "chroot")
ROOT_WRITES = ("persist", "read-only", "overlay")
LANDLOCK = {"abstract-sockets": 1, "signals": 2}
FORWARDED_SIGNALS = ("SIGINT", "SIGTERM", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")
# what the stage puts in a rootfs's minimal /dev: host devices bound onto files, and links
DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")
DEV_LINKS = (("ptmx", "pts/ptmx"), ("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
             ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"))
# the stage's status messages, first byte: T the tap exists (the network helper may start);
# R ready; E<msg>\n setup failed; N<code> <msg>\n the payload could not be executed;
# S<signal> <pid>\n stopped on the terminal; C<A|M|D|?><path>\n a change of the overlay work
# tree (after the payload; ? what could not be walked; \ and newline escaped as \\ and \n);
# P<pid>\n the payload (that pid in the sandbox) has exec'd (when announce); X<status>\n exited
STATUS = {"tap": "T", "ready": "R", "error": "E", "exec": "N", "stopped": "S", "change": "C", "started": "P",
          "exit": "X"}
GO = "G"  # the supervisor's go, on the control fd


class WireError(ValueError):
    """A value the wire cannot carry (a NUL byte): the run must not start."""


def _word(value: object) -> bytes:
    if isinstance(value, bool):
        return b"1" if value else b"0"
    text = str(value)
    if "\0" in text:
        raise WireError("a NUL byte in the command, its environment or the profile")
    return text.encode("utf-8", "surrogateescape")


def _record(out: list[bytes], tag: str, *values: object) -> None:
    types = TAGS[tag][0]
    assert len(values) == len(types), (tag, values)
    out.append(tag.encode())
    out.append(str(len(values)).encode())
    out.extend(_word(v) for v in values)


def _mount(out: list[bytes], tag: str, op: MountSpec) -> None:
    _record(out, tag, op.kind, op.source, op.target, op.readonly, op.size, op.mode, op.create, *op.owner)


def encode(spec: RunSpec, *, tty: bool, env: dict[str, str], argv: list[str], ppid: int,
           keep: str = "", announce: bool = False) -> bytes:
    """The stage's config for one run of spec."""
    out: list[bytes] = [MAGIC.encode(), str(VERSION).encode()]
    _record(out, "pid", spec.pid)
    _record(out, "ppid", ppid)
    _record(out, "tty", tty)
    _record(out, "landlock", spec.landlock)
    _record(out, "apidir", spec.apidir)
    _record(out, "hostname", spec.hostname)
    _record(out, "lo", spec.lo)
    net = spec.network
    if net is not None:
        if net.tap:
            _record(out, "tap", net.tap)
        _record(out, "netfiles", net.resolv_conf, net.hosts)
    users = spec.users
    _record(out, "userns", users.uid_map, users.gid_map, users.by_stage)
    if users.run_as[0] >= 0:
        _record(out, "runas", *users.run_as)
    _record(out, "cwd", spec.cwd)
    for limit, amount in spec.limits:
        _record(out, "limit", limit, amount)
    if keep:
        _record(out, "keep", keep)
    if announce:
        _record(out, "announce", True)
    for op in spec.mounts:
        _mount(out, "mount", op)
    if spec.rootfs is not None:
        _record(out, "rootfs", spec.rootfs.path, spec.rootfs.switch, spec.rootfs.writes)
        for op in spec.rootfs.mounts:
            _mount(out, "rootmount", op)
    return _finish(out, argv, env)


def _finish(out: list[bytes], argv: list[str], env: dict[str, str]) -> bytes:
    """The command, its environment and the end record; the config's bytes."""
    for word in argv:
        _record(out, "arg", word)
    for name, value in env.items():
        _record(out, "env", f"{name}={value}")
    _record(out, "end")
    return b"\0".join(out) + b"\0"


def encode_join(*, stage: tuple[int, int], payload: tuple[int, int], chroot: bool, tty: bool, landlock: int,
                run_as: tuple[int, int], cwd: str, env: dict[str, str], argv: list[str]) -> bytes:
    """The config of `sandboxer-stage --join` (sandboxer exec): whom to join (pids and start
    times), and what the command gets."""
    out: list[bytes] = [MAGIC.encode(), str(VERSION).encode()]
    _record(out, "join", stage[0], stage[1], payload[0], payload[1], chroot)
    _record(out, "tty", tty)
    _record(out, "landlock", landlock)
    if run_as[0] >= 0:
        _record(out, "runas", *run_as)
    _record(out, "cwd", cwd)
    return _finish(out, argv, env)


# ---- the C header ------------------------------------------------------------------------------

def _c(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _ident(text: str) -> str:
    return text.upper().replace("-", "_")


def header() -> str:
    """sandboxer/wire.h: the tables above, for stage.c."""
    lines = [
        "/* sandboxer/wire.h: generated by `python -m sandboxer.wire` from sandboxer/wire.py; do not",
        " * edit. What the supervisor and the stage agree on: see wire.py. */",
        "#ifndef SANDBOXER_WIRE_H",
        "#define SANDBOXER_WIRE_H",
        "#include <signal.h>",
        "#include <sys/resource.h>",
        "#include <stddef.h>",
        "",
        f"#define WIRE_MAGIC {_c(MAGIC)}",
        f"#define WIRE_VERSION {VERSION}",
        f"enum {{ CONFIG_FD = {CONFIG_FD}, STATUS_FD = {STATUS_FD}, CONTROL_FD = {CONTROL_FD}, "
        f"STDERR_FD = {STDERR_FD} }};",
        "",
        "/* config records: tag, value types (s string, i integer, b 0/1, k mount kind), repeatable,",
        " * required */",
        "enum wire_tag {",
        *[f"\tTAG_{_ident(tag)}," for tag in TAGS],
        "\tNTAGS",
        "};",
        "static const struct wire_tag_info {",
        "\tconst char *name, *types;",
        "\tint repeat, required;",
        "} WIRE_TAGS[NTAGS] = {",
        *[f"\t{{{_c(tag)}, {_c(types)}, {int(rep)}, {int(req)}}},"
          for tag, (types, rep, req) in TAGS.items()],
        "};",
        "",
        "enum mount_kind {",
        *[f"\tMK_{_ident(kind)}," for kind in MOUNT_KINDS],
        "\tNMOUNT_KINDS",
        "};",
        "static const char *const MOUNT_KIND_NAMES[NMOUNT_KINDS] = {",
        *[f"\t{_c(kind)}," for kind in MOUNT_KINDS],
        "};",
        "static const char *const ROOT_SWITCHES[] = {" + ", ".join(map(_c, ROOT_SWITCHES)) + ", NULL};",
        "static const char *const ROOT_WRITES[] = {" + ", ".join(map(_c, ROOT_WRITES)) + ", NULL};",
        "",
        "/* the limit record's names, and their resources */",
        "static const struct { const char *name; int resource; } RLIMITS[] = {",
        *[f"\t{{{_c(name)}, {res}}}," for name, res in RLIMITS.items()],
        "\t{NULL, 0},",
        "};",
        "",
        "/* bits of the landlock record: scopes that must apply, or the run fails */",
        *[f"#define LANDLOCK_{_ident(name)} {bit}" for name, bit in LANDLOCK.items()],
        "",
        "static const int FORWARDED[] = {" + ", ".join(FORWARDED_SIGNALS) + "};",
        "#define NFORWARDED (sizeof FORWARDED / sizeof FORWARDED[0])",
        "static const char *const DEV_NODES[] = {" + ", ".join(map(_c, DEV_NODES)) + ", NULL};",
        "static const char *const DEV_LINKS[][2] = {",
        *[f"\t{{{_c(name)}, {_c(target)}}}," for name, target in DEV_LINKS],
        "\t{NULL, NULL},",
        "};",
        "",
        "/* status messages (first byte), and the supervisor's go */",
        *[f"#define STATUS_{_ident(name)} '{code}'" for name, code in STATUS.items()],
        f"#define GO '{GO}'",
        "",
        "#endif",
    ]
    return "\n".join(lines) + "\n"


HEADER = "sandboxer/wire.h"


def main() -> int:
    """Write sandboxer/wire.h next to this module (or, with --check, exit 1 if it differs)."""
    import os
    import sys

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "wire.h")
    try:
        with open(path, encoding="utf-8") as f:
            current = f.read()
    except FileNotFoundError:
        current = ""
    if "--check" in sys.argv[1:]:
        if current != header():
            print(f"{HEADER} is stale; run 'python -m sandboxer.wire'", file=sys.stderr)
            return 1
        return 0
    if current != header():
        with open(path, "w", encoding="utf-8") as f:
            f.write(header())
        print(f"wrote {HEADER}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
