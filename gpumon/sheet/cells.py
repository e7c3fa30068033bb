"""What each of gpumon's cells should say for one server's poll result. Pure: no I/O.

Short and readable in a cell: "ON", "2019-03-14 15:26:45", "37%", "3.2/24 GiB",
"lww: python train.py", "kws (lww) epoch 3/30", "lww: kws ch32 (CPU)",
"GPU 1 used without a claim (lww)".
Text that comes from the servers (user names, commands, job names) is passed through as is:
backends write it raw, so "=IMPORTXML(...)" stays text.
"""

from __future__ import annotations

import datetime as dt
import os
from dataclasses import dataclass, field
from typing import Any

from gpumon.poll.result import AGENT_STALE, DCGM_ONLY, ServerResult
from gpumon_agent.command import short_command
from gpumon_agent.health import in_gpu_error, processes_unknown
from gpumon_agent.report import (
    GPU_LOST,
    GPU_OK,
    ClaimInfo,
    Gpu,
    GpuProcess,
    HealthWarning,
    parse_utc_iso,
)
from gpumon_agent.text import cut

ON, OFF = "ON", "OFF"
CELL_LIMIT = 120  # characters in a per-GPU cell
HEALTH_LIMIT = 240
HEALTH_OK = "OK"
UNKNOWN = "?"


@dataclass
class ServerCells:
    """Desired text per column key. ``None``: leave the cell as it is."""

    server: dict[str, str | None]  # ip, status, time, health: one cell per server
    gpus: dict[int, dict[str, str]] = field(default_factory=dict)  # index → util, memory, ...
    absent: dict[str, str] = field(default_factory=dict)  # a GPU row the server does not report
    state: dict[int, str] = field(default_factory=dict)  # GPU index (or PLAIN_ROW) → State
    cpu_jobs: str = ""  # the CPU-only claims: "lww: kws ch32 (CPU)", in the name row's Job cell

    def gpu_value(self, index: int, column: str, name_row: bool = False) -> str:
        """What the cell of ``column`` says in GPU ``index``'s row (PLAIN_ROW: the row of a
        block without GPU rows). ``name_row``: the row is the block's first, whose Job cell
        also names the server's CPU-only jobs."""
        if column == "state":
            return self.state.get(index, "")
        value = self.gpus.get(index, self.absent)[column]
        if column == "job" and name_row and self.cpu_jobs:
            return cut("; ".join(part for part in (value, self.cpu_jobs) if part), CELL_LIMIT)
        return value


@dataclass
class StateCells:
    """One server's State cells and the lines they add to its Health (gpumon.gpustate)."""

    gpus: dict[int, str] = field(default_factory=dict)  # GPU index (or PLAIN_ROW) → State
    health: list[str] = field(default_factory=list)  # "GPU 1: lww on Niv's reservation"


def render(
    result: ServerResult,
    tz: dt.tzinfo,
    sheet_gpus: set[int] | None = None,
    state: StateCells | None = None,
) -> ServerCells:
    """The cells of one server. ``sheet_gpus``: the GPU indices that have a row in the sheet;
    ``state``: its State cells (blank without)."""
    sheet_gpus = set() if sheet_gpus is None else sheet_gpus
    state = state or StateCells()
    blank = {"util": "", "memory": "", "running": "", "job": ""}
    report = result.report
    if not result.on or report is None:
        seen = format_time(result.last_seen_on, tz) if result.last_seen_on else None
        return ServerCells(
            server={
                "ip": None,  # the last known address stays
                "status": OFF,
                "time": seen,  # the last-seen time, never "now"; None keeps what is there
                "health": off_health(result, tz),
            },
            gpus={index: dict(blank) for index in sheet_gpus},
            absent=dict(blank),
            state=dict(state.gpus),
        )
    gpus = {
        gpu.index: {
            "util": format_util(gpu),
            "memory": format_memory(gpu),
            "running": cut(running_cell(gpu), CELL_LIMIT),
            "job": cut(format_job(gpu.claims), CELL_LIMIT),
        }
        for gpu in report.gpus
    }
    absent = dict(blank, util="not found") if report.nvml.available else dict(blank)
    return ServerCells(
        server={
            "ip": report.host.primary_ip or None,
            "status": ON,
            "time": format_time(result.polled_at, tz),
            "health": health(result, sheet_gpus, state.health),
        },
        gpus=gpus,
        absent=absent,
        state=dict(state.gpus),
        cpu_jobs=cut(format_cpu_jobs(report.cpu_claims), CELL_LIMIT),
    )


