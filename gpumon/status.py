"""`gpumon status`: poll the fleet and print a table (or JSON for scripts).

One row per GPU: server, ON/OFF with the reason, IP, then the GPU's utilization, memory, who
runs what, the claims (jobs) and its health. On a terminal: coloured (utilization and memory by
how loaded the GPU is; --color and NO_COLOR as in gpumon.table), fitted to its width, and a
progress line on stderr while a slow sweep runs; plain and full-width when piped.
`gpumon status --watch` (gpumon.watch) redraws the same table.

Exit status: 0 every server ON, 1 some server OFF, 2 nothing to poll.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from typing import TextIO

from gpumon.config import Config
from gpumon.poll import result as codes
from gpumon.poll.result import ServerResult, human_duration
from gpumon.sheet.cells import format_job, format_memory, format_util, running_cell
from gpumon.table import Cell, format_table, is_terminal, terminal_width, use_color
from gpumon_agent.health import in_gpu_error, processes_unknown
from gpumon_agent.report import GPU_LOST, GPU_OK, Gpu, parse_utc_iso, utc_iso

HEADERS = ["SERVER", "STATE", "IP", "GPU", "UTIL", "MEMORY", "RUNNING", "JOB", "HEALTH"]
MAX_WIDTHS = {0: 24, 1: 50, 2: 39, 6: 48, 7: 40}  # column index → characters
KEEP = (3, 4, 5)  # GPU, UTIL, MEMORY: never narrowed to fit a terminal
BUSY_PCT, FULL_PCT = 50.0, 90.0  # utilization / memory use: green below, yellow, red from


def status(
    config: Config,
    as_json: bool = False,
    names: list[str] | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Poll ``names`` (default: the config's servers) and print them.

    ``names`` is the hook for callers that know more servers (e.g. the sheet's Server column).
    """
    from gpumon.fleet import open_fleet

    out = out or sys.stdout
    err = err or sys.stderr
    names = list(config.servers) if names is None else names
    if not names:
        return nothing_to_poll(config, err)
    progress = Progress(err, len(names)) if is_terminal(err) else None
    with open_fleet(config) as fleet:
        results = fleet.poller().sweep(names, progress=progress.update if progress else None)
    if progress:
        progress.clear()
    if as_json:
        json.dump(to_json(results), out, indent=2)
        out.write("\n")
    else:
        print(render_table(results, color=use_color(out), width=terminal_width(out)), file=out)
    return 0 if all(r.on for r in results) else 1


def nothing_to_poll(config: Config, err: TextIO) -> int:
    """Say there is nothing to poll; exit status 2."""
    print(
        f"gpumon status: no servers in {config.origin} — add [servers.NAME] tables "
        "(`gpumon push` also polls the names in the sheet)",
        file=err,
    )
    return 2


def to_json(results: list[ServerResult]) -> dict[str, object]:
    return {"polled_at": utc_iso(), "servers": [dataclasses.asdict(r) for r in results]}


def render_table(results: list[ServerResult], color: bool = False, width: int | None = None) -> str:
    """The fleet table; ``width``: fit it into that many terminal columns."""
    rows: list[list[Cell]] = []
    for result in results:
        rows.extend(_server_rows(result))
    return format_table(HEADERS, rows, color=color, max_widths=MAX_WIDTHS, width=width, keep=KEEP)


def util_style(gpu: Gpu) -> str | None:
    """Red for a GPU that is not OK; else by utilization: green, yellow from BUSY_PCT, red from
    FULL_PCT; none when unknown."""
    if gpu.state != GPU_OK:
        return "red"
    value = gpu.utilization_mean_pct
    if value is None:
        value = gpu.utilization_pct
    return None if value is None else _load_style(value)


def memory_style(gpu: Gpu) -> str | None:
    used, total = gpu.memory_used_bytes, gpu.memory_total_bytes
    if used is None or not total:
        return None
    return _load_style(100.0 * used / total)


def _load_style(pct: float) -> str:
    if pct >= FULL_PCT:
        return "red"
    return "yellow" if pct >= BUSY_PCT else "green"


