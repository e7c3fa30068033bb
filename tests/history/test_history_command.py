"""`gpumon history`: the tables, --json, --week, --by, --png and the errors a user can make."""

from __future__ import annotations

import json
import sqlite3
import struct
from pathlib import Path

import pytest
from histkit import HOUR, T0, gpu, run, server

from gpumon.cli import main
from gpumon.config import load
from gpumon.statedb import DB_NAME

SEOUL_MONDAY = T0 - 9 * HOUR  # Monday 2026-11-23 00:00 in Seoul


@pytest.fixture
def lab(tmp_path):
    toml = tmp_path / "gpumon.toml"
    toml.write_text(
        f'state_dir = "{tmp_path / "state"}"\n'
        '[sheet]\nbackend = "xlsx"\npath = "sheet.xlsx"\ntime_zone = "Asia/Seoul"\n'
        '[servers.a]\nhost = "192.0.2.10"\n'
    )
    cfg = load(str(toml))

    def state(t):
        users = ["kim"] if t <= SEOUL_MONDAY + 2 * HOUR else []
        return [
            server(
                "a",
                gpu("a", 0, users=users, reserved=["lee"]),
                gpu("a", 1, users=["park"], claims=[("train", "park")]),
                warnings=[("load_high", "load 9")] if t == SEOUL_MONDAY + HOUR else [],
            )
        ]

    run(cfg, SEOUL_MONDAY, SEOUL_MONDAY + 3 * HOUR, 60, state)
    return toml


def history(toml: Path, *args: str) -> int:
    return main(["history", "--config", str(toml), *args])


def test_json_for_an_iso_week_has_the_issues_fields_and_exact_hours(lab, capsys):
    assert history(lab, "--week", "2026-W48", "--json") == 0
    data = json.loads(capsys.readouterr().out)
    assert data["since"] == "2026-11-23T00:00:00+09:00"
    assert data["until"] == "2026-11-30T00:00:00+09:00"
    people = {p["person"]: p for p in data["people"]}
    assert people["kim"]["used_gpu_hours"] == 2.0
    assert people["kim"]["on_others_reservations_gpu_hours"] == 2.0
    assert people["lee"]["reserved_gpu_hours"] == 3.0
    assert people["lee"]["reserved_unused_gpu_hours"] == 3.0
    assert people["park"]["used_gpu_hours"] == 3.0
    assert people["park"]["unreserved_gpu_hours"] == 3.0
    assert people["park"]["unclaimed_gpu_hours"] == 0.0
    (a,) = data["servers"]
    assert a["server"] == "a" and a["hours_off"] == 0.0 and a["warnings"] == {"load_high": 1}
    assert a["mean_utilization_pct"] == 50.0
    assert {(g["server"], g["gpu"]) for g in data["gpus"]} == {("a", 0), ("a", 1)}


def test_the_tables_by_person_server_and_gpu(lab, capsys):
    assert history(lab, "--week", "2026-W48") == 0
    out = capsys.readouterr().out
    assert "Person" in out and "Server" in out and "kim" in out and "load_high ×1" in out
    assert history(lab, "--week", "2026-W48", "--by", "gpu") == 0
    out = capsys.readouterr().out
    assert "Person" not in out and "GPU" in out
    assert history(lab, "--week", "2026-W48", "--by", "person") == 0
    assert "Util %" not in capsys.readouterr().out


def test_another_week_is_empty_not_an_error(lab, capsys):
    assert history(lab, "--week", "2026-W40") == 0
    assert "nobody used or reserved a GPU" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, says",
    [
        (["--since", "7x"], "write a span"),
        (["--since", "0d"], "from 1 m to 20 years"),
        (["--since", "2999-01-01"], "not in the past"),
        (["--week", "2026-W60"], "2026-W60"),
        (["--week", "last"], "ISO week"),
    ],
)
def test_a_bad_period_is_exit_2_with_what_to_write(lab, capsys, args, says):
    assert history(lab, *args) == 2
    assert says in capsys.readouterr().err


def test_no_history_yet_is_exit_6_naming_the_file(tmp_path, capsys):
    toml = tmp_path / "gpumon.toml"
    toml.write_text(f'state_dir = "{tmp_path / "state"}"\n[servers.a]\nhost = "192.0.2.10"\n')
    assert history(toml) == 6
    err = capsys.readouterr().err
    assert "no history yet" in err and DB_NAME in err


def test_a_corrupt_database_is_moved_aside_and_history_says_so(lab, capsys):
    db = lab.parent / "state" / DB_NAME
    db.write_bytes(b"garbage" * 1000)
    for suffix in ("-wal", "-shm"):
        Path(str(db) + suffix).unlink(missing_ok=True)
    assert history(lab, "--week", "2026-W48") == 6
    assert "moved to" in capsys.readouterr().err


