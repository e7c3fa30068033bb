"""Choosing GPUs (pure): 'auto' takes free GPUs, least busy first; explicit requests get exactly
what they name or a clear refusal. Plus the request syntax and the progress a trainer reports."""

from __future__ import annotations

import math

import pytest

from gpumon_agent.claims import (
    MAX_PROGRESS_BYTES,
    ClaimedGpu,
    ClaimError,
    ClaimRecord,
    NoFreeGpu,
    choose_gpus,
    clean_progress,
    parse_gpu_request,
)
from gpumon_agent.report import GPU_LOST, Gpu, GpuProcess


def gpu(index: int, util: float = 0, mem: int = 0, procs: int = 0, state: str = "ok") -> Gpu:
    return Gpu(
        index=index,
        uuid=f"GPU-{index}",
        utilization_pct=util,
        memory_used_bytes=mem,
        state=state,
        processes=[GpuProcess(pid=100 + i, user="bob") for i in range(procs)],
    )


def held(index: int, user: str = "alice", job: str = "resnet") -> ClaimRecord:
    return ClaimRecord(
        job=job,
        user=user,
        uid=1000,
        pid=4242,
        pid_started=0.0,
        hostname="gpu1",
        command="python train.py",
        started_at="2024-01-01T00:00:00Z",
        gpus=[ClaimedGpu(index=index, uuid=f"GPU-{index}")],
    )


@pytest.mark.parametrize(
    "given, expected",
    [
        ("auto", None),
        (" AUTO ", None),
        (None, None),
        ("0,2", [0, 2]),
        ("2, 0, 2", [2, 0]),
        ([1, 3], [1, 3]),
        (3, [3]),
        ("GPU-aaaa-bbbb,1", ["GPU-aaaa-bbbb", 1]),
        (["GPU-aaaa"], ["GPU-aaaa"]),
    ],
)
def test_gpu_requests_parse(given, expected):
    assert parse_gpu_request(given) == expected


@pytest.mark.parametrize("given", ["", "0,,1", "first", "-1", [True], [], "GPU 0", [0.5]])
def test_bad_gpu_requests_are_refused_with_the_remedy(given):
    with pytest.raises(ClaimError, match=r"auto|GPU index"):
        parse_gpu_request(given)


def test_auto_takes_free_gpus_least_utilized_then_least_memory_first():
    gpus = [gpu(0, util=8), gpu(1, util=5, mem=9), gpu(2, util=5, mem=1), gpu(3, util=0, procs=1)]
    assert [g.index for g in choose_gpus(gpus, [], None, 2)] == [2, 1]


def test_auto_never_takes_a_gpu_whose_processes_are_unknown_or_whose_memory_is_in_use():
    unknown = gpu(0)
    unknown.processes, unknown.processes_error = None, "nvml…_v3: Not Supported"
    gpus = [unknown, gpu(1, mem=20 << 30), gpu(2, util=60), gpu(3)]
    assert [g.index for g in choose_gpus(gpus, [], None, 1)] == [3]
    with pytest.raises(NoFreeGpu) as err:
        choose_gpus(gpus, [], None, 2)
    message = str(err.value)
    assert "need 2 free GPUs, 1 of 4 free" in message
    assert "GPU 0: unknown use (processes unknown: nvml…_v3: Not Supported)" in message
    assert "GPU 1: in use (20.0 GiB used; no process listed)" in message
    assert "GPU 2: in use (60% busy; no process listed)" in message
    # An explicit request is the user's call: unknown processes do not block it.
    assert [g.index for g in choose_gpus(gpus, [], [0], 1)] == [0]


def test_auto_skips_claimed_busy_and_lost_gpus_and_says_who_holds_them():
    gpus = [gpu(0), gpu(1, procs=2), gpu(2, state=GPU_LOST), gpu(3)]
    assert [g.index for g in choose_gpus(gpus, [held(0)], None, 1)] == [3]
    with pytest.raises(NoFreeGpu) as err:
        choose_gpus(gpus, [held(0), held(3, user="carol", job="bert")], None, 1)
    message = str(err.value)
    assert "need 1 free GPU, 0 of 4 free" in message
    assert "GPU 0: claimed by alice (pid 4242, job 'resnet')" in message
    assert "GPU 1: 2 unclaimed processes (bob)" in message
    assert "GPU 2: lost" in message
    assert "GPU 3: claimed by carol" in message


def test_auto_refuses_when_fewer_than_count_are_free():
    with pytest.raises(NoFreeGpu, match="need 3 free GPUs, 2 of 2 free"):
        choose_gpus([gpu(0), gpu(1)], [], None, 3)
    with pytest.raises(ClaimError, match="at least one"):
        choose_gpus([gpu(0)], [], None, 0)


def test_explicit_request_gets_exactly_those_gpus_by_index_or_uuid():
    gpus = [gpu(0), gpu(1, util=90, procs=1), gpu(2)]
    assert [g.index for g in choose_gpus(gpus, [], [2, 1], 2)] == [2, 1]
    assert [g.index for g in choose_gpus(gpus, [], ["gpu-1", 0], 2)] == [1, 0]


def test_explicit_request_for_a_claimed_missing_or_lost_gpu_is_refused():
    gpus = [gpu(0), gpu(1, state=GPU_LOST)]
    with pytest.raises(NoFreeGpu, match="GPU 0: claimed by alice"):
        choose_gpus(gpus, [held(0)], [0], 1)
    with pytest.raises(ClaimError, match=r"no GPU 7 on this server \(GPUs: 0, 1\)"):
        choose_gpus(gpus, [], [7], 1)
    with pytest.raises(ClaimError, match="no GPU GPU-x"):
        choose_gpus(gpus, [], ["GPU-x"], 1)
    with pytest.raises(ClaimError, match="GPU 1: lost"):
        choose_gpus(gpus, [], [1], 1)


class FakeScalar:
    """Stands in for a numpy/torch scalar: only .item()."""

    def __init__(self, value):
        self.value = value

    def item(self):
        return self.value


def test_progress_keeps_json_values_and_converts_scalars_and_non_finite_numbers():
    cleaned = clean_progress(
        {"epoch": 3, "loss": FakeScalar(0.25), "val": math.nan, "lr": [math.inf, -math.inf]}
    )
    assert cleaned == {"epoch": 3, "loss": 0.25, "val": "nan", "lr": ["inf", "-inf"]}


def test_progress_refuses_what_json_cannot_hold_and_oversized_values():
    with pytest.raises(TypeError, match="'weights': set is not a JSON value"):
        clean_progress({"weights": {1, 2}})
    with pytest.raises(ValueError, match=f"over the {MAX_PROGRESS_BYTES}-byte limit"):
        clean_progress({"history": list(range(2000))})
