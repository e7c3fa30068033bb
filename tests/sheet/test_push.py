"""`gpumon push` on the .xlsx backend: in-process pushes with scripted poll results, and the
README's main job (`gpumon push`, no config) run for real with the local agent."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import openpyxl
import pytest
from sheetkit import (
    SEED_SERVERS,
    ScriptedPoller,
    gpu,
    off,
    on,
    people_edit,
    seed_workbook,
    snapshot,
)

from gpumon.config import Config, PollConfig, ServerEntry, SheetConfig, parse
from gpumon.fleet import (
    EXIT_CONFIG,
    EXIT_LAYOUT,
    EXIT_LOCKED,
    EXIT_OK,
    EXIT_SHEET,
    push_lock,
    push_once,
)
from gpumon.poll.result import ServerResult
from gpumon.push import print_outcome, push
from gpumon.sheet.xlsx import XlsxBackend

REPO = Path(__file__).resolve().parents[2]
GPUMON = Path(sys.executable).with_name("gpumon")
OWNED = set(range(5, 14))  # F..N: IP, ON/OFF, Time + the six added columns


class Counting:
    """The real backend, with its calls counted."""

    def __init__(self, backend: XlsxBackend) -> None:
        self.backend = backend
        self.calls: list[str] = []

    def read(self):
        self.calls.append("read")
        return self.backend.read()

    def write(self, writes):
        self.calls.append("write")
        return self.backend.write(writes)

    def setup(self, setup):
        self.calls.append("setup")
        return self.backend.setup(setup)


def lab_config(tmp_path: Path, **poll) -> Config:
    return Config(
        path=str(tmp_path / "gpumon.toml"),
        state_dir=str(tmp_path / "state"),
        poll=PollConfig(**poll),
        sheet=SheetConfig(path="sheet.xlsx", time_zone="Asia/Seoul"),
    )


def fleet(polled_at: str = "2019-03-14T07:00:00Z") -> list[ServerResult]:
    return [on(name, [gpu(i) for i in range(4)], polled_at=polled_at) for name in SEED_SERVERS]


def test_push_adopts_the_lab_sheet_then_costs_one_read_and_one_write(tmp_path):
    path = seed_workbook(tmp_path / "sheet.xlsx")
    config = lab_config(tmp_path)
    before = snapshot(path, OWNED)
    backend = Counting(XlsxBackend(path, time_zone="Asia/Seoul"))
    first = push_once(config, backend, ScriptedPoller(fleet()))
    assert backend.calls == ["read", "setup", "read", "write"]  # adoption: headers added once
    assert first.setup_lines[0] == "I7: add header 'GPU util'"
    backend.calls.clear()
    second = push_once(config, backend, ScriptedPoller(fleet("2019-03-14T07:01:00Z")))
    assert backend.calls == ["read", "write"]
    assert {c.column for c in second.changes} == {"time"}  # only the timestamps moved
    sheet = openpyxl.load_workbook(path).active
    assert [sheet.cell(7, c).value for c in range(9, 14)] == [
        "GPU util", "GPU memory", "Running", "Job", "Health",
    ]  # fmt: skip
    assert sheet["H8"].value == "2019-03-14 16:01:00"
    after = snapshot(path, OWNED)
    assert after.pop(("Sheet1", "widths")) != before.pop(("Sheet1", "widths"))  # new columns
    header_cells = {k for k in after if k[1] in {"I7", "J7", "K7", "L7", "M7", "N7"}}
    assert {k: v for k, v in after.items() if k not in header_cells} == before


def test_sheet_names_are_polled_plus_config_servers_once_each(tmp_path):
    path = seed_workbook(tmp_path / "sheet.xlsx")
    config = lab_config(tmp_path)
    config.servers = {n: ServerEntry(n) for n in ("extra", "SIGBSP")}
    poller = ScriptedPoller(fleet())
    outcome = push_once(config, XlsxBackend(path), poller)
    # sigbsp is polled under its config spelling, so the poller finds [servers.SIGBSP].
    assert poller.swept == [[*SEED_SERVERS[:10], "SIGBSP", "grubsp", "extra"]]
    assert "server 'extra' has no rows in the sheet" in outcome.warnings[0]
    config.poll.servers_from_sheet = False
    poller = ScriptedPoller(fleet())
    push_once(config, XlsxBackend(path), poller)
    assert poller.swept == [["extra", "SIGBSP"]]


def test_server_going_down_shows_off_the_reason_and_keeps_the_last_seen_time(tmp_path):
    path = seed_workbook(tmp_path / "sheet.xlsx")
    config = lab_config(tmp_path)
    results = fleet("2019-03-14T07:00:00Z")
    push_once(config, XlsxBackend(path), ScriptedPoller(results))
    results[8] = off("mlbsp", "timed out at connect (3 s)", last_seen_on="2019-03-14T07:00:00Z",
                     polled_at="2019-03-14T07:05:00Z")  # fmt: skip
    push_once(config, XlsxBackend(path), ScriptedPoller(results))
    sheet = openpyxl.load_workbook(path).active
    assert (sheet["G17"].value, sheet["H17"].value) == ("OFF", "2019-03-14 16:00:00")
    # Health: why, and since its first failed poll (in the sheet's zone, Asia/Seoul)
    assert sheet["M17"].value == "timed out at connect (3 s); OFF since 2019-03-14 16:05:00"
    assert sheet["F17"].value == "192.0.2.10"  # the last known IP stays
    assert (sheet["I17"].value, sheet["I19"].value) in {(None, None), ("", "")}


def test_dry_run_prints_the_changes_and_writes_nothing(tmp_path, capsys):
    path = seed_workbook(tmp_path / "sheet.xlsx")
    original = path.read_bytes()
    config = lab_config(tmp_path)
    results = fleet()
    results[8] = off("mlbsp", "connection refused")
    outcome = push_once(config, XlsxBackend(path), ScriptedPoller(results), dry_run=True)
    assert path.read_bytes() == original
    print_outcome(config, outcome)
    out = capsys.readouterr().out
    assert "dry run: nothing written." in out
    assert "set-up: I7: add header 'GPU util'" in out
    assert "G17 (mlbsp, status): 'ON' → 'OFF'" in out
    assert "would write" in out


def test_second_push_is_refused_while_the_lock_is_held(tmp_path, capsys):
    config = lab_config(tmp_path)
    with push_lock(config):
        assert push(config) == EXIT_LOCKED
    err = capsys.readouterr().err
    assert f"another gpumon push is running (pid {os.getpid()})" in err
    assert "this one stops without writing" in err
    assert not (tmp_path / "sheet.xlsx").exists()


def test_exit_codes_say_what_failed(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    config = lab_config(tmp_path)
    config.servers = {"box": ServerEntry("box", local=True)}
    path = tmp_path / "sheet.xlsx"
    path.write_bytes(b"not a workbook")
    assert push(config) == EXIT_SHEET
    assert "not a readable .xlsx workbook" in capsys.readouterr().err
    workbook = openpyxl.Workbook()
    workbook.active["A1"] = "no header here"
    workbook.save(path)
    assert push(config) == EXIT_LAYOUT
    assert "no header row" in capsys.readouterr().err
    config.sheet.worksheet = "Status"
    assert push(config) == EXIT_CONFIG
    assert "worksheet = 'Status' is not in" in capsys.readouterr().err


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_server_that_refuses_ssh_is_off_with_the_reason(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HOME", str(tmp_path))
    path = seed_workbook(tmp_path / "sheet.xlsx")
    config = parse(
        f"""