def test_png_draws_a_chart(lab, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    png = tmp_path / "week.png"
    assert history(lab, "--week", "2026-W48", "--png", str(png)) == 0
    header = png.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", header[16:24])
    assert width > 600 and height > 300
    assert f"chart written to {png}" in capsys.readouterr().out


def test_png_into_a_folder_that_does_not_exist_is_exit_2(lab, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    assert history(lab, "--week", "2026-W48", "--png", str(tmp_path / "no" / "x.png")) == 2
    assert "cannot write the chart" in capsys.readouterr().err


def test_history_config_keys_are_checked(tmp_path, capsys):
    toml = tmp_path / "gpumon.toml"
    toml.write_text(
        '[servers.a]\nhost = "192.0.2.10"\n[history]\nraw_days = 30\nfive_minute_days = 7\n'
    )
    assert history(toml) == 2
    assert "five_minute_days" in capsys.readouterr().err
    toml.write_text('[servers.a]\nhost = "192.0.2.10"\n[history]\nsheet_title = "a/b"\n')
    assert history(toml) == 2
    toml.write_text('[servers.a]\nhost = "192.0.2.10"\n[history]\nraw_dayz = 3\n')
    assert history(toml) == 2
    assert "did you mean 'raw_days'" in capsys.readouterr().err


def test_a_database_another_module_added_tables_to_still_works(lab, capsys):
    db = lab.parent / "state" / DB_NAME
    conn = sqlite3.connect(db)
    conn.execute("CREATE TABLE IF NOT EXISTS alerts_state (key TEXT PRIMARY KEY, value TEXT)")
    conn.commit()
    conn.close()
    assert history(lab, "--week", "2026-W48", "--json") == 0
    assert json.loads(capsys.readouterr().out)["people"]


def test_the_main_job_records_every_push_and_a_dry_run_records_nothing(tmp_path, fake_nvml):
    """`gpumon push` for real (the embedded default, this machine with two fake GPUs)."""
    import os
    import subprocess
    import sys

    from harness.fakenvml import FakeState

    nvml = fake_nvml(FakeState.with_gpus(2, utilization_gpu=42))
    work = tmp_path / "work"
    work.mkdir()
    env = nvml.env()
    env.update(HOME=str(tmp_path / "home"), GPUMON_STATE_DIR=str(tmp_path / "agent"))
    env.pop("GPUMON_CONFIG", None)
    env.pop("XDG_STATE_HOME", None)
    gpumon = str(Path(sys.executable).with_name("gpumon"))

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [gpumon, *args], cwd=work, env=env, capture_output=True, text=True, timeout=120
        )

    for args in (["push"], ["push"], ["push", "--dry-run"]):
        done = run(*args)
        assert done.returncode == 0, done.stderr
        assert "history" not in done.stderr  # no warning from the store
    db = tmp_path / "home" / ".local" / "state" / "gpumon" / DB_NAME
    conn = sqlite3.connect(db)
    rows = conn.execute("SELECT start, start + dur FROM history_raw WHERE gpu = -1").fetchall()
    gpus = conn.execute("SELECT DISTINCT gpu FROM history_raw WHERE gpu >= 0").fetchall()
    conn.close()
    # The second push covers the time since the first (whose own row, empty, it replaces);
    # the dry run added nothing.
    assert len(rows) == 1 and rows[0][1] > rows[0][0]
    assert sorted(gpus) == [(0,), (1,)]
    shown = run("history", "--since", "1h", "--by", "gpu", "--json")
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    assert [s["server"] for s in data["servers"]] == [os.uname().nodename]
    assert {g["gpu"] for g in data["gpus"]} == {0, 1}
    assert all(g["mean_utilization_pct"] in (None, 42.0) for g in data["gpus"])


def test_a_reservation_typed_into_usage_is_counted_as_reserved_hours(tmp_path, fake_nvml):
    """The sheet's Usage column, read by the push (issue 10), reaches the store: a person who
    reserved an idle GPU has reserved hours and as many reserved-but-unused hours."""
    import subprocess
    import sys

    import openpyxl

    from harness.fakenvml import FakeState

    nvml = fake_nvml(FakeState.with_gpus(2, utilization_gpu=0))
    work = tmp_path / "work"
    work.mkdir()
    env = nvml.env()
    env.update(HOME=str(tmp_path / "home"), GPUMON_STATE_DIR=str(tmp_path / "agent"))
    env.pop("GPUMON_CONFIG", None)
    env.pop("XDG_STATE_HOME", None)
    gpumon = str(Path(sys.executable).with_name("gpumon"))

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [gpumon, *args], cwd=work, env=env, capture_output=True, text=True, timeout=120
        )

    assert run("push").returncode == 0  # the rows of this machine's GPUs are made
    sheet = work / "gpumon-sheet.xlsx"
    book = openpyxl.load_workbook(sheet)
    ws = book.worksheets[0]
    header = next(r for r in ws.iter_rows() if any(c.value == "Usage" for c in r))
    usage_col = next(c.column for c in header if c.value == "Usage")
    gpu_col = next(c.column for c in header if c.value == "GPU")
    row = next(
        r for r in range(header[0].row + 1, ws.max_row + 1) if ws.cell(r, gpu_col).value == 1
    )
    ws.cell(row, usage_col).value = "Quentin until Friday"
    book.save(sheet)
    for _ in range(2):
        done = run("push")
        assert done.returncode == 0, done.stderr
    shown = run("history", "--since", "1h", "--json")
    assert shown.returncode == 0, shown.stderr
    people = {p["person"]: p for p in json.loads(shown.stdout)["people"]}
    quentin = people["Quentin"]
    assert quentin["reserved_gpu_hours"] > 0
    assert quentin["reserved_unused_gpu_hours"] == quentin["reserved_gpu_hours"]
    assert quentin["used_gpu_hours"] == 0
    assert openpyxl.load_workbook(sheet).worksheets[0].cell(row, usage_col).value == (
        "Quentin until Friday"
    )
