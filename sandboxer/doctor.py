"""`sandboxer doctor`: what makes sandboxes fail in the field, checked on this machine.

Each check is one line, ok / warn / fail, and what to do about anything not ok. The exit status
is 1 when something fails (sandboxes cannot run), else 0. `--json` for scripts.

Testing hook: SANDBOXER_DOCTOR_PROC names a directory used instead of /proc for the sysctls read
(a fake tree, to test what the doctor says about settings a test cannot change). It only changes
what the doctor reports.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Callable

from . import host

Result = tuple[str, str, str, str]  # (status, check, detail, fix)
UTIL_LINUX_MIN = (2, 36)  # --map-user/--map-group of the shell rendering; --kill-child, --mount-proc
KERNEL_MIN = (5, 12)  # mount_setattr(2), open_tree(2)
LANDLOCK_SCOPES_ABI = 6


def _proc(path: str) -> str:
    return os.path.join(os.environ.get("SANDBOXER_DOCTOR_PROC", "/proc"), path)


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return ""


def _run(argv: list[str]) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(argv, capture_output=True, text=True, timeout=10, stdin=subprocess.DEVNULL,
                              env={**os.environ, "LC_ALL": "C"})
    except (OSError, subprocess.TimeoutExpired):
        return None


def check_userns() -> list[Result]:
    out: list[Result] = []
    if _read(_proc("sys/user/max_user_namespaces")) == "0":
        out.append(("fail", "user namespaces", "user.max_user_namespaces is 0",
                    "sudo sysctl -w user.max_user_namespaces=15000 (and in /etc/sysctl.d/ to keep it)"))
    if _read(_proc("sys/kernel/unprivileged_userns_clone")) == "0":
        out.append(("fail", "user namespaces", "kernel.unprivileged_userns_clone is 0 (Debian's switch)",
                    "sudo sysctl -w kernel.unprivileged_userns_clone=1"))
    if _read(_proc("sys/kernel/apparmor_restrict_unprivileged_userns")) == "1":
        out.append(("fail", "user namespaces", "AppArmor restricts unprivileged user namespaces "
                    "(kernel.apparmor_restrict_unprivileged_userns = 1, Ubuntu 23.10 and newer)",
                    "sudo sysctl -w kernel.apparmor_restrict_unprivileged_userns=0, or an AppArmor "
                    "profile that allows userns for /usr/bin/unshare"))
    if out:
        return out
    unshare = host.find_tool("unshare", os.environ.get("PATH", ""))
    tried = _run([unshare, "--user", "--map-root-user", "--mount", "true"]) if unshare else None
    if tried is not None and tried.returncode != 0:
        return [("fail", "user namespaces", f"unshare --user fails: {tried.stderr.strip()[:120]}",
                 "see the sysctls above; inside a container, run it with user namespaces allowed")]
    return [("ok", "user namespaces", "an unprivileged user namespace can be made", "")]


def check_kernel() -> list[Result]:
    release = os.uname().release
    m = re.match(r"(\d+)\.(\d+)", release)
    version = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    if version < KERNEL_MIN:
        return [("fail", "kernel", f"Linux {release}: sandboxer needs {KERNEL_MIN[0]}.{KERNEL_MIN[1]} or "
                 "newer (mount_setattr, open_tree)", "upgrade the kernel")]
    abi = _landlock_abi()
    if abi >= LANDLOCK_SCOPES_ABI:
        return [("ok", "kernel", f"Linux {release}, Landlock ABI {abi}", "")]
    what = "no Landlock" if abi < 1 else f"Landlock ABI {abi}"
    return [("warn", "kernel", f"Linux {release}, {what}: sandboxes with the host network or without a "
             "PID namespace fail unless they accept the exposure",
             "Linux 6.12 or newer with Landlock enabled (lsm=...,landlock), or --accept-exposure")]


def _landlock_abi() -> int:
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syscall.restype = ctypes.c_long
        return int(libc.syscall(444, None, ctypes.c_size_t(0), ctypes.c_uint32(1)))
    except (OSError, AttributeError):
        return -1


def check_util_linux() -> list[Result]:
    unshare = host.find_tool("unshare", os.environ.get("PATH", ""))
    if not unshare:
        return [("fail", "util-linux", "unshare not found", "apt install util-linux")]
    said = _run([unshare, "--version"])
    m = re.search(r"(\d+)\.(\d+)", said.stdout if said else "")
    version = (int(m.group(1)), int(m.group(2))) if m else (0, 0)
    if version < UTIL_LINUX_MIN:
        return [("fail", "util-linux", f"{unshare} is {'.'.join(map(str, version))}: sandboxer needs "
                 f"{UTIL_LINUX_MIN[0]}.{UTIL_LINUX_MIN[1]} or newer", "upgrade util-linux")]
    return [("ok", "util-linux", f"{unshare} {version[0]}.{version[1]}", "")]


def check_helpers() -> list[Result]:
    from .netplan import PASTA_OPTIONS, SLIRP_MIN

    out: list[Result] = []
    facts = host.HostFacts.__new__(host.HostFacts)
    facts.tools = {name: host.find_tool(name, os.environ.get("PATH", "")) for name in ("slirp4netns", "pasta")}
    facts.probed = {}
    host.probe(facts, ("slirp4netns", "pasta"))
    slirp = facts.probed.get("slirp4netns")
    if slirp is None:
        out.append(("warn", "slirp4netns", "not found: --net slirp4netns cannot be used", "apt install slirp4netns"))
    else:
        m = re.search(r"version (\d+)\.(\d+)\.(\d+)", slirp.version)
        found = tuple(int(g) for g in m.groups()) if m else (0, 0, 0)
        if found < SLIRP_MIN:
            out.append(("warn", "slirp4netns", f"{slirp.path}: version {slirp.version.strip()[:40]!r} is "
                        "too old (1.0 or newer)", "upgrade slirp4netns"))
        else:
            out.append(("ok", "slirp4netns", f"{slirp.path} {'.'.join(map(str, found))}", ""))
    pasta = facts.probed.get("pasta")
    if pasta is None:
        out.append(("warn", "pasta", "not found: --net pasta cannot be used", "apt install passt"))
    else:
        missing = [o for o in PASTA_OPTIONS if o not in pasta.options]
        if missing:
            out.append(("warn", "pasta", f"{pasta.path} lacks {', '.join(missing)}: too old",
                        "upgrade passt (2023-03-09 or newer)"))
        else:
            out.append(("ok", "pasta", pasta.path, ""))
    return out


def check_tun() -> list[Result]:
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
        os.close(fd)
        return [("ok", "/dev/net/tun", "usable by you (slirp4netns, pasta)", "")]
    except OSError as e:
        return [("warn", "/dev/net/tun", f"cannot be opened: {e.strerror} (slirp4netns and pasta need it)",
                 "sudo chmod 0666 /dev/net/tun (Debian's default), or modprobe tun")]


def check_idmap() -> list[Result]:
    """What --map auto and keep-id need: the setuid helpers, and a sound range of the user's."""
    from .errors import SandboxerError
    from .idmap import privileged, read_ranges

    out: list[Result] = []
    for tool in ("newuidmap", "newgidmap"):
        path = host.find_tool(tool, os.environ.get("PATH", ""))
        if not path:
            out.append(("warn", tool, "not found: whole id ranges (--map auto, keep-id) cannot be mapped",
                        "apt install uidmap"))
            continue
        if not privileged(path):
            out.append(("warn", tool, f"{path} is neither setuid root nor has file capabilities",
                        f"sudo chmod u+s {path}"))
        else:
            out.append(("ok", tool, path, ""))
    import pwd

    try:
        user = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        user = str(os.getuid())
    try:
        ranges = read_ranges(user, os.getuid())
    except SandboxerError as e:
        out.append(("warn", "subordinate ids", f"{e.message}: --map auto and keep-id cannot run", e.hint))
    else:
        out.append(("ok", "subordinate ids", f"{user}: uids {ranges.uids[0].text()}, gids "
                    f"{ranges.gids[0].text()} (/etc/subuid, /etc/subgid)", ""))
    return out


