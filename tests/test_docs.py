"""The generated man pages and shell completions: up to date, well-formed, and working."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from sandboxer import docs
from sandboxer.options import OPTIONS

REPO = Path(__file__).resolve().parent.parent
REQUIRE = os.environ.get("SANDBOXER_REQUIRE_INTEGRATION") == "1"
BASH_COMPLETION = REPO / "completions" / "sandboxer.bash"
SPELLINGS = [s for o in OPTIONS for s in o.spellings()]


def _tool(name: str) -> str:
    found = shutil.which(name)
    if not found:
        if REQUIRE:
            pytest.fail(f"{name} is not installed but SANDBOXER_REQUIRE_INTEGRATION=1")
        pytest.skip(f"{name} not installed")
    return found


@pytest.mark.parametrize("rel", sorted(docs.generated()))
def test_committed_copy_is_up_to_date(rel: str) -> None:
    path = REPO / rel
    assert path.exists(), f"{rel} is missing; run 'python -m sandboxer.docs write'"
    assert path.read_text(encoding="utf-8") == docs.generated()[rel], (
        f"{rel} is stale; run 'python -m sandboxer.docs write'"
    )


def test_generation_is_deterministic() -> None:
    """Two fresh interpreters, with different hash seeds (set and dict orders), write the same."""
    import json
    import sys

    outputs = []
    for seed in ("1", "2"):
        out = subprocess.run([sys.executable, "-c", "import json, sandboxer.docs as d; print(json.dumps(d.generated()))"],
                             capture_output=True, text=True, timeout=60, cwd=REPO,
                             env={**os.environ, "PYTHONHASHSEED": seed})
        assert out.returncode == 0, out.stderr
        outputs.append(json.loads(out.stdout))
    assert outputs[0] == outputs[1] == docs.generated()
    assert docs.stale() == []


def test_check_and_write_cli(tmp_path: Path) -> None:
    assert docs.write(tmp_path) == list(docs.generated())
    assert docs.stale(tmp_path) == []
    (tmp_path / "man" / "sandboxer.1").write_text("stale\n")
    assert docs.stale(tmp_path) == ["man/sandboxer.1"]
    assert docs.write(tmp_path) == ["man/sandboxer.1"]


def _render(page: str, *extra: str) -> subprocess.CompletedProcess[str]:
    groff = _tool("groff")
    return subprocess.run([groff, "-man", "-Tutf8", "-ww", *extra, str(REPO / "man" / page)],
                          capture_output=True, text=True, timeout=10, env={**os.environ, "LC_ALL": "C.UTF-8"})


def _plain(text: str) -> str:
    """Rendered text without overstrikes, with hyphens and minus signs as ASCII."""
    import re

    text = re.sub(".\b", "", text)
    return text.replace("\u2212", "-").replace("\u2010", "-")


@pytest.mark.parametrize("page", ["sandboxer.1", "sandboxer-profile.5"])
def test_man_page_renders_without_warnings(page: str) -> None:
    out = _render(page, "-z")
    assert out.returncode == 0 and out.stderr == "", out.stderr


def test_man_page_documents_every_option() -> None:
    text = _plain(_render("sandboxer.1").stdout)
    for spelling in SPELLINGS:
        assert spelling in text, spelling
    for section in ("NAME", "SYNOPSIS", "OPTIONS", "EXIT STATUS", "ENVIRONMENT", "FILES", "EXAMPLES",
                    "SEE ALSO", "HOW IT WORKS", "ISOLATION", "NETWORK"):
        assert f"\n{section}\n" in text, section
    from sandboxer.options import COMMANDS, EXAMPLES

    for command in COMMANDS:  # every command, its usage and its examples
        assert f"sandboxer {command}" in text, command
        for _what, example in EXAMPLES[command]:
            assert " ".join(example.split()) in " ".join(text.split()), example
    for needle in ("125", "126", "127", "128+N", "$XDG_CACHE_HOME/sandboxer/plans",
                   "~/.local/state/sandboxer/key", "$XDG_CONFIG_HOME/sandboxer/profiles",
                   "sandboxer-profile(5)", "unshare(1)", "user_namespaces(7)", "TIOCSTI"):
        assert needle in text, needle
    source = (REPO / "man" / "sandboxer.1").read_text()
    for spelling in SPELLINGS:
        assert spelling.replace("-", "\\-") in source, spelling


def test_man_page_with_man() -> None:
    man = _tool("man")
    out = subprocess.run([man, "-l", str(REPO / "man" / "sandboxer.1")], capture_output=True, text=True,
                         timeout=10, env={**os.environ, "MANPAGER": "cat", "MANWIDTH": "100",
                                          "LC_ALL": "C.UTF-8"})
    assert out.returncode == 0, out.stderr
    text = _plain(out.stdout)
    for spelling in SPELLINGS:
        assert spelling in text, spelling


def test_profile_man_page_documents_every_key() -> None:
    text = _plain(_render("sandboxer-profile.5").stdout)
    for section in docs.sections():
        if section.path:
            assert section.heading in text, section.heading
        for key in section.keys:
            assert key.name in text, f"{section.path}.{key.name}"
    for opt in OPTIONS:
        if opt.key:
            for spelling in opt.spellings():
                assert spelling in text, spelling
    assert "~/" in text and "working directory" in text


@pytest.mark.parametrize("rel", ["completions/sandboxer.bash", "completions/_sandboxer",
                                 "completions/sandboxer.fish"])
def test_completion_knows_every_option(rel: str) -> None:
    text = (REPO / rel).read_text()
    for opt in OPTIONS:
        for spelling in opt.spellings():
            name = spelling[2:] if rel.endswith(".fish") else spelling
            assert name in text, f"{spelling} missing from {rel}"
        for choice in opt.choices:
            assert choice in text, f"{opt.name}={choice} missing from {rel}"


# --- bash, for real


BASH_DRIVER = r"""
source "$1"
line=$2
read -ra COMP_WORDS <<<"$line"
[[ $line == *" " ]] && COMP_WORDS+=("")
COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
COMP_LINE=$line
COMP_POINT=${#line}
_sandboxer
printf '%s\n' "${COMPREPLY[@]}"
"""


def bash_complete(line: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> list[str]:
    bash = _tool("bash")
    out = subprocess.run([bash, "--norc", "--noprofile", "-c", BASH_DRIVER, "bash", str(BASH_COMPLETION), line],
                         capture_output=True, text=True, timeout=10, cwd=cwd or REPO, env=env)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    return [w for w in out.stdout.splitlines() if w]


def _choices(name: str) -> set[str]:
    return set(next(o for o in OPTIONS if o.name == name).choices)


@pytest.mark.parametrize(("line", "expected"), [
    ("sandboxer r", {"run"}),
    ("sandboxer ch", {"check"}),
    ("sandboxer run --ne", {"--net"}),
    ("sandboxer run --no-p", {"--no-pid"}),
    ("sandboxer explain --sh", {"--shell"}),
])
def test_bash_completes_words(line: str, expected: set[str]) -> None:
    got = set(bash_complete(line))
    assert expected <= got, got
    prefix = line.rsplit(" ", 1)[1]
    assert all(w.startswith(prefix) for w in got), got


def test_bash_completes_choices() -> None:
    assert set(bash_complete("sandboxer run --net ")) == _choices("net") >= {"host", "none"}
    assert set(bash_complete("sandboxer run --map ")) == _choices("map") == {"self", "root", "auto", "keep-id"}
    assert set(bash_complete("sandboxer explain --home t")) == {"tmpfs"}


def test_bash_completes_an_option_by_its_command() -> None:
    """--user is idmap's user NAME (completed from the passwd database) and run's UID[:GID]."""
    assert "root" in bash_complete("sandboxer idmap --user ro")
    assert bash_complete("sandboxer run --user ro") == []
    assert set(bash_complete("sandboxer idmap --scheme ")) == {"rootless", "remap"}
    assert {"--host", "--scheme", "--map", "--user"} <= set(bash_complete("sandboxer idmap --"))
    assert bash_complete("sandboxer idmap 10") == []  # an id: nothing to offer


def test_bash_options_follow_the_subcommand() -> None:
    assert "--shell" not in bash_complete("sandboxer run --s")
    assert bash_complete("sandboxer check --n") == []


def test_bash_completes_profiles(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text("")
    (tmp_path / "b.txt").write_text("")
    (tmp_path / "sub").mkdir()
    assert set(bash_complete("sandboxer run ", tmp_path)) == {"a.toml", "sub"}
    assert bash_complete("sandboxer run a", tmp_path) == ["a.toml"]
    assert set(bash_complete("sandboxer check a.toml ", tmp_path)) == {"a.toml", "sub"}
    assert "b.txt" in bash_complete("sandboxer run --bind ", tmp_path)
    assert bash_complete("sandboxer run --cwd ", tmp_path) == ["sub"]


def test_bash_completes_the_command_to_run(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text("")
    assert "bash" in bash_complete("sandboxer run -- bas", tmp_path)
    assert "bash" in bash_complete("sandboxer run a.toml bas", tmp_path)
    assert "bash" in bash_complete("sandboxer run --net none bas", tmp_path)
    # after the command starts, its own arguments are not sandboxer's options
    assert "--net" not in bash_complete("sandboxer run -- make --n", tmp_path)


def test_bash_completes_env_names() -> None:
    assert "HOME" in bash_complete("sandboxer run --keep-env HO")


# --- zsh and fish: they parse; fish's completions are queried for real


def test_zsh_completion_parses() -> None:
    zsh = _tool("zsh")
    out = subprocess.run([zsh, "-n", str(REPO / "completions" / "_sandboxer")], capture_output=True,
                         text=True, timeout=10)
    assert out.returncode == 0 and out.stderr == "", out.stderr


def test_fish_completion_parses() -> None:
    fish = _tool("fish")
    out = subprocess.run([fish, "--no-execute", str(REPO / "completions" / "sandboxer.fish")],
                         capture_output=True, text=True, timeout=10)
    assert out.returncode == 0 and out.stderr == "", out.stderr


def fish_complete(line: str, cwd: Path) -> list[str]:
    fish = _tool("fish")
    script = 'source $argv[1]; complete -C $argv[2]'
    out = subprocess.run([fish, "--no-config", "-c", script, str(REPO / "completions" / "sandboxer.fish"),
                          line], capture_output=True, text=True, timeout=10, cwd=cwd)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    return [w.split("\t")[0] for w in out.stdout.splitlines()]


def test_fish_completes(tmp_path: Path) -> None:
    (tmp_path / "a.toml").write_text("")
    (tmp_path / "b.txt").write_text("")
    assert "run" in fish_complete("sandboxer r", tmp_path)
    assert fish_complete("sandboxer run --ne", tmp_path) == ["--net"]
    assert set(fish_complete("sandboxer run --map ", tmp_path)) == {"self", "root", "auto", "keep-id"}
    assert "--shell" in fish_complete("sandboxer explain --sh", tmp_path)
    assert fish_complete("sandboxer check ", tmp_path) == ["a.toml"]
    assert "root" in fish_complete("sandboxer idmap --user ro", tmp_path)
    assert fish_complete("sandboxer run --user ro", tmp_path) == []


def _with_sandboxer(home: Path) -> dict[str, str]:
    """A shell environment where `sandboxer` is on PATH and HOME has a profile of its own."""
    from .conftest import BIN

    mine = home / ".config" / "sandboxer" / "profiles"
    mine.mkdir(parents=True, exist_ok=True)
    (mine / "mine.toml").write_text("")
    return {**os.environ, "PATH": f"{BIN.parent}:{os.environ.get('PATH', '/usr/bin:/bin')}", "HOME": str(home)}


def test_bash_completes_profile_names_and_set_keys(home: Path, tmp_path: Path) -> None:
    env = _with_sandboxer(home)
    assert "clean-home" in bash_complete("sandboxer run cle", tmp_path, env)
    assert bash_complete("sandboxer run mi", tmp_path, env) == ["mine"]
    assert "clean-home" in bash_complete("sandboxer check cle", tmp_path, env)
    assert "clean-home" in bash_complete("sandboxer run --profile cle", tmp_path, env)
    # a profile's name, then options, then the command after --
    assert "--net" in bash_complete("sandboxer run clean-home --ne", tmp_path, env)
    assert "bash" in bash_complete("sandboxer run clean-home -- bas", tmp_path, env)
    got = set(bash_complete("sandboxer run --set home.", tmp_path, env))
    assert got == {"home.mode=host", "home.mode=tmpfs", "home.size="}
    assert set(bash_complete("sandboxer run --set namespaces.pid", tmp_path, env)) == {
        "namespaces.pid=true", "namespaces.pid=false"}


def test_fish_completes_profile_names(home: Path, tmp_path: Path) -> None:
    fish = _tool("fish")
    env = _with_sandboxer(home)
    script = 'source $argv[1]; complete -C $argv[2]'
    for line, expected in (("sandboxer run mi", "mine"), ("sandboxer run --set network.mode=", "network.mode=pasta")):
        out = subprocess.run([fish, "--no-config", "-c", script, str(REPO / "completions" / "sandboxer.fish"), line],
                             capture_output=True, text=True, timeout=10, cwd=tmp_path, env=env)
        assert out.returncode == 0 and out.stderr == "", out.stderr
        assert expected in [w.split("\t")[0] for w in out.stdout.splitlines()], out.stdout



def test_the_generated_bash_passes_shellcheck() -> None:
    shellcheck = _tool("shellcheck")
    out = subprocess.run([shellcheck, "-s", "bash", str(BASH_COMPLETION)], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
