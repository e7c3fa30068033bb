"""The GPUs' idle/unused times live in the state directory's database (gpumon.usetimes on
gpumon.statedb): saved by a push in one transaction, read by a dry run without creating
anything, an old gpu-times.json migrated once, a corrupt database moved aside."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sqlite3
import stat
from pathlib import Path

import pytest

import gpumon.statedb as statedb
from gpumon.config import Config, HistoryConfig
from gpumon.history.samples import GpuSample, ServerSample
from gpumon.history.store import ensure, record
from gpumon.statedb import DB_NAME
from gpumon.usetimes import FILE_NAME, TABLE, GpuTimes, load_times, update_times

NOW = dt.datetime(2019, 3, 14, 8, 0, tzinfo=dt.timezone.utc).timestamp()
TIMES = {"a|GPU-1": GpuTimes(NOW - 5, None, NOW), "b|#2": GpuTimes(None, NOW - 9, NOW)}


def config(tmp_path: Path, **history) -> Config:
    return Config(
        path=str(tmp_path / "gpumon.toml"),
        state_dir=str(tmp_path / "state"),
        history=HistoryConfig(**history),
    )


def save(cfg: Config, times: dict[str, GpuTimes], now: float = NOW) -> str | None:
    """A push's update that replaces whatever was saved with ``times``."""
    return update_times(cfg, lambda saved: times, now)[1]


def test_times_survive_a_push_in_the_database_with_mode_0600(tmp_path):
    cfg = config(tmp_path)
    assert save(cfg, TIMES) is None
    assert load_times(cfg) == TIMES
    state = tmp_path / "state"
    assert stat.S_IMODE(os.stat(state / DB_NAME).st_mode) == 0o600
    assert not (state / FILE_NAME).exists()
    assert [p.name for p in state.iterdir() if ".tmp" in p.name] == []


def test_the_update_advances_what_the_last_push_saved(tmp_path):
    cfg = config(tmp_path)
    save(cfg, TIMES)
    seen: list[dict] = []
    later = {"a|GPU-1": GpuTimes(NOW - 5, None, NOW + 60)}
    times, problem = update_times(cfg, lambda saved: seen.append(saved) or later, NOW + 60)
    assert seen == [TIMES] and times == later and problem is None
    assert load_times(cfg) == later


def test_gpus_not_seen_for_a_month_are_forgotten(tmp_path):
    cfg = config(tmp_path)
    save(cfg, {"old|x": GpuTimes(1.0, 1.0, NOW - 31 * 86400), "new|y": GpuTimes()})
    assert list(load_times(cfg)) == []  # "new" was never seen (seen=0): forgotten too
    save(cfg, {"new|y": GpuTimes(None, None, NOW)})
    assert list(load_times(cfg)) == ["new|y"]


def test_no_database_is_no_times_and_reading_creates_nothing(tmp_path):
    cfg = config(tmp_path)
    assert load_times(cfg) == {}
    assert not (tmp_path / "state").exists()


def test_history_disabled_still_keeps_the_times_in_the_same_file(tmp_path):
    cfg = config(tmp_path, enabled=False)
    assert save(cfg, TIMES) is None
    assert load_times(cfg) == TIMES
    conn = sqlite3.connect(str(tmp_path / "state" / DB_NAME))
    try:
        tables = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    finally:
        conn.close()
    assert tables == {TABLE}  # the times' table, none of the history's


def test_the_times_share_the_database_with_the_history_store(tmp_path):
    cfg = config(tmp_path)
    save(cfg, TIMES)
    with statedb.history_db(cfg) as conn:
        ensure(conn)
        record(conn, [ServerSample("a", True, (GpuSample("a", 0, True, users=("kim",)),))], NOW)
    assert save(cfg, {**TIMES, "c|#0": GpuTimes(None, None, NOW)}) is None
    assert set(load_times(cfg)) == {"a|GPU-1", "b|#2", "c|#0"}
    with statedb.history_db(cfg) as conn:
        assert conn.execute("SELECT count(*) FROM history_raw").fetchone()[0] == 2


