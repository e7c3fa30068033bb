"""When each server was last seen ON, kept across processes (`gpumon push` runs from cron).

One small JSON file, ``{"NAME": "2019-03-14T06:26:45Z", ...}``, in the state directory. Writes
read, merge (the later time wins) and replace the file atomically while holding
``last-seen.json.lock``, so a concurrent `gpumon status` and a cron push never lose each other's
times. A damaged file is moved aside (not overwritten) with a warning naming it.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from gpumon.poll.result import ServerResult
from gpumon_agent.atomic import write_atomic
from gpumon_agent.filelock import FileLock, LockBusy, LockFileError
from gpumon_agent.report import parse_utc_iso

log = logging.getLogger(__name__)
LOCK_WAIT_S = 5.0  # another process merges in milliseconds; longer means it is stuck


class LastSeen:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.times: dict[str, str] = self._read()

    def get(self, name: str) -> str | None:
        return self.times.get(name)

    def update(self, seen: dict[str, str]) -> None:
        """Record ON times (UTC ISO) and persist them, merged with the file's current ones."""
        if not seen:
            return
        lock = FileLock(
            str(self.path.with_name(self.path.name + ".lock")), 0o600, timeout_s=LOCK_WAIT_S
        )
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with lock:
                merged = self._read()
                for name, when in {**self.times, **seen}.items():
                    if name not in merged or _later(when, merged[name]):
                        merged[name] = when
                self.times = merged
                text = json.dumps(dict(sorted(merged.items())), indent=1) + "\n"
                write_atomic(self.path, text.encode("utf-8"), mode=0o600)
        except (OSError, LockBusy, LockFileError) as e:
            self.times.update(seen)  # this process still knows them
            log.warning("%s: cannot save last-seen times (%s)", self.path, e)

    def _read(self) -> dict[str, str]:
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as e:
            log.warning("%s: cannot read last-seen times (%s)", self.path, e)
            return {}
        try:
            data = json.loads(text)
            if not isinstance(data, dict):
                raise ValueError("expected an object")
            for name, when in data.items():
                if not isinstance(when, str):
                    raise ValueError(f"{name!r}: expected a time string")
                parse_utc_iso(when)
            return dict(data)
        except ValueError as e:
            aside = self.path.with_name(f"{self.path.name}.bad-{int(time.time())}")
            try:
                os.replace(self.path, aside)
                moved = f"moved to {aside}"
            except OSError as move_error:
                moved = f"could not move it aside ({move_error})"
            log.warning("%s: damaged (%s); %s, starting afresh", self.path, e, moved)
            return {}


def remember(last_seen: LastSeen, results: dict[str, ServerResult]) -> None:
    """Record the ON results' times, and give every result its last-seen-ON time."""
    last_seen.update({name: r.polled_at for name, r in results.items() if r.on})
    for name, r in results.items():
        r.last_seen_on = r.polled_at if r.on else last_seen.get(name)


def _later(a: str, b: str) -> bool:
    try:
        return parse_utc_iso(a) > parse_utc_iso(b)
    except ValueError:
        return True