def check_resolv() -> list[Result]:
    target = os.path.realpath("/etc/resolv.conf")
    text = _read("/etc/resolv.conf")
    servers = re.findall(r"^\s*nameserver\s+(\S+)", text, re.M)
    if not servers:
        return [("warn", "/etc/resolv.conf", f"names no nameserver ({target})",
                 "fix the host's DNS; sandboxes with --net host use it as it is")]
    stub = [s for s in servers if s.startswith("127.")]
    if stub:
        return [("ok", "/etc/resolv.conf", f"a stub resolver ({', '.join(stub)}): sandboxes with their own "
                 "network use their helper's forwarder instead, which forwards to it", "")]
    return [("ok", "/etc/resolv.conf", f"nameserver {', '.join(servers)}", "")]


def check_overlay() -> list[Result]:
    import tempfile

    unshare = host.find_tool("unshare", os.environ.get("PATH", ""))
    with tempfile.TemporaryDirectory(prefix="sandboxer-doctor-") as d:
        for sub in ("lower", "upper", "work", "merged"):
            os.mkdir(os.path.join(d, sub))
        script = (f"mount -t overlay -o lowerdir={d}/lower,upperdir={d}/upper,workdir={d}/work,userxattr "
                  f"overlay {d}/merged")
        tried = _run([unshare, "--user", "--map-root-user", "--mount", "sh", "-c", script]) if unshare else None
    if tried is not None and tried.returncode == 0:
        return [("ok", "overlayfs", "mountable in a user namespace (rootfs writes = \"overlay\")", "")]
    said = tried.stderr.strip()[:100] if tried else "unshare missing"
    return [("warn", "overlayfs", f"not mountable in a user namespace ({said}): rootfs writes = "
             "\"overlay\" cannot be used", "Linux 5.11 or newer with overlayfs")]


