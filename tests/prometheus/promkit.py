"""What the Prometheus tests share: reading a sheet back by (server, GPU) row, and the
`gpumon` command of this venv."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from gpumon.config import Config
from gpumon.sheet.backends import open_backend
from gpumon.sheet.layout import read_layout

GPUMON = Path(sys.executable).with_name("gpumon")


def gpumon(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`gpumon ARGS…` run for real."""
    return subprocess.run(
        [str(GPUMON), *args], capture_output=True, text=True, errors="replace", timeout=timeout
    )


def sheet_rows(config: Config) -> dict[tuple[str, int | None], dict[str, str]]:
    """{(server, GPU index or None for the name row): {header: text}} of the config's sheet."""
    backend = open_backend(config)
    try:
        grid = backend.read()
    finally:
        backend.close()
    layout = read_layout(grid, config.sheet.columns)
    headers = {col: grid.cell(layout.header_row, col) for col in range(grid.width)}
    rows: dict[tuple[str, int | None], dict[str, str]] = {}
    for block in layout.blocks:
        by_row = {row: index for index, row in block.gpu_rows.items()}
        for row in block.rows():
            key = (block.server, by_row.get(row))
            rows[key] = {h: grid.cell(row, col) for col, h in headers.items() if h}
    return rows
