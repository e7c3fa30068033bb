"""GPU-hours on scripted timelines, with the exact hours each case must give."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from histkit import HOUR, T0, config, gpu, person, read, run, server, server_hours
from sheetkit import gpu as report_gpu
from sheetkit import off, on, process

from gpumon.history.samples import samples_from_outcome
from gpumon.history.store import idle_since, unused_since
from gpumon.statedb import history_db
from gpumon_agent.report import ClaimInfo, HealthWarning


def test_a_reservation_nobody_uses_is_reserved_and_unused(tmp_path):
    cfg = config(tmp_path)
    run(cfg, T0, T0 + 2 * HOUR, 60, lambda t: [server("a", gpu("a", 0, reserved=["lee"]))])
    found = read(cfg, T0, T0 + 2 * HOUR)
    lee = person(found, "lee")
    assert lee.reserved_gpu_hours == 2.0
    assert lee.reserved_unused_gpu_hours == 2.0
    assert lee.used_gpu_hours == 0.0
    assert server_hours(found, "a").gpu_hours_reserved_idle == 2.0


def test_use_without_a_reservation_is_used_unreserved_and_unclaimed_unless_claimed(tmp_path):
    cfg = config(tmp_path)
    claim = (("train", "kim"),)

    def state(t):
        claims = claim if t > T0 + HOUR else ()  # claimed in the second hour only
        return [server("a", gpu("a", 0, users=["kim"], claims=claims))]

    run(cfg, T0, T0 + 2 * HOUR, 60, state)
    kim = person(read(cfg, T0, T0 + 2 * HOUR), "kim")
    assert kim.used_gpu_hours == 2.0
    assert kim.unreserved_gpu_hours == 2.0
    assert kim.unclaimed_gpu_hours == 1.0
    assert kim.reserved_gpu_hours == 0.0
    assert kim.on_others_reservations_gpu_hours == 0.0


def test_someone_on_anothers_reservation_counts_for_both(tmp_path):
    cfg = config(tmp_path)

    def state(t):
        users = ["kim"] if t <= T0 + HOUR else []  # kim on lee's GPU for the first hour
        return [server("a", gpu("a", 0, users=users, reserved=["lee"]))]

    run(cfg, T0, T0 + 3 * HOUR, 60, state)
    found = read(cfg, T0, T0 + 3 * HOUR)
    kim, lee = person(found, "kim"), person(found, "lee")
    assert kim.used_gpu_hours == 1.0
    assert kim.on_others_reservations_gpu_hours == 1.0
    assert kim.unreserved_gpu_hours == 0.0
    assert lee.reserved_gpu_hours == 3.0
    assert lee.reserved_unused_gpu_hours == 3.0  # kim's use is not lee's
    assert lee.used_gpu_hours == 0.0


def test_a_server_off_for_an_hour_is_an_hour_off_and_not_reserved_unused(tmp_path):
    cfg = config(tmp_path)

    def state(t):
        down = T0 + HOUR < t <= T0 + 2 * HOUR
        return [server("a", gpu("a", 0, on=not down, reserved=["lee"]), on=not down)]

    run(cfg, T0, T0 + 3 * HOUR, 60, state)
    found = read(cfg, T0, T0 + 3 * HOUR)
    a = server_hours(found, "a")
    assert a.hours_off == 1.0
    assert a.hours_recorded == 3.0
    lee = person(found, "lee")
    assert lee.reserved_gpu_hours == 3.0
    assert lee.reserved_unused_gpu_hours == 2.0  # the GPU was down for the third hour of it


def test_an_off_server_keeps_the_gpus_it_was_seen_with(tmp_path):
    cfg = config(tmp_path)

    def state(t):
        if t <= T0 + HOUR:
            return [server("a", gpu("a", 0), gpu("a", 1))]
        return [server("a", on=False)]  # OFF: no report, so no GPUs in the sample

    run(cfg, T0, T0 + 2 * HOUR, 60, state)
    found = read(cfg, T0, T0 + 2 * HOUR)
    gpus = {(g.server, g.gpu): g for g in found.gpus}
    assert set(gpus) == {("a", 0), ("a", 1)}
    assert gpus[("a", 1)].hours_recorded == 2.0
    assert gpus[("a", 1)].hours_on == 1.0
    assert server_hours(found, "a").hours_off == 1.0


def test_a_gap_in_pushes_is_a_gap_not_one_long_sample(tmp_path):
    cfg = config(tmp_path, max_sample_s=300)

    def state(t):
        return [server("a", gpu("a", 0, users=["kim"]))]

    run(cfg, T0, T0 + HOUR, 60, state)
    # Three hours without a push (the central box down), then an hour of pushes again.
    run(cfg, T0 + 4 * HOUR, T0 + 5 * HOUR, 60, state)
    found = read(cfg, T0, T0 + 6 * HOUR)
    # The first push after the gap stands for max_sample_s only, not for three hours.
    assert person(found, "kim").used_gpu_hours == pytest.approx(2.0 + 300 / HOUR, abs=1e-9)
    assert server_hours(found, "a").hours_recorded == pytest.approx(2 + 300 / HOUR, abs=1e-9)
    assert server_hours(found, "a").hours_off == 0.0


def test_the_first_push_ever_covers_no_time(tmp_path):
    cfg = config(tmp_path)
    run(cfg, T0, T0, 60, lambda t: [server("a", gpu("a", 0, users=["kim"]))])
    found = read(cfg, T0 - HOUR, T0 + HOUR)
    assert found.people == []
    assert found.servers == []  # nothing to say yet


def test_two_people_on_one_gpu_each_hold_it_for_its_whole_time(tmp_path):
    cfg = config(tmp_path)
    run(cfg, T0, T0 + HOUR, 60, lambda t: [server("a", gpu("a", 0, users=["kim", "lee"]))])
    found = read(cfg, T0, T0 + HOUR)
    assert person(found, "kim").used_gpu_hours == person(found, "lee").used_gpu_hours == 1.0
    assert server_hours(found, "a").gpu_hours_busy == 1.0


def test_a_period_that_cuts_pushes_counts_their_parts(tmp_path):
    cfg = config(tmp_path, max_sample_s=900)
    run(cfg, T0, T0 + 2 * HOUR, 600, lambda t: [server("a", gpu("a", 0, users=["kim"]))])
    # 00:15 to 01:25: parts of two 10-minute pushes at each end.
    found = read(cfg, T0 + 900, T0 + HOUR + 1500)
    assert person(found, "kim").used_gpu_hours == pytest.approx(70 / 60, abs=1e-9)


def test_health_warnings_are_counted_per_server(tmp_path):
    cfg = config(tmp_path)
    hot = [("temperature_high", "GPU 0 at 91 °C")]
    run(cfg, T0, T0 + 600, 60, lambda t: [server("a", gpu("a", 0), warnings=hot)])
    found = read(cfg, T0, T0 + HOUR)
    assert server_hours(found, "a").warnings == {"temperature_high": 11}


def test_unused_since_and_idle_since_follow_the_gpu(tmp_path):
    cfg = config(tmp_path)

    def state(t):
        users = ["lee"] if t <= T0 + 600 else []  # lee uses it for 10 minutes, then leaves
        return [server("a", gpu("a", 0, users=users, reserved=["lee"]), gpu("a", 1))]

    run(cfg, T0, T0 + HOUR, 60, state)
    with history_db(cfg) as conn:
        assert unused_since(conn, "a", 0) == T0 + 600
        assert idle_since(conn, "a", 0) == T0 + 600
        assert unused_since(conn, "a", 1) is None  # not reserved
        assert idle_since(conn, "a", 1) == T0  # never busy: idle since first seen
        assert idle_since(conn, "nowhere", 0) is None
    run(
        cfg,
        T0 + HOUR + 60,
        T0 + HOUR + 60,
        60,
        lambda t: [server("a", gpu("a", 0, users=["lee"], reserved=["lee"]))],
    )
    with history_db(cfg) as conn:
        assert unused_since(conn, "a", 0) is None
        assert idle_since(conn, "a", 0) is None


def test_a_new_reservation_restarts_its_unused_time(tmp_path):
    cfg = config(tmp_path)

    def state(t):
        who = ["lee"] if t < T0 + HOUR else ["kim"]
        return [server("a", gpu("a", 0, reserved=who))]

    run(cfg, T0, T0 + 2 * HOUR, 60, state)
    with history_db(cfg) as conn:
        assert unused_since(conn, "a", 0) == T0 + HOUR - 60  # kim's first push covers from there


def test_samples_from_a_push_outcome_carry_users_claims_and_reservations(tmp_path):
    claim = ClaimInfo(job="kws", user="kim", pid=1, started_at="2026-11-23T00:00:00Z")
    g0 = report_gpu(0, util=80, processes=[process("kim", "python train.py")], claims=[claim])
    g1 = report_gpu(1, processes=None)  # processes unknown
    up = on("a", [g0, g1])
    up.report.warnings.append(HealthWarning(code="load_high", message="load 9"))
    outcome = SimpleNamespace(results=[up, off("b")], dry_run=False)
    reservation = SimpleNamespace(
        text="Lee ~12/5", people=("Lee",), users=("lee",), unmatched=(), server_wide=False
    )
    reservations = {("A", 1): reservation, ("b", 3): reservation}
    a, b = samples_from_outcome(outcome, reservations)
    assert a.on and a.warnings == (("load_high", "load 9"),)
    first, second = a.gpus
    assert first.users == ("kim",) and first.claims == (("kws", "kim"),)
    assert first.util_pct == 80 and first.reservation_text is None
    assert second.users is None  # unknown, not "nobody"
    assert second.reserved_by == ("lee",) and second.reserved_people == ("Lee",)
    assert not b.on and b.off_reason == "timeout"
    assert [(g.gpu, g.on, g.reserved_by) for g in b.gpus] == [(3, False, ("lee",))]
    assert samples_from_outcome(outcome)[0].gpus[1].reserved_by == ()  # today: no reservations


def test_the_outcomes_own_reservations_are_recorded(tmp_path):
    from gpumon.history.recorder import record_outcome

    cfg = config(tmp_path, max_sample_s=3600)
    reservation = SimpleNamespace(text="Lee", people=("Lee",), users=("lee",), unmatched=())
    for t in (T0, T0 + HOUR):
        outcome = SimpleNamespace(
            results=[on("a", [report_gpu(0)])], dry_run=False, reservations={("a", 0): reservation}
        )
        assert record_outcome(cfg, outcome, at=t) == []
    lee = person(read(cfg, T0, T0 + HOUR), "lee")
    assert lee.reserved_unused_gpu_hours == 1.0


def test_a_reservation_naming_people_without_a_user_charges_the_name(tmp_path):
    reservation = SimpleNamespace(
        text="Prof. Park", people=("Park",), users=(), unmatched=("Park",)
    )
    outcome = SimpleNamespace(results=[on("a", [report_gpu(0)])], dry_run=False)
    (a,) = samples_from_outcome(outcome, {("a", 0): reservation})
    assert a.gpus[0].reserved_by == ("Park",)


def test_hostile_names_are_kept_as_text_and_cut(tmp_path):
    cfg = config(tmp_path)
    long = "x" * 10_000
    nasty = ['=IMPORTXML("http://192.0.2.1")', "'; DROP TABLE history_raw; --", "\x00\u202e", long]
    outcome = SimpleNamespace(
        results=[on("a", [report_gpu(0, processes=[process(n, "c") for n in nasty])])],
        dry_run=False,
    )
    samples = samples_from_outcome(outcome)
    assert max(len(u) for u in samples[0].gpus[0].users) <= 200
    run(cfg, T0, T0 + HOUR, 60, lambda t: samples)
    found = read(cfg, T0, T0 + HOUR)
    assert {p.person for p in found.people} == set(samples[0].gpus[0].users)
    assert all(p.used_gpu_hours == 1.0 for p in found.people)
