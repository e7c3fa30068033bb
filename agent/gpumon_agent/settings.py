"""Where the agent keeps its files, and its tunables: defaults, overridden by environment.

The agent has no config file (it must run on Python 3.8 with only nvidia-ml-py and psutil);
the systemd unit sets these variables, command-line flags override them. Every value, from
either, goes through ``AgentSettings.checked`` here: finite numbers within the bounds below, or a
``SettingsError`` that names the variable (or flag) and says what to give. Library code raises
it (a trainer's ``with claim()`` gets a ClaimError carrying it, never SystemExit); commands
print it.

    variable             flag            default  bounds (seconds)
    GPUMON_STATE_DIR     --state-dir     /run/gpumon
    GPUMON_CLAIMS_DIR    --claims-dir    STATE_DIR/claims
    GPUMON_INTERVAL      --interval      2        0.1 .. 3600
    GPUMON_WINDOW        --window        60       1 .. 86400
    GPUMON_IDLE_AFTER    --idle-after    600      1 .. 2678400 (31 days)
    GPUMON_MAX_AGE       --max-age       10       0.1 .. 86400

    switch                      flag                   default  values
    GPUMON_METRICS_DCGM_NAMES   --metrics-dcgm-names   off      1/true/yes/on, 0/false/no/off

``GPUMON_METRICS_DCGM_NAMES`` is what docs/metrics.md calls ``[metrics] dcgm_names`` (the agent
has no config file): /metrics also carries dcgm-exporter's names and labels.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Any, Dict, Mapping, Optional, Tuple

DEFAULT_STATE_DIR = "/run/gpumon"
MAX_PATH_CHARS = 4096  # PATH_MAX

# field -> (variable, flag, default, lowest, highest)
BOUNDS: Dict[str, Tuple[str, str, float, float, float]] = {
    "interval_s": ("GPUMON_INTERVAL", "--interval", 2.0, 0.1, 3600.0),
    "window_s": ("GPUMON_WINDOW", "--window", 60.0, 1.0, 86400.0),
    "idle_after_s": ("GPUMON_IDLE_AFTER", "--idle-after", 600.0, 1.0, 31 * 86400.0),
    "max_age_s": ("GPUMON_MAX_AGE", "--max-age", 10.0, 0.1, 86400.0),
}
# field -> (variable, flag, default): on/off settings.
SWITCHES: Dict[str, Tuple[str, str, bool]] = {
    "metrics_dcgm_names": ("GPUMON_METRICS_DCGM_NAMES", "--metrics-dcgm-names", False),
}
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
PATHS: Dict[str, Tuple[str, str]] = {
    "state_dir": ("GPUMON_STATE_DIR", "--state-dir"),
    "claims_dir": ("GPUMON_CLAIMS_DIR", "--claims-dir"),
}


class SettingsError(ValueError):
    """A setting is out of bounds or not a number; the message names it and what to give."""


@dataclass
class AgentSettings:
    state_dir: str = DEFAULT_STATE_DIR
    claims_dir: Optional[str] = None  # None: <state_dir>/claims
    interval_s: float = 2.0  # daemon sampling period
    window_s: float = 60.0  # window of the utilization means
    idle_after_s: float = 600.0  # a claimed GPU with no process this long is "claimed but idle"
    max_age_s: float = 10.0  # a snapshot older than this is stale: `report` samples itself
    metrics_dcgm_names: bool = False  # /metrics also under dcgm-exporter's names

    @property
    def claims_path(self) -> str:
        return self.claims_dir or os.path.join(self.state_dir, "claims")

    @property
    def snapshot_path(self) -> str:
        return os.path.join(self.state_dir, "report.json")

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None) -> AgentSettings:
        """The settings the environment gives (defaults for what it leaves unset or empty).
        Raises SettingsError naming the variable."""
        env = os.environ if environ is None else environ
        values: Dict[str, Any] = {}
        for name, (variable, _flag, _default, _low, _high) in BOUNDS.items():
            raw = env.get(variable)
            if raw:
                values[name] = _number(raw, variable)
        for name, (variable, _flag) in PATHS.items():
            raw = env.get(variable)
            if raw:
                values[name] = raw
        for name, (variable, _flag, _default) in SWITCHES.items():
            raw = env.get(variable)
            if raw:
                values[name] = _switch(raw, variable)
        return cls().checked(values, flags=False)

    def checked(self, changes: Mapping[str, Any], flags: bool = True) -> AgentSettings:
        """A copy with ``changes`` applied, each checked; errors name the flag (``flags``) or
        the variable. Raises SettingsError."""
        for name, value in changes.items():
            if name in BOUNDS:
                variable, flag, _default, low, high = BOUNDS[name]
                where = flag if flags else variable
                if not isinstance(value, (int, float)) or isinstance(value, bool):
                    raise SettingsError(f"{where}={value!r}: not a number of seconds")
                if not math.isfinite(value) or not low <= value <= high:
                    raise SettingsError(
                        f"{where}={value!r}: give seconds from {low:g} to {high:g}"
                        f" (default {_default:g})"
                    )
            elif name in SWITCHES:
                if not isinstance(value, bool):
                    where = SWITCHES[name][1 if flags else 0]
                    raise SettingsError(f"{where}={value!r}: give on or off")
            elif name in PATHS:
                where = PATHS[name][1 if flags else 0]
                if not isinstance(value, str) or "\0" in value or len(value) > MAX_PATH_CHARS:
                    raise SettingsError(f"{where}: not a usable path ({str(value)[:80]!r}…)")
            else:
                raise SettingsError(f"unknown agent setting {name!r}")
        return dataclasses.replace(self, **changes)


def _switch(raw: str, variable: str) -> bool:
    word = raw.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise SettingsError(
        f"{variable}={raw[:80]!r}: give 1 (or true, yes, on) or 0 (or false, no, off), or unset it"
    )


def _number(raw: str, variable: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise SettingsError(
            f"{variable}={raw[:80]!r} is not a number (unset it or give seconds)"
        ) from None
