"""The "GPU hours" worksheet: written by pushes at most once per [history] sheet_every_s, its
chart set up once, in the lab's own workbook (xlsx) or spreadsheet (Google), and never a write
into the lab's own worksheet."""

from __future__ import annotations

import copy
import time

import openpyxl
import pytest
from histkit import HOUR, T0, gpu, run, server
from sheetkit import ScriptedPoller, on, people_edit, process, seed_workbook, snapshot
from sheetkit import gpu as report_gpu

from gpumon.config import Config, HistoryConfig, PollConfig, SheetConfig
from gpumon.fleet import push_once
from gpumon.history.recorder import after_push
from gpumon.history.worksheet import maybe_write_worksheet
from gpumon.sheet.grid import OWNED_MARKER
from gpumon.sheet.xlsx import XlsxBackend
from harness.sheets_fixtures import GoogleEnv, google_fixture, sheets_server_fixture  # noqa: F401

BATCH = "sheets.spreadsheets.batchUpdate"
OWNED = set(range(5, 13))  # the lab worksheet's gpumon columns (F..M)
SEED = ["hcpbsp", "ganbsp", "sigbsp"]


def xlsx_config(tmp_path, **history) -> Config:
    return Config(
        path=str(tmp_path / "gpumon.toml"),
        state_dir=str(tmp_path / "state"),
        poll=PollConfig(servers_from_sheet=True),
        sheet=SheetConfig(path="sheet.xlsx", time_zone="UTC"),
        history=HistoryConfig(**history),
    )


def results(user: str = "kim"):
    gpus = [report_gpu(0, util=90, processes=[process(user, "python train.py")])]
    return [on(name, gpus) for name in SEED]


def push(cfg, backend, now):
    outcome = push_once(cfg, backend, ScriptedPoller(results()))
    return after_push(cfg, outcome, backend) if now is None else _after(cfg, outcome, backend, now)


def _after(cfg, outcome, backend, now):
    from gpumon.history.recorder import record_outcome

    return record_outcome(cfg, outcome, at=now) + maybe_write_worksheet(cfg, backend, now)


def test_xlsx_worksheet_is_written_once_per_period_with_its_chart_once(tmp_path):
    path = seed_workbook(tmp_path / "sheet.xlsx")
    people_edit(path)
    cfg = xlsx_config(tmp_path, sheet_every_s=3600)
    backend = XlsxBackend(path, time_zone="UTC", owned_title="GPU hours")
    assert push(cfg, backend, T0 + 10) == []
    before = snapshot(path, OWNED)
    stamps = []
    for minute in range(1, 30):  # half an hour of pushes: no rewrite
        assert push(cfg, backend, T0 + 10 + 60 * minute) == []
        stamps.append(openpyxl.load_workbook(path)["GPU hours"]["A1"].value)
    assert len(set(stamps)) == 1
    assert push(cfg, backend, T0 + 10 + HOUR) == []  # an hour on: rewritten
    book = openpyxl.load_workbook(path)
    sheet = book["GPU hours"]
    assert sheet["A1"].value.startswith(OWNED_MARKER) and sheet["A1"].value != stamps[0]
    assert [c.value for c in sheet[4]][:3] == ["Person", "Used", "Reserved"]
    # kim on three GPUs: 29 minutes of pushes, then one after a pause that stands for 300 s.
    assert sheet["A5"].value == "kim" and sheet["B5"].value == round(3 * (29 * 60 + 300) / HOUR, 2)
    assert len(sheet._charts) == 1  # set up once, kept through every save since
    assert book.sheetnames == ["Sheet1", "Notes", "GPU hours"]
    # The lab's worksheet: only gpumon's own columns changed (its Time cells); the people's
    # cells, the other sheet and the styles as they were.
    after = snapshot(path, OWNED)
    assert after["sheets"] == [*before["sheets"]]
    assert {k: v for k, v in after.items() if k[0] != "GPU hours"} == {
        k: v for k, v in before.items() if k[0] != "GPU hours"
    }


def test_xlsx_a_worksheet_of_that_name_someone_made_is_left_alone(tmp_path):
    path = seed_workbook(tmp_path / "sheet.xlsx")
    book = openpyxl.load_workbook(path)
    book.create_sheet("GPU hours")["A1"] = "our own notes"
    book.save(path)
    cfg = xlsx_config(tmp_path)
    backend = XlsxBackend(path, time_zone="UTC", owned_title="GPU hours")
    warnings = push(cfg, backend, T0)
    assert len(warnings) == 1 and "gpumon did not make" in warnings[0]
    assert openpyxl.load_workbook(path)["GPU hours"]["A1"].value == "our own notes"


