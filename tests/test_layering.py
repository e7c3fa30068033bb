"""Commands above libraries: nothing in gpumon/poll/, gpumon/sheet/, gpumon/fleet.py, the
config, or the agent's library modules prints, reads argv or stdin, exits, or writes a file other
than through gpumon_agent.atomic. The commands do: gpumon/cli.py, push, serve, status, check,
trust (and their table), and the agent's cli.py and entry.py (the console script).

The layer order itself — commands ← gpumon.fleet ← gpumon.sheet ← gpumon.poll ← the agent — is
import-linter's to check ([tool.importlinter] in pyproject.toml, run by scripts/test.sh), and
import cycles ../shared/tools/import_cycles.py's; both are run here too, so a plain pytest sees
them."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
AGENT = REPO / "agent" / "gpumon_agent"
# The agent's commands; every other module of the agent is its library.
AGENT_COMMANDS = {"cli.py", "entry.py", "__main__.py"}

CALLS = {"print", "input", "exit", "quit", "breakpoint"}
SYS_NAMES = {"argv", "stdin", "stdout", "stderr", "exit", "orig_argv"}
# Writing files: only gpumon_agent.atomic does it (atomic_file / write_atomic).
WRITERS = {"write_text", "write_bytes"}
MOVERS = {("os", "replace"), ("os", "rename"), ("os", "_exit"), ("shutil", "move")}

# (module, what): the few uses that are not what the rule is about, each with its reason.
ALLOWED = {
    # The default job name of a claim is this process's own command line, read through psutil;
    # argv is the fallback when /proc cannot be read. It names the process, it is not parsed.
    ("gpumon_agent/hook.py", "sys.argv"),
    # The helper itself.
    ("gpumon_agent/atomic.py", "os.replace"),
    # A damaged last-seen file is moved aside (kept for the admin), not written.
    ("gpumon/poll/lastseen.py", "os.replace"),
    # The same for an old gpu-times.json (read once, then its times live in the database).
    ("gpumon/usetimes.py", "os.replace"),
    # A corrupt history database is moved aside (kept for the admin), not written.
    ("gpumon/statedb.py", "os.replace"),
    # A damaged alert database is moved aside (with its -wal and -shm), not written.
    ("gpumon/alerts/state.py", "os.replace"),
}


def library_modules() -> list[Path]:
    central = [
        *sorted((REPO / "gpumon" / "poll").rglob("*.py")),
        *sorted((REPO / "gpumon" / "sheet").rglob("*.py")),
        *sorted((REPO / "gpumon" / "history").rglob("*.py")),
        *sorted((REPO / "gpumon" / "alerts").rglob("*.py")),
        REPO / "gpumon" / "fleet.py",
        REPO / "gpumon" / "gpustate.py",
        REPO / "gpumon" / "usetimes.py",
        REPO / "gpumon" / "statedb.py",
        REPO / "gpumon" / "config.py",
        REPO / "gpumon" / "keyfile.py",
    ]
    agent = [p for p in sorted(AGENT.rglob("*.py")) if p.name not in AGENT_COMMANDS]
    return [p for p in central + agent if "__pycache__" not in p.parts]


def offences(path: Path) -> list[str]:
    """What in ``path`` prints, reads argv/stdin, exits or writes a file, as "line: what"."""
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in CALLS:
                found.append((node.lineno, f"{func.id}()"))
            if isinstance(func, ast.Name) and func.id == "open" and _writes(node):
                found.append((node.lineno, "open() for writing"))
            if isinstance(func, ast.Attribute) and func.attr in WRITERS:
                found.append((node.lineno, f".{func.attr}()"))
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            if node.value.id == "sys" and node.attr in SYS_NAMES:
                found.append((node.lineno, f"sys.{node.attr}"))
            if (node.value.id, node.attr) in MOVERS:
                found.append((node.lineno, f"{node.value.id}.{node.attr}"))
        if isinstance(node, ast.ImportFrom) and node.module == "sys":
            for alias in node.names:
                if alias.name in SYS_NAMES:
                    found.append((node.lineno, f"sys.{alias.name}"))
        if isinstance(node, ast.Name) and node.id == "SystemExit":
            found.append((node.lineno, "SystemExit"))
    where = _shown(path)
    return [
        f"{where}:{line}: {what}" for line, what in sorted(found) if (where, what) not in ALLOWED
    ]


def _shown(path: Path) -> str:
    """``gpumon_agent/…`` for the agent, ``gpumon/…`` for the central side (as in ALLOWED)."""
    for base in (AGENT.parent, REPO):
        if base in path.parents:
            return path.relative_to(base).as_posix()
    return path.name


def _writes(call: ast.Call) -> bool:
    mode = call.args[1] if len(call.args) > 1 else None
    for keyword in call.keywords:
        if keyword.arg == "mode":
            mode = keyword.value
    if mode is None:
        return False
    if not isinstance(mode, ast.Constant) or not isinstance(mode.value, str):
        return True  # a computed mode: assume the worst
    return any(c in mode.value for c in "wax+")


def test_library_modules_never_print_read_argv_exit_or_write_files_directly():
    modules = library_modules()
    problems = [problem for path in modules for problem in offences(path)]

    assert len(modules) > 40  # the walk found the tree
    assert problems == [], "move these into a command (see this file's docstring):\n" + "\n".join(
        problems
    )


def test_the_check_finds_what_it_looks_for(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text(
        "import sys, os\n"
        "from sys import argv\n"
        "print('x')\n"
        "data = sys.stdin.read()\n"
        "open('f', 'w')\n"
        "open('f', mode='rb')\n"  # reading is fine
        "os.replace('a', 'b')\n"
        "try:\n    pass\nexcept SystemExit:\n    pass\n"
    )

    found = [line.split(": ", 1)[1] for line in offences(sample)]

    assert found == [
        "sys.argv",
        "print()",
        "sys.stdin",
        "open() for writing",
        "os.replace",
        "SystemExit",
    ]


@pytest.mark.skipif(shutil.which("lint-imports", path=str(Path(sys.executable).parent)) is None,
                    reason="import-linter is not installed (the test extra)")  # fmt: skip
def test_the_layer_contracts_hold():
    done = subprocess.run(
        [str(Path(sys.executable).with_name("lint-imports")), "--no-cache"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr


def test_there_are_no_import_cycles():
    tool = REPO.parent / "shared" / "tools" / "import_cycles.py"
    if not tool.exists():
        pytest.skip(f"{tool} not found: the shared tools live beside this clone")
    done = subprocess.run(
        [sys.executable, str(tool), ".", "agent/gpumon_agent", "gpumon", "kws/kws"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stdout
    assert done.stdout.strip().endswith(" 0 import cycle(s)")
