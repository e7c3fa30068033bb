"""The snapshot file (the daemon's latest Report) and the `report` command.

`gpumon-agent report --json` is what the central poller runs over SSH on every server, every
push, so its fast path — a fresh snapshot exists — only stats and copies a file: no pynvml, no
psutil, not even json. Only when there is no fresh snapshot does it sample once itself (through
``collect``) and say so in the Report (``source="oneshot"`` and a note).

Freshness is the file's mtime: the daemon rewrites the file every interval, also when a sample
fails (keeping the last good values, with a note), so the mtime says whether a daemon is alive,
while ``generated_at`` says how old the values are.

``main`` is the `gpumon-agent` console script: it answers `report --json` from a fresh snapshot
before the full CLI is imported (argparse, dataclasses and typing cost more than the rest of the
command together), and hands everything else to ``gpumon_agent.cli.main``.

Must stay importable on Python 3.8, and cheap to import: module level imports os, sys and time
only (``TYPE_CHECKING`` is spelled out so that not even typing is loaded).
"""

from __future__ import annotations

import os
import sys
import time

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from typing import List, Mapping, Optional, Tuple

    from gpumon_agent.report import Report
    from gpumon_agent.settings import AgentSettings

# Mirrors gpumon_agent.settings (imported only off the fast path; a test keeps them equal).
DEFAULT_STATE_DIR = "/run/gpumon"
DEFAULT_MAX_AGE_S = 10.0
MAX_AGE_BOUNDS = (0.1, 86400.0)
# Never follow a symlink planted at report.json, never hang on a FIFO there.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

# A snapshot larger than this is not ours (the Report reader refuses it too).
_MAX_SNAPSHOT_BYTES = 1024 * 1024


# --- writing (the daemon) ---------------------------------------------------------------------


def write_snapshot(settings: AgentSettings, report: Report) -> None:
    from gpumon_agent.atomic import write_atomic

    write_atomic(settings.snapshot_path, (report.to_json() + "\n").encode("utf-8"))


# --- reading (the `report` command, the poller for local servers) -----------------------------


def read_snapshot(
    settings: AgentSettings, now: Optional[float] = None
) -> Tuple[Optional[bytes], bool, str]:
    """``(data, fresh, why)``: the snapshot's bytes (``None`` when there is none, or it is not a
    report), whether it is fresh, and when not, the note the one-shot Report carries ("no agent
    daemon running: sampled once", …). A stale snapshot's bytes still come back: they tell the
    one-shot sample how long claimed GPUs have been idle."""
    path = settings.snapshot_path
    try:
        fd = os.open(path, _READ_FLAGS)
        try:
            st = os.fstat(fd)
            if st.st_mode & 0o170000 != 0o100000:  # not S_ISREG (stat is not imported here)
                return None, False, f"snapshot {path} is not a regular file: sampled once"
            if st.st_size > _MAX_SNAPSHOT_BYTES:
                why = f"snapshot {path} is {st.st_size} bytes, too big for a report: sampled once"
                return None, False, why
            data = os.read(fd, _MAX_SNAPSHOT_BYTES + 1)
        finally:
            os.close(fd)
    except FileNotFoundError:
        if not os.path.isdir(settings.state_dir):
            why = f"no agent daemon running ({settings.state_dir} does not exist): sampled once"
            return None, False, why
        return None, False, "no agent daemon running: sampled once"
    except OSError as e:
        return None, False, f"snapshot {path} unreadable ({e.strerror or e}): sampled once"

    # Written whole by rename, so only a foreign file fails this; the full check is the reader's.
    if not data.startswith(b"{") or not data.rstrip().endswith(b"}"):
        return None, False, f"snapshot {path} is not a report: sampled once"
    age = (time.time() if now is None else now) - st.st_mtime
    if age > settings.max_age_s:
        return data, False, f"snapshot {age:.0f} s old (daemon stopped?): sampled once"
    if age < -settings.max_age_s:
        why = f"snapshot dated {-age:.0f} s in the future (clock changed?): sampled once"
        return data, False, why
    return data, True, ""


