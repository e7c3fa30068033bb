"""The README's repository map names every module where it lives (and none that is gone)."""

from __future__ import annotations

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = [
    "agent/gpumon_agent",
    "gpumon",
    "gpumon/poll",
    "gpumon/sheet",
    "gpumon/history",
    "gpumon/alerts",
]
# Backquoted words in the rows that name commands or functions, not modules.
COMMAND_WORDS = {"claim", "claims", "run", "run_claimed", "ssh"}  # agent subcommands


def rows() -> dict[str, str]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    table = text[text.index("## Repository") :]
    return {m[1]: m[2] for m in re.finditer(r"^\| `([^`]+)/` \| (.*) \|$", table, re.M)}


def test_every_module_is_in_its_row_and_every_name_there_exists():
    found = rows()
    for package in PACKAGES:
        row = found[package]
        named = set(re.findall(r"`([a-z_]+)/?`", row))
        modules = {
            p.stem if p.is_file() else p.name
            for p in (REPO / package).iterdir()
            if (p.suffix == ".py" and not p.stem.startswith("__"))
            or (p.is_dir() and (p / "__init__.py").exists())
        }
        if package == "gpumon":
            modules -= {"poll", "sheet", "history", "alerts"}  # rows of their own
        assert modules - named == set(), f"{package}: not in the README's map"
        subpackages = [p for p in (REPO / package).iterdir() if (p / "__init__.py").exists()]
        gone = {
            n
            for n in named - modules - COMMAND_WORDS
            if not any((sub / f"{n}.py").exists() for sub in subpackages)
        }
        assert gone == set(), f"{package}: the README names modules that do not exist"
