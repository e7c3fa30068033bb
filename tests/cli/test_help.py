"""Every command's --help says what it does, its exit codes and an example; bash and zsh
complete gpumon's commands and options; `gpumon --version` and `kws --version` answer."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gpumon import __version__
from gpumon.cli import build_parser, main
from gpumon.help import COMMANDS

BIN = Path(sys.executable).parent
AGENT_COMMANDS = ("run", "report", "claim", "claims")


def subcommands() -> list[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return list(action.choices)


def help_of(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit) as done:
        main(argv)
    assert done.value.code == 0
    return capsys.readouterr().out


def sections(text: str) -> dict[str, str]:
    """The help's paragraphs keyed by their first line (usage, description, options, …)."""
    parts = [p for p in text.split("\n\n") if p.strip()]
    return {p.strip().splitlines()[0]: p for p in parts}


def assert_complete_help(text: str, name: str) -> None:
    parts = sections(text)
    usage, description = list(parts)[:2]
    assert usage.startswith("usage:"), text
    assert len(parts[description].split()) >= 5, f"{name}: no description\n{text}"
    exits = next((p for title, p in parts.items() if title.startswith("exit status")), None)
    assert exits is not None, f"{name}: no exit status\n{text}"
    assert re.search(r"\b\d{1,3}\b", exits), exits
    example = next((p for title, p in parts.items() if title.startswith("example")), None)
    assert example is not None and "gpumon" in example, f"{name}: no example\n{text}"


def test_the_walk_covers_every_command():
    assert set(subcommands()) == set(COMMANDS)
    assert {"push", "serve", "status", "check", "trust", "completion", "agent", "claim"} <= set(
        COMMANDS
    )


@pytest.mark.parametrize("name", subcommands())
def test_every_command_help_has_a_description_exit_codes_and_an_example(name, capsys):
    text = help_of([name, "--help"], capsys)
    assert_complete_help(text, name)
    if name in ("agent", "claim"):
        return  # the agent's own help: its exit codes are its commands'
    for code, _meaning in COMMANDS[name].exit_codes:
        assert re.search(rf"^\s+{code}\s", text, re.M), f"{name}: exit {code} not listed"
    assert re.search(r"^\s+130\s+interrupted", text, re.M)


@pytest.mark.parametrize("name", AGENT_COMMANDS)
def test_every_agent_command_help_has_them_too(name, capsys):
    assert_complete_help(help_of(["agent", name, "--help"], capsys), f"agent {name}")


def test_the_top_level_help_says_where_the_config_is_looked_for(capsys):
    text = help_of(["--help"], capsys)
    assert_complete_help(text, "gpumon")
    for place in ("--config", "$GPUMON_CONFIG", "$XDG_CONFIG_HOME", "/etc/gpumon/gpumon.toml"):
        assert place in text


def test_versions():
    done = subprocess.run([str(BIN / "gpumon"), "--version"], capture_output=True, text=True)
    assert done.stdout.strip() == f"gpumon {__version__}"
    done = subprocess.run([str(BIN / "kws"), "--version"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"kws \S+ \(gpumon-agent \S+, torch \S+\)", done.stdout.strip())


def completion(shell: str) -> str:
    done = subprocess.run(
        [str(BIN / "gpumon"), "completion", shell], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def bash(script: str) -> str:
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_bash_can_source_the_completion_and_completes_commands_and_options(tmp_path):
    script = tmp_path / "gpumon.bash"
    script.write_text(completion("bash"))
    assert bash(f"source {script} && complete -p gpumon").startswith("complete ")
    words = bash(
        f"source {script}; COMP_WORDS=(gpumon st); COMP_CWORD=1; _shtab_gpumon; "
        'echo "${COMPREPLY[@]}"'
    ).split()
    assert words == ["status"]
    options = bash(
        f"source {script}; COMP_WORDS=(gpumon status --w); COMP_CWORD=2; _shtab_gpumon; "
        'echo "${COMPREPLY[@]}"'
    ).split()
    assert options == ["--watch"]


def test_zsh_loads_the_completion_from_fpath(tmp_path):
    assert shutil.which("zsh"), "zsh not found: scripts/test.sh installs it (apt-get install zsh)"
    (tmp_path / "_gpumon").write_text(completion("zsh"))
    done = subprocess.run(
        ["zsh", "-fc", f"fpath=({tmp_path} $fpath); autoload -Uz compinit; "
         f"compinit -u -d {tmp_path}/dump; print -r -- ${{_comps[gpumon]}}"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.stdout.strip() == "_gpumon", done.stderr
    assert subprocess.run(["zsh", "-n", str(tmp_path / "_gpumon")]).returncode == 0


def test_an_unknown_shell_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as done:
        main(["completion", "fish"])
    assert done.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
