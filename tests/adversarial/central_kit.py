"""What the central-side attack tests share: the sheet test kit (tests/sheet/sheetkit.py), the
`gpumon` command of this venv, and a config file written for a test."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]
if str(TESTS / "sheet") not in sys.path:  # sheetkit lives beside the sheet tests
    sys.path.insert(0, str(TESTS / "sheet"))

import sheetkit  # noqa: E402

GPUMON = Path(sys.executable).with_name("gpumon")
seed_workbook = sheetkit.seed_workbook
seed_grid = sheetkit.seed_grid
ScriptedPoller = sheetkit.ScriptedPoller
gpu, on, off, process = sheetkit.gpu, sheetkit.on, sheetkit.off, sheetkit.process
SEED_SERVERS = sheetkit.SEED_SERVERS


def gpumon(*args: str, env: dict | None = None, cwd: Path | None = None, timeout: float = 120):
    """`gpumon ARGS…` run for real; output decoded leniently (server text may hold any byte)."""
    return subprocess.run(
        [str(GPUMON), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        errors="replace",
        timeout=timeout,
    )


def no_traceback(done: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in done.stderr, done.stderr
