"""Where the agent keeps its files, and its tunables: defaults, overridden by environment.

The agent has no config file (it must run on Python 3.8 with only nvidia-ml-py and psutil);
the systemd unit sets these variables, command-line flags override them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping, Optional

DEFAULT_STATE_DIR = "/run/gpumon"


@dataclass
class AgentSettings:
    state_dir: str = DEFAULT_STATE_DIR
    claims_dir: Optional[str] = None  # None: <state_dir>/claims
    interval_s: float = 2.0  # daemon sampling period
    window_s: float = 60.0  # window of the utilization means
    idle_after_s: float = 600.0  # a claimed GPU with no process this long is "claimed but idle"
    max_age_s: float = 10.0  # a snapshot older than this is stale: `report` samples itself

    @property
    def claims_path(self) -> str:
        return self.claims_dir or os.path.join(self.state_dir, "claims")

    @property
    def snapshot_path(self) -> str:
        return os.path.join(self.state_dir, "report.json")

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None) -> AgentSettings:
        env = os.environ if environ is None else environ
        state_dir = env.get("GPUMON_STATE_DIR") or DEFAULT_STATE_DIR
        return cls(
            state_dir=state_dir,
            claims_dir=env.get("GPUMON_CLAIMS_DIR") or None,
            interval_s=_float(env, "GPUMON_INTERVAL", 2.0),
            window_s=_float(env, "GPUMON_WINDOW", 60.0),
            idle_after_s=_float(env, "GPUMON_IDLE_AFTER", 600.0),
            max_age_s=_float(env, "GPUMON_MAX_AGE", 10.0),
        )


def _float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = float(raw)
    except ValueError:
        raise SystemExit(
            f"gpumon-agent: {name}={raw!r} is not a number (unset it or give seconds)"
        ) from None
    if value <= 0:
        raise SystemExit(f"gpumon-agent: {name}={raw!r} must be positive")
    return value
