"""The command line as data: one table drives the parser, --help, the man page and completions.

This module is on the hot path of `sandboxer run`, so it imports nothing.
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence


class Opt:
    """One command-line option.

    kind: "choice" | "value" | "bool" (with a --no- twin) | "mount" | "env" | "append" | "forward"
          | "set" | "flag"
    key: the profile key it overrides (dotted), or "" for options of the command line itself.
    complete: how shells complete its value: "choices", "file", "dir", "env", "profile", "set",
          "" (anything).
    """

    __slots__ = ("name", "kind", "key", "metavar", "choices", "help", "complete", "scopes")

    def __init__(
        self,
        name: str,
        *,
        kind: str,
        help: str,
        key: str = "",
        metavar: str = "",
        choices: tuple[str, ...] = (),
        complete: str = "",
        scopes: tuple[str, ...] = ("run", "explain"),
    ) -> None:
        self.name = name
        self.kind = kind
        self.key = key
        self.metavar = metavar
        self.choices = choices
        self.help = help
        self.complete = complete
        self.scopes = scopes

    @property
    def takes_value(self) -> bool:
        return self.kind not in ("bool", "flag")

    def spellings(self) -> tuple[str, ...]:
        if self.kind == "bool":
            return (f"--{self.name}", f"--no-{self.name}")
        return (f"--{self.name}",)


# Subcommands: name -> one-line summary, usage.
COMMANDS: dict[str, tuple[str, str]] = {
    "run": (
        "run a command in a sandbox",
        "sandboxer run [OPTIONS] [PROFILE] [OPTIONS] [--] [COMMAND [ARG...]]",
    ),
    "check": ("validate profiles; exit 0 if all are valid, 1 if not", "sandboxer check PROFILE..."),
    "explain": (
        "show the compiled plan: one line per step, a shell script, JSON, or the resolved profile",
        "sandboxer explain [--shell|--json|--resolved] [OPTIONS] [PROFILE] [OPTIONS] [--] [COMMAND [ARG...]]",
    ),
    "ps": ("list your running named sandboxes", "sandboxer ps [--json|--names]"),
    "exec": ("run a command in a running named sandbox, as its payload runs",
             "sandboxer exec NAME [--] CMD [ARG...]"),
    "stop": ("stop a running named sandbox: SIGTERM, SIGKILL after --timeout; say its exit status",
             "sandboxer stop [--timeout SECONDS] NAME"),
    "logs": ("show a detached sandbox's output", "sandboxer logs [--follow] NAME"),
    "port": ("add, list or remove a running sandbox's port forwards (slirp4netns)",
             "sandboxer port add|ls|rm NAME [FORWARD|ID]"),
    "profiles": ("list the profiles found by name, where, and which are shadowed",
                 "sandboxer profiles [--names]"),
    "completion": ("print the completion script of a shell: bash, zsh or fish",
                   "sandboxer completion bash|zsh|fish"),
    "schema": ("print the JSON Schema of profiles (for TOML editors)", "sandboxer schema"),
    "doctor": ("check what sandboxes need on this machine, each with its fix", "sandboxer doctor [--json]"),
    "idmap": (
        "show the host ids an inside uid:gid maps to (or, with --host, the reverse)",
        "sandboxer idmap [--user NAME] [--map MODE] [--scheme rootless|remap] [--host] ID[:GID]",
    ),
    "rootfs": (
        "import a root filesystem tarball into a directory, safely and as you",
        "sandboxer rootfs import [--sha256 HEX] [--max-size SIZE] TARBALL DIR",
    ),
}

# Examples of each command, for its --help and the man page.
EXAMPLES: dict[str, tuple[tuple[str, str], ...]] = {
    "run": (
        ("an empty, throwaway HOME, the host's network", "sandboxer run clean-home -- bash"),
        ("ad hoc, over the safe defaults (no network, tmpfs HOME)", "sandboxer run --net none -- make"),
        ("a project under your home, built in it", "cd ~/project && sandboxer run offline --bind . -- make"),
        ("any key of a profile, on the command line", "sandboxer run offline --set home.size=1G -- npm ci"),
        ("what would run, without running it", "sandboxer run web-dev --dry-run -- python3 -m http.server 80"),
    ),
    "check": (("validate profiles", "sandboxer check profiles/*.toml ~/.config/sandboxer/profiles/mine.toml"),),
    "explain": (
        ("the plan, one line per step", "sandboxer explain offline"),
        ("the same chain as a shell script", "sandboxer explain --shell offline -- make"),
        ("the profile as merged, and where each value comes from", "sandboxer explain --resolved web-dev"),
    ),
    "rootfs": (("unpack a minirootfs, checked", "sandboxer rootfs import --sha256 HEX alpine.tar.gz ~/rootfs/alpine"),),
    "profiles": (("every profile found by name", "sandboxer profiles"),),
    "completion": (("install bash's completion for yourself",
                    "sandboxer completion bash > ~/.local/share/bash-completion/completions/sandboxer"),),
    "schema": (("the schema beside your profiles, for Taplo or Even Better TOML",
                "sandboxer schema > ~/.config/sandboxer/profiles/sandboxer-profile.schema.json"),),
    "doctor": (("what sandboxes need, checked here", "sandboxer doctor"),),
    "ps": (("what runs, with its forwards", "sandboxer ps"),),
    "exec": (("a shell in the running sandbox web", "sandboxer exec web -- bash"),),
    "stop": (("stop web, killing it after 5 s", "sandboxer stop --timeout 5 web"),),
    "logs": (("follow a detached server's output", "sandboxer logs --follow web"),),
    "port": (
        ("forward the host's 127.0.0.1:8081 to port 81 of a running sandbox (FORWARD: "
         "[ADDR:]HOST_PORT:GUEST_PORT[/tcp|udp])", "sandboxer port add web 8081:81"),
        ("remove the forward with ID 2", "sandboxer port rm web 2"),
        ("its forwards, with their IDs", "sandboxer port ls web"),
    ),
    "idmap": (
        ("which host uid owns the files of container user 1000", "sandboxer idmap --map auto 1000:1000"),
        ("who host uid 100999 is inside", "sandboxer idmap --map auto --host 100999"),
        ("Docker's userns-remap daemon, for its dockremap user", "sandboxer idmap --scheme remap --user dockremap 405:100"),
    ),
}

OPTIONS: tuple[Opt, ...] = (
    Opt("profile", kind="value", metavar="NAME|FILE", complete="profile",
        help="the profile to use: a name found on the profile search path, or a .toml file (as a "
             "positional argument: a file ending in .toml, or a name followed by --)"),
    Opt("set", kind="set", metavar="KEY=VALUE", complete="set",
        help="set any profile key, VALUE a TOML value (home.size=1G, namespaces.pid=false, "
             "'env.keep=[\"EDITOR\"]'; not TOML: a string); repeatable; flags and --set apply in the "
             "order given"),
    Opt("name", kind="value", key="name", metavar="NAME",
        help="register the running sandbox under NAME (sandboxer ps, exec, stop, logs, port); unique "
             "among your running sandboxes"),
    Opt("detach", kind="flag", scopes=("run",),
        help="run in the background (stdin /dev/null, output to a log: sandboxer logs NAME); print "
             "the name (a generated one without --name) once the command has started; also -d"),
    Opt("map", kind="choice", key="user.map", metavar="MODE", choices=("self", "root", "auto", "keep-id"),
        complete="choices", scopes=("run", "explain", "idmap"),
        help="the ids inside: 'self' (your uid/gid), 'root' (uid 0, still you outside), 'auto' (0 is "
             "you, 1-N your subordinate ranges from /etc/subuid and /etc/subgid) or 'keep-id' (your "
             "ids, the ranges fill every other id)"),
    Opt("user", kind="value", key="user.run_as", metavar="UID[:GID]",
        help="run the command as these ids inside (GID defaults to UID); any the mapping has, so "
             "other than 0 or your own they need --map auto or keep-id"),
    Opt("home", kind="choice", key="home.mode", metavar="MODE", choices=("host", "tmpfs"),
        complete="choices",
        help="HOME: 'host' (your real home) or 'tmpfs' (empty, throwaway, size-limited)"),
    Opt("home-size", kind="value", key="home.size", metavar="SIZE",
        help="size limit of a tmpfs HOME, in bytes or with a k/M/G suffix (default 256M)"),
    Opt("tmp-size", kind="value", key="tmp.size", metavar="SIZE",
        help="size limit of the private /tmp and /var/tmp, in bytes or with a k/M/G suffix (default 512M)"),
    Opt("net", kind="choice", key="network.mode", metavar="MODE",
        choices=("host", "none", "slirp4netns", "pasta"), complete="choices",
        help="network: 'host' (no network namespace), 'none' (own namespace with only lo), "
             "'slirp4netns' or 'pasta' (own namespace, user-mode networking through that helper)"),
    Opt("allow-host-loopback", kind="bool", key="network.allow_host_loopback",
        help="slirp4netns, pasta: let the sandbox reach the host's 127.0.0.1 through the gateway "
             "address (default off)"),
    Opt("forward", kind="forward", key="network.forwards", metavar="[ADDR:]HOST_PORT:GUEST_PORT[/tcp|udp]",
        help="slirp4netns, pasta: forward the host's ADDR:HOST_PORT (ADDR default 127.0.0.1) to "
             "GUEST_PORT inside; repeatable"),
    Opt("pid", kind="bool", key="namespaces.pid",
        help="own PID namespace with a fresh /proc (default on)"),
    Opt("ipc", kind="bool", key="namespaces.ipc", help="own IPC namespace (default on)"),
    Opt("uts", kind="bool", key="namespaces.uts",
        help="own UTS namespace, so the hostname can differ (default on)"),
    Opt("hostname", kind="value", key="namespaces.hostname", metavar="NAME",
        help="hostname inside the UTS namespace (default 'sandbox')"),
    Opt("bind", kind="mount", key="mounts", metavar="SRC[:DST]", complete="file",
        help="bind-mount SRC at DST (default: the same path), read-write; repeatable"),
    Opt("ro-bind", kind="mount", key="mounts", metavar="SRC[:DST]", complete="file",
        help="bind-mount SRC at DST read-only; repeatable"),
    Opt("tmpfs", kind="mount", key="mounts", metavar="DST[:SIZE]", complete="dir",
        help="mount an empty tmpfs at DST (default size 64M); repeatable"),
    Opt("rootfs", kind="value", key="rootfs.path", metavar="DIR", complete="dir",
        help="run inside the root filesystem in DIR (e.g. an unpacked minirootfs)"),
    Opt("root-switch", kind="choice", key="rootfs.switch", metavar="HOW",
        choices=("pivot_root", "chroot"), complete="choices",
        help="how to enter --rootfs: 'pivot_root' (old root detached; default) or 'chroot'"),
    Opt("rootfs-writes", kind="choice", key="rootfs.writes", metavar="MODE",
        choices=("persist", "read-only", "overlay"), complete="choices",
        help="writes to --rootfs: 'persist' in DIR (default), 'read-only', or a throwaway 'overlay'"),
    Opt("worktree", kind="choice", key="worktree.mode", metavar="MODE", choices=("none", "rw", "overlay", "ro"),
        complete="choices",
        help="the current directory (or worktree.path) as the work tree: 'rw' (writes land in it; "
             ".git, .envrc and the profile stay read-only), 'overlay' (writes go to a throwaway "
             "layer), 'ro', or 'none'"),
    Opt("worktree-size", kind="value", key="worktree.size", metavar="SIZE",
        help="size limit of the overlay's upper layer (default 1G)"),
    Opt("hide", kind="append", key="hide.paths", metavar="PATH", complete="file",
        help="hide PATH wherever it would appear (a directory empty, a file or socket /dev/null); "
             "repeatable"),
    Opt("nproc", kind="value", key="limits.nproc", metavar="N",
        help="at most N processes and threads inside (RLIMIT_NPROC, counted in the sandbox only)"),
    Opt("nofile", kind="value", key="limits.nofile", metavar="N", help="at most N open files per process"),
    Opt("fsize", kind="value", key="limits.fsize", metavar="SIZE",
        help="largest file a process may write (k/M/G suffixes): beyond it SIGXFSZ"),
    Opt("as", kind="value", key="limits.address_space", metavar="SIZE",
        help="virtual memory per process (k/M/G suffixes)"),
    Opt("cpu", kind="value", key="limits.cpu", metavar="SECONDS",
        help="CPU seconds per process: then SIGXCPU, and SIGKILL a second later"),
    Opt("timeout", kind="value", key="limits.timeout", metavar="DURATION",
        help="end the run after DURATION (90s, 10m, 1h): SIGTERM, SIGKILL after --kill-after; exit "
             "status 124"),
    Opt("kill-after", kind="value", key="limits.kill_after", metavar="DURATION",
        help="grace between the timeout's SIGTERM and SIGKILL (default 5s)"),
    Opt("keep", kind="value", metavar="DIR", complete="dir", scopes=("run",),
        help="--worktree overlay: keep the upper layer (what the command added, changed and "
             "deleted) in DIR/upper, DIR new or empty"),
    Opt("diff", kind="flag", scopes=("run",),
        help="--worktree overlay: list what the command added (A), changed (M) and deleted (D)"),
    Opt("report", kind="value", metavar="FILE", complete="file", scopes=("run",),
        help="write a JSON report to FILE: how the command ended (code, signal, timeout, limit), "
             "its duration, the work tree's changes"),
    Opt("env", kind="env", key="env.set", metavar="NAME=VALUE",
        help="set an environment variable inside; repeatable"),
    Opt("keep-env", kind="append", key="env.keep", metavar="NAME", complete="env",
        help="keep this variable of the caller's environment (NAME* keeps a prefix); repeatable"),
    Opt("cwd", kind="value", key="command.cwd", metavar="DIR", complete="dir",
        help="working directory inside (default: your cwd when visible inside, else HOME)"),
    Opt("accept-exposure", kind="append", key="security.accept_exposures", metavar="EXPOSURE",
        choices=("abstract-sockets", "signals"), complete="choices",
        help="run even where the kernel (before Linux 6.12: no Landlock ABI 6) cannot close this "
             "exposure: 'abstract-sockets' (host network) or 'signals' (no PID namespace); repeatable"),
    Opt("dry-run", kind="flag", scopes=("run",), help="print the plan (as explain does) and run nothing"),
    Opt("names", kind="flag", scopes=("profiles", "ps"), help="print the names only, one a line (for scripts "
        "and shell completion)"),
    Opt("resolved", kind="flag", scopes=("explain",),
        help="print the profile as resolved (its extends merged, flags and --set applied) and where "
             "each value comes from"),
    Opt("shell", kind="flag", scopes=("explain",),
        help="print the plan as a shell script a person can read and run"),
    Opt("json", kind="flag", scopes=("explain", "doctor", "ps"),
        help="print the plan (doctor: the checks; ps: the sandboxes) as JSON"),
    Opt("follow", kind="flag", scopes=("logs",), help="keep printing the log until the sandbox ends"),
    Opt("timeout", kind="value", metavar="SECONDS", scopes=("stop",),
        help="after SIGTERM, wait this long before SIGKILL (default 10)"),
    Opt("user", kind="value", metavar="NAME", complete="user", scopes=("idmap",),
        help="whose subordinate ranges to use (default: yours; with --scheme remap, the daemon's "
             "remap user, e.g. dockremap)"),
    Opt("scheme", kind="choice", metavar="SCHEME", choices=("rootless", "remap"), complete="choices",
        scopes=("idmap",),
        help="'rootless' (default): sandboxer's, rootless Podman's and Docker's (0 is the user, 1 the "
             "range's first id); 'remap': the daemon's userns-remap (0 is the range's first id)"),
    Opt("host", kind="flag", scopes=("idmap",),
        help="ID[:GID] are host ids: print the ids inside they appear as"),
    Opt("sha256", kind="value", metavar="HEX", scopes=("rootfs",),
        help="the tarball's expected SHA-256 (64 hex digits); checked before anything is unpacked"),
    Opt("max-size", kind="value", metavar="SIZE", scopes=("rootfs",),
        help="write at most SIZE bytes (k/M/G suffixes) while unpacking; default: half the free "
             "space of DIR's filesystem"),
    Opt("debug", kind="flag", scopes=("run", "check", "explain", "rootfs", "profiles", "completion",
                                      "schema", "doctor", "idmap", "ps", "exec", "stop", "logs", "port"),
        help="show Python tracebacks and the chain being run"),
    Opt("help", kind="flag", scopes=("run", "check", "explain", "rootfs", "profiles", "completion",
                                     "schema", "doctor", "idmap", "ps", "exec", "stop", "logs", "port"),
        help="show this help and exit"),
)

# spelling -> option, per command (--user is run's UID[:GID] and idmap's NAME)
BY_COMMAND: dict[str, dict[str, Opt]] = {c: {} for c in COMMANDS}
for _opt in OPTIONS:
    for _scope in _opt.scopes:
        BY_COMMAND[_scope].update(dict.fromkeys(_opt.spellings(), _opt))


class UsageError(Exception):
    """A command-line mistake (turned into a SandboxerError by cli)."""


class Args:
    """The parsed command line."""

    __slots__ = ("command", "profiles", "overrides", "argv", "flags", "tokens", "positionals", "values")

    def __init__(self, command: str) -> None:
        self.command = command
        self.profiles: list[str] = []
        # (option, spelling used, value or None for bool/flag) in command-line order
        self.overrides: list[tuple[Opt, str, str | None]] = []
        self.argv: list[str] | None = None
        self.flags: set[str] = set()
        # the sandbox-describing tokens, for the plan cache key
        self.tokens: list[str] = []
        # positional arguments of commands that take them (rootfs: VERB TARBALL DIR)
        self.positionals: list[str] = []
        # values of options that set no profile key (--report FILE, --sha256 HEX), by name
        self.values: dict[str, str] = {}


def parse(argv: Sequence[str]) -> Args:
    """Parse `sandboxer COMMAND ...`; raise UsageError on mistakes."""
    if not argv:
        raise UsageError("no command given; try 'sandboxer --help'")
    command = argv[0]
    if command in ("-h", "--help", "help"):
        return Args("help")
    if command == "--version":
        return Args("version")
    if command not in COMMANDS:
        best = _closest(command, list(COMMANDS))
        hint = f"did you mean {best!r}? " if best else ""
        raise UsageError(f"unknown command {command!r}; {hint}expected one of {', '.join(COMMANDS)}")
    args = Args(command)
    rest = list(argv[1:])
    i = 0
    while i < len(rest):
        tok = rest[i]
        i += 1
        if tok == "--":
            if command == "rootfs":
                args.positionals += rest[i:]
            elif command == "exec" and not args.positionals:
                args.positionals += rest[i:i + 1]
                args.argv = rest[i + 1:]
            else:
                args.argv = rest[i:]
            break
        if tok.startswith("--"):
            name, eq, value = tok.partition("=")
            opt = BY_COMMAND[command].get(name)
            if opt is None:
                raise UsageError(_unknown(name, command))
            if opt.takes_value:
                if not eq:
                    if i >= len(rest):
                        raise UsageError(f"option {name} needs a value ({opt.metavar})")
                    value = rest[i]
                    i += 1
                if opt.name == "profile":
                    args.profiles.append(value)
                    args.tokens += ("--profile", value)
                    continue
                if not opt.key and opt.kind in ("value", "choice"):
                    args.values[opt.name] = value
                    continue
                args.overrides.append((opt, name, value))
                args.tokens += (name, value)
            else:
                if eq:
                    raise UsageError(f"option {name} takes no value")
                if opt.kind == "flag":
                    args.flags.add(opt.name)
                else:
                    args.overrides.append((opt, name, None))
                    args.tokens.append(name)
            continue
        if tok == "-d" and command == "run":
            args.flags.add("detach")
            continue
        if tok.startswith("-") and tok != "-":
            raise UsageError(f"unknown option {tok!r}; options are spelled --name (see --help)")
        if command == "check":
            args.profiles.append(tok)
        elif command == "exec":
            if args.positionals:  # after NAME, the command
                args.argv = rest[i - 1:]
                break
            args.positionals.append(tok)
        elif command in ("rootfs", "profiles", "completion", "schema", "doctor", "idmap", "ps", "stop",
                         "logs", "port"):
            args.positionals.append(tok)
        elif not args.profiles and (tok.endswith(".toml") or "--" in rest[i:]):
            # a file ending in .toml, or a word with -- after it, names the profile: `run make`
            # runs make, `run build -- make` runs make in the profile `build`
            args.profiles.append(tok)
            args.tokens += ("--profile", tok)
        else:
            # the first other positional starts the command; the rest is its argv
            args.argv = rest[i - 1:]
            break
    if command != "check" and len(args.profiles) > 1:
        raise UsageError("only one profile can be given")
    if command == "check" and not args.profiles and "help" not in args.flags:
        raise UsageError("check needs at least one profile")
    if command == "rootfs" and "help" not in args.flags:
        _check_rootfs(args.positionals)
    if command == "idmap" and "help" not in args.flags and len(args.positionals) != 1:
        raise UsageError("idmap needs one ID[:GID], e.g. sandboxer idmap --map auto 1000:1000")
    if "help" not in args.flags:
        _check_named(command, args)
    if command in ("profiles", "schema", "doctor", "ps") and args.positionals:
        raise UsageError(f"{command} takes no arguments, got {args.positionals[0]!r}")
    if command == "completion" and "help" not in args.flags and (
            len(args.positionals) != 1 or args.positionals[0] not in ("bash", "zsh", "fish")):
        raise UsageError("completion needs one shell: bash, zsh or fish "
                         "(e.g. sandboxer completion bash > ~/.local/share/bash-completion/completions/sandboxer)")
    return args


def _check_named(command: str, args: Args) -> None:
    """The positional arguments of the commands on named sandboxes."""
    pos = args.positionals
    if command == "exec" and (len(pos) != 1 or not args.argv):
        raise UsageError("exec needs a sandbox's NAME and a command: sandboxer exec NAME -- CMD [ARG...]")
    if command in ("stop", "logs") and len(pos) != 1:
        raise UsageError(f"{command} needs one sandbox's NAME (see sandboxer ps)")
    if command == "port":
        verbs = {"add": 3, "ls": 2, "rm": 3}
        if not pos or pos[0] not in verbs:
            raise UsageError("port needs a verb: sandboxer port add|ls|rm NAME ...")
        if len(pos) != verbs[pos[0]]:
            what = {"add": "NAME [ADDR:]HOST_PORT:GUEST_PORT[/tcp|udp]", "ls": "NAME", "rm": "NAME ID"}[pos[0]]
            raise UsageError(f"usage: sandboxer port {pos[0]} {what}")


def _check_rootfs(positionals: Sequence[str]) -> None:
    if not positionals:
        raise UsageError("rootfs needs a verb; usage: sandboxer rootfs import TARBALL DIR")
    if positionals[0] != "import":
        raise UsageError(f"unknown rootfs verb {positionals[0]!r}; expected 'import' "
                         "(sandboxer rootfs import TARBALL DIR)")
    if len(positionals) != 3:
        raise UsageError(f"rootfs import needs TARBALL and DIR, got {len(positionals) - 1} argument(s); "
                         "usage: sandboxer rootfs import TARBALL DIR [--sha256 HEX]")


def _unknown(name: str, command: str) -> str:
    known = sorted(s for o in OPTIONS if command in o.scopes for s in o.spellings())
    best = _closest(name, known)
    hint = f"; did you mean {best}?" if best else ""
    return f"unknown option {name!r} for '{command}'{hint}"


def _closest(word: str, candidates: Sequence[str]) -> str:
    import difflib

    got = difflib.get_close_matches(word, candidates, n=1, cutoff=0.6)
    return got[0] if got else ""


def help_text(command: str | None = None) -> str:
    """--help output, generated from the table."""
    if command is None:
        lines = ["usage: sandboxer COMMAND [OPTIONS] ...", "", "commands:"]
        for name, (summary, _usage) in COMMANDS.items():
            lines.append(f"  {name:<9}{summary}")
        lines += ["", "Run 'sandboxer COMMAND --help' for its options; 'man sandboxer' for more."]
        return "\n".join(lines) + "\n"
    summary, usage = COMMANDS[command]
    lines = [f"usage: {usage}", "", summary, "", "options:"]
    for opt in OPTIONS:
        if command not in opt.scopes:
            continue
        spelled = ", ".join(opt.spellings())
        if opt.metavar:
            spelled += f" {opt.metavar}"
        if opt.choices:
            spelled = f"--{opt.name} {{{','.join(opt.choices)}}}"
        lines.append(f"  {spelled}")
        lines.append(f"      {opt.help}")
    lines += ["", "examples:"]
    for what, example in EXAMPLES.get(command, ()):
        lines += [f"  {example}", f"      {what}"]
    return "\n".join(lines) + "\n"
