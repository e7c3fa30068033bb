"""Bounded retries: exponential back-off with jitter inside a per-push time budget.

gspread's own ``BackOffHTTPClient`` never gives up (it sleeps up to 128 s, again and again); a
push must end well inside its interval so the next one can run. Here every attempt gets a
timeout no longer than what is left of the budget, and a back-off that would not end inside the
budget is not slept: the push gives up with ``OutOfBudget`` and the next push starts afresh.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

T = TypeVar("T")

BASE_DELAY_S = 0.5
MAX_DELAY_S = 8.0


@dataclass
class Budget:
    """Seconds one push may spend in sheet requests, retries and back-off included.

    Only time inside sheet calls counts (polling the fleet between the read and the write does
    not), so a push's sheet work ends within ``seconds`` plus at most one request's overrun.
    """

    seconds: float
    spent: float = 0.0
    attempts: int = 0  # HTTP requests made, retries included

    def remaining(self) -> float:
        return self.seconds - self.spent

    def restart(self) -> None:
        self.spent = 0.0


class OutOfBudget(Exception):
    """Transient failures went on past the budget; ``last`` is the final one."""

    def __init__(self, last: BaseException, tries: int, spent: float) -> None:
        super().__init__(str(last))
        self.last = last
        self.tries = tries
        self.spent = spent


@dataclass
class Retry:
    budget: Budget
    timeout_s: float
    # Exception → None when it is final, else the least seconds to wait (Retry-After) before
    # the next try.
    transient: Callable[[BaseException], float | None]
    sleep: Callable[[float], None] = time.sleep
    clock: Callable[[], float] = time.monotonic
    rand: Callable[[], float] = field(default=random.random)

    def call(
        self,
        attempt: Callable[[float], T],
        transient: Callable[[BaseException], float | None] | None = None,
    ) -> T:
        """Run ``attempt(timeout)`` until it succeeds, fails for good, or the budget is spent.
        ``transient`` overrides which failures are retried (e.g. for a request that must not
        be sent twice: only those that surely did not reach the server)."""
        retryable = transient or self.transient
        tries = 0
        last: BaseException | None = None
        while True:
            remaining = self.budget.remaining()
            if remaining <= 0:
                spent = TimeoutError("no time left in this push's budget for the sheet")
                raise OutOfBudget(last or spent, tries, self.budget.spent)
            started = self.clock()
            tries += 1
            self.budget.attempts += 1
            try:
                return attempt(min(self.timeout_s, remaining))
            except Exception as e:
                wait = retryable(e)
                if wait is None:
                    raise
                last = e
            finally:
                self.budget.spent += self.clock() - started
            delay = max(wait, self.backoff(tries))
            if delay >= self.budget.remaining():
                raise OutOfBudget(last, tries, self.budget.spent)
            self.sleep(delay)
            self.budget.spent += delay

    def backoff(self, tries: int) -> float:
        """0.5, 1, 2, 4, 8, 8 … s, each scaled by a random factor in [0.5, 1) (jitter)."""
        ceiling = min(MAX_DELAY_S, BASE_DELAY_S * 2 ** (tries - 1))
        return ceiling * (0.5 + self.rand() / 2)
