"""Attacks a hostile payload makes on what lies outside its sandbox, and their failure.

The payload runs as the same user as the caller. Each test is the attack: it plants, alters,
races, connects, signals or writes, and then checks that nothing of it reached outside.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import sandboxer

from .conftest import BIN, PROFILES, Desktop, caller_env, run_rendering, sbx

pytestmark = pytest.mark.usefixtures("integration")
CLEAN = str(PROFILES / "clean-home.toml")
OFFLINE = str(PROFILES / "offline.toml")
WEB = str(PROFILES / "web-dev.toml")
REAL_HOME = Path(pwd.getpwuid(os.getuid()).pw_dir)
KEY = REAL_HOME / ".local" / "state" / "sandboxer" / "key"


def py(script: str, *args: str) -> list[str]:
    return ["--", "python3", "-c", script, *args]


# ---- 1. the plan cache ----------------------------------------------------------------------

TAMPER = r"""
import marshal, os, sys
plans, marker, how = sys.argv[1:4]
MAGIC = b"sandboxer-plan 4\n"
evil = ["/bin/sh", "-c", "touch " + marker]
for name in os.listdir(plans):
    path = os.path.join(plans, name)
    blob = open(path, "rb").read()
    head = len(MAGIC) + 32
    spec_data, deps = marshal.loads(blob[head:])  # (RunSpec.data(): (version, outer, ...), files)
    spec = list(spec_data)
    spec[1] = tuple(evil)
    body = marshal.dumps((tuple(spec), deps))
    if how == "altered":      # the entry's own tag, a changed plan
        out = blob[:head] + body
    elif how == "forged":     # a tag made under a key the payload guessed
        import hmac
        out = MAGIC + hmac.new(b"\0" * 32, name.encode() + b"\0" + body, "sha256").digest() + body
    elif how == "foreign":    # a well-made entry, under another key (another user's, say)
        import hmac
        out = MAGIC + hmac.new(os.urandom(32), name.encode() + b"\0" + body, "sha256").digest() + body
    elif how == "truncated":
        out = blob[: len(blob) // 2]
    elif how == "legacy":     # what sandboxer wrote before entries were authenticated
        out = body
    else:
        raise SystemExit("unknown attack " + how)
    with open(path, "wb") as f:
        f.write(out)
    os.chmod(path, 0o600)
    print("tampered", name)
"""


@pytest.mark.parametrize("how", ["altered", "forged", "foreign", "truncated", "legacy"])
def test_a_plan_changed_from_inside_a_sandbox_never_runs(home: Path, tmp_path: Path, how: str) -> None:
    # The user runs once with a cache in a workspace (a CI workspace, say) that sandboxes also get.
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    env = caller_env(home, XDG_CACHE_HOME=str(workspace / "cache"))
    marker = tmp_path / "pwned"
    assert sbx([OFFLINE, "--", "true"], home, env=env).returncode == 0
    plans = workspace / "cache" / "sandboxer" / "plans"
    assert list(plans.iterdir())
    # An ordinary sandbox, with its own (default) cache, has the workspace bound in.
    out = sbx([OFFLINE, "--bind", str(workspace), *py(TAMPER, str(plans), str(marker), how)], home)
    assert out.returncode == 0 and "tampered" in out.stdout, out.stderr
    # The user's next run with that cache: the entry is refused, recompiled, and never run.
    out = sbx([OFFLINE, "--", "true"], home, env=env)
    assert out.returncode == 0, out.stderr
    assert not marker.exists()
    assert out.stderr.count("\n") == 1 and "sandboxer: warning: ignoring the cached plan" in out.stderr
    assert "compiling the profile again" in out.stderr
    # the entry was replaced by a good one: the run after is quiet, and still sandboxed
    out = sbx([OFFLINE, "--", "hostname"], home, env=env)
    assert (out.returncode, out.stdout, out.stderr) == (0, "sandbox\n", "")
    assert not marker.exists()


def test_the_cache_key_is_out_of_every_sandboxs_reach(home: Path) -> None:
    sbx([OFFLINE, "--", "true"], home)
    assert KEY.stat().st_mode & 0o777 == 0o600 and len(KEY.read_bytes()) == 32
    probe = ("import os, sys\nfor p in sys.argv[1:]:\n"
             "    try:\n        print(p, len(open(p, 'rb').read()))\n"
             "    except OSError as e:\n        print(p, 'refused', e.errno)\n"
             "print(os.listdir(os.path.dirname(sys.argv[1])))\n")
    # even with the real home bound in writable, and HOME the real one
    for args in (["--bind", str(REAL_HOME)], ["--home", "host", "--bind", str(REAL_HOME / ".local")]):
        out = sbx([OFFLINE, *args, *py(probe, str(KEY))], home,
                  env=caller_env(REAL_HOME) if "host" in args else None)
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines() == [f"{KEY} refused 2", "[]"]
    # nor can the payload move the directory away and put its own in its place
    script = (f"mv {KEY.parent} {KEY.parent}.x 2>&1; mv {KEY.parent.parent} {KEY.parent.parent}.x 2>&1; "
              f"rmdir {KEY.parent} 2>&1; true")
    out = sbx([OFFLINE, "--bind", str(REAL_HOME / ".local"), "--", "/bin/sh", "-c", script], home)
    assert out.stdout.count("Device or resource busy") == 3, out.stdout
    assert KEY.exists()


def test_a_cache_under_the_hosts_tmp_is_out_of_sight(home: Path) -> None:
    cache = Path("/tmp") / f"sbx-test-cache-{os.getpid()}"
    try:
        env = caller_env(home, XDG_CACHE_HOME=str(cache))
        assert sbx([OFFLINE, "--", "true"], home, env=env).returncode == 0
        assert (cache / "sandboxer" / "plans").is_dir()
        out = sbx([OFFLINE, "--", "ls", "-A", "/tmp"], home)
        assert (out.returncode, out.stdout) == (0, "")
    finally:
        subprocess.run(["rm", "-rf", str(cache)], check=False)


# ---- 2. the profile read once ---------------------------------------------------------------

WEAK = '[network]\nmode = "host"\n[home]\nmode = "host"\n[namespaces]\npid = false\nhostname = "weak"\n'
STRONG = 'description = "strong"\n[network]\nmode = "none"\n[namespaces]\nhostname = "strong"\n'
FLIP = r"""
import os, sys, time
d, weak, strong = sys.argv[1:4]
target, stop = os.path.join(d, "p.toml"), os.path.join(d, "stop")
deadline, flips = time.monotonic() + 60, 0
while not os.path.exists(stop) and time.monotonic() < deadline and flips < 2_000_000:
    for i, text in enumerate((weak, strong)):
        tmp = os.path.join(d, f".flip{i}")
        with open(tmp, "w") as f:
            f.write(text)
        os.rename(tmp, target)
    flips += 1
print("flips", flips)
"""


def test_a_profile_flipped_during_runs_never_leaves_a_weak_plan(home: Path, tmp_path: Path) -> None:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    profile = profiles / "p.toml"
    profile.write_text(STRONG)
    # the attacker: a payload that can write the profile's directory, flipping it as fast as it can
    flipper = subprocess.Popen([str(BIN), "run", OFFLINE, "--bind", str(profiles), *py(FLIP, str(profiles), WEAK, STRONG)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=home,
                               env=caller_env(home))
    runs = 12
    try:
        deadline = time.monotonic() + 20
        while not (profiles / ".flip1").exists() and not profile.read_text().startswith("[network]"):
            assert time.monotonic() < deadline and flipper.poll() is None, flipper.communicate()
            time.sleep(0.01)
        for i in range(runs):  # each run a new plan (another --env): each compiled during the flips
            sbx([str(profile), "--env", f"RUN={i}", "--", "true"], home)
    finally:
        (profiles / "stop").touch()
        out, err = flipper.communicate(timeout=30)
    assert flipper.returncode == 0 and out.startswith("flips "), err
    assert int(out.split()[1]) > 100
    profile.write_text(STRONG)
    for i in range(runs):  # the strong profile, with every key the flips went through
        out = sbx([str(profile), "--env", f"RUN={i}", "--", "/bin/sh", "-c", "hostname; ls /proc | grep -c '^[0-9]'"],
                  home)
        assert out.returncode == 0, out.stderr
        name, processes = out.stdout.split()
        assert name == "strong" and int(processes) <= 4, f"run {i} used a weak plan: {out.stdout}"


# ---- 3. host services -----------------------------------------------------------------------

PROBE = r"""
import json, os, socket, subprocess, sys
targets, other = json.loads(sys.argv[1]), int(sys.argv[2])
seen = {}
for name, address in targets.items():
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(3)
    try:
        s.connect("\0" + address[1:] if address.startswith("@") else address)
    except OSError:
        seen[name] = "refused"
        continue
    s.settimeout(1)
    try:
        seen[name] = "CONNECTED " + s.recv(16).decode()
    except OSError:  # dbus-daemon says nothing before the client does
        seen[name] = "CONNECTED"
    s.close()
try:
    os.kill(other, 0)
    seen["signal"] = "SENT"
except OSError:
    seen["signal"] = "refused"
try:
    open(f"/proc/{other}/environ", "rb").read()
    seen["ptrace"] = "READ"
except OSError:
    seen["ptrace"] = "refused"
bus = subprocess.run(["dbus-send", "--bus=unix:path=" + targets["bus"], "--print-reply",
                      "--dest=org.freedesktop.DBus", "/org/freedesktop/DBus",
                      "org.freedesktop.DBus.ListNames"], capture_output=True, timeout=10)
seen["dbus"] = "REPLIED" if bus.returncode == 0 else "refused"
print(json.dumps(seen, sort_keys=True))
"""
REFUSED = {"abstract": "refused", "bus": "refused", "dbus": "refused", "ptrace": "refused",
           "runtime": "refused", "signal": "refused", "tmp": "refused"}


def _probe(desktop: Desktop) -> list[str]:
    return [json.dumps(desktop.targets), str(desktop.other)]


def test_the_probe_reaches_everything_from_outside(desktop: Desktop) -> None:
    out = subprocess.run([sys.executable, "-c", PROBE, *_probe(desktop)], capture_output=True, text=True,
                         timeout=30)
    assert json.loads(out.stdout) == {"abstract": "CONNECTED hello", "bus": "CONNECTED", "dbus": "REPLIED",
                                      "ptrace": "READ", "runtime": "CONNECTED hello", "signal": "SENT",
                                      "tmp": "CONNECTED hello"}


@pytest.mark.parametrize("args", [
    [CLEAN], [CLEAN, "--no-pid"], [OFFLINE], [OFFLINE, "--no-pid"], [WEB],
    [OFFLINE, "--no-pid", "--no-ipc", "--no-uts"],
], ids=["clean-home", "clean-home-no-pid", "offline", "offline-no-pid", "web-dev", "offline-bare"])
def test_host_services_are_out_of_reach(desktop: Desktop, home: Path, args: list[str]) -> None:
    out = sbx([*args, *py(PROBE, *_probe(desktop))], home, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == REFUSED


def test_host_services_are_out_of_reach_from_a_rootfs(desktop: Desktop, home: Path, tmp_path: Path) -> None:
    from .test_rootfs import busybox_tree

    tree = busybox_tree(tmp_path)
    runtime = ["--ro-bind", "/usr", "--ro-bind", "/lib", "--ro-bind", "/lib64", "--ro-bind", "/etc"]
    for extra in (["--net", "host", "--no-pid"], ["--net", "none"]):
        out = sbx(["--rootfs", str(tree), *runtime, *extra, *py(PROBE, *_probe(desktop))], home, timeout=60)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == REFUSED


def test_one_socket_can_be_shared_on_purpose(desktop: Desktop, home: Path) -> None:
    out = sbx([CLEAN, "--bind", str(desktop.private), *py(PROBE, *_probe(desktop))], home, timeout=60)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == REFUSED | {"runtime": "CONNECTED hello"}


def test_tmp_var_tmp_and_shm_are_private(home: Path) -> None:
    planted = [Path(d) / f"sbx-test-planted-{os.getpid()}" for d in ("/tmp", "/var/tmp", "/dev/shm")]
    for path in planted:
        path.write_text("host")
    try:
        script = ("for d in /tmp /var/tmp /dev/shm; do ls -A $d | wc -l; echo inside > $d/sbx-inside; "
                  "done; stat -f -c %T /tmp /var/tmp /dev/shm")
        out = sbx([OFFLINE, "--", "/bin/sh", "-c", script], home)
        assert out.returncode == 0, out.stderr
        assert out.stdout.split() == ["0", "0", "0", "tmpfs", "tmpfs", "tmpfs"]
        for d in ("/tmp", "/var/tmp", "/dev/shm"):
            assert not (Path(d) / "sbx-inside").exists()
    finally:
        for path in planted:
            path.unlink()


def test_sys_does_not_describe_the_hosts_network(home: Path) -> None:
    assert len(os.listdir("/sys/class/net")) > 1  # the host has more than lo
    out = sbx([OFFLINE, "--", "ls", "/sys/class/net"], home)
    assert (out.returncode, out.stdout.split()) == (0, ["lo"]), out.stderr


def test_explain_lists_what_is_hidden_and_shared(home: Path) -> None:
    out = sbx(["explain", CLEAN], home)
    summary = [line.split("summary: ", 1)[1] for line in out.stdout.splitlines() if "summary: " in line]
    assert summary[0] == "read-only: the host's whole tree, except what is listed as writable"
    hidden = next(line for line in summary if line.startswith("hidden (empty or private"))
    for path in ("/tmp", "/var/tmp", "/dev/shm", f"/run/user/{os.getuid()}", str(KEY.parent)):
        assert path in hidden
    assert any(line.startswith("shared with the host: the host's network") for line in summary)


# ---- 4. another sandbox's network helper ----------------------------------------------------

SNOOP = r"""
import json, os, socket, sys, time
watch, port = sys.argv[1:-1], int(sys.argv[-1])
request = json.dumps({"execute": "add_hostfwd", "arguments": {"proto": "tcp", "host_addr": "0.0.0.0",
                      "host_port": port, "guest_port": 80}}).encode()
tried, added, seen = 0, 0, set()
deadline = time.monotonic() + float(os.environ.get("SNOOP_SECONDS", "8"))
print("ready", flush=True)
while time.monotonic() < deadline and tried < 100000:
    candidates = [f"/proc/{p}/cwd/api.sock" for p in os.listdir("/proc") if p.isdigit()]
    for d in watch:
        for root, dirs, files in os.walk(d):
            candidates += [os.path.join(root, f) for f in files]
    for path in candidates:
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(0.5)
        try:
            s.connect(path)
        except OSError:
            continue
        finally:
            tried += 1
        try:  # a slirp4netns API socket answers a request with a JSON object
            s.sendall(request)
            s.shutdown(socket.SHUT_WR)
            reply = json.loads(s.recv(4096))
            seen.add(path)
            added += "return" in reply
        except (OSError, ValueError):
            pass
        s.close()
print(json.dumps({"tried": tried, "api": sorted(seen), "added": added}))
"""


def test_no_sandbox_reaches_anothers_network_helper(home: Path) -> None:
    runtime = Path(f"/run/user/{os.getuid()}")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        stolen = s.getsockname()[1]
    # the attacker: no PID namespace (it sees every process), the host's /tmp and runtime dir
    # bound in on purpose, polling for any socket to talk to while victims start
    snoop = subprocess.Popen([str(BIN), "run", OFFLINE, "--no-pid", "--bind", "/tmp", "--bind", str(runtime), *py(SNOOP, "/tmp", str(runtime), str(stolen))],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=home,
                             env=caller_env(home))
    assert snoop.stdout is not None and snoop.stdout.readline().strip() == "ready"
    for _ in range(6):
        out = sbx([WEB, "--forward", f"{port}:80", "--", "true"], home)
        assert out.returncode == 0, out.stderr
    report, err = snoop.communicate(timeout=60)
    assert snoop.returncode == 0, err
    found = json.loads(report)
    assert found["tried"] > 1000 and found["api"] == [] and found["added"] == 0, found
    ss = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True, timeout=10).stdout
    assert f":{stolen} " not in ss


def test_a_sigkilled_supervisor_leaves_nothing_during_network_setup(home: Path) -> None:
    runtime = Path(f"/run/user/{os.getuid()}")
    before = {d: set(os.listdir(d)) for d in ("/tmp", str(runtime))}
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for n in range(25):  # SIGKILL at staggered moments of the setup: 0 to ~60 ms in
        proc = subprocess.Popen([str(BIN), "run", WEB, "--forward", f"{port}:80", "--", "sleep", "30"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=home,
                                env=caller_env(home))
        time.sleep(n * 0.0025)
        proc.kill()
        proc.wait(timeout=10)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _ours("slirp4netns", "sandboxer-stage"):
        time.sleep(0.05)
    assert _ours("slirp4netns", "sandboxer-stage") == []
    after = {d: set(os.listdir(d)) for d in ("/tmp", str(runtime))}
    assert after == before
    ss = subprocess.run(["ss", "-ltnH"], capture_output=True, text=True, timeout=10).stdout
    assert f":{port} " not in ss


def _ours(*names: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and os.stat(f"/proc/{entry}").st_uid == os.getuid():
                comm = Path(f"/proc/{entry}/comm").read_text().strip()
                if comm in names or comm.startswith("sandboxer-stag"):
                    found.append(int(entry))
        except OSError:
            pass
    return found


# ---- 5. writes outside the sandbox's binds ---------------------------------------------------

WRITE = r"""
import os, sys
for path in sys.argv[1:]:
    try:
        with open(path, "ab") as f:
            f.write(b"\nimport os; os.system('touch /tmp/pwned')\n")
        print(path, "WRITTEN")
    except OSError as e:
        print(path, "refused", os.strerror(e.errno))
"""


def _sandboxer_files() -> list[Path]:
    package = Path(sandboxer.__file__).resolve().parent
    return [package / "cli.py", package / "sandboxer-stage", Path(sys.prefix) / "bin" / "sandboxer",
            Path(sys.prefix) / "pyvenv.cfg"]


def _digests(paths: list[Path]) -> list[str]:
    return [hashlib.sha256(p.read_bytes()).hexdigest() for p in paths]


def test_a_payload_cannot_rewrite_sandboxer_even_in_a_writable_bind(home: Path) -> None:
    files = _sandboxer_files()
    before = _digests(files)
    package = files[0].parent
    # the whole real home (which holds this checkout and its venv) bound in writable
    for args in (["--bind", str(REAL_HOME)], ["--bind", "/home"], ["--home", "host"]):
        env = caller_env(REAL_HOME) if "host" in args else None
        out = sbx([OFFLINE, *args, *py(WRITE, *map(str, files))], home, env=env)
        assert out.returncode == 0, out.stderr
        # (the stage, being run, may say "Text file busy" first)
        said = [line.split(" ", 1)[1] for line in out.stdout.splitlines()]
        assert len(said) == 4 and all(
            why in ("refused Read-only file system", "refused Text file busy") for why in said), said
        # nor can it move them (or a directory leading to them) aside and plant its own
        moves = [package, package.parent, Path(sys.prefix), Path(sys.prefix).parent]
        script = "; ".join(f"mv {p} {p}.x 2>/dev/null && echo MOVED {p}" for p in moves) + "; true"
        out = sbx([OFFLINE, *args, "--", "/bin/sh", "-c", script], home, env=env)
        assert out.returncode == 0 and "MOVED" not in out.stdout, out.stdout
    assert _digests(files) == before


def test_explain_says_sandboxers_installation_is_read_only(home: Path) -> None:
    out = sbx(["explain", OFFLINE], home)
    line = next(line for line in out.stdout.splitlines() if "read-only even inside writable binds" in line)
    assert str(Path(sandboxer.__file__).resolve().parent.parent) in line or sys.prefix in line


def test_a_payload_cannot_change_a_file_of_yours_outside_its_binds(home: Path, tmp_path: Path) -> None:
    data = tmp_path / "data"  # outside HOME, on a disk of the user's
    data.mkdir()
    (data / "notes.txt").write_text("mine\n")
    for args in ([OFFLINE], [CLEAN, "--home", "host"], [CLEAN, "--bind", str(home)]):
        out = sbx([*args, "--", "/bin/sh", "-c", f"echo evil >> {data}/notes.txt; touch {data}/new; "
                   f"rm -f {data}/notes.txt; mv {data} {data}.x; true"], home)
        assert out.returncode == 0, out.stderr
        assert out.stderr.count("Read-only file system") == 4, out.stderr
    assert (data / "notes.txt").read_text() == "mine\n" and not (data / "new").exists()


# ---- 6. a project under HOME -----------------------------------------------------------------

def test_a_project_under_home_builds_through_its_bind(home: Path) -> None:
    project = home / "src" / "project"
    project.mkdir(parents=True)
    (project / "Makefile").write_text("all:\n\techo built > out.txt\n")
    out = sbx([OFFLINE, "--bind", ".", "--", "make"], home, cwd=project)
    assert out.returncode == 0, out.stderr
    assert (project / "out.txt").read_text() == "built\n"
    # the README's example: the project at ~/work inside
    profile = home / "build.toml"
    profile.write_text('[[mounts]]\ntype = "bind"\nsource = "."\ntarget = "~/work"\n'
                       '[command]\ncwd = "~/work"\n')
    (project / "out.txt").unlink()
    out = sbx([str(profile), "--", "make"], home, cwd=project)
    assert out.returncode == 0, out.stderr
    assert (project / "out.txt").read_text() == "built\n"
    # without a bind the project is out of sight: the run says so, and runs in the empty HOME
    out = sbx([OFFLINE, "--", "/bin/sh", "-c", "pwd; ls -A | wc -l"], home, cwd=project)
    assert out.returncode == 0 and out.stdout.split() == [str(home), "0"]
    assert out.stderr == (f"sandboxer: warning: your working directory {project} is hidden in the sandbox "
                          f"(under {home}'s private tmpfs), so the command starts in HOME; to work on it, "
                          "bind it: --bind .\n")


# ---- found on the way ------------------------------------------------------------------------

def test_check_makes_the_checks_run_makes(home: Path, tmp_path: Path) -> None:
    cases = {
        "root.toml": ('[[mounts]]\ntype = "tmpfs"\ntarget = "/"\n', ":3: mounts[0].target: cannot mount over /"),
        "rootfs.toml": ('[rootfs]\npath = "/"\n', ":2: rootfs.path: / is the host's own root"),
        "cache.toml": ('[[mounts]]\ntype = "bind"\nsource = "~/.cache/sandboxer"\n',
                       ":3: mounts[0].source: "),
        "v6.toml": ('[network]\nmode = "slirp4netns"\n[[network.forwards]]\nhost_addr = "::1"\n'
                    'host_port = 8080\nguest_port = 80\n', ":4: network.forwards[0].host_addr: ::1 is an IPv6"),
    }
    for name, (text, expected) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        out = sbx(["check", str(path)], home)
        assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
        assert f"{path}{expected}" in out.stderr, out.stderr
        assert sbx([str(path), "--", "true"], home).returncode == 125


def test_an_error_naming_a_path_with_a_newline_is_one_line(home: Path, tmp_path: Path) -> None:
    odd = tmp_path / "a\nb"
    out = sbx([OFFLINE, "--bind", str(odd), "--", "true"], home)
    assert out.returncode == 125 and out.stderr.count("\n") == 1, out.stderr
    assert "a\\nb" in out.stderr


def test_an_empty_command_is_not_found(home: Path) -> None:
    out = sbx([OFFLINE, "--", ""], home)
    assert out.returncode == 127
    assert out.stderr == "sandboxer: error: command not found: the command name is empty\n"


# ---- kernels without Landlock scopes ---------------------------------------------------------

NO_LANDLOCK = r"""
import ctypes, os, struct, sys
# seccomp: landlock_create_ruleset, landlock_add_rule and landlock_restrict_self fail with ENOSYS,
# as on a kernel built without Landlock; everything else is allowed (x86_64 numbers)
code = [(0x20, 0, 0, 0), (0x15, 3, 0, 444), (0x15, 2, 0, 445), (0x15, 1, 0, 446),
        (0x06, 0, 0, 0x7FFF0000), (0x06, 0, 0, 0x00050000 | 38)]
prog = b"".join(struct.pack("HBBI", *insn) for insn in code)
buf = ctypes.create_string_buffer(prog)

class Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]