def legacy_file(tmp_path: Path, times: dict) -> Path:
    path = tmp_path / "state" / FILE_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    gpus = {k: {"idle_since": t[0], "unused_since": t[1], "seen": t[2]} for k, t in times.items()}
    path.write_text(json.dumps({"version": 1, "gpus": gpus}))
    return path


def test_an_old_times_file_is_read_until_a_push_migrates_it_then_removed(tmp_path):
    cfg = config(tmp_path)
    three_days_ago = NOW - 3 * 86400
    old = legacy_file(tmp_path, {"relbsp|GPU-0": (three_days_ago, three_days_ago, NOW - 60)})
    want = {"relbsp|GPU-0": GpuTimes(three_days_ago, three_days_ago, NOW - 60)}
    assert load_times(cfg) == want  # a dry run (or `gpumon free`) before the first push
    assert old.exists() and not (tmp_path / "state" / DB_NAME).exists()
    times, problem = update_times(cfg, lambda saved: saved, NOW)
    assert times == want and problem is None
    assert not old.exists()
    assert load_times(cfg) == want  # "unused 3 d" kept across the upgrade


def test_the_databases_times_win_over_an_old_file_left_beside_it(tmp_path):
    cfg = config(tmp_path)
    save(cfg, {"a|GPU-1": GpuTimes(NOW - 5, None, NOW)})
    legacy_file(tmp_path, {"a|GPU-1": (1.0, 1.0, NOW), "z|#0": (2.0, None, NOW)})
    assert load_times(cfg) == {
        "a|GPU-1": GpuTimes(NOW - 5, None, NOW),
        "z|#0": GpuTimes(2.0, None, NOW),
    }


@pytest.mark.parametrize(
    "content",
    [
        b"not json",
        b"\xff\xfe",
        b"[]",
        b'{"version": 9, "gpus": {}}',
        b'{"version": 1, "gpus": {"a|x": {"idle_since": "yesterday"}}}',
        b'{"version": 1, "gpus": {"a|x": {"idle_since": 1e400}}}',
        b'{"version": 1, "gpus": {"a|x": {"idle_since": true}}}',
        b'{"version": 1, "gpus": {"a|x": 5}}',
        b"[" * 100000,
    ],
)
def test_a_damaged_old_times_file_is_moved_aside_and_the_count_starts_afresh(tmp_path, content):
    cfg = config(tmp_path)
    path = tmp_path / "state" / FILE_NAME
    path.parent.mkdir()
    path.write_bytes(content)
    assert load_times(cfg) == {}
    assert not path.exists()
    assert [p.name.startswith(f"{FILE_NAME}.bad-") for p in path.parent.iterdir()] == [True]
    assert save(cfg, TIMES) is None and load_times(cfg) == TIMES


def corrupt_database(tmp_path: Path) -> Path:
    path = tmp_path / "state" / DB_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"this is not an SQLite database" * 100)
    return path


def test_a_corrupt_database_is_moved_aside_by_a_push_and_the_times_start_afresh(tmp_path):
    cfg = config(tmp_path)
    corrupt_database(tmp_path)
    times, problem = update_times(cfg, lambda saved: {**saved, **TIMES}, NOW)
    assert times == TIMES
    assert problem is not None and "corrupt" in problem and "start afresh" in problem
    state = tmp_path / "state"
    assert len([p for p in state.iterdir() if p.name.startswith(f"{DB_NAME}.corrupt-")]) == 1
    assert load_times(cfg) == TIMES  # the push's times went into the new database


def test_a_corrupt_database_read_by_a_dry_run_is_moved_aside_without_a_new_one(tmp_path, caplog):
    cfg = config(tmp_path)
    path = corrupt_database(tmp_path)
    with caplog.at_level(logging.WARNING):
        assert load_times(cfg) == {}
    assert "corrupt" in caplog.text and "start afresh" in caplog.text
    assert not path.exists()  # no new database: the next push makes it
    left = [p.name for p in path.parent.iterdir() if p.name != statedb.LOCK_NAME]
    assert [name.startswith(f"{DB_NAME}.corrupt-") for name in left] == [True]


