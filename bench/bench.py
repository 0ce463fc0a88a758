#!/usr/bin/env python3
"""Start-up cost of a sandbox: sandboxer vs the plain util-linux chain vs bubblewrap.

Every variant runs `true` with the same isolation (user, mount, pid, uts, ipc namespaces, a
tmpfs on $HOME, a hostname, your own uid/gid inside; the offline variants add a network
namespace). All variants run in ONE process, interleaved round-robin (the starting variant
rotates each round), after warm-ups, so that CPU frequency, page cache and background noise hit
them alike. The first run of each variant is always a warm-up: sandboxer's first run may fill
its plan cache.

It also measures the supervisor's peak RSS (VmHWM of the process this script spawns) while
`sandboxer run profiles/clean-home.toml -- sleep 0.5` runs.

Run it as an unprivileged user: the product is for people without root.

    ./tasks bench [--runs N] [--json FILE]
    python3 bench/bench.py --sandboxer PATH --profiles DIR --runs 10

Stdlib only. Exits 0 when everything ran (the targets are informational), 1 when a variant
failed to run.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET_MEDIAN_MS = 40.0  # clean-home `-- true` median
TARGET_RSS_MIB = 15.0  # supervisor peak RSS
TARGET_COST_MS = 1.0  # what new protections may add to the median, against --baseline
RSS_PROFILE = "clean-home"
RSS_PAYLOAD = ["sleep", "0.5"]
POLL_INTERVAL = 0.002  # seconds between reads of /proc/<pid>/status
RUN_TIMEOUT = 30.0  # seconds for one timed run


class BenchError(Exception):
    """Something failed to run: the numbers would be meaningless."""


@dataclass
class Variant:
    name: str  # e.g. "sandboxer clean-home"
    kind: str  # "sandboxer", "chain" or "bwrap"
    profile: str  # "clean-home" or "offline"
    argv: list[str]
    times_ms: list[float] = field(default_factory=list)

    def stats(self) -> dict[str, float]:
        return summary(self.times_ms)


def summary(times_ms: list[float]) -> dict[str, float]:
    t = sorted(times_ms)
    return {"median": statistics.median(t), "p90": percentile(t, 90), "min": t[0], "max": t[-1],
            "mean": statistics.fmean(t)}


def percentile(sorted_values: list[float], pct: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = (len(sorted_values) - 1) * pct / 100
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def find_sandboxer(option: str | None) -> str:
    """--sandboxer PATH, else `sandboxer` next to sys.executable (a venv's bin/), else on PATH."""
    if option:
        if not os.access(option, os.X_OK):
            raise BenchError(f"--sandboxer {option}: not an executable file")
        return option
    beside = Path(sys.executable).parent / "sandboxer"  # not resolved: a venv's python is a link
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("sandboxer")
    if found:
        return found
    raise BenchError("cannot find sandboxer: pass --sandboxer PATH, or install it next to "
                     f"{sys.executable}, or put it on PATH")


def private_dirs(uid: int) -> list[str]:
    """What every sandbox replaces with a private tmpfs (sandboxer does it by default)."""
    return [d for d in ("/tmp", "/var/tmp", "/dev/shm", f"/run/user/{uid}") if os.path.isdir(d)]


def chain_argv(unshare: str, uid: int, gid: int, net: bool) -> list[str]:
    """The naive util-linux chain: sh, mount, hostname and unshare as separate execs."""
    outer = [unshare, "--user", "--map-root-user", "--mount", "--propagation", "private", "--pid",
             "--fork", "--kill-child", "--mount-proc", "--uts", "--ipc"]
    if net:
        outer.append("--net")
    tmpfs = "".join(f"mount -t tmpfs tmpfs {d} && " for d in private_dirs(uid))
    script = ("mount -o remount,bind,ro / && " + tmpfs
              + 'mount -t tmpfs -o size=256M,mode=0700 tmpfs "$HOME" && hostname sandbox && '
              f"exec unshare --user --map-user={uid} --map-group={gid} -- true")
    return [*outer, "--", "/bin/sh", "-c", script]


def first_range(user: str, uid: int, path: str) -> tuple[int, int] | None:
    """The user's first subordinate range in /etc/subuid or /etc/subgid: (first id, count)."""
    try:
        with open(path) as f:
            for line in f:
                parts = line.strip().split(":")
                if len(parts) == 3 and parts[0] in (user, str(uid)) and parts[1].isdigit() and parts[2].isdigit():
                    return int(parts[1]), int(parts[2])
    except OSError:
        pass
    return None


def ranged_chain_argv(unshare: str, uid: int, uids: tuple[int, int], gids: tuple[int, int]) -> list[str]:
    """The util-linux chain with a whole range in its namespace (unshare runs newuidmap and
    newgidmap), the same mounts, and the command run there: no nested namespace, which util-linux
    cannot map with a range from inside one, so this is a lower bound."""
    outer = [unshare, "--user", "--map-root-user", f"--map-users={uids[0]},1,{uids[1]}",
             f"--map-groups={gids[0]},1,{gids[1]}", "--mount", "--propagation", "private", "--pid",
             "--fork", "--kill-child", "--mount-proc", "--uts", "--ipc"]
    tmpfs = "".join(f"mount -t tmpfs tmpfs {d} && " for d in private_dirs(uid))
    script = ("mount -o remount,bind,ro / && " + tmpfs
              + 'mount -t tmpfs -o size=256M,mode=0700 tmpfs "$HOME" && hostname sandbox && exec true')
    return [*outer, "--", "/bin/sh", "-c", script]


def bwrap_argv(bwrap: str, home: str, uid: int, gid: int, net: bool) -> list[str]:
    argv = [bwrap, "--unshare-all"]
    if not net:
        argv.append("--share-net")
    argv += ["--die-with-parent", "--new-session", "--ro-bind", "/", "/", "--dev-bind", "/dev", "/dev"]
    for d in private_dirs(uid):
        argv += ["--tmpfs", d]
    return [*argv, "--tmpfs", home, "--proc", "/proc", "--hostname", "sandbox", "--uid", str(uid),
            "--gid", str(gid), "--", "true"]


def run_once(argv: list[str], env: dict[str, str]) -> float:
    """Wall time of one run in ms; raises BenchError (with its stderr) if it fails."""
    start = time.perf_counter_ns()
    try:
        proc = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, check=False, timeout=RUN_TIMEOUT,
                              start_new_session=True)
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"timed out after {RUN_TIMEOUT:.0f} s: {' '.join(argv)}") from e
    elapsed = (time.perf_counter_ns() - start) / 1e6
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()
        raise BenchError(f"exit status {proc.returncode} from: {' '.join(argv)}\n{err}")
    return elapsed


