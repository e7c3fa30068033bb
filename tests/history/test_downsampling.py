"""The pushes, their 5-minute sums and their hourly sums hold the same totals, before and after
the pushes and the 5-minute sums are dropped."""

from __future__ import annotations

import random

import pytest
from histkit import HOUR, T0, config, gpu, read, server

from gpumon.history.facts import GPU_FIELDS, PERSON_FIELDS
from gpumon.history.query import level_totals
from gpumon.history.recorder import retention
from gpumon.history.store import compact, ensure, record
from gpumon.statedb import history_db

EXACT = [f for f in GPU_FIELDS if f not in ("util_s", "mem_s")]  # whole seconds
DAYS = 4
STEP = 157  # seconds: pushes that fall across 5-minute and hour boundaries


def timeline(cfg):
    rnd = random.Random(11)
    people = ["kim", "lee", "park", "choi"]
    with history_db(cfg) as conn:
        ensure(conn)
        t = T0
        while t <= T0 + DAYS * 86400:
            servers = []
            for name in ("a", "b"):
                up = rnd.random() > 0.05
                gpus = [
                    gpu(
                        name,
                        i,
                        on=up,
                        users=rnd.sample(people, rnd.choice([0, 0, 1, 2])),
                        reserved=rnd.sample(people, rnd.choice([0, 1])),
                        claims=[("job", "kim")] if rnd.random() < 0.3 else [],
                        util=rnd.uniform(0, 100),
                    )
                    for i in range(2)
                ]
                servers.append(server(name, *gpus, on=up))
            record(
                conn, servers, t + rnd.randint(-20, 20), max_sample_s=300, retention=retention(cfg)
            )
            t += STEP


def same(a, b) -> None:
    assert set(a.people) == set(b.people)
    for key, p in a.people.items():
        for f in PERSON_FIELDS:
            assert getattr(p, f) == getattr(b.people[key], f), (key, f)
    assert set(a.gpus) == set(b.gpus)
    for key, g in a.gpus.items():
        for f in EXACT:
            assert getattr(g, f) == getattr(b.gpus[key], f), (key, f)
        # Utilization sums are whole numbers per bucket: a rounding per row, no more.
        assert g.util_s == pytest.approx(b.gpus[key].util_s, rel=1e-3)


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    cfg = config(tmp_path_factory.mktemp("down"), raw_days=DAYS + 1, five_minute_days=DAYS + 1)
    timeline(cfg)
    return cfg


def test_pushes_five_minute_and_hourly_sums_agree_exactly(store):
    lo, hi = T0 + 3 * HOUR, T0 + (DAYS * 24 - 3) * HOUR
    with history_db(store) as conn:
        raw = level_totals(conn, 0, lo, hi)
        five = level_totals(conn, 300, lo, hi)
        hourly = level_totals(conn, 3600, lo, hi)
    assert sum(p.used_s for p in raw.people.values()) > 100 * HOUR  # a real load
    same(raw, five)
    same(raw, hourly)


def test_totals_stay_exact_once_the_pushes_and_five_minute_sums_are_dropped(store):
    since, until = T0 + 5 * HOUR, T0 + 50 * HOUR
    before = read(store, since, until, now=T0 + DAYS * 86400)
    with history_db(store) as conn:
        later = T0 + 400 * 86400  # a year on: only the hourly sums are left
        compact(conn, later, retention(store))
        assert conn.execute("SELECT count(*) FROM history_raw").fetchone()[0] == 0
        assert conn.execute("SELECT count(*) FROM history_agg WHERE level = 300").fetchone()[0] == 0
    after = read(store, since, until, now=later)
    assert before.people == after.people
    assert [s.hours_off for s in before.servers] == [s.hours_off for s in after.servers]
    assert [s.gpu_hours_busy for s in before.servers] == [s.gpu_hours_busy for s in after.servers]
