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
    except ModuleNotFoundError as e:  # run from a checkout without its dependencies, say
        if debug:
            raise
        print(f"sandboxer: error: sandboxer is not installed here: {e} (install it: ./tasks demo in a "
              "checkout, or pipx install .)", file=sys.stderr)
        return EXIT_FAILURE
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
    if args.command == "profiles":
        return _profiles(names_only="names" in args.flags)
    if args.command == "completion":
        from . import docs

        sys.stdout.write(docs.generated()[docs.COMPLETIONS[args.positionals[0]]])
        return 0
    if args.command == "schema":
        from . import docs

        sys.stdout.write(docs.json_schema())
        return 0
    if args.command == "idmap":
        from .idmap import calculate

        given = {**args.values, **{opt.name: value for opt, _spelling, value in args.overrides}}
        lines, ok = calculate(args.positionals[0], user=given.get("user"), mode=given.get("map"),
                              scheme=given.get("scheme") or "rootless", reverse="host" in args.flags)
        for line in lines:
            print(printable(line))
        return 0 if ok else EXIT_CHECK_INVALID
    if args.command in ("ps", "exec", "stop", "logs", "port"):
        from . import named

        return named.command(args)
    if args.command == "doctor":
        from .doctor import doctor

        return doctor(as_json="json" in args.flags)
    return _run(args)


def _profile(args: Args, facts: HostFacts) -> str | None:
    """The file of the profile the command line names (a name is looked up on the search path)."""
    from . import search

    return search.find(args.profiles[0], os.environ, facts.cwd, facts.home) if args.profiles else None


def _profiles(*, names_only: bool = False) -> int:
    """`sandboxer profiles`: every profile found by name, its description, where it is."""
    from . import host, search

    facts = host.gather()
    if names_only:
        for name in dict.fromkeys(name for name, *_rest in search.every(os.environ, facts.cwd, facts.home)):
            print(name)
        return 0
    import tomllib

    rows = []
    for name, path, where, shadowed in search.every(os.environ, facts.cwd, facts.home):
        try:
            with open(path, "rb") as f:
                description = str(tomllib.load(f).get("description", ""))
        except (OSError, ValueError) as e:
            description = f"(unreadable: {getattr(e, 'strerror', None) or e})"
        rows.append((name, description, where + ("  (shadowed)" if shadowed else ""), path))
    if not rows:
        print("no profiles found", file=sys.stderr)
        return 0
    width = max(len(r[0]) for r in rows)
    for name, description, where, path in rows:
        print(printable(f"{name:<{width}}  {description}"))
        print(printable(f"{'':<{width}}  {where}: {path}"))
    return 0


def _rootfs(args: Args) -> int:
    from .rootfs_import import import_tarball

    given = args.values
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
    from . import search
    from .build import build_plan
    from .load import ProfileError

    facts = _host()
    bad = 0
    for path in args.profiles:
        try:
            build_plan(search.find(path, os.environ, facts.cwd, facts.home), args.overrides, facts)
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

    facts = _host()
    if "resolved" in args.flags:
        from .load import load_located

        loaded = load_located(_profile(args, facts), args.overrides)
        files = [path for path, _data in loaded.sources]
        print(f"# {loaded.path}" + (f", extending {', '.join(files[1:])}" if len(files) > 1 else ""))
        for line in loaded.resolved():
            print(printable(line))
        return 0
    plan = build_plan(_profile(args, facts), args.overrides, facts, args.argv)
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
    profile = _profile(args, facts)
    if "dry-run" in args.flags:
        from .build import build_plan

        for n, line in enumerate(build_plan(profile, args.overrides, facts, args.argv).describe(), 1):
            print(f"{n:3}  {line}")
        return 0
    # Read once: the plan is compiled from exactly these bytes, and stored under their key.
    data = cache.read_profile_for_key(profile) if profile else b""
    secret = cache.read_key(facts.key_dir) if facts.key_dir and facts.cache_dir else None
    entry = cache.key(args.tokens, profile, data, facts.key()) if data is not None and secret else ""
    spec = None
    if entry and secret:
        where = os.path.join(facts.cache_dir, "plans", entry)
        try:
            stored = cache.load(facts.cache_dir, entry, secret)
            if stored is not None:
                if not isinstance(stored, tuple) or len(stored) != 2:
                    raise SpecError("not a plan and its files")
                spec_data, deps = stored
                # the profiles this one extends: still the bytes it was compiled from?
                if cache.unchanged(deps):
                    spec = RunSpec.from_data(spec_data)
        except (cache.Rejected, SpecError) as e:
            print(printable(f"sandboxer: warning: ignoring the cached plan {where}: {e}; compiling "
                            "the profile again"), file=sys.stderr)
    if spec is None:
        spec, deps = _compile_in_child(args, facts, data, "debug" in args.flags)
        if entry and secret:
            cache.store(facts.cache_dir, entry, (spec.data(), deps), secret)
    debug, keep, report, diff = ("debug" in args.flags, args.values.get("keep", ""),
                                 args.values.get("report", ""), "diff" in args.flags)
    if not spec.name and "detach" not in args.flags:
        return supervise.run(spec, args.argv, debug=debug, keep=keep, report=report, diff=diff)
    from . import named

    return named.run(spec, args.argv, args.profiles[0] if args.profiles else "", debug=debug, keep=keep,
                     report=report, diff=diff, detach="detach" in args.flags)


def _compile_in_child(args: Args, facts: HostFacts, data: bytes | None,
                      debug: bool) -> tuple[RunSpec, tuple[tuple[str, str], ...]]:
    """Validate and compile in a child process, so the supervisor never carries pydantic's
    ~30 MiB while the payload runs."""
    import marshal

    from .spec import RunSpec

    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - exercised through the CLI
        os.close(r)
        try:
            from . import cache
            from .build import build

            plan, sources = build(_profile(args, facts), args.overrides, facts,
                                  data=data if args.profiles else None)
            # the files it extends, by the digest of the bytes compiled (its own is in the key)
            deps = tuple((os.path.abspath(path), cache.digest(content)) for path, content in sources[1:])
            out = b"K" + marshal.dumps((plan.spec().data(), deps))
        except SandboxerError as e:
            out = b"E" + marshal.dumps((e.message, e.hint, e.code))
        except ModuleNotFoundError as e:
            out = b"E" + marshal.dumps((f"sandboxer is not installed here: {e}",
                                        "install it: ./tasks demo in a checkout, or pipx install .",
                                        EXIT_FAILURE))
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
        spec_data, deps = marshal.loads(body)
        return RunSpec.from_data(spec_data), deps
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
