"""What one poll of one server gives: its Report (ON), or OFF with a reason."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from gpumon_agent.report import Report, parse_utc_iso

# Stable reason codes (the human text is in ServerResult.reason).
REFUSED = "refused"
UNREACHABLE = "unreachable"
TIMEOUT = "timeout"  # ServerResult.stage says which stage
AUTH_FAILED = "auth_failed"
HOST_KEY_UNKNOWN = "host_key_unknown"
HOST_KEY_CHANGED = "host_key_changed"
AGENT_MISSING = "agent_missing"
AGENT_FAILED = "agent_failed"
BAD_OUTPUT = "bad_output"
AGENT_STALE = "agent_stale"  # ON, but the Report is older than [poll] stale_after_s
AGENTLESS = "agentless"  # ON, read through nvidia-smi + ps (no agent): degraded
CONFIG_ERROR = "config_error"  # OFF: this server's entry (or its ssh config) is unusable
# [source] kind = "prometheus" (gpumon.poll.prometheus):
SOURCE_FAILED = "source_failed"  # OFF: Prometheus could not be asked (or answered nonsense)
NO_METRICS = "no_metrics"  # OFF: Prometheus holds no series for this server
SCRAPE_FAILED = "scrape_failed"  # OFF: Prometheus cannot scrape it (up == 0)
DCGM_ONLY = "dcgm_only"  # ON, from dcgm-exporter's metrics alone: no processes, users, claims


@dataclass
class ServerResult:
    name: str  # as in the sheet / config
    destination: str  # what was dialled: "user@host:port", or "local"
    on: bool
    polled_at: str  # UTC ISO-8601
    report: Report | None = None
    reason_code: str | None = None  # one of the codes above; None when ON and fresh
    reason: str | None = None  # short human text, e.g. "timed out at auth (5 s)"
    stage: str | None = None  # connect | banner | kex | auth | exec | read | local | sweep
    last_seen_on: str | None = None  # UTC ISO-8601 of the last ON poll, if ever
    off_since: str | None = None  # OFF: UTC ISO-8601 of the first failed poll (gpumon.alerts)
    degraded: bool = False  # agentless (nvidia-smi + ps), or dcgm-exporter's metrics alone
    elapsed_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    address: str | None = None  # the IP actually dialled (None via ProxyJump to a name)
    reused: bool = False  # polled over a connection kept open from an earlier sweep
    via: str = ""  # how the agent answered: gpumon.poll.stream's VIA_* ("" when not over SSH)
    # The forced command seen: "ssh" (the dispatcher), "report" (the old one), None (unknown).
    forced_command: str | None = None
    oneshot_why: str | None = None  # streams are on, yet it answered one-shot: why, what to do


def mark_stale(result: ServerResult, report: Report, stale_after_s: float) -> None:
    """AGENT_STALE (with the age in words) when ``report`` is older than ``stale_after_s``."""
    try:
        age = time.time() - parse_utc_iso(report.generated_at).timestamp()
    except ValueError:
        result.notes.append(f"report time {report.generated_at!r} unreadable")
        return
    if age > stale_after_s:
        result.reason_code = AGENT_STALE
        result.reason = (
            f"agent stale: its report is {human_duration(age)} old (limit {stale_after_s:g} s) "
            "— agent daemon stuck, or the server's clock is off"
        )


def human_duration(seconds: float) -> str:
    """A rough age for people: "45 s", "12 min", "5 h", "3 days"."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"