def test_xlsx_a_workbook_with_someone_elses_chart_is_still_never_rewritten(tmp_path):
    from openpyxl.chart import BarChart, Reference

    path = seed_workbook(tmp_path / "sheet.xlsx")
    book = openpyxl.load_workbook(path)
    notes = book.create_sheet("Notes")
    notes["A1"], notes["A2"] = "x", 1
    chart = BarChart()
    chart.add_data(Reference(notes, min_col=1, min_row=1, max_row=2), titles_from_data=True)
    notes.add_chart(chart, "C3")
    book.save(path)
    cfg = xlsx_config(tmp_path)
    backend = XlsxBackend(path, time_zone="UTC", owned_title="GPU hours")
    with pytest.raises(Exception, match="drawings"):
        push(cfg, backend, T0)


def test_xlsx_sheet_title_naming_the_lab_worksheet_is_refused(tmp_path):
    path = seed_workbook(tmp_path / "sheet.xlsx")
    cfg = xlsx_config(tmp_path, sheet_title="Sheet1")
    backend = XlsxBackend(path, time_zone="UTC", owned_title="Sheet1")
    warnings = push(cfg, backend, T0)
    assert len(warnings) == 1 and "lab's own worksheet" in warnings[0]


def test_no_worksheet_when_history_sheet_is_off(tmp_path):
    path = seed_workbook(tmp_path / "sheet.xlsx")
    cfg = xlsx_config(tmp_path, sheet=False)
    backend = XlsxBackend(path, time_zone="UTC")
    outcome = push_once(cfg, backend, ScriptedPoller(results()))
    assert after_push(cfg, outcome, backend) == []
    assert openpyxl.load_workbook(path).sheetnames == ["Sheet1"]


def test_the_tables_hold_this_week_and_last_week(tmp_path):
    path = seed_workbook(tmp_path / "sheet.xlsx")
    cfg = xlsx_config(tmp_path)
    # Last week (W47): lee on a GPU reserved by kim for 2 hours; this week: kim 1 hour.
    last = T0 - 7 * 86400
    run(
        cfg,
        last,
        last + 2 * HOUR,
        60,
        lambda t: [server("x", gpu("x", 0, users=["lee"], reserved=["kim"]))],
    )
    run(cfg, T0, T0 + HOUR, 60, lambda t: [server("x", gpu("x", 0, users=["kim"]))])
    backend = XlsxBackend(path, time_zone="UTC", owned_title="GPU hours")
    backend.read()
    assert maybe_write_worksheet(cfg, backend, T0 + HOUR + 30) == []
    sheet = openpyxl.load_workbook(path)["GPU hours"]
    this = {
        sheet.cell(r, 1).value: [sheet.cell(r, c).value for c in range(2, 8)] for r in range(5, 8)
    }
    assert this["kim"][0] == 1.0 and this["kim"][4] == 1.0  # used, without a reservation
    last_week = {
        sheet.cell(r, 15).value: [sheet.cell(r, c).value for c in range(16, 22)]
        for r in range(5, 8)
    }
    assert last_week["lee"][0] == 2.0 and last_week["lee"][3] == 2.0  # on kim's reservation
    assert last_week["kim"][1] == 2.0 and last_week["kim"][2] == 2.0  # reserved, unused
    assert "2026-W48" in sheet["A3"].value and "2026-W47" in sheet["O3"].value


# --- Google ---------------------------------------------------------------------------------


def google_push(google: GoogleEnv, backend, now):
    outcome = push_once(google.config, backend, ScriptedPoller(results()))
    return _after(google.config, outcome, backend, now)


def test_google_worksheet_is_one_request_per_period_and_its_chart_is_added_once(google):
    google.config.sheet.time_zone = "UTC"
    backend = google.backend()
    google_push(google, backend, T0)
    lab_before = copy.deepcopy(google.sheet.rows)
    google.server.clear_log()
    for minute in range(1, 20):
        assert google_push(google, backend, T0 + 60 * minute) == []
    # Twenty minutes of pushes: each one read and one write, no rewrite of the worksheet.
    assert google.server.requests(BATCH) == []
    assert google_push(google, backend, T0 + HOUR) == []
    batches = google.server.requests(BATCH)
    assert len(batches) == 1  # the hourly rewrite: one request
    owned = google.book.sheet_by_title("GPU hours")
    assert owned is not None and len(owned.charts) == 1
    assert owned.cell(0, 0)["userEnteredValue"]["stringValue"].startswith(OWNED_MARKER)
    assert owned.cell(4, 0)["userEnteredValue"] == {"stringValue": "kim"}
    # The lab's worksheet: only its Time cells moved (gpumon's column), nothing else.
    changed = {
        (r, c)
        for r, (a, b) in enumerate(zip(lab_before, google.sheet.rows))
        for c in set(a.cells) | set(b.cells)
        if a.cells.get(c) != b.cells.get(c)
    }
    assert {c for _, c in changed} <= {7}
    assert google_push(google, backend, T0 + 2 * HOUR + 5) == []
    assert len(google.server.requests(BATCH)) == 2
    assert len(google.book.sheet_by_title("GPU hours").charts) == 1  # never added again


