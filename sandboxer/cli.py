"""The command line: `sandboxer run|check|explain|rootfs`. The only place that catches SandboxerError.

`run` stays light: on a plan-cache hit it imports no pydantic, no tomllib, no argparse.
"""

from __future__ import annotations

import os
import sys

from .errors import EXIT_CHECK_INVALID, EXIT_FAILURE, SandboxerError
from .options import Args, UsageError, help_text, parse

TYPE_CHECKING = False
if TYPE_CHECKING:
    from .host import HostFacts


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv[: argv.index("--") if "--" in argv else len(argv)]
    try:
        args = parse(argv)
        return _dispatch(args)
    except UsageError as e:
        print(f"sandboxer: error: {e}", file=sys.stderr)
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

    given = [value for opt, _spelling, value in args.overrides if opt.name == "sha256"]
    sha256 = given[-1] if given else None
    _verb, tarball, directory = args.positionals
    print(import_tarball(tarball, directory, sha256=sha256))
    return 0


def _check(args: Args) -> int:
    from .load import ProfileError, load

    bad = 0
    for path in args.profiles:
        try:
            load(path, args.overrides)
        except ProfileError as e:
            bad += 1
            for problem in e.problems:
                print(f"sandboxer: error: {problem}", file=sys.stderr)
        else:
            print(f"{path}: ok")
    return EXIT_CHECK_INVALID if bad else 0


def _host() -> HostFacts:
    from . import cache, host

    facts = host.gather()
    if cache.ensure_dir(facts.cache_dir):
        facts.cache_pins = host.user_owned_ancestors(facts.cache_dir, facts.uid)
    else:
        # No cache (e.g. a read-only home): nothing to hide, nothing cached.
        facts.cache_dir = ""
        facts.cache_pins = ()
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

    facts = _host()
    profile = args.profiles[0] if args.profiles else None
    data = cache.read_profile_for_key(profile) if profile else b""
    entry = cache.key(args.tokens, profile, data, facts.key()) if data is not None else ""
    recipe = cache.load(facts.cache_dir, entry) if entry and facts.cache_dir else None
    if recipe is None:
        recipe = _compile_in_child(args, facts, "debug" in args.flags)
        if entry and facts.cache_dir:
            cache.store(facts.cache_dir, entry, recipe)
    return supervise.run(recipe, args.argv, debug="debug" in args.flags)


def _compile_in_child(args: Args, facts: HostFacts, debug: bool) -> dict[str, object]:
    """Validate and compile in a child process, so the supervisor never carries pydantic's
    ~30 MiB while the payload runs."""
    import marshal

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - exercised through the CLI
        os.close(r)
        try:
            from .build import build_plan

            plan = build_plan(args.profiles[0] if args.profiles else None, args.overrides, facts)
            out = b"K" + marshal.dumps(plan.recipe())
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
        recipe = marshal.loads(body)
        assert isinstance(recipe, dict)
        return recipe
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
