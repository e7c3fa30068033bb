"""`gpumon check`: one line per thing checked, what is wrong and how to fix it; exit 1 if any."""

from __future__ import annotations

import io
import re
import socket
from pathlib import Path

import openpyxl
import pytest
from sheetkit import SEED_SERVERS, seed_workbook

from gpumon.check import Checklist, _check_history_db, check
from gpumon.config import parse
from gpumon.push import push


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config_for(
    tmp_path: Path, servers: str, poll: str = "servers_from_sheet = false", add_rows: bool = True
):
    return parse(
        f"""
state_dir = "{tmp_path / "state"}"
[poll]
{poll}
[sheet]
path = "sheet.xlsx"
add_rows = {str(add_rows).lower()}
{servers}
""",
        str(tmp_path / "gpumon.toml"),
    )


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("GPUMON_STATE_DIR", str(tmp_path / "agent"))
    return tmp_path


def run_check(config) -> tuple[int, str]:
    out = io.StringIO()
    code = check(config, out)
    return code, out.getvalue()


def test_all_good_prints_what_it_found_and_exits_0(home):
    config = config_for(home, "[servers.box]\nlocal = true")
    assert push(config) == 0  # makes the workbook with box's row
    code, out = run_check(config)
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0] == f"ok   config: {home / 'gpumon.toml'}"
    assert "ok   sheet: read worksheet 'Sheet1'" in out
    assert (
        "ok   header: row 7: Server (A), GPU (B), Usage (C), IP (F), ON/OFF (G), Time (H), "
        "GPU util (I)" in (out)
    )
    assert "ok   blocks: 1 servers" in out and "box: row 8, no GPU index (GPU-less?)" in out
    assert "ok   box: ON via local" in out
    db = home / "state" / "history.sqlite3"
    history = next(line for line in lines if "history database:" in line)
    assert history.startswith(f"ok   history database: {db} (")
    assert re.search(r"\d+\.\d MB; pushes from \d{4}-\d\d-\d\d \d\d:\d\d UTC to ", history)
    assert "1 servers; idle/unused times of " in history
    assert lines[-1] == "all good."


def test_problems_are_named_with_their_fix_and_exit_1(home):
    path = seed_workbook(home / "sheet.xlsx")
    sheet_book = openpyxl.load_workbook(path)
    sheet_book.active["A23"] = "mlbsp"  # sigbsp's block now repeats mlbsp
    sheet_book.save(path)
    port = closed_port()
    servers = "\n".join(
        f'[servers.{name}]\nhost = "127.0.0.1"\nport = {port}' for name in [*SEED_SERVERS, "newbox"]
    )
    config = config_for(home, servers, poll="servers_from_sheet = true", add_rows=False)
    code, out = run_check(config)
    assert code == 1
    assert "the first push adds these columns right of the table: GPU util, GPU memory" in out
    assert "FAIL layout: A23: server 'mlbsp' appears twice (also A17)" in out
    assert "FAIL hcpbsp: OFF: " in out and "refused" in out
    assert "nothing listens for SSH at " in out and f":{port}" in out
    assert "FAIL newbox: no rows in the sheet" in out
    assert out.splitlines()[-1].endswith("problem(s) found.")


def test_missing_rows_are_only_news_when_push_adds_them(home):
    code, out = run_check(config_for(home, "[servers.box]\nlocal = true"))
    assert "box: no rows yet; the next push adds them (add_rows)" in out
    assert code == 0, out


def test_unreadable_sheet_is_a_failure_not_a_crash(home):
    (home / "sheet.xlsx").write_bytes(b"garbage")
    config = config_for(home, "[servers.box]\nlocal = true")
    code, out = run_check(config)
    assert code == 1
    assert "FAIL sheet: " in out and "not a readable .xlsx workbook" in out
    assert "ok   box: ON via local" in out  # SSH/agent checks still run


def test_workbook_open_elsewhere_is_reported(home):
    config = config_for(home, "[servers.box]\nlocal = true")
    assert push(config) == 0
    (home / ".~lock.sheet.xlsx#").write_text("Niv,niv,pc,date;")
    code, out = run_check(config)
    assert code == 1 and "open in a spreadsheet program by Niv" in out


def history_line(config) -> tuple[list[str], str]:
    checks = Checklist(io.StringIO())
    _check_history_db(config, checks)
    return checks.failures, checks.out.getvalue().rstrip("\n")


def test_check_says_there_is_no_history_database_before_the_first_push_and_makes_none(tmp_path):
    config = config_for(tmp_path, "[servers.box]\nlocal = true")
    failures, line = history_line(config)
    db = tmp_path / "state" / "history.sqlite3"
    assert failures == []
    assert line == f"ok   history database: {db}: none yet (the first push makes it)"
    assert not db.exists()


def test_check_names_a_corrupt_history_database_and_leaves_it_for_the_push(tmp_path):
    config = config_for(tmp_path, "[servers.box]\nlocal = true")
    db = tmp_path / "state" / "history.sqlite3"
    db.parent.mkdir()
    db.write_bytes(b"not a database at all" * 200)
    failures, line = history_line(config)
    assert line.startswith(f"FAIL history database: {db}: corrupt (")
    assert "the next push moves it aside" in line and len(failures) == 1
    assert db.read_bytes() == b"not a database at all" * 200  # check writes nothing
    assert [p.name for p in db.parent.iterdir()] == ["history.sqlite3"]


def test_check_says_when_history_is_off_that_the_database_still_keeps_the_gpu_times(home):
    config = config_for(home, "[history]\nenabled = false\n[servers.box]\nlocal = true")
    assert not config.history.enabled
    assert push(config) == 0
    failures, line = history_line(config)
    assert failures == []
    assert "[history] enabled = false: pushes not recorded (no push recorded yet)" in line
    assert "idle/unused times of " in line