def read_status(pid: int) -> dict[str, int]:
    """VmHWM and VmRSS (kB) of a live process; {} once it is gone or a zombie."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmHWM:", "VmRSS:")):
                    key, value = line.split(":", 1)
                    out[key] = int(value.split()[0])
    except (OSError, ValueError):
        return {}
    return out


def measure_rss(sandboxer: str, profile: Path, env: dict[str, str]) -> dict[str, float]:
    """Peak VmHWM / VmRSS (MiB) of the supervisor (the process we spawn) over a `sleep 0.5`."""
    argv = [sandboxer, "run", str(profile), "--", *RSS_PAYLOAD]
    proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    hwm = rss = samples = 0
    while proc.poll() is None:
        status = read_status(proc.pid)
        if status:
            samples += 1
            hwm = max(hwm, status.get("VmHWM", 0))
            rss = max(rss, status.get("VmRSS", 0))
        time.sleep(POLL_INTERVAL)
    err = proc.stderr.read().decode(errors="replace").strip() if proc.stderr else ""
    if proc.returncode != 0:
        raise BenchError(f"exit status {proc.returncode} from: {' '.join(argv)}\n{err}")
    if not samples:
        raise BenchError(f"could not read /proc/{proc.pid}/status while the supervisor ran")
    return {"vmhwm_mib": hwm / 1024, "vmrss_mib": rss / 1024, "samples": samples}


def tool_version(argv: list[str]) -> str:
    """The first line a tool prints of its version (rootlesskit's "Failed to send" noise skipped)."""
    try:
        out = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    for line in (out.stdout + "\n" + out.stderr).splitlines():
        if line.strip() and not line.startswith("Failed to send"):
            return line.strip()
    return "?"


def bench_env() -> tuple[dict[str, str], list[str]]:
    """The environment the variants run in, and a note (also printed) when run as root."""
    env = dict(os.environ)
    if not env.get("HOME"):
        import pwd

        env["HOME"] = pwd.getpwuid(os.getuid()).pw_dir
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    notes: list[str] = []
    if os.geteuid() == 0:
        notes.append("running as root: the product is for unprivileged users, and root's numbers "
                     "can differ; rerun as an ordinary user")
        print(f"warning: {notes[-1]}", file=sys.stderr)
    return env, notes


def base_meta(sandboxer: str) -> dict[str, object]:
    """What every report says about the machine and the sandboxer measured."""
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "kernel": f"Linux {platform.release()}",
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "uid": os.getuid(),
        "sandboxer": sandboxer,
        "sandboxer_version": tool_version([sandboxer, "--version"]),
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--runs", type=int, default=30, help="timed runs per variant (default 30)")
    p.add_argument("--warmup", type=int, default=3,
                   help="untimed runs per variant first (default 3, at least 1)")
    p.add_argument("--rss-runs", type=int, default=3,
                   help="supervisor RSS measurements; the highest is reported (default 3)")
    p.add_argument("--sandboxer", metavar="PATH",
                   help="sandboxer to time (default: next to this Python, else on PATH)")
    p.add_argument("--baseline", metavar="PATH",
                   help="another sandboxer (an earlier version) to time alongside: the report gives "
                        "the difference of the medians, what the changes since cost at start-up")
    p.add_argument("--profiles", metavar="DIR", type=Path, default=REPO / "profiles",
                   help=f"directory with clean-home.toml and offline.toml (default {REPO / 'profiles'})")
    p.add_argument("--json", metavar="FILE", type=Path, help="also write the results as JSON")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error("--runs must be at least 1")
    if args.rss_runs < 1:
        p.error("--rss-runs must be at least 1")
    args.warmup = max(1, args.warmup)  # the first, cache-filling run never counts
    return args


def build_variants(sandboxer: str, profiles: Path, env: dict[str, str],
                   baseline: str | None = None) -> tuple[list[Variant], list[str]]:
    uid, gid, home = os.getuid(), os.getgid(), env["HOME"]
    notes: list[str] = []
    unshare = shutil.which("unshare", path=env.get("PATH")) or "/usr/bin/unshare"
    bwrap = shutil.which("bwrap", path=env.get("PATH"))
    if bwrap is None and os.access("/usr/bin/bwrap", os.X_OK):
        bwrap = "/usr/bin/bwrap"
    if bwrap is None:
        notes.append("bwrap not found: the bwrap columns are skipped (apt-get install bubblewrap)")
    variants: list[Variant] = []
    for profile, net in (("clean-home", False), ("offline", True)):
        path = profiles / f"{profile}.toml"
        if not path.is_file():
            raise BenchError(f"no profile {path} (see --profiles)")
        variants.append(Variant(f"sandboxer {profile}", "sandboxer", profile,
                                [sandboxer, "run", str(path), "--", "true"]))
        if profile == "clean-home":
            # the same shipped profile by name: the search path costs what it costs
            variants.append(Variant(f"sandboxer {profile} (by name)", "by-name", profile,
                                    [sandboxer, "run", profile, "--", "true"]))
        if baseline:
            variants.append(Variant(f"baseline {profile}", "baseline", profile,
                                    [baseline, "run", str(path), "--", "true"]))
        variants.append(Variant(f"util-linux chain {profile}", "chain", profile,
                                chain_argv(unshare, uid, gid, net)))
        if bwrap:
            variants.append(Variant(f"bwrap {profile}", "bwrap", profile,
                                    bwrap_argv(bwrap, home, uid, gid, net)))
    # whole id ranges (--map auto): beside the chain with --map-users and rootlesskit, which map
    # the same ranges through the same setuid helpers
    import pwd

    user = pwd.getpwuid(uid).pw_name
    uids, gids = first_range(user, uid, "/etc/subuid"), first_range(user, uid, "/etc/subgid")
    if uids and gids:
        path = profiles / "clean-home.toml"
        variants.append(Variant("sandboxer clean-home --map auto", "map-auto", "clean-home",
                                [sandboxer, "run", str(path), "--map", "auto", "--", "true"]))
        variants.append(Variant("util-linux chain --map-users", "chain-auto", "clean-home",
                                ranged_chain_argv(unshare, uid, uids, gids)))
        rootlesskit = shutil.which("rootlesskit", path=env.get("PATH"))
        if rootlesskit:
            variants.append(Variant("rootlesskit", "rootlesskit", "clean-home",
                                    [rootlesskit, "--pidns", "true"]))
        else:
            notes.append("rootlesskit not found: its column is skipped (apt-get install rootlesskit)")
    else:
        notes.append(f"{user} has no subordinate ids: the --map auto variants are skipped")
    return variants, notes


def round_robin(argvs: list[list[str]], runs: int, warmup: int, env: dict[str, str]) -> list[list[float]]:
    """Times (ms) of each argv: warm-ups first, then runs rounds with the starting one rotating
    (nobody always runs right after the same other one), the garbage collector off."""
    for _ in range(warmup):
        for argv in argvs:
            run_once(argv, env)
    times: list[list[float]] = [[] for _ in argvs]
    order = list(range(len(argvs)))
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        for r in range(runs):
            k = r % len(order)
            for i in order[k:] + order[:k]:
                times[i].append(run_once(argvs[i], env))
    finally:
        if gc_was_enabled:
            gc.enable()
    return times


def run_bench(variants: list[Variant], runs: int, warmup: int, env: dict[str, str]) -> None:
    for v, times in zip(variants, round_robin([v.argv for v in variants], runs, warmup, env),
                        strict=True):
        v.times_ms = times


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def report(variants: list[Variant], rss: dict[str, float], meta: dict[str, object],
           notes: list[str]) -> dict[str, object]:
    stats = {v.name: v.stats() for v in variants}
    by_kind = {(v.kind, v.profile): v for v in variants}
    lines = [f"sandboxer start-up benchmark: {meta['runs']} runs per variant after {meta['warmup']} "
             f"warm-up(s), round-robin",
             f"  {meta['date']}  {meta['kernel']}  {meta['cpus']} CPUs  uid {meta['uid']}  "
             f"Python {meta['python']}",
             f"  sandboxer: {meta['sandboxer']}",
             f"  {meta['unshare_version']};  {meta['bwrap_version']}", ""]
    width = max(len(v.name) for v in variants)
    lines.append(f"  {'variant':<{width}}  {'median':>8}  {'p90':>8}  {'min':>8}   (ms, `-- true`)")
    for v in variants:
        s = stats[v.name]
        lines.append(f"  {v.name:<{width}}  {s['median']:8.1f}  {s['p90']:8.1f}  {s['min']:8.1f}")
    ratios: dict[str, dict[str, float]] = {}
    lines.append("")
    lines.append("  sandboxer median / other median:")
    for profile in ("clean-home", "offline"):
        mine = by_kind[("sandboxer", profile)]
        ratios[profile] = {}
        parts = []
        for kind, label in (("chain", "util-linux chain"), ("bwrap", "bwrap")):
            other = by_kind.get((kind, profile))
            if other is None:
                parts.append(f"{label} n/a")
                continue
            ratio = stats[mine.name]["median"] / stats[other.name]["median"]
            ratios[profile][kind] = ratio
            parts.append(f"vs {label} {ratio:.2f}x")
        lines.append(f"    {profile:<10}  " + ",  ".join(parts))
    costs: dict[str, float] = {}
    if ("baseline", "clean-home") in by_kind:
        lines += ["", f"  sandboxer median - baseline median ({meta.get('baseline_version', '?')}):"]
        for profile in ("clean-home", "offline"):
            cost = (stats[by_kind[("sandboxer", profile)].name]["median"]
                    - stats[by_kind[("baseline", profile)].name]["median"])
            costs[profile] = cost
            lines.append(f"    {profile:<10}  {cost:+.2f} ms   (target: within {TARGET_COST_MS:.0f} ms) "
                         f"{verdict(cost <= TARGET_COST_MS)}")
    if ("by-name", "clean-home") in by_kind:
        by_name = (stats[by_kind[("by-name", "clean-home")].name]["median"]
                   - stats[by_kind[("sandboxer", "clean-home")].name]["median"])
        ratios["by_name_minus_by_path_ms"] = {"clean-home": by_name}
        lines += ["", f"  clean-home by name - by path: {by_name:+.2f} ms   (target: within 1 ms) "
                      f"{verdict(by_name <= 1.0)}"]
    if ("map-auto", "clean-home") in by_kind:
        auto = stats[by_kind[("map-auto", "clean-home")].name]["median"]
        self_ = stats[by_kind[("sandboxer", "clean-home")].name]["median"]
        parts = [f"{auto - self_:+.2f} ms over map self"]
        ratios["map_auto"] = {"minus_self_ms": auto - self_}
        for kind, label in (("chain-auto", "util-linux chain --map-users"), ("rootlesskit", "rootlesskit")):
            if (kind, "clean-home") in by_kind:
                ratio = auto / stats[by_kind[(kind, "clean-home")].name]["median"]
                ratios["map_auto"][kind] = ratio
                parts.append(f"vs {label} {ratio:.2f}x")
        lines += ["", "  whole id ranges, clean-home --map auto (newuidmap and newgidmap run each time): "
                  + ",  ".join(parts)]
    median = stats[by_kind[("sandboxer", "clean-home")].name]["median"]
    targets = {
        "clean_home_median_ms": {"value": median, "target": TARGET_MEDIAN_MS,
                                 "pass": median < TARGET_MEDIAN_MS},
        "supervisor_rss_mib": {"value": rss["vmhwm_mib"], "target": TARGET_RSS_MIB,
                               "pass": rss["vmhwm_mib"] < TARGET_RSS_MIB},
    }
    lines += ["",
              f"  supervisor RSS during `sandboxer run profiles/{RSS_PROFILE}.toml -- "
              f"{' '.join(RSS_PAYLOAD)}` (highest of {meta['rss_runs']}, "
              f"{int(rss['samples'])} samples): VmHWM {rss['vmhwm_mib']:.1f} MiB, "
              f"VmRSS {rss['vmrss_mib']:.1f} MiB",
              "",
              "  issue targets (informational):",
              f"    clean-home `-- true` median < {TARGET_MEDIAN_MS:.0f} ms: {median:6.1f} ms   "
              f"{verdict(median < TARGET_MEDIAN_MS)}",
              f"    supervisor peak RSS < {TARGET_RSS_MIB:.0f} MiB:       {rss['vmhwm_mib']:6.1f} MiB  "
              f"{verdict(rss['vmhwm_mib'] < TARGET_RSS_MIB)}"]
    for note in notes:
        lines.append(f"  note: {note}")
    print("\n".join(lines))
    return {"meta": meta,
            "variants": [{"name": v.name, "kind": v.kind, "profile": v.profile, "argv": v.argv,
                          "stats_ms": stats[v.name], "times_ms": v.times_ms} for v in variants],
            "ratios": ratios, "baseline_cost_ms": costs, "supervisor_rss": rss, "targets": targets}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env, notes = bench_env()
    try:
        sandboxer = find_sandboxer(args.sandboxer)
        baseline = find_sandboxer(args.baseline) if args.baseline else None
        variants, more = build_variants(sandboxer, args.profiles.resolve(), env, baseline)
        notes += more
        for note in more:
            print(f"warning: {note}", file=sys.stderr)
        run_bench(variants, args.runs, args.warmup, env)
        rss_profile = args.profiles.resolve() / f"{RSS_PROFILE}.toml"
        samples = [measure_rss(sandboxer, rss_profile, env) for _ in range(args.rss_runs)]
    except BenchError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return 1
    rss = max(samples, key=lambda s: s["vmhwm_mib"])
    unshare = next(v.argv[0] for v in variants if v.kind == "chain")
    bwrap = next((v.argv[0] for v in variants if v.kind == "bwrap"), None)
    meta: dict[str, object] = {
        **base_meta(sandboxer),
        "unshare_version": tool_version([unshare, "--version"]),
        "bwrap_version": tool_version([bwrap, "--version"]) if bwrap else "bwrap: missing",
        "baseline": baseline or "",
        "baseline_version": tool_version([baseline, "--version"]) if baseline else "",
        "runs": args.runs,
        "warmup": args.warmup,
        "rss_runs": args.rss_runs,
        "notes": notes,
    }
    result = report(variants, rss, meta, notes)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