def off_health(result: ServerResult, tz: dt.tzinfo) -> str:
    """An OFF server's Health: why, and since when ("timed out at connect (3 s); OFF since
    2019-03-14 15:27:02") — the reason is cut, never the time."""
    reason = result.reason or result.reason_code or "unreachable"
    since = ""
    if result.off_since:
        try:
            since = f"; OFF since {format_time(result.off_since, tz)}"
        except ValueError:
            since = ""
    return cut(reason, CELL_LIMIT - len(since)) + since


def format_time(iso: str, tz: dt.tzinfo) -> str:
    """UTC ISO-8601 → "2019-03-14 15:26:45" in the sheet's time zone."""
    return parse_utc_iso(iso).astimezone(tz).strftime("%Y-%m-%d %H:%M:%S")


def format_util(gpu: Gpu) -> str:
    if gpu.state != GPU_OK:
        return gpu.state
    value = gpu.utilization_mean_pct
    if value is None:
        value = gpu.utilization_pct
    return "?" if value is None else f"{value:.0f}%"


def format_memory(gpu: Gpu) -> str:
    used, total = gpu.memory_used_bytes, gpu.memory_total_bytes
    if used is None or total is None:
        return "?"
    return f"{_gib(used)}/{_gib(total)} GiB"


def _gib(size: int) -> str:
    text = f"{size / 2**30:.1f}"
    return text[:-2] if text.endswith(".0") else text


def running_cell(gpu: Gpu) -> str:
    """The Running cell: "?" when NVML could not list the processes (Health says why) — never
    blank, which would read as "nobody" — and "; ?" after those listed when some are unknown."""
    if gpu.processes is None:
        return UNKNOWN
    text = format_running(gpu.processes)
    if gpu.processes_error:
        return f"{text}; {UNKNOWN}" if text else UNKNOWN
    return text


def format_running(processes: list[GpuProcess]) -> str:
    """ "lww: python train.py; niv: jupyter-lab ×2", one entry per user and program, sorted (so
    the cell does not change with the order NVML lists them in, and reads the same whether the
    processes came over SSH or as /metrics' per-user series)."""
    counts: dict[tuple[str, str], int] = {}
    for process in processes:
        key = (process.user, short_command(process.command))
        counts[key] = counts.get(key, 0) + 1
    entries = [(f"{user}: {program}", n) for (user, program), n in sorted(counts.items())]
    return "; ".join(entry if n == 1 else f"{entry} ×{n}" for entry, n in entries)


def format_job(claims: list[ClaimInfo]) -> str:
    """ "kws (lww) epoch 3/30, 41%" per claim."""
    parts = []
    for claim in claims:
        progress = format_progress(claim.progress)
        parts.append(f"{claim.job} ({claim.user})" + (f" {progress}" if progress else ""))
    return "; ".join(parts)


def format_cpu_jobs(claims: list[ClaimInfo]) -> str:
    """ "lww: kws ch32 (CPU); niv: preprocess (CPU)" — the seed's "Niv using CPU", one entry
    per CPU-only claim, sorted (the cell does not change with the registry's order)."""
    counts: dict[str, int] = {}
    for claim in claims:
        entry = f"{claim.user}: {claim.job} (CPU)"
        counts[entry] = counts.get(entry, 0) + 1
    return "; ".join(e if n == 1 else f"{e} ×{n}" for e, n in sorted(counts.items()))