def test_a_database_locked_too_long_never_overwrites_the_saved_times(tmp_path, monkeypatch):
    cfg = config(tmp_path)
    save(cfg, TIMES)
    monkeypatch.setattr(statedb, "BUSY_TIMEOUT_MS", 200)
    holder = sqlite3.connect(str(tmp_path / "state" / DB_NAME), timeout=0)
    holder.execute("BEGIN EXCLUSIVE")  # another process holds it for longer than the wait
    try:
        times, problem = update_times(cfg, lambda saved: {**saved, "c|#0": GpuTimes()}, NOW)
    finally:
        holder.rollback()
        holder.close()
    assert problem is not None and "cannot save the GPUs' idle/unused times" in problem
    assert "locked" in problem
    assert times == {"c|#0": GpuTimes()}  # this push counts from now ...
    assert load_times(cfg) == TIMES  # ... and the saved times are untouched
    assert [p.name for p in (tmp_path / "state").iterdir() if "corrupt" in p.name] == []


@pytest.mark.parametrize(
    "row",
    [
        ("a|x", "yesterday", None, NOW),
        ("a|x", 1e300, None, NOW),
        ("a|x", None, -5.0, NOW),
        ("a|x", None, None, b"\x00blob"),
        (b"a|blob", None, None, NOW),
        ("k" * 401, None, None, NOW),
    ],
)
def test_a_damaged_row_costs_that_gpus_times_only(tmp_path, caplog, row):
    cfg = config(tmp_path)
    save(cfg, TIMES)
    conn = sqlite3.connect(str(tmp_path / "state" / DB_NAME))
    with conn:
        conn.execute(f"INSERT INTO {TABLE} VALUES (?, ?, ?, ?)", row)
    conn.close()
    with caplog.at_level(logging.WARNING):
        assert load_times(cfg) == TIMES
    assert "damaged GPU times ignored" in caplog.text
    assert update_times(cfg, lambda saved: saved, NOW)[0] == TIMES


MIGRATE_AS_USER = """
import json, os, sys
from gpumon.config import Config
from gpumon.usetimes import FILE_NAME, GpuTimes, load_times, update_times
home = sys.argv[1]
state = os.path.join(home, "state")
os.makedirs(state)
with open(os.path.join(state, FILE_NAME), "w") as f:
    json.dump({"version": 1, "gpus": {"a|GPU-1": {"idle_since": 5.0, "unused_since": 5.0,
                                                  "seen": float(sys.argv[2])}}}, f)
cfg = Config(path=os.path.join(home, "gpumon.toml"), state_dir=state)
times, problem = update_times(cfg, lambda saved: saved, float(sys.argv[2]))
assert problem is None, problem
assert load_times(cfg) == {"a|GPU-1": GpuTimes(5.0, 5.0, float(sys.argv[2]))}
"""


def test_an_unprivileged_user_under_umask_0077_migrates_and_keeps_the_times(lab_users):
    import shutil
    import subprocess
    import sys
    import tempfile

    alice = lab_users["alice"]
    home = Path(tempfile.mkdtemp(prefix="gpumon-t-usetimes-"))
    try:
        os.chown(home, alice.uid, alice.gid)
        done = subprocess.run(
            [sys.executable, "-c", MIGRATE_AS_USER, str(home), str(NOW)],
            preexec_fn=alice.preexec(umask=0o077),
            capture_output=True,
            text=True,
            cwd="/",
        )
        assert done.returncode == 0, done.stderr
        db = home / "state" / DB_NAME
        assert db.stat().st_uid == alice.uid and stat.S_IMODE(db.stat().st_mode) == 0o600
        assert not (home / "state" / FILE_NAME).exists()
    finally:
        shutil.rmtree(home, ignore_errors=True)
