"""Checks shared by the tests of deploy/systemd: parse a unit, verify it, measure its exposure,
and run a program under the kernel's MemoryDenyWriteExecute (the rule the units switch on)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

SYSTEMD_ANALYZE = shutil.which("systemd-analyze")


def unit_settings(unit: Path) -> dict[str, list[str]]:
    """Key → every value it is given in the unit file (sections ignored)."""
    settings: dict[str, list[str]] = {}
    for line in unit.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            settings.setdefault(key, []).append(value)
    return settings


def verify(*units: Path) -> subprocess.CompletedProcess:
    assert SYSTEMD_ANALYZE, "systemd-analyze not found: apt-get install systemd"
    return subprocess.run(
        [SYSTEMD_ANALYZE, "verify", *map(str, units)], capture_output=True, text=True
    )


def exposure(unit: Path) -> float:
    """`systemd-analyze security --offline=yes`'s overall exposure level of the unit."""
    assert SYSTEMD_ANALYZE, "systemd-analyze not found: apt-get install systemd"
    done = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
    )
    found = re.search(
        rf"Overall exposure level for {re.escape(unit.name)}: (\d+\.\d+)", done.stdout
    )
    assert found, done.stdout + done.stderr
    return float(found.group(1))


def under_mdwe(module: str) -> str:
    """`python -c` code running `module.main(argv)` under the kernel's MemoryDenyWriteExecute
    (Linux 6.3+): PR_SET_MDWE with PR_MDWE_REFUSE_EXEC_GAIN refuses writable+executable
    mappings for this process and its children, as systemd's seccomp filter does."""
    return f"""
import ctypes, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.prctl(65, 1, 0, 0, 0) != 0:
    sys.exit("PR_SET_MDWE failed (errno %d): this test needs Linux 6.3 or newer"
             % ctypes.get_errno())
from {module} import main
sys.exit(main(sys.argv[1:]))
"""
