"""The snapshot store: the daemon's latest Report in ``<state_dir>/report.json``.

The daemon writes it every interval (``write_snapshot``, atomically: readers see the old file or
the new one); `gpumon-agent report` reads it (``read_snapshot``: the bytes as they are, for the
fast path in gpumon_agent.entry), and ``latest_report`` gives a Report for those who want one —
the snapshot when fresh, else one sampled now (``sample_once``, ``source="oneshot"`` and a note
saying why).

Freshness is the file's mtime: the daemon rewrites the file every interval, also when a sample
fails (keeping the last good values, with a note), so the mtime says whether a daemon is alive,
while ``generated_at`` says how old the values are.

Must stay importable on Python 3.8, and cheap to import (the fast path reads through it): module
level imports os and time only (``TYPE_CHECKING`` is spelled out so that not even typing is
loaded).
"""

from __future__ import annotations

import os
import time

TYPE_CHECKING = False
if TYPE_CHECKING:  # pragma: no cover
    from typing import Optional, Tuple

    from gpumon_agent.report import Report
    from gpumon_agent.settings import AgentSettings

# Never follow a symlink planted at report.json, never hang on a FIFO there.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC

# A snapshot larger than this is not ours (the Report reader refuses it too).
_MAX_SNAPSHOT_BYTES = 1024 * 1024


# --- writing (the daemon) ---------------------------------------------------------------------


def write_snapshot(settings: AgentSettings, report: Report) -> None:
    from gpumon_agent.atomic import write_atomic

    write_atomic(settings.snapshot_path, (report.to_json() + "\n").encode("utf-8"))


# --- reading (the `report` command, the poller for local servers) ----------------------------


def read_snapshot(
    settings: AgentSettings, now: Optional[float] = None
) -> Tuple[Optional[bytes], bool, str]:
    """``(data, fresh, why)``: the snapshot's bytes, ending in a newline (``None`` when there is
    none, or it is not a report), whether it is fresh, and when not, the note the one-shot
    Report carries ("no agent daemon running: sampled once", …). A stale snapshot's bytes still
    come back: they tell the one-shot sample how long claimed GPUs have been idle."""
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
    if not data.endswith(b"\n"):
        data += b"\n"  # printed as is: one line
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
    from gpumon_agent.compose import ReportComposer
    from gpumon_agent.report import SOURCE_ONESHOT, Report, ReportError

    previous = None
    if stale is not None:
        try:
            previous = Report.from_json(stale)
        except ReportError:
            pass
    composer = ReportComposer(settings, oneshot=True, previous=previous)
    try:
        report = composer.compose()
    finally:
        composer.close()  # the poller calls this in a long-lived process: release NVML
    report.source = SOURCE_ONESHOT
    report.notes.insert(0, note)
    return report
