"""Calls with a deadline: jobs run on a worker thread that is abandoned when one of their calls
overruns (gpumon_agent.nvml runs every NVML call through it: a wedged GPU or driver can block a
call for minutes).

A job is a function of one argument, the ``Job``; it makes each call that may hang through
``job.call(name, fn, *args)``. Calls are batched in jobs (for NVML: the library-wide part, then
one job per GPU) so that a batch costs one thread hand-off, not one per call. The deadline is
still per call: the job records which call is in flight and since when, and ``Caller.run``
gives up on the job when that call overruns — everything the job wrote is done by then, and its
worker writes nothing more (the next call it makes, or the hung call's return, raises
``Cancelled`` inside it). The abandoned thread is left to finish; until it returns, the same
call (name, subject) is refused at once (``CallTimeout(still=True)``) rather than issued again,
so hung threads never pile up, and ``max_hung`` bounds them in all.

Must stay importable on Python 3.8.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any, Callable, Dict, Optional, Tuple

# (call name, subject) -> monotonic time the overrunning call started.
HungCalls = Dict[Tuple[str, int], float]


class CallTimeout(Exception):
    """A call overran its deadline, or an earlier such call has not returned yet."""

    def __init__(self, function: str, seconds: float, still: bool = False) -> None:
        self.function = function
        self.seconds = seconds
        self.still = still
        if still:
            text = f"{function} has not returned for {seconds:.0f} s"
        else:
            text = f"{function} did not return within {seconds:g} s"
        super().__init__(text)


class Cancelled(BaseException):
    """The caller gave up on this job: its worker stops at once, touching nothing more.

    A BaseException so that no ``except Exception`` in the job's code can swallow it.
    """


class Job:
    """One batch of calls about one ``subject`` (for NVML: a GPU index, -1 for the library)."""

    def __init__(self, caller: Caller, subject: int, body: Callable[[Job], Any]) -> None:
        self.caller = caller
        self.subject = subject
        self.body = body
        self.done = threading.Event()
        self.result: Any = None
        self.error: Optional[BaseException] = None
        # Guarded by caller.lock:
        self.in_call: Optional[str] = None
        self.call_started = 0.0
        self.cancelled = False
        self.hung_key: Optional[Tuple[str, int]] = None

    def call(self, name: str, fn: Callable[..., Any], *args: Any) -> Any:
        """``fn(*args)`` under the deadline, on the worker thread. ``name`` says what is called
        (an NVML function's name): it keys the hung-call table and the CallTimeout message."""
        caller = self.caller
        key = (name, self.subject)
        with caller.lock:
            if self.cancelled:
                raise Cancelled()
            since = caller.hung.get(key)
            if since is not None:  # the same call is still stuck: do not add a second
                raise CallTimeout(name, caller.clock() - since, still=True)
            self.in_call = name
            self.call_started = caller.clock()
        try:
            return fn(*args)
        finally:
            with caller.lock:
                self.in_call = None
                cancelled = self.cancelled
            if cancelled:
                raise Cancelled()  # the result is no longer wanted


class _Worker:
    """A thread that runs jobs one at a time; abandoned (and then exits) if a job overruns."""

    def __init__(self, caller: Caller) -> None:
        self._caller = caller
        self._jobs: queue.Queue = queue.Queue()
        self.thread = threading.Thread(target=self._run, name=caller.thread_name, daemon=True)
        self.thread.start()

    def submit(self, job: Optional[Job]) -> None:
        self._jobs.put(job)

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            try:
                job.result = job.body(job)
            except Cancelled:
                pass
            except BaseException as e:  # handed to the caller, who decides
                job.error = e
            with self._caller.lock:
                job.done.set()
                if job.cancelled:  # the hung call returned at last; this thread retires
                    self._caller.hung.pop(job.hung_key, None)
                    return


class Caller:
    """Runs jobs on a worker thread; gives up on a job when one of its calls overruns
    ``timeout_s``. Not for concurrent ``run`` calls (the NVML reader holds its own lock).

    ``what`` names the calls in messages ("NVML"); ``clock`` is the monotonic clock the
    deadlines are measured on."""

    def __init__(
        self,
        timeout_s: float,
        max_hung: int,
        what: str = "blocking",
        thread_name: str = "gpumon-deadline",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.timeout_s = timeout_s
        self.max_hung = max_hung
        self.what = what
        self.thread_name = thread_name
        self.clock = clock
        self.lock = threading.Lock()
        self.hung: HungCalls = {}
        self._worker: Optional[_Worker] = None

    def run(self, subject: int, body: Callable[[Job], Any]) -> Any:
        """body(job)'s result, or what it raised. Raises CallTimeout if a call overran (what
        body wrote so far stays), or at once while ``max_hung`` calls have not returned."""
        with self.lock:
            if len(self.hung) >= self.max_hung:
                oldest = min(self.hung.values())
                raise CallTimeout(
                    f"{len(self.hung)} {self.what} calls (not calling {self.what} until they "
                    "return); the oldest",
                    self.clock() - oldest,
                    still=True,
                )
            if self._worker is None:
                self._worker = _Worker(self)
            worker = self._worker
        job = Job(self, subject, body)
        worker.submit(job)
        while not job.done.wait(self._patience(job)):
            with self.lock:
                if job.done.is_set():
                    break
                if job.in_call is None:
                    continue
                overrun = self.clock() - job.call_started
                if overrun < self.timeout_s:
                    continue
                job.cancelled = True
                job.hung_key = (job.in_call, subject)
                self.hung[job.hung_key] = job.call_started
                self._worker = None  # the next job gets a fresh thread
                raise CallTimeout(job.in_call, self.timeout_s)
        if job.error is not None:
            raise job.error
        return job.result

    def _patience(self, job: Job) -> float:
        """How long to wait before looking at the job's progress again."""
        with self.lock:
            if job.in_call is None:
                return min(self.timeout_s, 0.05)  # between calls: look again soon
            return max(0.001, job.call_started + self.timeout_s - self.clock())

    def hung_count(self) -> int:
        """Calls abandoned after their deadline that have not returned yet."""
        with self.lock:
            return len(self.hung)

    def close(self) -> None:
        """Let the current worker thread exit (an abandoned one exits when its call returns)."""
        with self.lock:
            worker, self._worker = self._worker, None
        if worker is not None:
            worker.submit(None)