state_dir = "{tmp_path / "state"}"
[poll]
servers_from_sheet = false
[sheet]
path = "sheet.xlsx"
[servers.mlbsp]
host = "127.0.0.1"
port = {closed_port()}
user = "gpumon"
""",
        str(tmp_path / "gpumon.toml"),
    )
    assert push(config) == EXIT_OK
    sheet = openpyxl.load_workbook(path).active
    assert sheet["G17"].value == "OFF"
    assert "refused" in sheet["M17"].value
    assert sheet["H17"].value == "2019-03-14 15:26:45"  # never seen by gpumon: kept
    assert "1 OFF (mlbsp:" in capsys.readouterr().out


# --- the README's main job, for real: `gpumon push` with no config -----------------------------


@pytest.fixture
def main_job(tmp_path, fake_nvml):
    """A fresh HOME and working directory, and a machine with two (fake) GPUs."""
    from harness.fakenvml import FakeState

    nvml = fake_nvml(FakeState.with_gpus(2, utilization_gpu=42))
    work = tmp_path / "work"
    work.mkdir()
    env = nvml.env()
    env.update(HOME=str(tmp_path / "home"), GPUMON_STATE_DIR=str(tmp_path / "agent"))
    env.pop("GPUMON_CONFIG", None)

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(GPUMON), "push", *args], cwd=work, env=env, capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip

    run.workbook = work / "gpumon-sheet.xlsx"
    return run


def test_main_job_creates_the_workbook_with_this_machines_rows_and_prints_the_table(main_job):
    done = main_job()
    assert done.returncode == 0, done.stderr
    sheet = openpyxl.load_workbook(main_job.workbook).active
    host = socket.gethostname()
    assert sheet["A1"].value == "Server and GPU usage"
    assert [c.value for c in sheet[7]][:8] == [
        "Server", "GPU", "Usage", "Note", "Owner", "IP", "ON/OFF", "Time",
    ]  # fmt: skip
    assert [(sheet[f"A{r}"].value, sheet[f"B{r}"].value) for r in (8, 9)] == [(host, 0), (None, 1)]
    assert sheet["G8"].value == "ON" and sheet["I8"].value == "42%"
    assert "gpumon-sheet.xlsx" in done.stdout and "1 ON, 0 OFF" in done.stdout
    assert host in done.stdout.split("1 ON, 0 OFF", 1)[1]  # the fleet table follows


def test_main_job_rerun_keeps_peoples_edits_and_dry_run_writes_nothing(main_job):
    assert main_job().returncode == 0
    people_edit(main_job.workbook)
    before = snapshot(main_job.workbook, OWNED)
    done = main_job()
    assert done.returncode == 0, done.stderr
    assert snapshot(main_job.workbook, OWNED) == before
    original = main_job.workbook.read_bytes()
    done = main_job("--dry-run")
    assert done.returncode == 0, done.stderr
    assert "dry run: nothing written." in done.stdout
    assert main_job.workbook.read_bytes() == original
