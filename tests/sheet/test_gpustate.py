"""Every GPU's State: reservation × claim × processes × health, judged (pure) — and the idle and
unused times it counts with."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

import pytest
from sheetkit import gpu, off, on, process, seed_grid, with_status_columns

from gpumon.gpustate import (
    CLAIMED_IDLE,
    FREE,
    IN_USE,
    LOST,
    OFF,
    OTHER_ON_RESERVED,
    RESERVED_FREE,
    RESERVED_UNUSED,
    RESERVER_RUNNING,
    UNKNOWN,
    StateInput,
    advance_times,
    gpu_states,
    health_lines,
    short_duration,
)
from gpumon.sheet.layout import read_layout
from gpumon.sheet.reservations import People, read_reservations
from gpumon.usetimes import GpuTimes, times_key
from gpumon_agent.report import GPU_LOST, ClaimInfo, utc_iso

SEOUL = ZoneInfo("Asia/Seoul")
NOW = dt.datetime(2019, 3, 14, 8, 0, tzinfo=dt.timezone.utc).timestamp()  # 17:00 in Seoul
PEOPLE = {"Niv": ["niv", "nkim"]}


def claim(user: str, job: str) -> ClaimInfo:
    return ClaimInfo(job=job, user=user, pid=99, started_at="2019-03-14T01:00:00Z")


def judge(results, grid=None, times=None, now=NOW, people=PEOPLE):
    grid = grid or seed_grid()
    layout = read_layout(grid)
    users = {p.user for r in results if r.report for g in r.report.gpus for p in g.processes or []}
    reservations = read_reservations(grid, layout, people, users)
    folks = People.of(people, users)
    times = advance_times(times or {}, results, now)
    return gpu_states(StateInput(results, layout, reservations, folks, times, now, SEOUL))


def one(results, server, index, **kwargs):
    return next(s for s in judge(results, **kwargs) if s.server == server and s.gpu == index)


def test_an_unreserved_gpu_with_nothing_on_it_is_free():
    state = one([on("ecbsp", [gpu(0)])], "ecbsp", 0)
    assert (state.kind, state.text) == (FREE, "free")
    assert state.users == () and state.reserved_by == ()
    assert state.memory_free_bytes == 11 * 2**30


def test_a_reserved_gpu_nobody_uses_is_free_for_a_while_then_reserved_unused():
    fresh = one([on("glpbsp", [gpu(0)])], "glpbsp", 0)
    assert (fresh.kind, fresh.text) == (RESERVED_FREE, "free — reserved by Niv")
    key = times_key("glpbsp", "GPU-00000000", 0)
    times = {key: GpuTimes(NOW - 3 * 86400 - 60, NOW - 3 * 86400 - 60, NOW - 60)}
    old = one([on("glpbsp", [gpu(0)])], "glpbsp", 0, times=times)
    assert (old.kind, old.text) == (RESERVED_UNUSED, "reserved by Niv — unused 3 d")
    assert old.unused_s == pytest.approx(3 * 86400 + 60)


def test_the_reserver_running_reads_with_a_check_mark():
    g = gpu(0, util=90, used_gib=8, processes=[process("nkim", "/usr/bin/python3 -u train.py")])
    state = one([on("glpbsp", [g])], "glpbsp", 0)
    assert (state.kind, state.text) == (RESERVER_RUNNING, "Niv ✓ python3 train.py")
    assert state.conflict is None


def test_someone_else_on_a_reserved_gpu_is_a_conflict_in_health():
    g = gpu(1, util=90, processes=[process("lww", "python3 train.py")])
    states = judge([on("mlbsp", [gpu(0), g, gpu(2)])])
    state = next(s for s in states if s.gpu == 1)
    assert (state.kind, state.text) == (OTHER_ON_RESERVED, "lww — reserved by Niv")
    assert health_lines(states) == {"mlbsp": ["GPU 1: lww on Niv's reservation"]}


def test_a_claimed_idle_gpu_says_who_what_and_for_how_long():
    idle_since = utc_iso(NOW - 2 * 3600 - 30)
    g = gpu(0, claims=[claim("lww", "kws ch32")], claimed_idle=True, idle_since=idle_since)
    state = one([on("ecbsp", [g])], "ecbsp", 0)
    assert (state.kind, state.text) == (CLAIMED_IDLE, "lww — claimed 'kws ch32', idle 2 h")
    assert (state.claim_user, state.claim_job) == ("lww", "kws ch32")


def test_a_claim_not_yet_running_is_in_use_not_idle():
    g = gpu(0, claims=[claim("lww", "kws")], claimed_idle=False)
    state = one([on("ecbsp", [g])], "ecbsp", 0)
    assert (state.kind, state.text) == (IN_USE, "lww — claimed 'kws'")


def test_someone_running_on_an_unreserved_gpu_is_in_use():
    g = gpu(0, util=50, processes=[process("lww", "python3 a.py"), process("jmy", "jupyter")])
    state = one([on("ecbsp", [g])], "ecbsp", 0)
    assert (state.kind, state.text) == (IN_USE, "in use by jmy, lww")


def test_unknown_processes_are_unknown_use_never_free():
    g = gpu(
        0, processes=None, processes_error="nvmlDeviceGetComputeRunningProcesses: Not Supported"
    )
    state = one([on("glpbsp", [g])], "glpbsp", 0)
    assert (state.kind, state.text) == (UNKNOWN, "unknown use — reserved by Niv")
    assert state.users is None


def test_a_stale_report_is_unknown_use_and_keeps_the_times():
    from gpumon.poll.result import AGENT_STALE

    stale = on("ecbsp", [gpu(0)], reason_code=AGENT_STALE, reason="agent stale: 5 min old")
    state = one([stale], "ecbsp", 0)
    assert (state.kind, state.text) == (UNKNOWN, "unknown use — agent stale")
    assert advance_times({}, [stale], NOW) == {}


def test_memory_in_use_is_in_use_whatever_the_process_list_says():
    for processes in (None, []):
        g = gpu(0, used_gib=20, processes=processes)
        state = one([on("ecbsp", [g])], "ecbsp", 0)
        assert state.kind == IN_USE and "20.0 GiB used" in state.text


def test_a_lost_gpu_and_a_row_the_server_lacks():
    states = judge([on("mlbsp", [gpu(0), gpu(1, state=GPU_LOST, processes=None)])])
    texts = {s.gpu: (s.kind, s.text) for s in states}
    assert texts[1] == (LOST, "lost")
    assert texts[2] == (LOST, "not found")


def test_an_off_server_says_since_when_in_the_sheets_time_zone():
    seen = "2019-03-14T05:02:00Z"  # 14:02 in Seoul, the same day as NOW
    states = judge([off("mlbsp", last_seen_on=seen)])
    assert [(s.gpu, s.kind, s.text) for s in states] == [
        (i, OFF, "server OFF since 14:02") for i in range(3)
    ]
    earlier = judge([off("mlbsp", last_seen_on="2019-03-10T05:02:00Z")])[0]
    assert earlier.text == "server OFF since 2019-03-10 14:02"
    assert judge([off("mlbsp")])[0].text == "server OFF"


def test_the_state_column_and_health_reach_the_plan():
    from gpumon.config import Config, Person
    from gpumon.fleet import judge_gpus
    from gpumon.sheet.plan import plan

    grid = with_status_columns(seed_grid())
    layout = read_layout(grid)
    config = Config(path="t.toml", people={n: Person(n, u) for n, u in PEOPLE.items()})
    results = [on("mlbsp", [gpu(0), gpu(1, util=90, processes=[process("lww", "python3 x.py")]),
                            gpu(2)])]  # fmt: skip
    judged = judge_gpus(config, grid, layout, results, {}, NOW)
    p = plan(grid, layout, results, time_zone="Asia/Seoul", states=judged.cells)
    changed = {c.cell: c.new for c in p.changes}
    assert changed["N17"] == "free — reserved by Niv"
    assert changed["N18"] == "lww — reserved by Niv"
    assert "GPU 1: lww on Niv's reservation" in changed["M17"]
    assert not any(c.cell.startswith("C") for c in p.changes)  # Usage is read, never written


def test_short_durations_are_coarse():
    assert [short_duration(s) for s in (5, 600, 3600 * 5, 86400 * 3)] == [
        "1 min", "10 min", "5 h", "3 d"
    ]  # fmt: skip


# --- the times ----------------------------------------------------------------------------------


def test_times_start_when_a_gpu_is_first_seen_free_and_end_when_it_is_used():
    key = times_key("a", "GPU-00000000", 0)
    first = advance_times({}, [on("a", [gpu(0)])], NOW)
    assert first[key] == GpuTimes(NOW, NOW, NOW)
    later = advance_times(first, [on("a", [gpu(0)])], NOW + 600)
    assert later[key] == GpuTimes(NOW, NOW, NOW + 600)
    used = advance_times(later, [on("a", [gpu(0, processes=[process("x", "y")])])], NOW + 700)
    assert used[key] == GpuTimes(None, None, NOW + 700)


def test_the_agents_idle_since_starts_the_count_but_never_in_the_future():
    key = times_key("a", "GPU-00000000", 0)
    past = advance_times({}, [on("a", [gpu(0, idle_since=utc_iso(NOW - 7200))])], NOW)
    assert past[key].unused_since == NOW - 7200
    ahead = advance_times({}, [on("a", [gpu(0, idle_since=utc_iso(NOW + 9e6))])], NOW)
    assert ahead[key].unused_since == NOW
    bad = advance_times({}, [on("a", [gpu(0, idle_since="yesterday")])], NOW)
    assert bad[key].unused_since == NOW


def test_unknown_use_and_an_off_server_keep_the_times():
    key = times_key("a", "GPU-00000000", 0)
    times = {key: GpuTimes(NOW - 50, NOW - 50, NOW - 50)}
    unknown = advance_times(times, [on("a", [gpu(0, processes=None)])], NOW)
    assert (unknown[key].idle_since, unknown[key].unused_since) == (NOW - 50, NOW - 50)
    assert advance_times(times, [off("a")], NOW)[key] == times[key]


def test_a_claim_without_a_process_is_idle_but_not_unused():
    key = times_key("a", "GPU-00000000", 0)
    times = advance_times({}, [on("a", [gpu(0, claims=[claim("lww", "kws")])])], NOW)
    assert times[key] == GpuTimes(NOW, None, NOW)


def test_one_servers_agent_cannot_touch_anothers_times():
    assert times_key("a", "GPU-1", 0) != times_key("b", "GPU-1", 0)
    assert times_key("A", "GPU-1", 0) == times_key("a", "GPU-1", 3)  # renumbered: the same GPU
