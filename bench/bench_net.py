#!/usr/bin/env python3
"""Network cost of a sandbox: sandboxer (slirp4netns, pasta) vs rootlesskit vs pasta and
slirp4netns by hand.

Two measurements, side by side in one run, loopback only (127.0.0.1; no other address, no DNS):

1. Time to network ready: each variant creates a network namespace with user-mode networking,
   forwards a free host port 127.0.0.1:PORT (one per variant, fixed for the run) to port 80
   inside, and runs `true`. Interleaved
   round-robin after warm-ups, like bench.py; median, p90, and the sandboxer / other ratios.
   The profiles/web-dev.toml run (fixed port 8080) is added when that port is free.
2. Port-forward throughput: `iperf3 -s` inside, `iperf3 -c 127.0.0.1 -p PORT -t 3 -J` on the
   host; the receiver's bits_per_second. Through sandboxer with either backend, through
   slirp4netns driven by hand (unshare + slirp4netns --api-socket + add_hostfwd), through
   rootlesskit's slirp4netns and builtin port drivers, and through pasta by hand.

Run it as an unprivileged user:

    python3 bench/bench_net.py --sandboxer PATH --profiles DIR --runs 10

A missing tool skips its variants (the reason is printed). Every wait is bounded and every
process started is killed on every path. Stdlib only. Exits 0 when the sandboxer variants ran
(targets are informational), 1 when one failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench import (  # noqa: E402
    BenchError,
    base_meta,
    bench_env,
    find_sandboxer,
    round_robin,
    summary,
    tool_version,
    verdict,
)

REPO = Path(__file__).resolve().parent.parent
TARGET_READY_MS = 50.0  # web-dev `-- true` median
TARGET_TPUT_RATIO = 1.0  # sandboxer / plain slirp4netns (informational: ~1.0 means no relay)
TARGET_PASTA_TPUT = 1.8  # sandboxer --net pasta / plain slirp4netns forward throughput
GUEST_HTTP = 80
GUEST_IPERF = 5201
WEB_DEV_PORT = 8080
READY_TIMEOUT = 15.0  # seconds for a server to become reachable through its forward
IPERF_SECONDS = 3
SLIRP_MTU = "--mtu=65520"



@dataclass
class Variant:
    name: str
    kind: str  # "sandboxer", "sandboxer-profile", "rootlesskit", "pasta"
    argv_for: Callable[[int], list[str]]  # host port -> argv
    times_ms: list[float] = field(default_factory=list)
    argv_example: list[str] = field(default_factory=list)  # the argv every run uses

    def stats(self) -> dict[str, float]:
        return summary(self.times_ms)


@dataclass
class TputVariant:
    name: str
    kind: str  # "sandboxer", "slirp4netns", "rootlesskit-slirp4netns", "rootlesskit-builtin", "pasta"
    gbps: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def find_tool(name: str, env: dict[str, str]) -> str | None:
    found = shutil.which(name, path=env.get("PATH"))
    if found is None:
        for d in ("/usr/bin", "/bin", "/usr/sbin", "/sbin"):
            if os.access(f"{d}/{name}", os.X_OK):
                return f"{d}/{name}"
    return found


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def stop(proc: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM the process group (each Popen here has its own session), then SIGKILL; reap."""
    if proc is None or proc.returncode is not None:
        return
    for sig, wait in ((signal.SIGTERM, 3.0), (signal.SIGKILL, 3.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def spawn(argv: list[str], env: dict[str, str], **kw: object) -> subprocess.Popen[bytes]:
    return subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True, **kw)  # type: ignore[call-overload]


def stderr_of(proc: subprocess.Popen[bytes]) -> str:
    if proc.stderr is None or proc.returncode is None:
        return ""
    try:
        return proc.stderr.read().decode(errors="replace").strip()[-2000:]
    except (OSError, ValueError):
        return ""


# ---------------------------------------------------------------- 1. time to network ready


def sandboxer_argv(sandboxer: str, port: int | None, guest: int, payload: list[str],
                   net: str = "slirp4netns") -> list[str]:
    forward = ["--forward", f"127.0.0.1:{port}:{guest}"] if port is not None else []
    return [sandboxer, "run", "--net", net, "--home", "tmpfs", *forward, "--", *payload]


def rootlesskit_argv(rootlesskit: str, port: int, guest: int, driver: str,
                     payload: list[str]) -> list[str]:
    return [rootlesskit, "--net=slirp4netns", SLIRP_MTU, "--disable-host-loopback",
            "--copy-up=/etc", f"--port-driver={driver}", "-p", f"127.0.0.1:{port}:{guest}/tcp",
            *payload]


def pasta_argv(pasta: str, port: int | None, guest: int, payload: list[str]) -> list[str]:
    # -f: stay in the foreground; -t ADDR/PORT:GUEST: only this forward, or none (no 'auto'
    # scanning); -u/-T/-U none: no other forwards; no DNS is configured by default.
    tcp = f"127.0.0.1/{port}:{guest}" if port is not None else "none"
    return [pasta, "--config-net", "-q", "-f", "-t", tcp, "-u", "none", "-T", "none", "-U", "none",
            "--", *payload]


def build_ready(sandboxer: str, profiles: Path, tools: dict[str, str | None],
                notes: list[str]) -> list[Variant]:
    true = ["true"]
    variants = [Variant("sandboxer --net slirp4netns --forward", "sandboxer",
                        lambda p: sandboxer_argv(sandboxer, p, GUEST_HTTP, true))]
    web_dev = profiles / "web-dev.toml"
    if not web_dev.is_file():
        notes.append(f"no {web_dev}: the web-dev.toml variant is skipped (see --profiles)")
    elif not port_is_free(WEB_DEV_PORT):
        notes.append(f"127.0.0.1:{WEB_DEV_PORT} is in use: the web-dev.toml variant is skipped")
    else:
        variants.append(Variant("sandboxer web-dev.toml", "sandboxer-profile",
                                lambda _p: [sandboxer, "run", str(web_dev), "--", "true"]))
    rk = tools["rootlesskit"]
    if rk:
        variants.append(Variant("rootlesskit slirp4netns", "rootlesskit",
                                lambda p: rootlesskit_argv(rk, p, GUEST_HTTP, "slirp4netns", true)))
    pasta = tools["pasta"]
    if pasta:
        variants.append(Variant("sandboxer --net pasta --forward", "sandboxer-pasta",
                                lambda p: sandboxer_argv(sandboxer, p, GUEST_HTTP, true, "pasta")))
        variants.append(Variant("pasta", "pasta", lambda p: pasta_argv(pasta, p, GUEST_HTTP, true)))
        # the issue's own pair: no forward on either side
        variants.append(Variant("sandboxer --net pasta", "sandboxer-pasta-bare",
                                lambda _p: sandboxer_argv(sandboxer, None, GUEST_HTTP, true, "pasta")))
        variants.append(Variant("pasta (no forward)", "pasta-bare",
                                lambda _p: pasta_argv(pasta, None, GUEST_HTTP, true)))
    for v in variants:
        # One port per variant for the whole run, chosen now (free again after each run): a new
        # port each run would change sandboxer's command line and so miss its plan cache.
        v.argv_example = v.argv_for(free_port())
    return variants


def run_ready(variants: list[Variant], runs: int, warmup: int, env: dict[str, str]) -> None:
    for v, times in zip(variants, round_robin([v.argv_example for v in variants], runs, warmup, env),
                        strict=True):
        v.times_ms = times


# ---------------------------------------------------------------- 2. port-forward throughput


def wait_server(port: int, procs: list[subprocess.Popen[bytes]], timeout: float) -> None:
    """Until an iperf3 server answers through the forward on 127.0.0.1:port.

    A forwarder accepts on the host before anything listens inside, then closes the connection
    when the inside refuses; so "ready" means: the connection stays open (iperf3 waits for the
    client's cookie) for 0.3 s. The server is run without -1, so this probe does not end it.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for p in procs:
            if p.poll() is not None:
                raise BenchError(f"exited with status {p.returncode} before the server was "
                                 f"ready: {' '.join(map(str, p.args))}\n{stderr_of(p)}")  # type: ignore[arg-type]
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
                s.settimeout(0.3)
                try:
                    if s.recv(1) == b"":
                        raise ConnectionResetError
                except TimeoutError:
                    return
        except OSError:
            pass
        time.sleep(0.02)
    raise BenchError(f"nothing answered on 127.0.0.1:{port} within {timeout:.0f} s")


def iperf_client(iperf3: str, port: int, env: dict[str, str]) -> float:
    """iperf_client_once, tried a second time after 0.5 s: the server may still be tearing down
    the readiness probe's connection and reset the first client's control connection."""
    try:
        return iperf_client_once(iperf3, port, env)
    except BenchError:
        time.sleep(0.5)
        return iperf_client_once(iperf3, port, env)


def iperf_client_once(iperf3: str, port: int, env: dict[str, str]) -> float:
    """Receiver-side Gbit/s of one `iperf3 -c 127.0.0.1 -p PORT -t N -J`."""
    argv = [iperf3, "-c", "127.0.0.1", "-p", str(port), "-t", str(IPERF_SECONDS), "-J"]
    try:
        out = subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                             check=False, timeout=IPERF_SECONDS + 20)
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"timed out: {' '.join(argv)}") from e
    try:
        data = json.loads(out.stdout)
    except json.JSONDecodeError as e:
        raise BenchError(f"iperf3 -c: no JSON (status {out.returncode}): "
                         f"{out.stderr.decode(errors='replace').strip()}") from e
    if "error" in data:
        raise BenchError(f"iperf3 -c: {data['error']}")
    try:
        bps = float(data["end"]["sum_received"]["bits_per_second"])
    except (KeyError, TypeError, ValueError) as e:
        raise BenchError("iperf3 -c: no end.sum_received.bits_per_second in its JSON") from e
    return bps / 1e9


@contextlib.contextmanager
def plain_slirp(unshare: str, slirp: str, port: int, iperf3: str,
                env: dict[str, str]) -> Iterator[list[subprocess.Popen[bytes]]]:
    """iperf3 -s in `unshare --user --map-root-user --net`, slirp4netns with the same flags
    sandboxer passes, and add_hostfwd over its API socket."""
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="bench-net-") as tmp:
        pidfile = Path(tmp) / "pid"
        api = Path(tmp) / "slirp.sock"
        ready_r, ready_w = os.pipe()
        try:
            script = f'echo $$ > "$1"; exec {iperf3} -s -p {GUEST_IPERF}'
            ns = spawn([unshare, "--user", "--map-root-user", "--net", "--", "/bin/sh", "-c",
                        script, "sh", str(pidfile)], env)
            procs.append(ns)
            deadline = time.monotonic() + READY_TIMEOUT
            while not (pidfile.is_file() and pidfile.read_text().strip()):
                if ns.poll() is not None or time.monotonic() > deadline:
                    raise BenchError(f"unshare did not start: {stderr_of(ns)}")
                time.sleep(0.005)
            pid = pidfile.read_text().strip()
            sl = spawn([slirp, "--configure", SLIRP_MTU, "--disable-host-loopback",
                        "--enable-sandbox", "--enable-seccomp", f"--ready-fd={ready_w}",
                        f"--api-socket={api}", pid, "tap0"], env, pass_fds=(ready_w,))
            procs.append(sl)
            os.close(ready_w)
            ready_w = -1
            os.set_blocking(ready_r, False)
            while True:
                try:
                    if os.read(ready_r, 1):
                        break
                except BlockingIOError:
                    pass
                if sl.poll() is not None or time.monotonic() > deadline:
                    raise BenchError(f"slirp4netns did not become ready: {stderr_of(sl)}")
                time.sleep(0.005)
            request = {"execute": "add_hostfwd",
                       "arguments": {"proto": "tcp", "host_addr": "127.0.0.1", "host_port": port,
                                     "guest_port": GUEST_IPERF}}
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(5)
                s.connect(str(api))
                s.sendall(json.dumps(request).encode())
                s.shutdown(socket.SHUT_WR)
                reply = s.recv(4096).decode(errors="replace")
            if "error" in reply:
                raise BenchError(f"slirp4netns add_hostfwd: {reply.strip()}")
            yield procs
        finally:
            for fd in (ready_r, ready_w):
                if fd >= 0:
                    os.close(fd)
            for p in reversed(procs):
                stop(p)


def tput_once(kind: str, tools: dict[str, str | None], sandboxer: str,
              env: dict[str, str]) -> float:
    iperf3 = tools["iperf3"]
    assert iperf3
    port = free_port()
    server = [iperf3, "-s", "-p", str(GUEST_IPERF)]
    if kind == "slirp4netns":
        unshare, slirp = tools["unshare"], tools["slirp4netns"]
        assert unshare and slirp
        with plain_slirp(unshare, slirp, port, iperf3, env) as procs:
            wait_server(port, procs, READY_TIMEOUT)
            return iperf_client(iperf3, port, env)
    if kind == "sandboxer":
        argv = sandboxer_argv(sandboxer, port, GUEST_IPERF, server)
    elif kind == "sandboxer-pasta":
        argv = sandboxer_argv(sandboxer, port, GUEST_IPERF, server, "pasta")
    elif kind.startswith("rootlesskit-"):
        rk = tools["rootlesskit"]
        assert rk
        argv = rootlesskit_argv(rk, port, GUEST_IPERF, kind.removeprefix("rootlesskit-"), server)
    elif kind == "pasta":
        pasta = tools["pasta"]
        assert pasta
        argv = pasta_argv(pasta, port, GUEST_IPERF, server)
    else:
        raise ValueError(kind)
    proc = None
    try:
        proc = spawn(argv, env)
        wait_server(port, [proc], READY_TIMEOUT)
        return iperf_client(iperf3, port, env)
    finally:
        stop(proc)


def build_tput(tools: dict[str, str | None], notes: list[str]) -> list[TputVariant]:
    if not tools["iperf3"]:
        notes.append("iperf3 not found: the throughput measurement is skipped (apt-get install iperf3)")
        return []
    out = [TputVariant("sandboxer --forward", "sandboxer")]
    if tools["unshare"] and tools["slirp4netns"]:
        out.append(TputVariant("slirp4netns by hand (add_hostfwd)", "slirp4netns"))
    if tools["rootlesskit"]:
        out.append(TputVariant("rootlesskit --port-driver=slirp4netns", "rootlesskit-slirp4netns"))
        out.append(TputVariant("rootlesskit --port-driver=builtin", "rootlesskit-builtin"))
    if tools["pasta"]:
        out.append(TputVariant("sandboxer --net pasta --forward", "sandboxer-pasta"))
        out.append(TputVariant("pasta -t", "pasta"))
    return out


def run_tput(variants: list[TputVariant], runs: int, tools: dict[str, str | None],
             sandboxer: str, env: dict[str, str]) -> None:
    for r in range(runs):
        k = r % len(variants)
        for v in variants[k:] + variants[:k]:
            try:
                v.gbps.append(tput_once(v.kind, tools, sandboxer, env))
            except BenchError as e:
                if v.kind == "sandboxer":
                    raise
                v.errors.append(str(e))


# ---------------------------------------------------------------- report


def report(ready: list[Variant], tput: list[TputVariant], meta: dict[str, object],
           notes: list[str]) -> dict[str, object]:
    stats = {v.name: v.stats() for v in ready}
    lines = [f"sandboxer network benchmark: {meta['runs']} runs per variant after {meta['warmup']} "
             f"warm-up(s), round-robin; throughput {meta['tput_runs']} x {IPERF_SECONDS} s each",
             f"  {meta['date']}  {meta['kernel']}  {meta['cpus']} CPUs  uid {meta['uid']}  "
             f"Python {meta['python']}",
             f"  sandboxer: {meta['sandboxer']}",
             f"  {meta['slirp4netns_version']};  {meta['rootlesskit_version']};  pasta "
             f"{meta['pasta_version']};  {meta['iperf3_version']}", ""]
    width = max(len(v.name) for v in ready)
    lines.append(f"  {'time to network ready':<{width}}  {'median':>8}  {'p90':>8}  {'min':>8}"
                 "   (ms, `-- true`)")
    for v in ready:
        s = stats[v.name]
        lines.append(f"  {v.name:<{width}}  {s['median']:8.1f}  {s['p90']:8.1f}  {s['min']:8.1f}")
    mine = stats[ready[0].name]["median"]
    ratios: dict[str, float] = {}
    parts = []
    for v in ready[1:]:
        if v.kind in ("rootlesskit", "pasta") and ready[0].kind == "sandboxer":
            ratios[v.kind] = mine / stats[v.name]["median"]
            parts.append(f"vs {v.kind} {ratios[v.kind]:.2f}x")
    lines += ["", "  sandboxer median / other median:  " + (",  ".join(parts) or "n/a")]
    by_ready = {v.kind: v for v in ready}
    for mine_kind, hand_kind, key, what in (
            ("sandboxer-pasta", "pasta", "pasta_ready_vs_by_hand", "with a forward"),
            ("sandboxer-pasta-bare", "pasta-bare", "pasta_bare_vs_by_hand", "no forward")):
        if mine_kind in by_ready and hand_kind in by_ready:
            r = stats[by_ready[mine_kind].name]["median"] / stats[by_ready[hand_kind].name]["median"]
            ratios[key] = r
            lines.append(f"  sandboxer --net pasta / pasta by hand ({what}): {r:.2f}x")
    web = next((v for v in ready if v.kind == "sandboxer-profile"), ready[0])
    web_median = stats[web.name]["median"]
    targets: dict[str, dict[str, object]] = {
        "web_dev_ready_median_ms": {"value": web_median, "target": TARGET_READY_MS,
                                    "variant": web.name, "pass": web_median < TARGET_READY_MS}}
    tput_stats: dict[str, dict[str, float]] = {}
    if tput:
        twidth = max(len(v.name) for v in tput)
        lines += ["", f"  {'port-forward throughput':<{twidth}}  {'median':>8}  {'min':>8}  "
                      f"{'max':>8}   (Gbit/s, receiver)"]
        for v in tput:
            if not v.gbps:
                lines.append(f"  {v.name:<{twidth}}  failed: {v.errors[0].splitlines()[0][:100]}")
                continue
            g = sorted(v.gbps)
            tput_stats[v.name] = {"median": statistics.median(g), "min": g[0], "max": g[-1]}
            lines.append(f"  {v.name:<{twidth}}  {statistics.median(g):8.2f}  {g[0]:8.2f}  "
                         f"{g[-1]:8.2f}" + (f"   ({len(v.errors)} failed)" if v.errors else ""))
        by_kind = {v.kind: v for v in tput}
        base = by_kind.get("slirp4netns")
        if base and base.name in tput_stats and tput[0].name in tput_stats:
            r = tput_stats[tput[0].name]["median"] / tput_stats[base.name]["median"]
            ratios["tput_vs_slirp4netns"] = r
            lines.append(f"\n  sandboxer / slirp4netns by hand throughput: {r:.2f}x "
                         f"(target ~{TARGET_TPUT_RATIO:.1f}: no relay added)")
            targets["tput_ratio_vs_slirp4netns"] = {"value": r, "target": TARGET_TPUT_RATIO,
                                                    "pass": r >= 0.9}
        mine_pasta_t = by_kind.get("sandboxer-pasta")
        if base and mine_pasta_t and base.name in tput_stats and mine_pasta_t.name in tput_stats:
            r = tput_stats[mine_pasta_t.name]["median"] / tput_stats[base.name]["median"]
            ratios["pasta_tput_vs_slirp4netns"] = r
            lines.append(f"  sandboxer --net pasta / slirp4netns by hand throughput: {r:.2f}x "
                         f"(target >= {TARGET_PASTA_TPUT:.1f})")
            targets["pasta_tput_vs_slirp4netns"] = {"value": r, "target": TARGET_PASTA_TPUT,
                                                    "pass": r >= TARGET_PASTA_TPUT}
    lines += ["", "  issue targets (informational):",
              f"    web-dev `-- true` median < {TARGET_READY_MS:.0f} ms ({web.name}): "
              f"{web_median:6.1f} ms   {verdict(web_median < TARGET_READY_MS)}"]
    for key, what in (("pasta_bare_vs_by_hand", "`--net pasta -- true`"),
                      ("pasta_ready_vs_by_hand", "with a forward")):
        if key in ratios:
            r = ratios[key]
            targets[key] = {"value": r, "target": 1.0, "pass": r < 1.0}
            lines.append(f"    sandboxer faster than pasta by hand, {what} (< 1.0x): {r:6.2f}x     "
                         f"{verdict(r < 1.0)}")
    if "pasta_tput_vs_slirp4netns" in targets:
        r = ratios["pasta_tput_vs_slirp4netns"]
        lines.append(f"    throughput sandboxer --net pasta / slirp4netns >= {TARGET_PASTA_TPUT:.1f}:  {r:6.2f}x     "
                     f"{verdict(r >= TARGET_PASTA_TPUT)}")
    if "tput_ratio_vs_slirp4netns" in targets:
        r = ratios["tput_vs_slirp4netns"]
        lines.append(f"    throughput sandboxer / slirp4netns ~1.0 (>= 0.9):        {r:6.2f}x     "
                     f"{verdict(r >= 0.9)}")
    for note in notes:
        lines.append(f"  note: {note}")
    print("\n".join(lines))
    return {"meta": meta,
            "ready": [{"name": v.name, "kind": v.kind, "argv": v.argv_example,
                       "stats_ms": stats[v.name], "times_ms": v.times_ms} for v in ready],
            "throughput": [{"name": v.name, "kind": v.kind, "gbps": v.gbps, "errors": v.errors,
                            "stats_gbps": tput_stats.get(v.name)} for v in tput],
            "ratios": ratios, "targets": targets}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--runs", type=int, default=30,
                   help="timed network-ready runs per variant (default 30)")
    p.add_argument("--warmup", type=int, default=3,
                   help="untimed runs per variant first (default 3, at least 1)")
    p.add_argument("--tput-runs", type=int, default=3,
                   help=f"iperf3 runs ({IPERF_SECONDS} s each) per throughput variant "
                        "(default 3; 0 skips the throughput measurement)")
    p.add_argument("--sandboxer", metavar="PATH",
                   help="sandboxer to time (default: next to this Python, else on PATH)")
    p.add_argument("--profiles", metavar="DIR", type=Path, default=REPO / "profiles",
                   help=f"directory with web-dev.toml (default {REPO / 'profiles'})")
    p.add_argument("--json", metavar="FILE", type=Path, help="also write the results as JSON")
    args = p.parse_args(argv)
    if args.runs < 1:
        p.error("--runs must be at least 1")
    if args.tput_runs < 0:
        p.error("--tput-runs must be at least 0")
    args.warmup = max(1, args.warmup)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env, notes = bench_env()
    tools = {name: find_tool(name, env)
             for name in ("iperf3", "rootlesskit", "pasta", "slirp4netns", "unshare")}
    for name, hint in (("rootlesskit", "rootlesskit"), ("pasta", "passt"),
                       ("slirp4netns", "slirp4netns"), ("unshare", "util-linux")):
        if not tools[name]:
            notes.append(f"{name} not found: its variants are skipped (apt-get install {hint})")
    try:
        sandboxer = find_sandboxer(args.sandboxer)
        ready = build_ready(sandboxer, args.profiles.resolve(), tools, notes)
        tput = build_tput(tools, notes) if args.tput_runs else []
        for note in notes:
            print(f"warning: {note}", file=sys.stderr)
        run_ready(ready, args.runs, args.warmup, env)
        if tput:
            run_tput(tput, args.tput_runs, tools, sandboxer, env)
    except BenchError as e:
        print(f"bench_net: error: {e}", file=sys.stderr)
        return 1
    meta: dict[str, object] = {
        **base_meta(sandboxer),
        "slirp4netns_version": tool_version([tools["slirp4netns"], "--version"])
        if tools["slirp4netns"] else "slirp4netns: missing",
        "rootlesskit_version": tool_version([tools["rootlesskit"], "--version"])
        if tools["rootlesskit"] else "rootlesskit: missing",
        "pasta_version": tool_version(["dpkg-query", "-W", "-f", "${Version}", "passt"])
        if tools["pasta"] else "missing",
        "iperf3_version": tool_version([tools["iperf3"], "--version"])
        if tools["iperf3"] else "iperf3: missing",
        "runs": args.runs,
        "warmup": args.warmup,
        "tput_runs": args.tput_runs,
        "notes": notes,
    }
    result = report(ready, tput, meta, notes)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
