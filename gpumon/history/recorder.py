"""What `gpumon push` and `gpumon serve` call after each push: record it in the history store
(and, at most once per ``[history] sheet_every_s``, rewrite the "GPU hours" worksheet).

The store never costs the push: whatever goes wrong (disk full, the database locked for longer
than the busy timeout, a corrupt file moved aside) comes back as warning lines, and the sheet
was written before any of it was tried.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from gpumon.config import Config
from gpumon.history.samples import ServerSample, samples_from_outcome
from gpumon.history.store import Retention, ensure, record
from gpumon.statedb import HistoryCorrupt, HistoryUnavailable, history_db


def retention(config: Config) -> Retention:
    return Retention.of(config)


def max_sample_s(config: Config) -> float:
    """The longest interval a push stands for: [history] max_sample_s, and never less than two
    of serve's intervals (a serve run with a long interval is not a string of gaps)."""
    return max(config.history.max_sample_s, 2 * config.serve.interval_s)


def record_samples(config: Config, servers: list[ServerSample], at: float) -> list[str]:
    """Record one push's samples; the warnings to show (none when all went well)."""
    if not config.history.enabled:
        return []
    warnings: list[str] = []
    try:
        with history_db(config) as conn:
            ensure(conn)
            record(
                conn,
                servers,
                at,
                max_sample_s=max_sample_s(config),
                retention=retention(config),
            )
    except HistoryCorrupt as e:
        warnings.append(f"history: {e}")
    except HistoryUnavailable as e:
        warnings.append(f"history: this push is not recorded: {e}")
    return warnings


def record_outcome(
    config: Config,
    outcome: Any,
    reservations: Mapping[tuple[str, int], Any] | None = None,
    at: float | None = None,
) -> list[str]:
    """Record a push's outcome (gpumon.fleet.PushOutcome; a dry run is not recorded).
    ``reservations``: by (server, GPU index); by default the outcome's own ``reservations``
    when it carries them."""
    if getattr(outcome, "dry_run", False) or not config.history.enabled:
        return []
    if reservations is None:
        reservations = getattr(outcome, "reservations", None)
    samples = samples_from_outcome(outcome, reservations)
    return record_samples(config, samples, time.time() if at is None else at)


def after_push(config: Config, outcome: Any, backend: Any = None) -> list[str]:
    """What a push does after writing the sheet: record the outcome, then rewrite the
    "GPU hours" worksheet if it is due. The warnings to show."""
    if getattr(outcome, "dry_run", False) or not config.history.enabled:
        return []
    now = time.time()
    try:
        warnings = record_outcome(config, outcome, at=now)
    except Exception as e:  # the sheet is written: a fault here must not fail the push
        warnings = [f"history: this push is not recorded ({type(e).__name__}: {e})"]
    if backend is not None and config.history.sheet:
        from gpumon.history.worksheet import maybe_write_worksheet

        try:
            warnings += maybe_write_worksheet(config, backend, now)
        except Exception as e:
            title = config.history.sheet_title
            warnings.append(f"history: worksheet {title!r} not written ({type(e).__name__}: {e})")
    return warnings