libc = ctypes.CDLL(None, use_errno=True)
fprog = Fprog(len(code), ctypes.addressof(buf))
assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
assert libc.prctl(22, 2, ctypes.byref(fprog), 0, 0) == 0, ctypes.get_errno()  # SECCOMP_MODE_FILTER
os.execv(sys.argv[1], sys.argv[1:])
"""


@pytest.mark.skipif(os.uname().machine != "x86_64", reason="the seccomp program uses x86_64 numbers")
def test_without_landlock_the_host_network_fails_closed(home: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-c", NO_LANDLOCK, str(BIN), "run", *args], capture_output=True,
                              text=True, timeout=30, cwd=home, env=caller_env(home))

    out = run(CLEAN, "--bind", str(tmp_path), "--", "touch", str(marker))
    assert out.returncode == 125 and out.stderr.count("\n") == 1, out.stderr
    assert "has no Landlock" in out.stderr and "abstract unix sockets" in out.stderr
    assert "--accept-exposure abstract-sockets" in out.stderr and "Linux 6.12" in out.stderr
    assert not marker.exists()
    out = run(OFFLINE, "--no-pid", "--", "true")
    assert out.returncode == 125 and "signals and ptrace" in out.stderr and "--pid" in out.stderr
    # the exposure accepted on purpose, or a namespace that closes it: the command runs
    out = run(CLEAN, "--accept-exposure", "abstract-sockets", "--bind", str(tmp_path), "--", "touch", str(marker))
    assert out.returncode == 0, out.stderr
    assert marker.exists()
    assert run(OFFLINE, "--", "true").returncode == 0


def test_signals_to_the_supervisor_are_refused_without_a_pid_namespace(home: Path) -> None:
    out = sbx([OFFLINE, "--no-pid", "--", "/bin/sh", "-c", 'kill -TERM $PPID 2>&1; p=$(cut -d" " -f4 '
               '/proc/$PPID/stat); kill -TERM $p 2>&1; echo done'], home)
    assert out.returncode == 0, out.stderr
    assert out.stdout.count("Operation not permitted") == 2 and out.stdout.endswith("done\n"), out.stdout


def test_nothing_of_the_network_helper_appears_in_tmp_or_the_runtime_dir(home: Path) -> None:
    runtime = Path(f"/run/user/{os.getuid()}")
    proc = subprocess.Popen([str(BIN), "run", WEB, "--", "sleep", "5"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=home, env=caller_env(home))
    registry = runtime / "sandboxer"  # named sandboxes' (names.py): an unnamed run adds nothing to it
    before = {(d, name) for d in ("/tmp", str(runtime), str(registry)) if os.path.isdir(d)
              for name in os.listdir(d)}
    try:
        seen: set[tuple[str, str]] = set()
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline:
            for d in ("/tmp", str(runtime), str(registry)):
                if os.path.isdir(d):
                    seen |= {(d, name) for name in os.listdir(d)
                             if name.startswith("sandboxer") or d == str(registry)}
            time.sleep(0.001)
        assert seen - before == set()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)


def test_the_shell_rendering_binds_a_project_under_home_too(home: Path, tmp_path: Path) -> None:
    project = home / "project"
    project.mkdir()
    (project / "in.txt").write_text("hello\n")
    out = run_rendering([OFFLINE, "--bind", ".", "--", "/bin/sh", "-c",
                         "cat in.txt; echo built > out.txt; touch /usr/x 2>/dev/null || echo ro; ls -A /tmp | wc -l"],
                        home, tmp_path / "plan.sh", cwd=project)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["hello", "ro", "0"]
    assert (project / "out.txt").read_text() == "built\n"
