#!/usr/bin/env python3
"""Rootfs benchmark: a pivot_root sandbox vs bwrap with a comparable tree, in one run.

Builds a busybox-static tree in a temporary directory (nothing downloaded), then times, with
runs interleaved round-robin after warm-ups:

  sandboxer   sandboxer run --rootfs TREE --home tmpfs --net none -- /bin/true
  bwrap       bwrap --unshare-all --die-with-parent --new-session --bind TREE / --proc /proc
                    --dev /dev --tmpfs /tmp --tmpfs HOME --hostname sandbox --uid U --gid G -- /bin/true
  naive chain unshare ... -- /bin/sh -c 'mount ...; mount ...; ...; pivot_root; exec unshare ...'
              (one exec per mount: the shape the issue measured at 4.5x bwrap)
  cli start   sandboxer --version (Python start-up of sandboxer's CLI; subtracted to estimate
              "the chain itself")

Run as an unprivileged user: python3 bench/bench_rootfs.py [--sandboxer PATH] [--runs N]
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
from bench import BenchError, find_sandboxer, percentile, round_robin, verdict  # noqa: E402

APPLETS = ("sh", "true", "mount", "umount", "mkdir", "pivot_root", "ls", "cat")
TARGET_RATIO = 2.0
TARGET_MS = 45.0


def build_tree(root: Path) -> None:
    busybox = shutil.which("busybox") or "/bin/busybox"
    for d in ("bin", "etc", "proc", "dev", "tmp", "sys", "old"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(busybox, root / "bin" / "busybox")
    for applet in APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    (root / "etc" / "os-release").write_text('NAME="bench tree"\n')


def copy_with_libs(binary: str, root: Path) -> None:
    import subprocess

    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    paths = [binary] + [w for line in out.splitlines() for w in line.split() if w.startswith("/")]
    for path in paths:
        dest = root / path.lstrip("/")
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.realpath(path), dest)


def naive_chain(tree: Path, home: str, uid: int, gid: int) -> list[str]:
    script = (
        f'cd "$0" && mount --rbind . . && cd . && mount -t proc proc proc && '
        'mount -t tmpfs -o mode=0755 tmpfs dev && mount -t tmpfs tmpfs tmp && '
        f'mkdir -p .{home} && mount -t tmpfs -o size=256M,mode=0700 tmpfs .{home} && '
        'hostname sandbox && /usr/sbin/pivot_root . old && umount -l /old && '
        f'exec /usr/bin/unshare --user --map-user={uid} --map-group={gid} -- /bin/true'
    )
    return ["unshare", "--user", "--map-root-user", "--mount", "--propagation", "private", "--pid",
            "--fork", "--kill-child", "--uts", "--ipc", "--net", "--", "/bin/sh", "-c", script, str(tree)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sandboxer")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args(argv)
    sandboxer = find_sandboxer(args.sandboxer)
    home = os.environ.get("HOME", "/tmp")
    uid, gid = os.getuid(), os.getgid()
    env = {"PATH": "/usr/bin:/bin", "HOME": home, "LANG": "C.UTF-8"}
    with tempfile.TemporaryDirectory(prefix="sbx-bench-rootfs-") as tmp:
        tree = Path(tmp) / "tree"
        build_tree(tree)
        variants: dict[str, list[str]] = {
            "sandboxer": [sandboxer, "run", "--rootfs", str(tree), "--home", "tmpfs", "--net", "none",
                          "--", "/bin/true"],
            "cli start": [sandboxer, "--version"],
        }
        bwrap = shutil.which("bwrap")
        if bwrap:
            variants["bwrap"] = [bwrap, "--unshare-all", "--die-with-parent", "--new-session", "--bind",
                                 str(tree), "/", "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
                                 "--tmpfs", home, "--hostname", "sandbox", "--uid", str(uid), "--gid",
                                 str(gid), "--", "/bin/true"]
        else:
            print("bwrap not installed: no bwrap column")
        # the naive chain needs util-linux's unshare (and its libraries) inside the tree
        copy_with_libs("/usr/bin/unshare", tree)
        variants["naive chain"] = naive_chain(tree, home, uid, gid)
        try:
            measured = round_robin(list(variants.values()), args.runs, args.warmup, env)
        except BenchError as e:
            print(f"bench_rootfs: {e}", file=sys.stderr)
            return 1
        times = dict(zip(variants, measured, strict=True))
    med = {n: statistics.median(t) for n, t in times.items()}
    print(f"rootfs `-- /bin/true`, busybox-static tree, {args.runs} runs each (ms)")
    for name, t in times.items():
        s = sorted(t)
        print(f"  {name:<12} median {med[name]:6.1f}   p90 {percentile(s, 90):6.1f}   min {s[0]:6.1f}")
    chain = med["sandboxer"] - med["cli start"]
    print(f"  sandboxer chain itself (sandboxer - cli start): {chain:.1f} ms")
    if "bwrap" in med:
        ratio = chain / med["bwrap"]
        print(f"  chain / bwrap: {ratio:.2f}x  (target < {TARGET_RATIO}x: {verdict(ratio < TARGET_RATIO)})")
        print(f"  naive chain / bwrap: {med['naive chain'] / med['bwrap']:.2f}x")
        print(f"  whole sandboxer / bwrap: {med['sandboxer'] / med['bwrap']:.2f}x")
    ok = med["sandboxer"] < TARGET_MS
    print(f"  whole run median {med['sandboxer']:.1f} ms (target < {TARGET_MS:.0f} ms: {verdict(ok)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