def latest_report(settings: AgentSettings) -> Report:
    """The latest Report: the daemon's snapshot when fresh, else one sampled now (with a note).
    The central poller calls this in-process for `local = true` servers."""
    from gpumon_agent.report import Report, ReportError

    data, fresh, why = read_snapshot(settings)
    if data is not None and fresh:
        try:
            return Report.from_json(data)
        except ReportError as e:
            data, why = None, f"snapshot {settings.snapshot_path} unusable ({e}): sampled once"
    return sample_once(settings, why, data)


def sample_once(settings: AgentSettings, note: str, stale: Optional[bytes] = None) -> Report:
    """One Report sampled now, marked ``oneshot`` with ``note`` first among its notes."""
    from gpumon_agent.collect import Collector
    from gpumon_agent.report import SOURCE_ONESHOT, Report, ReportError

    previous = None
    if stale is not None:
        try:
            previous = Report.from_json(stale)
        except ReportError:
            pass
    collector = Collector(settings, oneshot=True, previous=previous)
    try:
        report = collector.collect()
    finally:
        collector.close()  # the poller calls this in a long-lived process: release NVML
    report.source = SOURCE_ONESHOT
    report.notes.insert(0, note)
    return report


def print_report(settings: AgentSettings, as_json: bool) -> int:
    """`gpumon-agent report [--json]`. The fast path copies a fresh snapshot to stdout as is."""
    try:
        if as_json:
            data, fresh, why = read_snapshot(settings)
            if data is not None and fresh:
                out = sys.stdout.buffer
                out.write(data if data.endswith(b"\n") else data + b"\n")
                out.flush()
                return 0
            report = sample_once(settings, why, data)
        else:
            report = latest_report(settings)
    except Exception as e:  # a bug or a broken install: say what; the poller shows it
        print(f"gpumon-agent report: could not sample: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    if as_json:
        sys.stdout.write(report.to_json() + "\n")
    else:
        sys.stdout.write(summarize(report))
    sys.stdout.flush()
    return 0


# --- the human summary ------------------------------------------------------------------------


def summarize(report: Report, now: Optional[float] = None) -> str:
    """A few lines for a person at a terminal; the poller reads --json instead."""
    from gpumon_agent.report import GPU_OK, parse_utc_iso

    h = report.host
    age = (time.time() if now is None else now) - parse_utc_iso(report.generated_at).timestamp()
    lines = [
        "{}{}  {} ({}, {:.0f} s ago)".format(
            h.hostname,
            "  " + h.primary_ip if h.primary_ip else "",
            report.generated_at,
            report.source,
            max(age, 0.0),
        )
    ]
    host_bits = []
    if h.load_avg:
        host_bits.append("load " + " ".join(f"{x:.2f}" for x in h.load_avg))
    if h.memory_total_bytes:
        host_bits.append(f"mem {_gib(h.memory_used_bytes)} / {_gib(h.memory_total_bytes)}")
    if h.users:
        host_bits.append("users " + ",".join(sorted({u.name for u in h.users})))
    if host_bits:
        lines.append("  " + "  ".join(host_bits))
    if report.nvml.available:
        lines.append("  NVML driver {}".format(report.nvml.driver_version or "?"))
    else:
        lines.append("  NVML unavailable: {}".format(report.nvml.error or "unknown error"))
    for g in report.gpus:
        head = "  GPU {} {}".format(g.index, g.name or "?")
        if g.state != GPU_OK:
            lines.append("{}  {}: {}".format(head, g.state.upper(), g.error or ""))
            continue
        bits = [head]
        if g.utilization_pct is not None:
            mean = g.utilization_mean_pct
            bits.append(
                f"util {g.utilization_pct:.0f}%"
                + (f" (mean {mean:.0f}%)" if mean is not None else "")
            )
        if g.memory_total_bytes:
            bits.append(f"mem {_gib(g.memory_used_bytes)} / {_gib(g.memory_total_bytes)}")
        if g.temperature_c is not None:
            bits.append(f"{g.temperature_c:.0f} C")
        if g.power_w is not None:
            bits.append(f"{g.power_w:.0f} W")
        lines.append("  ".join(bits))
        for p in g.processes or []:
            lines.append(f"      pid {p.pid} {p.user}: {_trim(p.command, 60)}")
        if g.processes_error:
            known = "unknown" if g.processes is None else "incomplete"
            lines.append(f"      processes {known}: {g.processes_error}")
        for c in g.claims:
            lines.append(f"      claimed by {c.user} for {c.job!r} (pid {c.pid})")
        if g.unclaimed_use:
            lines.append("      in use without a claim")
        if g.claimed_idle:
            lines.append("      claimed but idle since {}".format(g.idle_since or "?"))
    for w in report.warnings:
        where = f"GPU {w.gpu_index}: " if w.gpu_index is not None else ""
        lines.append(f"  warning {where}{w.message} ({w.code})")
    for e in report.claim_errors:
        lines.append(f"  bad claim file {e.path}: {e.error}")
    for n in report.notes:
        lines.append("  note: " + n)
    return "\n".join(lines) + "\n"


def _gib(n: Optional[int]) -> str:
    return "?" if n is None else f"{n / 2**30:.1f} GiB"


def _trim(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


# --- the console script's fast path -----------------------------------------------------------


class _FastSettings:
    """The two settings the fast path needs, duck-typed like AgentSettings."""

    def __init__(self, state_dir: str, max_age_s: float) -> None:
        self.state_dir = state_dir
        self.max_age_s = max_age_s

    @property
    def snapshot_path(self) -> str:
        return os.path.join(self.state_dir, "report.json")


def fast_report(argv: List[str], environ: Optional[Mapping[str, str]] = None) -> Optional[int]:
    """Print a fresh snapshot for `report --json [--state-dir D] [--claims-dir C] [--max-age N]`
    and return 0; ``None`` for any other command line, a value the full CLI must judge (it
    explains errors), or no fresh snapshot (the full CLI samples once)."""
    env = os.environ if environ is None else environ
    if not argv or argv[0] != "report" or "--json" not in argv:
        return None
    state_dir = env.get("GPUMON_STATE_DIR") or DEFAULT_STATE_DIR
    max_age = env.get("GPUMON_MAX_AGE") or ""
    rest = [a for a in argv[1:] if a != "--json"]
    while rest:
        flag, sep, value = rest.pop(0).partition("=")
        if flag not in ("--state-dir", "--claims-dir", "--max-age"):
            return None
        if not sep:
            if not rest:
                return None
            value = rest.pop(0)
        if flag == "--state-dir":
            state_dir = value
        elif flag == "--max-age":
            max_age = value
    try:
        max_age_s = float(max_age) if max_age else DEFAULT_MAX_AGE_S
    except ValueError:
        return None
    if not MAX_AGE_BOUNDS[0] <= max_age_s <= MAX_AGE_BOUNDS[1]:  # NaN fails this too
        return None  # the full CLI says what is wrong
    data, fresh, _why = read_snapshot(_FastSettings(state_dir, max_age_s))
    if data is None or not fresh:
        return None
    out = sys.stdout.buffer
    out.write(data if data.endswith(b"\n") else data + b"\n")
    out.flush()
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """The `gpumon-agent` command: the fast path, else the full CLI (gpumon_agent.cli)."""
    args = sys.argv[1:] if argv is None else list(argv)
    code = fast_report(args)
    if code is not None:
        return code
    from gpumon_agent.cli import main as cli_main

    return cli_main(args)
