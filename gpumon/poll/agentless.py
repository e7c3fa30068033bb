"""Reading a server without the agent: nvidia-smi, ps, hostname and /proc/loadavg over SSH.

Used when ``[poll] agentless = true`` and the agent is not installed. One exec runs a small
POSIX sh script whose sections are parsed here into a Report with source "agentless" — no
claims, no health checks, no utilization means: the result is marked degraded.

A key restricted with ``command="gpumon-agent report --json"`` cannot run this (sshd runs the
forced command instead): the fallback needs a key without the forced command.
"""

from __future__ import annotations

from gpumon.poll import result as codes
from gpumon.poll.answer import trim
from gpumon.poll.transport import CommandOutput, PollFailure
from gpumon_agent.report import (
    SOURCE_AGENTLESS,
    Gpu,
    GpuProcess,
    Host,
    Nvml,
    Report,
    utc_iso,
)

GPU_FIELDS = (
    "index,uuid,name,pci.bus_id,utilization.gpu,memory.used,memory.total,"
    "temperature.gpu,power.draw,power.limit"
)
APP_FIELDS = "gpu_uuid,pid,used_memory"
APPS_QUERY = "nvidia-smi --query-compute-apps"
MIB = 1024 * 1024

# Section markers cannot collide with nvidia-smi/ps output: they start with "@@" on a line.
SCRIPT = f"""export LC_ALL=C
echo @@hostname; hostname
echo @@loadavg; cat /proc/loadavg
echo @@nproc; getconf _NPROCESSORS_ONLN
echo @@gpus; nvidia-smi --query-gpu={GPU_FIELDS} --format=csv,noheader,nounits 2>&1
echo "@@rc $?"
apps=$(nvidia-smi --query-compute-apps={APP_FIELDS} --format=csv,noheader,nounits 2>&1)
rc=$?
echo @@apps; printf '%s\\n' "$apps"; echo "@@rc $rc"
pids=$(printf '%s\\n' "$apps" | awk -F', *' '$2 ~ /^[0-9]+$/ {{printf "%s%s", s, $2; s=","}}')
echo @@ps
[ -n "$pids" ] && ps -o pid=,user:32=,args= -p "$pids" | cut -c1-400
exit 0
"""

NOTE = (
    "agentless: read through nvidia-smi and ps (gpumon-agent not installed) — "
    "no claims, no health checks, instant utilization only"
)


def build_report(out: CommandOutput, peer_ip: str | None) -> Report:
    """The Report the script's output describes; PollFailure when there is no nvidia-smi."""
    if out.exit_status == 127:  # the script never ran: sshd ran the key's forced command again
        raise PollFailure(
            codes.AGENT_MISSING,
            f"agent not installed ({trim(out.stderr) or 'exit 127'}); the agentless read needs a "
            "key without a forced command (deploy/ssh/README.md)",
            "exec",
        )
    if out.too_large or out.exit_status != 0:
        raise PollFailure(
            codes.AGENT_FAILED,
            f"agentless read failed (exit {out.exit_status}): {trim(out.stderr)}",
            "read",
        )
    sections = _sections(out.stdout.decode("utf-8", "replace"))
    gpu_lines, gpu_rc = _with_rc(sections.get("gpus", []))
    if gpu_rc == 127:
        raise PollFailure(
            codes.AGENT_MISSING,
            "agent not installed, and no nvidia-smi for the agentless read either "
            "— install gpumon-agent on the server",
            "exec",
        )
    host = Host(
        hostname=_first(sections.get("hostname")) or "?",
        primary_ip=peer_ip,
        load_avg=_load(sections.get("loadavg")),
        cpu_count=_int(_first(sections.get("nproc"))),
    )
    report = Report(
        generated_at=utc_iso(),
        host=host,
        source=SOURCE_AGENTLESS,
        notes=[NOTE],
        nvml=Nvml(available=gpu_rc == 0),
    )
    if gpu_rc != 0:
        report.nvml.error = "nvidia-smi failed: " + trim("\n".join(gpu_lines))
        report.nvml.error_code = "nvidia_smi_failed"
        return report
    report.gpus = [_gpu(line, number) for number, line in enumerate(gpu_lines, 1)]
    users = _processes(sections.get("ps", []))
    app_lines, app_rc = _with_rc(sections.get("apps", []))
    if app_rc != 0:  # unknown, not "none": every GPU's processes stay None, saying why
        why = f"{APPS_QUERY} failed: " + (trim("\n".join(app_lines)) or f"exit {app_rc}")
        for gpu in report.gpus:
            gpu.processes, gpu.processes_error = None, why
        return report
    for gpu in report.gpus:
        gpu.processes = []
    by_uuid = {g.uuid: g for g in report.gpus}
    for line in app_lines:
        cells = [c.strip() for c in line.split(",")]
        gpu = by_uuid.get(cells[0]) if len(cells) == 3 else None
        if gpu is None:
            continue  # "No running processes found" and the like
        if not cells[1].isdigit():  # "[Not Supported]": this GPU cannot list its processes
            gpu.processes, gpu.processes_error = None, f"{APPS_QUERY}: {trim(cells[1], 60)}"
            continue
        if gpu.processes is None:
            continue
        pid = int(cells[1])
        used = _float(cells[2])
        user, command = users.get(pid, ("?", "?"))
        gpu.processes.append(
            GpuProcess(
                pid=pid,
                gpu_memory_bytes=int(used * MIB) if used is not None else None,
                user=user,
                command=command,
            )
        )
    return report