def check_proc() -> list[Result]:
    masked = []
    for line in _read(_proc("self/mountinfo")).splitlines():
        fields = line.split()
        if len(fields) > 4 and fields[4].startswith("/proc/") and not fields[4].startswith("/proc/sys/fs/binfmt_misc"):
            masked.append(fields[4])
    if masked:
        return [("fail", "/proc", f"has paths mounted over ({', '.join(masked[:4])}): inside a container? "
                 "A fresh /proc for a PID namespace is then refused", "run the container with an unmasked "
                 "/proc (docker: --security-opt systempaths=unconfined), or use --no-pid")]
    return [("ok", "/proc", "not masked", "")]


def check_stage() -> list[Result]:
    if os.access(host.STAGE, os.X_OK):
        return [("ok", "stage", host.STAGE, "")]
    return [("fail", "stage", f"{host.STAGE} is missing or not executable",
             "reinstall sandboxer; building it needs gcc and libc6-dev (apt install gcc libc6-dev)")]


CHECKS: tuple[Callable[[], list[Result]], ...] = (
    check_userns, check_kernel, check_util_linux, check_stage, check_proc, check_helpers, check_tun,
    check_idmap, check_resolv, check_overlay,
)


def doctor(*, as_json: bool = False) -> int:
    results: list[Result] = []
    for check in CHECKS:
        try:
            results += check()
        except Exception as e:  # one broken check must not hide the others
            results.append(("warn", check.__name__.removeprefix("check_"), f"could not check: {e}", ""))
    if as_json:
        json.dump([{"status": s, "check": c, "detail": d, "fix": f} for s, c, d, f in results],
                  sys.stdout, indent=2)
        print()
    else:
        for status, check_name, detail, fix in results:
            print(f"{status:<4}  {check_name}: {detail}" + (f" (fix: {fix})" if fix else ""))
    return 1 if any(s == "fail" for s, *_ in results) else 0