def test_google_a_deleted_worksheet_is_made_again_and_a_persons_namesake_left_alone(google):
    google.config.sheet.time_zone = "UTC"
    backend = google.backend()
    assert google_push(google, backend, T0) == []
    owned = google.book.sheet_by_title("GPU hours")
    google.book.batch_update([{"deleteSheet": {"sheetId": owned.id}}])
    warnings = google_push(google, backend, T0 + HOUR)
    assert len(warnings) == 1 and "deleted" in warnings[0]
    assert google_push(google, backend, T0 + 2 * HOUR) == []
    assert len(google.book.sheet_by_title("GPU hours").charts) == 1
    # Someone replaces it with a worksheet of their own under the same name.
    owned = google.book.sheet_by_title("GPU hours")
    google.book.batch_update([{"deleteSheet": {"sheetId": owned.id}}])
    google.book.batch_update([{"addSheet": {"properties": {"title": "GPU hours"}}}])
    mine = google.book.sheet_by_title("GPU hours")
    google_push(google, backend, T0 + 3 * HOUR)  # finds it gone: made again next time
    warnings = google_push(google, backend, T0 + 4 * HOUR)
    assert len(warnings) == 1 and "gpumon did not make" in warnings[0]
    theirs = google.book.sheet_by_title("GPU hours")
    assert theirs.id == mine.id and theirs.rows[0].cells == {}  # not a cell written
    # Google refuses those requests (a grid deleted, a name taken) as the backend expects:
    # answers to act on, not malformed requests.
    assert len(google.server.invalid) == 3
    assert all("No grid with id" in e or "already exists" in e for e in google.server.invalid)
    google.server.invalid.clear()


def test_serve_records_each_push_and_writes_the_worksheet(tmp_path):
    from gpumon.config import ServerEntry
    from gpumon.serve import Service
    from gpumon.sheet.xlsx import open_backend
    from gpumon.statedb import history_db

    cfg = xlsx_config(tmp_path)
    cfg.poll.servers_from_sheet = False
    cfg.sheet.add_rows = True
    cfg.servers = {"box": ServerEntry("box")}

    class Poller:
        def sweep(self, names):
            return [on(n, [report_gpu(0, processes=[process("kim", "x")])]) for n in names]

    service = Service(cfg, open_backend(cfg), Poller())
    for _ in range(3):
        service.push()
        time.sleep(1.1)  # whole seconds apart: each push covers some time
    with history_db(cfg) as conn:
        (pushes,) = conn.execute("SELECT count(*) FROM history_raw WHERE gpu = 0").fetchone()
    assert pushes == 2  # the first push's empty interval is replaced by the second's
    book = openpyxl.load_workbook(tmp_path / "sheet.xlsx")
    assert book.sheetnames == ["Sheet1", "GPU hours"]
    # A fresh backend (the next cron push) still writes the workbook: its one chart is gpumon's.
    again = open_backend(cfg)
    again.read()
    assert again.writable_problem() is None


def test_a_worksheet_failure_never_fails_the_push(tmp_path, monkeypatch, capsys):
    from gpumon import fleet as fleet_module
    from gpumon.push import push as push_command

    path = seed_workbook(tmp_path / "sheet.xlsx")
    cfg = xlsx_config(tmp_path)
    monkeypatch.setattr(fleet_module, "open_poller", lambda config: ScriptedPoller(results()))

    def broken(self, *args, **kwargs):  # a fault the real parts cannot be made to produce
        raise ValueError("something unforeseen")

    monkeypatch.setattr(XlsxBackend, "write_owned", broken)
    assert push_command(cfg) == 0
    err = capsys.readouterr().err
    assert "worksheet 'GPU hours' not written (ValueError: something unforeseen)" in err
    assert openpyxl.load_workbook(path)["Sheet1"]["G8"].value == "ON"  # the sheet was written
