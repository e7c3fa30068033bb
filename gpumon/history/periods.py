"""The periods `gpumon history` asks about: ``--since 7d`` (until now) and ``--week 2026-W48``
(an ISO week, Monday 00:00 to Monday 00:00 in the sheet's time zone)."""

from __future__ import annotations

import datetime as dt
import re

_SINCE = re.compile(r"^\s*(\d{1,5})\s*([mhdw])\s*$", re.IGNORECASE)
_WEEK = re.compile(r"^\s*(\d{4})-?W(\d{1,2})\s*$", re.IGNORECASE)
_UNIT_S = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
MAX_SPAN_S = 20 * 366 * 86400  # twenty years: anything longer is a typo


class PeriodError(ValueError):
    """A --since or --week the command cannot use (the message says what to write)."""


def since_period(text: str, now: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    """``7d``, ``36h``, ``2w``, ``90m`` before ``now``, or a date/time (``2026-11-23``,
    ``2026-11-23T08:00``, read in ``now``'s zone) until ``now``."""
    m = _SINCE.match(text)
    if m:
        span = int(m.group(1)) * _UNIT_S[m.group(2).lower()]
        if span <= 0 or span > MAX_SPAN_S:
            raise PeriodError(f"--since {text}: give a span from 1 m to 20 years")
        return now - dt.timedelta(seconds=span), now
    try:
        moment = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise PeriodError(
            f"--since {text[:40]!r}: write a span (7d, 36h, 2w, 90m) or a date "
            "(2026-11-23 or 2026-11-23T08:00)"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=now.tzinfo)
    if moment >= now:
        raise PeriodError(f"--since {text}: that is not in the past")
    if (now - moment).total_seconds() > MAX_SPAN_S:
        raise PeriodError(f"--since {text}: more than 20 years ago")
    return moment, now


def week_period(text: str, zone: dt.tzinfo) -> tuple[dt.datetime, dt.datetime]:
    """``2026-W48`` → its Monday 00:00 and the next Monday 00:00, in ``zone``."""
    m = _WEEK.match(text)
    if not m:
        raise PeriodError(f"--week {text[:40]!r}: write an ISO week, e.g. 2026-W48")
    try:
        monday = dt.date.fromisocalendar(int(m.group(1)), int(m.group(2)), 1)
    except ValueError as e:
        raise PeriodError(f"--week {text}: {e}") from None
    return week_of(monday, zone)


def week_of(day: dt.date, zone: dt.tzinfo) -> tuple[dt.datetime, dt.datetime]:
    """The ISO week holding ``day``: Monday 00:00 to the next Monday 00:00 in ``zone`` (a week
    with a clock change is an hour shorter or longer)."""
    monday = day - dt.timedelta(days=day.weekday())
    start = dt.datetime.combine(monday, dt.time(), tzinfo=zone)
    end = dt.datetime.combine(monday + dt.timedelta(days=7), dt.time(), tzinfo=zone)
    return start, end


def week_name(start: dt.datetime) -> str:
    year, week, _ = start.date().isocalendar()
    return f"{year}-W{week:02d}"


def zone_of(name: str | None) -> dt.tzinfo:
    """``[sheet] time_zone`` when set (and known here), else this machine's zone."""
    if name:
        try:
            from zoneinfo import ZoneInfo

            return ZoneInfo(name)
        except (ValueError, KeyError, OSError):
            pass
    local = dt.datetime.now().astimezone().tzinfo
    return local if local is not None else dt.timezone.utc
