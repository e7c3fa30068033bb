"""`gpumon check`: one line per thing checked, what is wrong and how to fix it; exit 1 if any."""

from __future__ import annotations

import io
import socket
from pathlib import Path

import openpyxl
import pytest
from sheetkit import SEED_SERVERS, seed_workbook

from gpumon.check import check
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