def _sections(text: str) -> dict[str, list[str]]:
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines():
        if line.startswith("@@") and not line.startswith("@@rc "):
            current = sections.setdefault(line[2:].strip(), [])
        elif current is not None and line.strip():
            current.append(line.rstrip())
    return sections


def _with_rc(lines: list[str]) -> tuple[list[str], int]:
    if lines and lines[-1].startswith("@@rc "):
        return lines[:-1], _int(lines[-1][5:]) or 0
    return lines, 0


def _gpu(line: str, number: int) -> Gpu:
    cells = [c.strip() for c in line.split(",")]
    if len(cells) != 10 or _int(cells[0]) is None:
        raise PollFailure(
            codes.BAD_OUTPUT,
            f"agentless: nvidia-smi GPU line {number} unreadable: {trim(line, 120)!r}",
            "read",
        )
    used, total = _float(cells[5]), _float(cells[6])
    return Gpu(
        index=int(cells[0]),
        uuid=cells[1] or None,
        name=cells[2] or None,
        pci_bus_id=cells[3] or None,
        utilization_pct=_float(cells[4]),
        memory_used_bytes=int(used * MIB) if used is not None else None,
        memory_total_bytes=int(total * MIB) if total is not None else None,
        temperature_c=_float(cells[7]),
        power_w=_float(cells[8]),
        power_limit_w=_float(cells[9]),
    )


def _processes(lines: list[str]) -> dict[int, tuple[str, str]]:
    found: dict[int, tuple[str, str]] = {}
    for line in lines:
        parts = line.split(None, 2)
        if len(parts) >= 2 and parts[0].isdigit():
            found[int(parts[0])] = (parts[1], parts[2] if len(parts) > 2 else "?")
    return found


def _first(lines: list[str] | None) -> str | None:
    return lines[0].strip() if lines else None


def _load(lines: list[str] | None) -> list[float] | None:
    parts = (_first(lines) or "").split()
    values = [_float(p) for p in parts[:3]]
    return [v for v in values if v is not None] if len(values) == 3 and None not in values else None


def _float(text: str | None) -> float | None:
    # nvidia-smi writes "[N/A]" / "[Not Supported]" for what a GPU cannot report.
    try:
        return float(text) if text is not None else None
    except ValueError:
        return None


def _int(text: str | None) -> int | None:
    try:
        return int(text) if text is not None else None
    except ValueError:
        return None
