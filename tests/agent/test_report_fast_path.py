"""Report.from_dict decodes and bounds-checks through fast passes (no field paths built) that
fall back on the careful ones to say what is wrong: whatever a hostile agent sends, the outcome
— the Report, every cut field, or the error and its words — is the careful passes' own."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from gpumon_agent import bounds, report
from gpumon_agent.report import (
    ClaimInfo,
    Gpu,
    GpuProcess,
    HealthWarning,
    Host,
    Report,
    ReportError,
    utc_iso,
)

SAMPLE = Report(
    generated_at=utc_iso(1_700_000_000),
    host=Host(hostname="gpu7", primary_ip="192.0.2.7", load_avg=[0.5, 0.25, 0.125]),
    source="daemon",
    gpus=[
        Gpu(
            index=i,
            uuid=f"GPU-{i}",
            name="NVIDIA A100",
            utilization_pct=42.0,
            memory_used_bytes=2**30,
            processes=[GpuProcess(pid=100 + i, user="niv", command="python train.py")],
            claims=[
                ClaimInfo(
                    job="kws",
                    user="niv",
                    pid=100 + i,
                    started_at=utc_iso(1_700_000_000),
                    progress={"epoch": 3, "loss": 0.25},
                )
            ],
        )
        for i in range(2)
    ],
    warnings=[HealthWarning(code="hot", message="GPU 0 at 91 C", gpu_index=0)],
).to_dict()

HOSTILE: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    7,
    2**70,
    -(2**70),
    1.5,
    -0.0,
    float("nan"),
    float("inf"),
    "",
    "x",
    "192.0.2.9",
    "x" * 5000,
    "é" * 300,
    [],
    [1, "a", None],
    ["x" * 5000] * 3,
    [[]] * 2000,
    {},
    {"a": 1},
    {f"k{i}": [i] for i in range(50)},
]


def careful(data: Any) -> tuple[str, Any]:
    """What from_dict makes of ``data`` with the careful passes alone (the fast ones refusing
    everything, as they do what they will not decode)."""

    def refuse(*_: Any) -> Any:
        raise report._Invalid

    def out_of_bounds(*_: Any) -> None:
        raise bounds.OutOfBounds("fast pass off")

    saved = report._decoder, bounds._fast_record
    report._decoder, bounds._fast_record = lambda tp: refuse, out_of_bounds
    try:
        return actual(data)
    finally:
        report._decoder, bounds._fast_record = saved


def actual(data: Any) -> tuple[str, Any]:
    try:
        return "report", Report.from_dict(copy.deepcopy(data))
    except ReportError as e:
        return "error", str(e)


def paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path in a decoded-JSON tree."""
    found = [prefix] if prefix else []
    if isinstance(value, dict):
        for key, inner in value.items():
            found += paths(inner, (*prefix, key))
    elif isinstance(value, list):
        for i, inner in enumerate(value[:2]):
            found += paths(inner, (*prefix, i))
    return found


def replaced(data: Any, path: tuple, value: Any) -> Any:
    out = copy.deepcopy(data)
    target = out
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return out


def same(a: tuple[str, Any], b: tuple[str, Any]) -> bool:
    if a[0] != b[0]:
        return False
    if a[0] == "error":
        return a[1] == b[1]
    # NaN != NaN: compare the JSON the two Reports make (NaN spelled the same way).
    return json.dumps(a[1].to_dict(), default=str) == json.dumps(b[1].to_dict(), default=str)


def test_a_good_report_decodes_to_itself():
    kind, decoded = actual(SAMPLE)
    assert kind == "report"
    assert decoded.to_dict() == SAMPLE


@pytest.mark.parametrize("path", paths(SAMPLE), ids=lambda p: ".".join(map(str, p)))
def test_every_hostile_value_in_every_field_gets_the_careful_outcome(path):
    for value in HOSTILE:
        data = replaced(SAMPLE, path, value)
        assert same(actual(data), careful(data)), (path, value)


@pytest.mark.parametrize("path", paths(SAMPLE)[:40], ids=lambda p: ".".join(map(str, p)))
def test_a_missing_field_gets_the_careful_outcome(path):
    data = copy.deepcopy(SAMPLE)
    target = data
    for key in path[:-1]:
        target = target[key]
    if isinstance(target, dict):
        del target[path[-1]]
        assert same(actual(data), careful(data)), path


def test_the_fast_pass_cuts_what_the_careful_one_cuts():
    data = replaced(SAMPLE, ("gpus", 0, "processes", 0, "command"), "c" * 100_000)
    kind, decoded = actual(data)
    assert kind == "report"
    assert decoded.gpus[0].processes[0].command == careful(data)[1].gpus[0].processes[0].command
    assert len(decoded.gpus[0].processes[0].command) < 100_000


def test_an_error_still_names_its_field():
    data = replaced(SAMPLE, ("gpus", 1, "memory_used_bytes"), 2**70)
    kind, said = actual(data)
    assert kind == "error"
    assert "report.gpus[1].memory_used_bytes" in said
    data = replaced(SAMPLE, ("gpus", 1, "index"), "one")
    assert "report.gpus[1].index: expected an integer, got string" in actual(data)[1]


def test_threads_decoding_at_once_on_first_use_all_get_their_report():
    """The poller decodes answers in many threads: the decoders, built on first use, are
    never seen half built (a Report 'missing host' once was)."""
    import sys
    import threading

    saved = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as possible
    try:
        for _ in range(20):
            report._DECODERS.clear()
            barrier = threading.Barrier(16)
            outcomes: list[tuple[str, Any]] = []

            def decode(barrier: threading.Barrier, outcomes: list) -> None:
                barrier.wait()
                outcomes.append(actual(SAMPLE))

            threads = [threading.Thread(target=decode, args=(barrier, outcomes)) for _ in range(16)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert [kind for kind, _ in outcomes] == ["report"] * 16, outcomes
    finally:
        sys.setswitchinterval(saved)
