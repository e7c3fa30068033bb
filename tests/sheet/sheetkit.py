"""Sheet test kit: the lab's sheet (the seed fixture) as a Grid, poll results built by hand."""

from __future__ import annotations

import json
import time
from pathlib import Path

import openpyxl
from openpyxl.styles import Font, PatternFill

from gpumon.poll.result import ServerResult
from gpumon.sheet.grid import Grid, Merge
from gpumon.sheet.layout import server_key
from gpumon_agent.report import Gpu, GpuProcess, Host, Nvml, Report
from harness.paths import SEED_SHEET

SEED = SEED_SHEET
SEED_SERVERS = [
    "hcpbsp", "ganbsp", "trlbsp", "glpbsp", "ecbsp", "lstmbbsp",
    "relbsp", "drlbsp", "mlbsp", "annbsp", "sigbsp", "grubsp",
]  # fmt: skip
GIB = 2**30


def seed_grid() -> Grid:
    data = json.loads(SEED.read_text(encoding="utf-8"))
    merges = [
        Merge(m["startRowIndex"], m["endRowIndex"], m["startColumnIndex"], m["endColumnIndex"])
        for m in data["merges"]
    ]
    return Grid(
        title=data["sheetTitle"],
        time_zone=data["timeZone"],
        values=[list(row) for row in data["values"]],
        merges=merges,
        sheet_id=0,
    )


def gpu(index: int, util: float = 0.0, used_gib: float = 0.0, **kwargs) -> Gpu:
    kwargs.setdefault("processes", [])  # listed, and none (None would be "unknown")
    return Gpu(
        index=index,
        uuid=f"GPU-{index:08d}",
        name="NVIDIA GeForce GTX 1080 Ti",
        utilization_pct=util,
        utilization_mean_pct=util,
        memory_used_bytes=int(used_gib * GIB),
        memory_total_bytes=11 * GIB,
        **kwargs,
    )


def on(
    name: str,
    gpus: list[Gpu] | None = None,
    ip: str = "192.0.2.10",
    polled_at: str = "2019-03-14T06:26:45Z",
    **kwargs,
) -> ServerResult:
    report = Report(
        generated_at=polled_at,
        host=Host(hostname=name, primary_ip=ip),
        nvml=Nvml(available=True, driver_version="535.104.05"),
        gpus=list(gpus or []),
    )
    return ServerResult(
        name=name, destination=f"{ip}:22", on=True, polled_at=polled_at, report=report, **kwargs
    )


def off(
    name: str,
    reason: str = "timed out at connect (3 s)",
    last_seen_on: str | None = None,
    polled_at: str = "2019-03-14T06:30:00Z",
) -> ServerResult:
    return ServerResult(
        name=name,
        destination="192.0.2.10:22",
        on=False,
        polled_at=polled_at,
        reason_code="timeout",
        reason=reason,
        stage="connect",
        last_seen_on=last_seen_on,
    )


def process(user: str, command: str, pid: int = 4242) -> GpuProcess:
    return GpuProcess(pid=pid, user=user, command=command, gpu_memory_bytes=GIB)


def apply(grid: Grid, writes) -> Grid:
    """The grid as a backend would leave it after ``writes`` (rows by index)."""
    for write in writes:
        while len(grid.values) <= write.row:
            grid.values.append([])
        line = grid.values[write.row]
        while len(line) <= write.col:
            line.append("")
        line[write.col] = str(write.value)
    return grid


def with_status_columns(grid: Grid) -> Grid:
    """The seed with gpumon's added header cells (as after the first push's Setup)."""
    grid.values[6] += ["GPU util", "GPU memory", "Running", "Job", "Health", "State"]
    return grid


def people_edit(path: Path) -> None:
    """What a lab member does to the workbook by hand."""
    workbook = openpyxl.load_workbook(path)
    sheet = workbook.active
    sheet["C8"] = "Changha"
    sheet["C8"].font = Font(bold=True, color="FF0000")
    sheet["D9"] = "=1+1"  # a formula of theirs
    sheet["E8"] = "Changha's personal computer"
    sheet["E8"].fill = PatternFill("solid", fgColor="FFFF00")
    sheet.merge_cells("E8:E9")
    sheet.column_dimensions["E"].width = 33
    sheet.row_dimensions[8].height = 30
    sheet["O8"] = "their own column"
    other = workbook.create_sheet("Notes")
    other["A1"] = "meeting on Friday"
    workbook.save(path)


def snapshot(path: Path, owned_cols: set[int]) -> dict:
    """Every non-gpumon cell's value and style, merges, sizes and other sheets."""
    workbook = openpyxl.load_workbook(path, rich_text=True)
    out: dict = {"sheets": workbook.sheetnames}
    for sheet in workbook.worksheets:
        for row in sheet.iter_rows():
            for cell in row:
                if (
                    sheet is workbook.worksheets[0]
                    and cell.column - 1 in owned_cols
                    and (cell.row > 7)
                ):
                    continue
                if cell.value is None and not cell.has_style:
                    continue  # an empty cell, there only because the used range grew
                out[(sheet.title, cell.coordinate)] = (
                    cell.value, cell.data_type, repr(cell.font), repr(cell.fill),
                    repr(cell.border), cell.number_format, repr(cell.alignment),
                )  # fmt: skip
        out[(sheet.title, "merges")] = sorted(str(r) for r in sheet.merged_cells.ranges)
        out[(sheet.title, "widths")] = {k: v.width for k, v in sheet.column_dimensions.items()}
        out[(sheet.title, "heights")] = {k: v.height for k, v in sheet.row_dimensions.items()}
    return out


def seed_workbook(path: Path) -> Path:
    """The lab's sheet as an .xlsx, as a person would have typed it (GPU indices as numbers)."""
    grid = seed_grid()
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.title = grid.title
    for r, line in enumerate(grid.values, 1):
        for c, text in enumerate(line, 1):
            if text:
                sheet.cell(r, c, int(text) if c == 2 and text.isdigit() else text)
    sheet["A7"].font = Font(bold=True)
    for merge in grid.merges:
        sheet.merge_cells(
            start_row=merge.start_row + 1,
            end_row=merge.end_row,
            start_column=merge.start_col + 1,
            end_column=merge.end_col,
        )
    workbook.save(path)
    return path


class ScriptedPoller:
    """Stands in for the SSH poller (tested on its own with real sshd): answers each name from a
    script of results, optionally after a pause, and remembers what it was asked."""

    def __init__(self, results: list[ServerResult], pause: float = 0.0) -> None:
        self.results = {server_key(r.name): r for r in results}
        self.pause = pause
        self.swept: list[list[str]] = []

    def sweep(self, names: list[str]) -> list[ServerResult]:
        self.swept.append(list(names))
        time.sleep(self.pause)
        return [self.results.get(server_key(n)) or off(n, "not in the script") for n in names]

    def close(self) -> None:
        pass