def format_progress(progress: dict[str, Any]) -> str:
    """The trainer's progress dict, known keys first: epoch/epochs, step/steps, percent."""
    shown: list[str] = []
    rest = dict(progress)
    for count, total, label in (("epoch", "epochs", "epoch"), ("step", "steps", "step")):
        if count in rest:
            value = rest.pop(count)
            of = rest.pop(total, None)
            shown.append(f"{label} {_num(value)}" + (f"/{_num(of)}" if of is not None else ""))
    for key in ("percent", "pct"):
        if key in rest:
            shown.append(f"{_num(rest.pop(key))}%")
    shown.extend(f"{key} {_num(value)}" for key, value in rest.items())
    return ", ".join(shown)


def _num(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def health(result: ServerResult, sheet_gpus: set[int], conflicts: list[str] | None = None) -> str:
    """Everything a reader should know about an ON server, most urgent first; "OK" if nothing.
    ``conflicts``: per-GPU reservation conflicts ("GPU 1: lww on Niv's reservation")."""
    report = result.report
    assert report is not None
    items: list[str] = []
    if result.reason_code == AGENT_STALE:
        items.append(result.reason or "agent stale")
    dcgm_only = result.reason_code == DCGM_ONLY
    if result.degraded:
        items.append(
            (result.reason or DCGM_ONLY) if dcgm_only else "no agent (read through nvidia-smi)"
        )
    if not report.nvml.available:
        if report.nvml.error_code == "library_not_found":
            items.append("no NVIDIA driver")
        else:
            items.append(f"NVML: {report.nvml.error or 'unavailable'}")
    reported = {gpu.index for gpu in report.gpus}
    # The agent's own warnings (gpumon_agent.health) come first-hand; a GPU state they do not
    # cover (e.g. an agentless read) is described here. NVML trouble is said once, above.
    warned = {(w.code, w.gpu_index) for w in report.warnings}
    for gpu in report.gpus:
        if gpu.state == GPU_LOST and ("gpu_lost", gpu.index) not in warned:
            items.append(f"GPU {gpu.index} lost")
        elif gpu.state not in (GPU_OK, GPU_LOST) and ("gpu_error", gpu.index) not in warned:
            items.append(f"GPU {gpu.index}: {gpu.error or gpu.state}")
        unknown = processes_unknown(gpu)
        if (
            unknown
            and gpu.state != GPU_LOST
            and not dcgm_only
            and not _processes_warned(gpu, warned)
        ):
            items.append(unknown)  # why Running says "?" (dcgm-exporter's: said once, above)
    for warning in report.warnings:
        if warning.code == "nvml_unavailable":
            continue
        items.append(warning_text(warning))
    items.extend(conflicts or ())
    for gpu in report.gpus:
        if gpu.unclaimed_use:
            users = sorted({p.user for p in gpu.processes or []})
            items.append(f"GPU {gpu.index} used without a claim ({', '.join(users) or '?'})")
        if gpu.claimed_idle:
            jobs = ", ".join(c.job for c in gpu.claims) or "?"
            items.append(f"GPU {gpu.index} claimed but idle ({jobs})")
    no_row = sorted(reported - sheet_gpus)
    if no_row:
        items.append(f"{_gpu_list(no_row)} not in the sheet")
    if report.nvml.available:
        gone = sorted(sheet_gpus - reported)
        if gone:
            items.append(f"{_gpu_list(gone)} not found")
    for problem in report.claim_errors:
        items.append(f"bad claim file {os.path.basename(problem.path)}: {problem.error}")
    return cut("; ".join(items), HEALTH_LIMIT) if items else HEALTH_OK


def warning_text(warning: HealthWarning) -> str:
    """An agent's health warning as the sheet and the alerts say it: its message, with the GPU
    it concerns named when the message does not name it."""
    gpu_text = f"GPU {warning.gpu_index}"
    if warning.gpu_index is not None and gpu_text not in warning.message:
        return f"{gpu_text}: {warning.message}"
    return warning.message


def _processes_warned(gpu: Gpu, warned: set[tuple[str, int | None]]) -> bool:
    """Whether the agent's warnings already say why this GPU's processes are unknown."""
    if ("gpu_processes_unknown", gpu.index) in warned:
        return True
    return ("gpu_error", gpu.index) in warned and in_gpu_error(gpu)


def _gpu_list(indices: list[int]) -> str:
    return ("GPU " if len(indices) == 1 else "GPUs ") + ", ".join(str(i) for i in indices)
