"""What one poll of one server gives: its Report (ON), or OFF with a reason."""

from __future__ import annotations

from dataclasses import dataclass, field

from gpumon_agent.report import Report

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
    degraded: bool = False  # agentless: read through nvidia-smi + ps
    elapsed_s: float = 0.0
    notes: list[str] = field(default_factory=list)
    address: str | None = None  # the IP actually dialled (None via ProxyJump to a name)
    reused: bool = False  # polled over a connection kept open from an earlier sweep


def human_duration(seconds: float) -> str:
    """A rough age for people: "45 s", "12 min", "5 h", "3 days"."""
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / 86400:.0f} days"
