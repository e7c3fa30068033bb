"""Logging a condition that lasts (a failing sample, a full disk, an unsafe claims registry) once
per change of state — when it starts, when its message changes, when it ends — never once per
sample: a daemon sampling every 2 s would otherwise fill the journal with one line per tick.

Must stay importable on Python 3.8.
"""

from __future__ import annotations

import logging
from typing import Dict, Tuple, Union

log = logging.getLogger("gpumon_agent")


def describe(error: Union[BaseException, str]) -> str:
    """The error as one stable line: an OSError without its file name (temporary names differ
    at every try, and would make every repeat look new)."""
    if isinstance(error, str):
        return error
    if isinstance(error, OSError) and error.strerror:
        return f"{type(error).__name__}: {error.strerror} (errno {error.errno})"
    return f"{type(error).__name__}: {error}"


class StateLog:
    """Per condition ``what`` ("sample", "writing /run/gpumon/report.json", …): ``failed`` logs
    an error the first time and whenever the message changes (an exception's traceback with
    it), ``ok`` logs once that it works again."""

    def __init__(self, logger: logging.Logger = log) -> None:
        self.logger = logger
        self.failing: Dict[str, Tuple[str, int]] = {}  # what -> (message, failures so far)

    def failed(self, what: str, error: Union[BaseException, str]) -> None:
        message = f"{what} failed: {describe(error)}"
        last, count = self.failing.get(what, ("", 0))
        self.failing[what] = (message, count + 1)
        if message != last:
            exc_info = error if isinstance(error, BaseException) else None
            self.logger.error("%s", message, exc_info=exc_info)

    def ok(self, what: str) -> None:
        last = self.failing.pop(what, None)
        if last is not None:
            self.logger.info("%s works again after %d failure(s)", what, last[1])

    def is_failing(self, what: str) -> bool:
        return what in self.failing