def _server_rows(result: ServerResult) -> list[list[Cell]]:
    name = Cell(result.name)
    report = result.report
    if not result.on or report is None:
        seen = f"last seen {_ago(result.last_seen_on)}" if result.last_seen_on else "never seen ON"
        state = Cell(f"OFF {result.reason or result.reason_code or ''}".strip(), "red")
        ip = Cell(result.address or "")
        return [[name, state, ip, *_blank(5), Cell(seen, "dim")]]
    if result.reason_code:  # stale, agentless: ON, but look closer
        state = Cell(f"ON ({_short_reason(result)})", "yellow")
    else:
        state = Cell("ON", "green")
    ip = Cell(report.host.primary_ip or result.address or "")
    server_health = _server_health(result)
    if not report.gpus:
        why = "no GPUs" if report.nvml.available else ""
        return [[name, state, ip, Cell(why), *_blank(4), _health_cell(server_health)]]
    rows = []
    for i, gpu in enumerate(report.gpus):
        issues = (server_health if i == 0 else []) + _gpu_health(result, gpu)
        first = i == 0
        rows.append(
            [
                name if first else Cell(""),
                state if first else Cell(""),
                ip if first else Cell(""),
                Cell(str(gpu.index)),
                Cell(format_util(gpu), util_style(gpu)),
                Cell(format_memory(gpu), memory_style(gpu)),
                Cell(running_cell(gpu)),
                Cell(format_job(gpu.claims)),
                _health_cell(issues),
            ]
        )
    return rows


def _blank(n: int) -> list[Cell]:
    return [Cell("") for _ in range(n)]


def _health_cell(issues: list[str]) -> Cell:
    return Cell("; ".join(issues), "yellow") if issues else Cell("OK", "green")


def _short_reason(result: ServerResult) -> str:
    if result.reason_code == codes.AGENTLESS:
        return "agentless"
    if result.reason_code == codes.AGENT_STALE:
        return "agent stale"
    return result.reason_code or ""


def _server_health(result: ServerResult) -> list[str]:
    report = result.report
    assert report is not None
    issues = []
    if result.reason_code == codes.AGENT_STALE and result.reason:
        issues.append(result.reason)
    if result.degraded:
        dcgm_only = result.reason_code == codes.DCGM_ONLY
        issues.append((result.reason or "") if dcgm_only else "no agent: read through nvidia-smi")
    if not report.nvml.available:
        issues.append(f"NVML: {report.nvml.error or 'unavailable'}")
    # NVML trouble is said once, above (the agent also words it as a warning).
    issues += [
        w.message for w in report.warnings if w.gpu_index is None and w.code != "nvml_unavailable"
    ]
    return issues


def _gpu_health(result: ServerResult, gpu: Gpu) -> list[str]:
    assert result.report is not None
    issues = []
    if gpu.state != GPU_OK:
        issues.append(f"{gpu.state}: {gpu.error}" if gpu.error else gpu.state)
    warnings = [w for w in result.report.warnings if w.gpu_index == gpu.index]
    issues += [w.message for w in warnings]
    unknown = processes_unknown(gpu)
    said = in_gpu_error(gpu) or any(w.code == "gpu_processes_unknown" for w in warnings)
    if unknown and gpu.state != GPU_LOST and not said:  # e.g. agentless: why Running says "?"
        issues.append(unknown)
    if gpu.unclaimed_use:
        issues.append("used without a claim")
    if gpu.claimed_idle:
        issues.append("claimed but idle")
    return issues


def _ago(iso: str) -> str:
    try:
        moment = parse_utc_iso(iso)
    except ValueError:
        return iso
    seconds = max(0.0, time.time() - moment.timestamp())
    local = moment.astimezone().strftime("%Y-%m-%d %H:%M:%S")
    return f"{local} ({human_duration(seconds)} ago)"


class Progress:
    """ "polling: 12/64 answered, 2 OFF" on one stderr line, rewritten in place."""

    def __init__(self, stream: TextIO, total: int) -> None:
        self.stream, self.total, self.off = stream, total, 0
        self.started = time.monotonic()
        self._write(f"polling {total} servers…")

    def update(self, done: int, total: int, result: ServerResult) -> None:
        self.off += not result.on
        elapsed = time.monotonic() - self.started
        off = f", {self.off} OFF" if self.off else ""
        self._write(f"polling: {done}/{total} answered{off} ({elapsed:.1f} s)")

    def clear(self) -> None:
        self._write("")

    def _write(self, text: str) -> None:
        self.stream.write("\r\033[K" + text)
        self.stream.flush()
