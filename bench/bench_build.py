#!/usr/bin/env python3
"""Build benchmark: a real small build under `sandboxer run build` vs bare, in one run.

Generates a C project (N translation units and a Makefile) in a directory under HOME, where
users keep their checkouts, then times a full rebuild (`make -B -jJ`), interleaved round-robin
after warm-ups:

  bare        make -B -jJ                                    (in the project)
  sandboxer   sandboxer run build -- make -B -jJ             (rw work tree, the build profile)
  overlay     sandboxer run build --worktree overlay -- make -B -jJ
  bwrap       bwrap --unshare-all --die-with-parent --new-session --ro-bind / / --dev /dev
                    --proc /proc --tmpfs /tmp --tmpfs HOME --bind PROJECT PROJECT
                    --chdir PROJECT -- make -B -jJ

Target (informational): sandboxer / bare under 1.05 for a build of a few seconds.

Run as an unprivileged user: python3 bench/bench_build.py [--sandboxer PATH] [--runs N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import BenchError, find_sandboxer, percentile, round_robin, tool_version, verdict  # noqa: E402

TARGET_RATIO = 1.05
UNIT = """\
#include <stdio.h>
#include <string.h>
/* enough work for the compiler: a few loops it unrolls and vectorises */
static double table_{n}[256];
double unit_{n}(int k) {{
    double acc = 0;
    for (int i = 0; i < 256; i++) table_{n}[i] = (double)(i * {n} + k) / 3.0;
    for (int r = 0; r < 64; r++)
        for (int i = 1; i < 255; i++) acc += table_{n}[i - 1] * table_{n}[i + 1] - table_{n}[i] / (r + 1);
    char buf[64];
    snprintf(buf, sizeof buf, "%d-%f", k, acc);
    return acc + (double)strlen(buf);
}}
"""


def make_project(root: Path, units: int) -> None:
    (root / "src").mkdir(parents=True)
    for n in range(units):
        (root / "src" / f"u{n}.c").write_text(UNIT.format(n=n))
    decls = "".join(f"double unit_{n}(int);\n" for n in range(units))
    calls = " + ".join(f"unit_{n}(argc)" for n in range(units))
    (root / "src" / "main.c").write_text(f"#include <stdio.h>\n{decls}int main(int argc, char **argv) {{\n"
                                         f"    (void)argv; printf(\"%f\\n\", {calls}); return 0;\n}}\n")
    objs = " ".join(f"build/u{n}.o" for n in range(units)) + " build/main.o"
    (root / "Makefile").write_text(
        "CFLAGS = -O2 -Wall\n"
        f"app: {objs}\n\t$(CC) -o $@ $^\n"
        "build/%.o: src/%.c | build\n\t$(CC) $(CFLAGS) -c -o $@ $<\n"
        "build:\n\tmkdir -p build\n"
    )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--runs", type=int, default=5, help="timed builds per variant (default 5)")
    p.add_argument("--warmup", type=int, default=1, help="untimed builds per variant first (default 1)")
    p.add_argument("--units", type=int, default=150, help="translation units (default 150)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="make -j (default: CPUs)")
    p.add_argument("--sandboxer", metavar="PATH", help="sandboxer to time")
    args = p.parse_args(argv)
    env = dict(os.environ)
    home = env.get("HOME") or str(Path.home())
    env["HOME"] = home
    make = shutil.which("make", path=env.get("PATH"))
    cc = shutil.which("cc", path=env.get("PATH")) or shutil.which("gcc", path=env.get("PATH"))
    if not make or not cc:
        print("bench: error: make and a C compiler are needed (apt install make gcc)", file=sys.stderr)
        return 1
    try:
        sandboxer = find_sandboxer(args.sandboxer)
        base = Path(home) / ".cache" / "sandboxer-bench"
        base.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=base) as tmp:
            project = Path(tmp) / "project"
            make_project(project, args.units)
            build = [make, "-s", "-B", f"-j{args.jobs}"]
            variants: dict[str, list[str]] = {
                "bare": ["/bin/sh", "-c", 'cd "$0" && exec "$@"', str(project), *build],
                "sandboxer build": ["/bin/sh", "-c", 'cd "$0" && exec "$@"', str(project), sandboxer, "run",
                                    "build", "--", *build],
                "sandboxer build --worktree overlay": ["/bin/sh", "-c", 'cd "$0" && exec "$@"', str(project),
                                                       sandboxer, "run", "build", "--worktree", "overlay",
                                                       "--", *build],
            }
            bwrap = shutil.which("bwrap", path=env.get("PATH")) or (
                "/usr/bin/bwrap" if os.access("/usr/bin/bwrap", os.X_OK) else None)
            if bwrap:
                variants["bwrap"] = [bwrap, "--unshare-all", "--die-with-parent", "--new-session", "--ro-bind",
                                     "/", "/", "--dev", "/dev", "--proc", "/proc", "--tmpfs", "/tmp", "--tmpfs",
                                     home, "--bind", str(project), str(project), "--chdir", str(project), "--",
                                     *build]
            times = round_robin(list(variants.values()), args.runs, args.warmup, env)
    except BenchError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 1
    stats = {name: statistics.median(t) for name, t in zip(variants, times, strict=True)}
    width = max(map(len, variants))
    print(f"build benchmark: make -B -j{args.jobs} of {args.units + 1} C units, {args.runs} runs per variant "
          f"after {args.warmup} warm-up(s), round-robin")
    print(f"  {tool_version([sandboxer, '--version'])}; {tool_version([make, '--version'])}; "
          f"{tool_version([cc, '--version'])}")
    print(f"  {'variant':<{width}}  {'median':>9}  {'p90':>9}  {'min':>9}   (ms)")
    for (name, t) in zip(variants, times, strict=True):
        s = sorted(t)
        print(f"  {name:<{width}}  {stats[name]:9.0f}  {percentile(s, 90):9.0f}  {s[0]:9.0f}")
    ratio = stats["sandboxer build"] / stats["bare"]
    print(f"\n  sandboxer build / bare: {ratio:.3f}x   (target: under {TARGET_RATIO}) {verdict(ratio < TARGET_RATIO)}")
    print(f"  overlay / bare:         {stats['sandboxer build --worktree overlay'] / stats['bare']:.3f}x")
    if "bwrap" in stats:
        print(f"  bwrap / bare:           {stats['bwrap'] / stats['bare']:.3f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
