"""The command line as users drive it: profiles by name, --set, extends, --dry-run, --resolved."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from sandboxer.options import UsageError, parse

from .conftest import REPO, caller_env, sbx

SHIPPED = REPO / "sandboxer" / "profiles"


def test_a_word_before_dashdash_names_a_profile_else_it_is_the_command() -> None:
    args = parse(["run", "clean-home", "--", "make", "-j4"])
    assert args.profiles == ["clean-home"] and args.argv == ["make", "-j4"]
    args = parse(["run", "make", "-j4"])
    assert args.profiles == [] and args.argv == ["make", "-j4"]
    args = parse(["run", "--net", "none", "make"])
    assert args.profiles == [] and args.argv == ["make"]
    args = parse(["run", "p.toml", "make"])
    assert args.profiles == ["p.toml"] and args.argv == ["make"]
    args = parse(["run", "--profile", "build", "make"])
    assert args.profiles == ["build"] and args.argv == ["make"]
    with pytest.raises(UsageError, match="only one profile"):
        parse(["run", "a.toml", "--profile", "b", "--", "true"])


@pytest.mark.usefixtures("integration")
def test_profiles_by_name_from_anywhere(home: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = sbx(["clean-home", "--", "hostname"], home, cwd=elsewhere)
    assert (out.returncode, out.stdout) == (0, "sandbox\n"), out.stderr
    # without --, the word is the command: `run hostname` runs hostname, with the safe defaults
    out = sbx(["hostname"], home, cwd=elsewhere)
    assert (out.returncode, out.stdout) == (0, "sandbox\n"), out.stderr


def test_an_unknown_name_says_where_it_looked(home: Path, tmp_path: Path) -> None:
    out = sbx(["run", "no-such-profile", "--", "true"], home, cwd=tmp_path)
    assert out.returncode == 125 and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith("sandboxer: error: no profile named 'no-such-profile' (searched ")
    for place in (str(tmp_path / "profiles"), str(home / ".config" / "sandboxer" / "profiles"),
                  "/etc/sandboxer/profiles", str(SHIPPED)):
        assert place in out.stderr
    assert "put it after --" in out.stderr


def test_the_search_path_and_shadowing(home: Path, tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "profiles").mkdir(parents=True)
    (project / "profiles" / "offline.toml").write_text('description = "the project\'s offline"\n')
    config = home / ".config" / "sandboxer" / "profiles"
    config.mkdir(parents=True)
    (config / "mine.toml").write_text('description = "my own"\n[namespaces]\nhostname = "mine"\n')
    out = sbx(["profiles"], home, cwd=project)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    entries = [(lines[i].split()[0], lines[i + 1].strip()) for i in range(0, len(lines), 2)]
    assert ("offline", f"./profiles  (refused by name: it would redefine the one below): "
                       f"{project}/profiles/offline.toml") in entries
    assert ("offline", f"shipped with sandboxer: {SHIPPED}/offline.toml") in entries
    (project / "profiles" / "ours.toml").write_text('description = "ours alone"\n')
    (config / "offline.toml").write_text('description = "my offline"\n')
    lines = sbx(["profiles"], home, cwd=project).stdout.splitlines()
    entries = [(lines[i].split()[0], lines[i + 1].strip()) for i in range(0, len(lines), 2)]
    assert ("ours", f"./profiles: {project}/profiles/ours.toml") in entries
    assert ("offline", f"shipped with sandboxer  (shadowed): {SHIPPED}/offline.toml") in entries
    assert ("mine", f"$XDG_CONFIG_HOME/sandboxer/profiles: {config}/mine.toml") in entries
    assert ("clean-home", f"shipped with sandboxer: {SHIPPED}/clean-home.toml") in entries
    assert "my own" in out.stdout and "the project's offline" in out.stdout


@pytest.mark.usefixtures("integration")
def test_an_untrusted_checkout_cannot_redefine_a_profile(home: Path, tmp_path: Path) -> None:
    """A repository you build ships profiles/build.toml with no isolation: `sandboxer run build`
    refuses it, rather than running the build as the repository says."""
    project = tmp_path / "evil-repo"
    (project / "profiles").mkdir(parents=True)
    (project / "profiles" / "build.toml").write_text('[network]\nmode = "host"\n[home]\nmode = "host"\n')
    marker = home / "pwned"
    out = sbx(["build", "--", "touch", str(marker)], home, cwd=project)
    assert out.returncode == 125 and not marker.exists()
    assert out.stderr == (f"sandboxer: error: {project}/profiles/build.toml (this directory's) would replace the "
                          f"profile 'build' of {SHIPPED}/build.toml: a project may add profiles, not redefine one "
                          "you trust (to use the project's on purpose, name its file: sandboxer run "
                          "./profiles/build.toml -- ...)\n")
    (project / "profiles" / "extra.toml").write_text('[namespaces]\nhostname = "extra"\n')
    out = sbx(["extra", "--", "hostname"], home, cwd=project)
    assert (out.returncode, out.stdout) == (0, "extra\n"), out.stderr


@pytest.mark.usefixtures("integration")
def test_a_profile_found_by_name_runs(home: Path) -> None:
    config = home / ".config" / "sandboxer" / "profiles"
    config.mkdir(parents=True)
    (config / "mine.toml").write_text('[namespaces]\nhostname = "mine"\n')
    out = sbx(["mine", "--", "hostname"], home)
    assert (out.returncode, out.stdout) == (0, "mine\n"), out.stderr


@pytest.mark.usefixtures("integration")
def test_set_overrides_any_key_in_order_with_flags(home: Path) -> None:
    out = sbx(["--net", "host", "--set", "network.mode=none", "--set", "namespaces.hostname=set-by-set",
               "--set", "home.size=8M", "--", "/bin/sh", "-c",
               "hostname; ls /sys/class/net; df -k $HOME | tail -1 | awk '{print $2}'"], home)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["set-by-set", "lo", "8192"]
    out = sbx(["--set", "network.mode=none", "--net", "host", "--", "cat", "/proc/net/dev"], home)
    assert len(out.stdout.splitlines()) > 3  # the later --net host won


@pytest.mark.parametrize("assignment,says", [
    ("namespaces.pid=maybe", "option --set namespaces.pid: expected a boolean (true or false), got 'maybe'"),
    ("home.sise=1G", "option --set home.sise: unknown key 'sise'; did you mean 'size'?"),
    ("home.size=1T", "option --set home.size: expected a size such as"),
    ("nonsense", "option --set: expected KEY=VALUE with a dotted KEY"),
    ("home.mode.deep=1", "option --set home.mode.deep: expected one of 'host' or 'tmpfs', got {'deep': 1}"),
    ("extends=[\"x\"]", "option --set extends: extends is read from profile files only"),
])
def test_set_errors_name_the_option(home: Path, assignment: str, says: str) -> None:
    out = sbx(["explain", "--set", assignment, "--", "true"], home)
    assert out.returncode == 125 and out.stderr.count("\n") == 1, out.stderr
    assert says in out.stderr


def test_dry_run_prints_the_plan_and_runs_nothing(home: Path, tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    out = sbx(["offline", "--bind", str(tmp_path), "--dry-run", "--", "touch", str(marker)], home)
    assert out.returncode == 0, out.stderr
    assert "supervisor: spawn " in out.stdout and f"exec -- touch {marker}" in out.stdout
    assert not marker.exists()


def _chain(tmp_path: Path) -> Path:
    (tmp_path / "base.toml").write_text('description = "base"\n[home]\nsize = "128M"\n[env]\nkeep = ["A"]\n'
                                        '[[mounts]]\ntype = "tmpfs"\ntarget = "/scratch"\n')
    child = tmp_path / "child.toml"
    child.write_text('extends = ["offline", "base.toml"]\ndescription = "child"\n[namespaces]\n'
                     'hostname = "kid"\n[env]\nkeep = ["B"]\n[[mounts]]\ntype = "tmpfs"\ntarget = "/other"\n')
    return child


def test_extends_merges_in_order(home: Path, tmp_path: Path) -> None:
    from sandboxer.load import load

    profile = load(str(_chain(tmp_path)))
    assert profile.description == "child"
    assert profile.network.mode == "none" and profile.namespaces.hostname == "kid"  # offline's, child's
    assert profile.home.size == 128 * 1024 * 1024  # base's over offline's
    assert profile.env.keep == ["B"]  # lists are replaced
    assert [m.target for m in profile.mounts] == ["/scratch", "/other"]  # mounts accumulate


def test_explain_resolved_says_where_each_value_came_from(home: Path, tmp_path: Path) -> None:
    child = _chain(tmp_path)
    out = sbx(["explain", "--resolved", str(child), "--net", "host", "--set", "home.mode=host"], home,
              cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == f"# {child}, extending {SHIPPED}/offline.toml, {tmp_path}/base.toml"
    assert 'namespaces.hostname = "kid"  # ' + f"{child}:4" in lines
    assert "home.size = 134217728  # " + f"{tmp_path}/base.toml:3" in lines
    assert f'namespaces.pid = true  # {SHIPPED}/offline.toml:17' in lines
    assert 'network.mode = "host"  # --net' in lines and 'home.mode = "host"  # --set home.mode' in lines
    assert "tmp.size = 536870912  # default" in lines
    assert f'mounts[1].target = "/other"  # {child}:9' in lines


@pytest.mark.parametrize("files,says", [
    ({"a.toml": 'extends = ["b.toml"]\n', "b.toml": 'extends = ["a.toml"]\n'},
     "b.toml: extends: a cycle: {d}/a.toml -> {d}/b.toml -> {d}/a.toml"),
    ({"a.toml": 'extends = ["nowhere"]\n'}, "a.toml:1: extends: no profile named 'nowhere'"),
    ({"a.toml": 'extends = ["gone.toml"]\n'}, "gone.toml: profile not found"),
    ({"a.toml": 'extends = 3\n'}, "a.toml:1: extends: expected a list of profile names or paths, got 3"),
    ({"a.toml": 'extends = ["b.toml"]\n', "b.toml": '[[mounts]]\ntype = "bind"\n'},
     "b.toml:1: mounts[0]: a bind mount needs a 'source'"),
])
def test_extends_errors_name_the_chain(home: Path, tmp_path: Path, files: dict[str, str], says: str) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    out = sbx(["check", str(tmp_path / "a.toml")], home, cwd=tmp_path)
    assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
    assert says.format(d=tmp_path) in out.stderr, out.stderr


@pytest.mark.usefixtures("integration")
def test_a_change_in_a_parent_is_a_new_plan(home: Path, tmp_path: Path) -> None:
    (tmp_path / "parent.toml").write_text('[namespaces]\nhostname = "one"\n')
    child = tmp_path / "child.toml"
    child.write_text('extends = ["parent.toml"]\n')
    assert sbx([str(child), "--", "hostname"], home).stdout == "one\n"
    assert sbx([str(child), "--", "hostname"], home).stdout == "one\n"  # cached
    (tmp_path / "parent.toml").write_text('[namespaces]\nhostname = "two"\n')
    out = sbx([str(child), "--", "hostname"], home)
    assert (out.stdout, out.stderr) == ("two\n", "")


def test_the_shipped_profiles_are_in_the_wheel(tmp_path: Path) -> None:
    """pip and pipx users get the profiles (and the stage) without a checkout."""
    out = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                          "-w", str(tmp_path), str(REPO)], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"})
    assert out.returncode == 0, out.stderr
    (wheel,) = tmp_path.glob("sandboxer-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for profile in SHIPPED.glob("*.toml"):
        assert f"sandboxer/profiles/{profile.name}" in names
    assert "sandboxer/sandboxer-stage" in names


# ---- doctor: break things, read the line and its fix -----------------------------------------

def _fake_proc(tmp_path: Path, **sysctls: str) -> Path:
    proc = tmp_path / "proc"
    for name, value in sysctls.items():
        path = proc / "sys" / name.replace(".", "/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(value + "\n")
    (proc / "self").mkdir(parents=True, exist_ok=True)
    (proc / "self" / "mountinfo").write_text(Path("/proc/self/mountinfo").read_text())
    return proc


def doctor(home: Path, tmp_path: Path, *extra: str, env: dict[str, str] | None = None) -> tuple[int, list[dict[str, str]]]:
    import json

    from .conftest import BIN, caller_env

    out = subprocess.run([str(BIN), "doctor", "--json", *extra], capture_output=True, text=True, timeout=60,
                         cwd=tmp_path, env={**caller_env(home), **(env or {})})
    assert out.stderr == "", out.stderr
    return out.returncode, json.loads(out.stdout)


@pytest.mark.usefixtures("integration")
def test_doctor_says_all_is_well_here(home: Path, tmp_path: Path) -> None:
    code, checks = doctor(home, tmp_path)
    assert code == 0
    statuses = {c["check"]: c["status"] for c in checks}
    for name in ("user namespaces", "kernel", "util-linux", "stage", "/proc", "slirp4netns", "pasta",
                 "/dev/net/tun", "newuidmap", "overlayfs"):
        assert statuses[name] == "ok", checks


@pytest.mark.parametrize("sysctl,value,says,fix", [
    ("user.max_user_namespaces", "0", "user.max_user_namespaces is 0", "sysctl -w user.max_user_namespaces=15000"),
    ("kernel.unprivileged_userns_clone", "0", "kernel.unprivileged_userns_clone is 0",
     "sysctl -w kernel.unprivileged_userns_clone=1"),
    ("kernel.apparmor_restrict_unprivileged_userns", "1", "AppArmor restricts unprivileged user namespaces",
     "kernel.apparmor_restrict_unprivileged_userns=0"),
])
def test_doctor_names_the_setting_that_blocks_user_namespaces(home: Path, tmp_path: Path, sysctl: str,
                                                             value: str, says: str, fix: str) -> None:
    code, checks = doctor(home, tmp_path, env={"SANDBOXER_DOCTOR_PROC": str(_fake_proc(tmp_path, **{sysctl: value}))})
    assert code == 1
    (line,) = [c for c in checks if c["check"] == "user namespaces"]
    assert line["status"] == "fail" and says in line["detail"] and fix in line["fix"]


def test_doctor_sees_a_masked_proc(home: Path, tmp_path: Path) -> None:
    proc = _fake_proc(tmp_path)
    with open(proc / "self" / "mountinfo", "a") as f:
        f.write("999 25 0:5 /null /proc/kcore rw,nosuid - devtmpfs udev rw\n")
    code, checks = doctor(home, tmp_path, env={"SANDBOXER_DOCTOR_PROC": str(proc)})
    assert code == 1
    (line,) = [c for c in checks if c["check"] == "/proc"]
    assert line["status"] == "fail" and "/proc/kcore" in line["detail"] and "--no-pid" in line["fix"]


def test_doctor_on_helpers_too_old(home: Path, tmp_path: Path) -> None:
    fakes = tmp_path / "bin"
    fakes.mkdir()
    (fakes / "slirp4netns").write_text("#!/bin/sh\necho 'slirp4netns version 0.4.9'\n")
    (fakes / "pasta").write_text("#!/bin/sh\necho 'pasta 2021_01_01'\n")
    for fake in fakes.iterdir():
        fake.chmod(0o755)
    code, checks = doctor(home, tmp_path, env={"PATH": f"{fakes}:/usr/bin:/bin"})
    by = {c["check"]: c for c in checks}
    assert by["slirp4netns"]["status"] == "warn" and "too old" in by["slirp4netns"]["detail"]
    assert by["pasta"]["status"] == "warn" and "lacks --foreground" in by["pasta"]["detail"]
    assert "upgrade passt" in by["pasta"]["fix"]
    assert code == 0  # warnings only: sandboxes without those networks still run


def test_doctor_plain_text(home: Path, tmp_path: Path) -> None:
    from .conftest import BIN, caller_env

    out = subprocess.run([str(BIN), "doctor"], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                         env={**caller_env(home), "SANDBOXER_DOCTOR_PROC": str(_fake_proc(
                             tmp_path, **{"user.max_user_namespaces": "0"}))})
    assert out.returncode == 1
    assert ("fail  user namespaces: user.max_user_namespaces is 0 (fix: sudo sysctl -w "
            "user.max_user_namespaces=15000 (and in /etc/sysctl.d/ to keep it))") in out.stdout.splitlines()


# ---- installed like a real tool ---------------------------------------------------------------

def test_tasks_links_make_sandboxer_and_its_man_pages_reachable(tmp_path: Path) -> None:
    home = tmp_path / "newuser"
    home.mkdir()
    env = {"HOME": str(home), "PATH": f"{home}/.local/bin:/usr/bin:/bin", "LANG": "C.UTF-8",
           "SANDBOXER_VENV": sys.prefix}
    out = subprocess.run([str(REPO / "tasks"), "links"], capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 0, out.stderr
    version = subprocess.run(["sandboxer", "--version"], capture_output=True, text=True, env=env, timeout=30)
    assert version.stdout.startswith("sandboxer "), version.stderr
    for page in ("sandboxer", "sandboxer-profile"):
        where = subprocess.run(["man", "-w", page], capture_output=True, text=True, env=env, timeout=30)
        # (man shows the file a link in ~/.local/share/man points to: this checkout's)
        assert where.returncode == 0, where
        assert Path(where.stdout.strip()).resolve() == next((REPO / "man").glob(page + ".[15]")).resolve()
    rendered = subprocess.run(["man", "sandboxer"], capture_output=True, text=True, timeout=30,
                              env={**env, "MANPAGER": "cat", "MANWIDTH": "80"})
    assert rendered.returncode == 0 and "SANDBOXER(1)" in rendered.stdout
    bash = subprocess.run(["bash", "--norc", "-c", f"source {home}/.local/share/bash-completion/completions/sandboxer"
                           "; complete -p sandboxer"], capture_output=True, text=True, env=env, timeout=30)
    assert bash.stdout.strip() == "complete -F _sandboxer sandboxer", bash.stderr
    assert (home / ".config" / "fish" / "completions" / "sandboxer.fish").exists()


def test_completion_and_schema_commands_print_the_committed_files(home: Path) -> None:
    import json

    from sandboxer import docs

    for shell, rel in docs.COMPLETIONS.items():
        out = sbx(["completion", shell], home)
        assert out.returncode == 0 and out.stdout == (REPO / rel).read_text()
    schema = sbx(["schema"], home)
    assert json.loads(schema.stdout)["properties"]["network"]
    assert schema.stdout == (SHIPPED / "sandboxer-profile.schema.json").read_text()
    for profile in SHIPPED.glob("*.toml"):
        assert profile.read_text().startswith("#:schema ./sandboxer-profile.schema.json\n")
    out = sbx(["completion", "tcsh"], home)
    assert out.returncode == 125 and "completion needs one shell: bash, zsh or fish" in out.stderr


@pytest.mark.parametrize("command", ["run", "check", "explain", "rootfs", "profiles", "completion", "schema",
                                     "doctor"])
def test_every_command_has_help_with_examples(home: Path, command: str) -> None:
    out = sbx([command, "--help"], home)
    assert out.returncode == 0 and "\nexamples:\n  " in out.stdout, out.stdout


def test_a_misspelled_command_or_option_is_suggested(home: Path) -> None:
    out = sbx(["rnu"], home)
    assert out.returncode == 125 and "unknown command 'rnu'; did you mean 'run'?" in out.stderr
    out = sbx(["run", "--nett", "none"], home)
    assert out.returncode == 125 and "did you mean --net?" in out.stderr


def test_bin_sandboxer_from_a_checkout_says_what_is_missing(tmp_path: Path) -> None:
    """Run with a Python that has none of sandboxer's dependencies: one line, no traceback."""
    out = subprocess.run(["/usr/bin/python3", "-I", str(REPO / "bin" / "sandboxer"), "explain", "offline"],
                         capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert out.returncode == 125
    assert out.stderr.startswith("sandboxer: error: sandboxer is not installed here: No module named ")
    assert "Traceback" not in out.stderr and out.stderr.count("\n") == 1


@pytest.mark.usefixtures("integration")
def test_installed_from_a_wheel_it_works_from_anywhere(home: Path, tmp_path: Path) -> None:
    """What pipx or pip does: a wheel built from the checkout, installed (not editable) in a venv
    of its own; run outside any checkout, it finds its shipped profiles and its stage. The
    dependencies come from this venv (a .pth file), so that nothing is downloaded."""
    import site
    import sys
    import venv

    wheels = tmp_path / "wheels"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                            "-w", str(wheels), str(REPO)], capture_output=True, text=True, timeout=300)
    assert built.returncode == 0, built.stderr
    target = tmp_path / "tool"
    venv.create(target, with_pip=False)
    paths = [p for p in site.getsitepackages() if "site-packages" in p]
    tool_site = next((target / "lib").glob("python3*/site-packages"))
    (tool_site / "deps.pth").write_text("\n".join(paths) + "\n")
    wheel = next(wheels.glob("sandboxer-*.whl"))
    installed = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
                                "--target", str(tool_site), str(wheel)], capture_output=True, text=True, timeout=300)
    assert installed.returncode == 0, installed.stderr
    script = tool_site / "bin" / "sandboxer"  # pip --target puts scripts here
    (target / "bin" / "sandboxer").write_text(
        script.read_text().replace(script.read_text().splitlines()[0], f"#!{target}/bin/python3", 1))
    (target / "bin" / "sandboxer").chmod(0o755)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    out = subprocess.run([str(target / "bin" / "sandboxer"), "run", "clean-home", "--", "hostname"],
                         capture_output=True, text=True, timeout=60, cwd=elsewhere, env=caller_env(home))
    assert (out.returncode, out.stdout) == (0, "sandbox\n"), out.stderr
    listing = subprocess.run([str(target / "bin" / "sandboxer"), "profiles", "--names"], capture_output=True,
                             text=True, timeout=60, cwd=elsewhere, env=caller_env(home)).stdout.split()
    assert {"build", "clean-home", "offline", "rootfs", "web-dev"} <= set(listing)
