"""Sheet test kit: the lab's sheet (the seed fixture) as a Grid, poll results built by hand."""

from __future__ import annotations

import json
from pathlib import Path

from gpumon.poll.result import ServerResult
from gpumon.sheet.grid import Grid, Merge
from gpumon_agent.report import Gpu, GpuProcess, Host, Nvml, Report

SEED = Path(__file__).resolve().parent / "data" / "server-and-gpu-usage.json"
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
    grid.values[6] += ["GPU util", "GPU memory", "Running", "Job", "Health"]
    return grid
