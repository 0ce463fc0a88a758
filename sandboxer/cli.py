"""The command line: `sandboxer run|check|explain|rootfs`. The only place that catches SandboxerError.

`run` stays light: on a plan-cache hit it imports no pydantic, no tomllib, no argparse.
"""

from __future__ import annotations

import os
import sys

from .errors import EXIT_CHECK_INVALID, EXIT_FAILURE, SandboxerError, printable
from .options import Args, UsageError, help_text, parse

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .host import HostFacts
    from .spec import RunSpec


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv[: argv.index("--") if "--" in argv else len(argv)]
    try:
        args = parse(argv)
        return _dispatch(args)
    except UsageError as e:
        print(printable(f"sandboxer: error: {e}"), file=sys.stderr)
        return EXIT_FAILURE
    except SandboxerError as e:
        if debug:
            import traceback

            traceback.print_exc()
        print(e.line(), file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # a bug: one line unless --debug
        if debug:
            raise
        print(f"sandboxer: error: internal error: {type(e).__name__}: {e} (rerun with --debug)",
              file=sys.stderr)
        return EXIT_FAILURE


def entry() -> None:
    """The command's entry point (bin/sandboxer): main(), then exit without the interpreter's
    teardown, which would only free memory the kernel reclaims anyway (~1-2 ms per run).
    Every file, pipe and child is closed or reaped by main() before it returns."""
    code = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(code)


def _dispatch(args: Args) -> int:
    if args.command == "help":
        sys.stdout.write(help_text())
        return 0
    if args.command == "version":
        from . import __version__

        print(f"sandboxer {__version__}")
        return 0
    if "help" in args.flags:
        sys.stdout.write(help_text(args.command))
        return 0
    if args.command == "check":
        return _check(args)
    if args.command == "explain":
        return _explain(args)
    if args.command == "rootfs":
        return _rootfs(args)
    return _run(args)


def _rootfs(args: Args) -> int:
    from .rootfs_import import import_tarball

    given = {opt.name: value for opt, _spelling, value in args.overrides}
    max_size = None
    if given.get("max-size") is not None:
        from .profile import parse_size

        try:
            parsed = parse_size(given["max-size"])
        except ValueError as e:
            raise SandboxerError(f"option --max-size: {e}") from None
        if not isinstance(parsed, int):
            raise SandboxerError(f"option --max-size: expected a size, got {given['max-size']!r}")
        max_size = parsed
    _verb, tarball, directory = args.positionals
    print(printable(import_tarball(tarball, directory, sha256=given.get("sha256"), max_size=max_size)))
    return 0


def _check(args: Args) -> int:
    """Every check `run` makes, short of starting anything: the schema, then compiling against
    this host (mount targets, the plan cache, tools and their versions)."""
    from .build import build_plan
    from .load import ProfileError

    facts = _host()
    bad = 0
    for path in args.profiles:
        try:
            build_plan(path, args.overrides, facts)
        except ProfileError as e:
            bad += 1
            for problem in e.problems:
                print(printable(f"sandboxer: error: {problem}"), file=sys.stderr)
        except SandboxerError as e:
            bad += 1
            print(printable(f"sandboxer: error: {path}: {e.message}" + (f" ({e.hint})" if e.hint else "")),
                  file=sys.stderr)
        else:
            print(printable(f"{path}: ok"))
    return EXIT_CHECK_INVALID if bad else 0


def _host() -> HostFacts:
    """Host facts, with sandboxer's own state directories made (private, 0700) and their
    user-owned ancestors found (to be pinned): a directory that cannot be made is not used."""
    from . import cache, host

    facts = host.gather()
    if not cache.ensure_dir(facts.cache_dir, "plans", private=False):
        facts.cache_dir = ""  # e.g. a read-only home: nothing cached
    if facts.key_dir and not cache.ensure_dir(facts.key_dir):
        facts.key_dir = ""  # then nothing is cached either: an entry could not be trusted
    facts.find_pins()
    return facts


def _explain(args: Args) -> int:
    from .build import build_plan

    plan = build_plan(args.profiles[0] if args.profiles else None, args.overrides, _host(), args.argv)
    if "json" in args.flags:
        sys.stdout.write(plan.to_json())
    elif "shell" in args.flags:
        sys.stdout.write(plan.shell())
    else:
        for n, line in enumerate(plan.describe(), 1):
            print(f"{n:3}  {line}")
    return 0


def _run(args: Args) -> int:
    from . import cache, supervise
    from .spec import RunSpec, SpecError

    facts = _host()
    profile = args.profiles[0] if args.profiles else None
    # Read once: the plan is compiled from exactly these bytes, and stored under their key.
    data = cache.read_profile_for_key(profile) if profile else b""
    secret = cache.read_key(facts.key_dir) if facts.key_dir and facts.cache_dir else None
    entry = cache.key(args.tokens, profile, data, facts.key()) if data is not None and secret else ""
    spec = None
    if entry and secret:
        where = os.path.join(facts.cache_dir, "plans", entry)
        try:
            stored = cache.load(facts.cache_dir, entry, secret)
            spec = None if stored is None else RunSpec.from_data(stored)
        except (cache.Rejected, SpecError) as e:
            print(printable(f"sandboxer: warning: ignoring the cached plan {where}: {e}; compiling "
                            "the profile again"), file=sys.stderr)
    if spec is None:
        spec = _compile_in_child(args, facts, data, "debug" in args.flags)
        if entry and secret:
            cache.store(facts.cache_dir, entry, spec.data(), secret)
    return supervise.run(spec, args.argv, debug="debug" in args.flags)


def _compile_in_child(args: Args, facts: HostFacts, data: bytes | None, debug: bool) -> RunSpec:
    """Validate and compile in a child process, so the supervisor never carries pydantic's
    ~30 MiB while the payload runs."""
    import marshal

    from .spec import RunSpec

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - exercised through the CLI
        os.close(r)
        try:
            from .build import build_plan

            plan = build_plan(args.profiles[0] if args.profiles else None, args.overrides, facts,
                              data=data if args.profiles else None)
            out = b"K" + marshal.dumps(plan.spec().data())
        except SandboxerError as e:
            out = b"E" + marshal.dumps((e.message, e.hint, e.code))
        except BaseException as e:
            import traceback

            text = traceback.format_exc() if debug else f"{type(e).__name__}: {e}"
            out = b"T" + marshal.dumps(text)
        try:
            view = memoryview(out)
            while view:
                view = view[os.write(w, view):]
        finally:
            os._exit(0)
    os.close(w)
    chunks = []
    while chunk := os.read(r, 65536):
        chunks.append(chunk)
    os.close(r)
    os.waitpid(pid, 0)
    out = b"".join(chunks)
    kind, body = out[:1], out[1:]
    if kind == b"K":
        return RunSpec.from_data(marshal.loads(body))
    if kind == b"E":
        message, hint, code = marshal.loads(body)
        raise SandboxerError(message, hint, code)
    if kind == b"T":
        if debug:
            sys.stderr.write(marshal.loads(body))
        raise SandboxerError(f"internal error while compiling: {marshal.loads(body)}", "rerun with --debug")
    raise SandboxerError("internal error: the compiler died", "rerun with --debug")


if __name__ == "__main__":
    sys.exit(main())
