#!/usr/bin/env python3
"""Named sandboxes: `sandboxer exec NAME -- true` against nsenter by hand into the same sandbox,
and `sandboxer ps --json` with 50 running sandboxes, in one run.

  exec         sandboxer exec NAME -- true   (joins the payload's own user namespace, root, ids,
                                               hardening: what the payload has)
  nsenter      nsenter -t STAGE --preserve-credentials -U -m -p -n -u -i -r -w -- true
               (the seeds' way: the stage's namespaces only, none of the payload's hardening)
  ps --json    with 50 named sandboxes running (sleep), started with run --detach

Targets (informational): exec median under 20 ms; ps --json with 50 sandboxes under 100 ms.

Run as an unprivileged user: python3 bench/bench_named.py [--sandboxer PATH] [--runs N]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import BenchError, find_sandboxer, percentile, round_robin, tool_version, verdict  # noqa: E402

TARGET_EXEC_MS = 20.0
TARGET_PS_MS = 100.0
SANDBOXES = 50


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--runs", type=int, default=30, help="timed runs per variant (default 30)")
    p.add_argument("--warmup", type=int, default=3, help="untimed runs per variant first (default 3)")
    p.add_argument("--sandboxer", metavar="PATH", help="sandboxer to time")
    args = p.parse_args(argv)
    env = dict(os.environ)
    nsenter = shutil.which("nsenter", path=env.get("PATH")) or "/usr/bin/nsenter"
    started: list[str] = []
    try:
        sbx = find_sandboxer(args.sandboxer)
        prefix = f"bench-{secrets.token_hex(2)}"
        procs = [subprocess.Popen([sbx, "run", "-d", "--name", f"{prefix}-{n}", "--", "sleep", "600"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                 for n in range(SANDBOXES)]
        for proc in procs:
            out, err = proc.communicate(timeout=120)
            if proc.returncode != 0:
                raise BenchError(f"cannot start a sandbox: {err.strip()}")
            started.append(out.strip())
        rows = json.loads(subprocess.run([sbx, "ps", "--json"], capture_output=True, text=True, check=True,
                                         env=env).stdout)
        target = next(r for r in rows if r["name"] == started[0])
        variants = {
            "sandboxer exec NAME -- true": [sbx, "exec", started[0], "--", "true"],
            "nsenter by hand": [nsenter, "-t", str(target["init"]), "--preserve-credentials", "-U", "-m", "-p", "-n",
                                "-u", "-i", "-r", "-w", "--", "true"],
            f"sandboxer ps --json ({SANDBOXES} running)": [sbx, "ps", "--json"],
        }
        times = round_robin(list(variants.values()), args.runs, args.warmup, env)
    except BenchError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 1
    finally:
        stops = [subprocess.Popen([find_sandboxer(args.sandboxer), "stop", "--timeout", "1", name],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env) for name in started]
        for proc in stops:
            proc.wait(timeout=60)
    width = max(map(len, variants))
    print(f"named sandboxes: {args.runs} runs per variant after {args.warmup} warm-ups, round-robin")
    print(f"  {tool_version([sbx, '--version'])}; {tool_version([nsenter, '--version'])}")
    print(f"  {'variant':<{width}}  {'median':>8}  {'p90':>8}  {'min':>8}   (ms)")
    medians = {}
    for name, t in zip(variants, times, strict=True):
        s = sorted(t)
        medians[name] = statistics.median(s)
        print(f"  {name:<{width}}  {medians[name]:8.1f}  {percentile(s, 90):8.1f}  {s[0]:8.1f}")
    exec_ms = medians["sandboxer exec NAME -- true"]
    ps_ms = medians[f"sandboxer ps --json ({SANDBOXES} running)"]
    print(f"\n  exec / nsenter: {exec_ms / medians['nsenter by hand']:.2f}x")
    print(f"  exec median < {TARGET_EXEC_MS:.0f} ms: {exec_ms:.1f} ms {verdict(exec_ms < TARGET_EXEC_MS)}")
    print(f"  ps --json with {SANDBOXES} < {TARGET_PS_MS:.0f} ms: {ps_ms:.1f} ms {verdict(ps_ms < TARGET_PS_MS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
