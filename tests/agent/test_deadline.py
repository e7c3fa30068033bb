"""Calls with a deadline (gpumon_agent.deadline), with plain callables: what a job returns or
raises reaches the caller; a call that overruns is abandoned, its job writes nothing more, the
same call is not issued again until it returns, and hung threads are bounded."""

from __future__ import annotations

import operator
import threading

import pytest

from gpumon_agent.deadline import Caller, CallTimeout

# Long enough that no call that returns at once is taken for hung on a loaded CI host.
PATIENT_S = 10.0
# The deadline of the tests whose call blocks until the test lets it go.
SHORT_S = 0.2
# How long a test waits for a released thread to finish (a loaded host is slow to schedule it).
JOIN_S = 10.0


@pytest.fixture
def caller():
    made: list[Caller] = []

    def make(timeout_s: float = PATIENT_S, max_hung: int = 4) -> Caller:
        made.append(Caller(timeout_s, max_hung, what="test", thread_name="test-deadline"))
        return made[-1]

    yield make
    for c in made:
        c.close()


def test_a_job_returns_what_its_calls_give(caller):
    c = caller()

    def body(job):
        return job.call("add", operator.add, 2, 3) * job.call("mul", operator.mul, 1, 7)

    assert c.run(0, body) == 35


def test_an_exception_in_a_call_reaches_the_caller_unchanged(caller):
    c = caller()

    def body(job):
        return job.call("int", int, "not a number")

    with pytest.raises(ValueError, match="not a number"):
        c.run(0, body)
    assert c.run(0, lambda job: job.call("len", len, "abc")) == 3  # the worker lives on


def test_an_overrunning_call_is_abandoned_and_its_job_writes_nothing_more(caller):
    c = caller(timeout_s=SHORT_S)
    release = threading.Event()
    written: list[str] = []

    def body(job):
        written.append("before")
        job.call("stuck", release.wait, JOIN_S)
        written.append("after")  # never: the hung call's return raises Cancelled

    with pytest.raises(CallTimeout) as e:
        c.run(3, body)
    hung_threads = [t for t in threading.enumerate() if t.name == "test-deadline"]
    release.set()
    for thread in hung_threads:
        thread.join(JOIN_S)

    assert (e.value.function, e.value.still) == ("stuck", False)
    assert str(e.value) == f"stuck did not return within {SHORT_S:g} s"
    assert written == ["before"]
    assert not any(t.is_alive() for t in hung_threads)  # it retired once its call returned


def test_the_same_call_is_refused_while_it_hangs_and_others_go_on(caller):
    c = caller(timeout_s=SHORT_S)
    release = threading.Event()
    with pytest.raises(CallTimeout):
        c.run(1, lambda job: job.call("stuck", release.wait, JOIN_S))

    with pytest.raises(CallTimeout) as again:
        c.run(1, lambda job: job.call("stuck", release.wait, JOIN_S))
    other_subject = c.run(2, lambda job: job.call("stuck", lambda: "ok"))
    other_call = c.run(1, lambda job: job.call("fine", lambda: "ok"))
    hung = c.hung_count()
    release.set()

    assert again.value.still and "has not returned for" in str(again.value)
    assert (other_subject, other_call, hung) == ("ok", "ok", 1)


def test_a_hung_call_that_returns_may_be_called_again(caller):
    c = caller(timeout_s=SHORT_S)
    release = threading.Event()
    with pytest.raises(CallTimeout):
        c.run(0, lambda job: job.call("slow", release.wait, JOIN_S))
    abandoned = [t for t in threading.enumerate() if t.name == "test-deadline"]
    release.set()
    for thread in abandoned:
        thread.join(JOIN_S)

    assert c.hung_count() == 0
    assert c.run(0, lambda job: job.call("slow", lambda: "back")) == "back"


def test_hung_calls_are_bounded(caller):
    c = caller(timeout_s=SHORT_S, max_hung=2)
    release = threading.Event()
    for subject in (0, 1):
        with pytest.raises(CallTimeout):
            c.run(subject, lambda job: job.call("stuck", release.wait, JOIN_S))
    called: list[int] = []

    with pytest.raises(CallTimeout) as e:
        c.run(5, lambda job: called.append(job.subject))
    release.set()

    assert called == []  # refused before any thread ran it
    assert e.value.still and str(e.value).startswith("2 test calls (not calling test until")


def test_a_job_cannot_swallow_its_cancellation(caller):
    c = caller(timeout_s=SHORT_S)
    release = threading.Event()
    after: list[str] = []

    def body(job):
        try:
            job.call("stuck", release.wait, JOIN_S)
        except Exception:  # a job's own error handling must not keep it going
            after.append("swallowed")
        after.append("went on")

    with pytest.raises(CallTimeout):
        c.run(0, body)
    abandoned = [t for t in threading.enumerate() if t.name == "test-deadline"]
    release.set()
    for thread in abandoned:
        thread.join(JOIN_S)

    assert after == []


def test_close_lets_the_worker_exit(caller):
    c = caller()
    c.run(0, lambda job: job.call("noop", lambda: None))
    workers = [t for t in threading.enumerate() if t.name == "test-deadline"]

    c.close()
    for thread in workers:
        thread.join(JOIN_S)

    assert workers and not any(t.is_alive() for t in workers)
