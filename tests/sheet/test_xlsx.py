"""The .xlsx backend: a fresh workbook in the lab's layout, raw text, atomic saves that keep
people's cells, and clear refusals (corrupt, open in LibreOffice, drawings)."""

from __future__ import annotations

import datetime as dt
import os
import zipfile
from pathlib import Path

import openpyxl
import pytest
from sheetkit import gpu, on, people_edit, snapshot

from gpumon.config import Config, ConfigError, SheetConfig
from gpumon.sheet.grid import CellWrite, NewRows, Setup, SheetError
from gpumon.sheet.layout import read_layout
from gpumon.sheet.plan import plan
from gpumon.sheet.xlsx import XlsxBackend, display, open_backend, resolve_path, template_headers


def push_via(backend: XlsxBackend, results, add_rows: bool = True):
    """read → plan → (setup → read → plan) → write, as gpumon push does."""
    grid = backend.read()
    p = plan(grid, read_layout(grid), results, add_rows=add_rows)
    if p.setup is not None:
        backend.setup(p.setup)
        grid = backend.read()
        p = plan(grid, read_layout(grid), results, add_rows=add_rows)
    return backend.write(p.writes)


def made(tmp_path: Path, results=None) -> Path:
    path = tmp_path / "gpumon-sheet.xlsx"
    push_via(XlsxBackend(path), results or [on("box", [gpu(0), gpu(1)])])
    return path


def test_missing_workbook_reads_as_the_lab_layout_and_is_not_created_by_reading(tmp_path):
    path = tmp_path / "gpumon-sheet.xlsx"
    grid = XlsxBackend(path).read()
    assert not path.exists()
    assert grid.values[0] == ["Server and GPU usage"]
    assert grid.values[6] == [
        "Server", "GPU", "Usage", "Note", "Owner", "IP", "ON/OFF", "Time",
        "GPU util", "GPU memory", "Running", "Job", "Health", "State",
    ]  # fmt: skip
    assert template_headers() == grid.values[6]
    assert read_layout(grid).blocks == []


def test_empty_write_creates_the_missing_workbook(tmp_path):
    path = tmp_path / "gpumon-sheet.xlsx"
    backend = XlsxBackend(path)
    backend.read()
    stats = backend.write([])
    assert path.exists() and stats.requests == 1
    assert openpyxl.load_workbook(path).active["A7"].value == "Server"


def test_first_push_adds_a_block_per_server_one_row_per_gpu(tmp_path):
    path = made(tmp_path, [on("box", [gpu(0, util=50), gpu(1)]), on("cpubox")])
    sheet = openpyxl.load_workbook(path).active
    rows = [[c.value for c in row] for row in sheet.iter_rows(min_row=8, max_col=13)]
    assert rows[0][:2] == ["box", 0] and rows[0][6] == "ON" and rows[0][8] == "50%"
    assert rows[1][:2] == [None, 1] and rows[1][6] is None and rows[1][8] == "0%"
    assert rows[2][:2] == ["cpubox", None] and rows[2][6] == "ON"


def test_text_starting_with_equals_stays_text(tmp_path):
    path = made(tmp_path)
    backend = XlsxBackend(path)
    backend.read()
    evil = '=IMPORTXML("http://192.0.2.1/","//a")'
    backend.write([CellWrite(row=7, col=10, value=evil, anchor="box|0")])
    cell = openpyxl.load_workbook(path).active["K8"]
    assert cell.value == evil and cell.data_type == "s"
    with zipfile.ZipFile(path) as archive:
        xml = archive.read("xl/worksheets/sheet1.xml").decode()
    assert "<f>" not in xml and "IMPORTXML" in xml


def test_control_characters_from_servers_do_not_break_the_save(tmp_path):
    path = made(tmp_path)
    backend = XlsxBackend(path)
    backend.read()
    backend.write([CellWrite(row=7, col=10, value="lww: a\x07b", anchor="box|0")])
    assert openpyxl.load_workbook(path).active["K8"].value == "lww: a\ufffdb"


def test_rewrite_keeps_every_person_cell_value_and_style(tmp_path):
    path = made(tmp_path)
    people_edit(path)
    owned = set(range(5, 13))
    before = snapshot(path, owned)
    results = [on("box", [gpu(0, util=90), gpu(1, util=70)], polled_at="2019-03-14T07:00:00Z")]
    stats = push_via(XlsxBackend(path), results)
    assert stats.cells > 0
    assert snapshot(path, owned) == before
    sheet = openpyxl.load_workbook(path).active
    assert (sheet["I8"].value, sheet["I9"].value) == ("90%", "70%")
    assert sheet["D9"].value == "=1+1" and sheet["D9"].data_type == "f"


def test_no_change_means_no_save(tmp_path):
    path = made(tmp_path)
    stamp = os.stat(path).st_mtime_ns, os.stat(path).st_ino
    backend = XlsxBackend(path)
    backend.read()
    assert backend.write([]).requests == 0
    assert (os.stat(path).st_mtime_ns, os.stat(path).st_ino) == stamp


def test_corrupt_workbook_is_reported_and_left_as_it_is(tmp_path):
    path = tmp_path / "gpumon-sheet.xlsx"
    path.write_bytes(b"PK\x03\x04 this is not a workbook")
    with pytest.raises(SheetError, match=r"not a readable \.xlsx workbook.*leaves it exactly"):
        XlsxBackend(path).read()
    assert path.read_bytes() == b"PK\x03\x04 this is not a workbook"


def test_workbook_open_in_libreoffice_is_not_written(tmp_path):
    path = made(tmp_path)
    original = path.read_bytes()
    lock = tmp_path / ".~lock.gpumon-sheet.xlsx#"
    lock.write_text("Niv Kim,niv,lab-pc,24.11.2026 10:00,file:///home/niv/.config;")
    backend = XlsxBackend(path)
    backend.read()
    with pytest.raises(SheetError, match=r"open in a spreadsheet program by Niv Kim.*lock file"):
        backend.write([CellWrite(row=7, col=6, value="OFF", anchor="box|")])
    assert path.read_bytes() == original


def test_workbook_with_a_chart_is_never_rewritten(tmp_path):
    from openpyxl.chart import BarChart, Reference

    path = made(tmp_path)
    workbook = openpyxl.load_workbook(path)
    chart = BarChart()
    chart.add_data(Reference(workbook.active, min_col=2, min_row=8, max_row=9))
    workbook.active.add_chart(chart, "P2")
    workbook.save(path)
    original = path.read_bytes()
    backend = XlsxBackend(path)
    backend.read()  # reading is fine (check, dry runs)
    with pytest.raises(SheetError, match=r"drawings .* openpyxl would drop"):
        backend.write([CellWrite(row=7, col=6, value="OFF", anchor="box|")])
    assert path.read_bytes() == original


def test_workbook_with_parts_openpyxl_would_drop_is_never_rewritten(tmp_path):
    path = made(tmp_path)
    # Excel's extended data validation (a drop-down fed from another sheet) lives in an extLst,
    # which openpyxl reads past and would not write back.
    with zipfile.ZipFile(path) as archive:
        parts = {name: archive.read(name) for name in archive.namelist()}
    sheet_xml = parts["xl/worksheets/sheet1.xml"].decode()
    ext = (
        '<extLst><ext uri="{CCE6A557-97BC-4b89-ADB6-D9C93CAAB3DF}" '
        'xmlns:x14="http://schemas.microsoft.com/office/spreadsheetml/2009/9/main">'
        "<x14:dataValidations/></ext></extLst>"
    )
    parts["xl/worksheets/sheet1.xml"] = sheet_xml.replace("</worksheet>", ext + "</worksheet>")
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in parts.items():
            archive.writestr(name, data)
    original = path.read_bytes()
    backend = XlsxBackend(path)
    backend.read()
    with pytest.raises(SheetError, match=r"Data Validation extension is not supported"):
        backend.write([CellWrite(row=7, col=6, value="OFF", anchor="box|")])
    assert path.read_bytes() == original


def test_failed_save_leaves_the_workbook_and_no_temporary_file(tmp_path, monkeypatch):
    path = made(tmp_path)
    original = path.read_bytes()
    backend = XlsxBackend(path)
    backend.read()

    def disk_full(self, file):  # a full disk cannot be produced for real here
        file.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(openpyxl.Workbook, "save", disk_full)
    with pytest.raises(SheetError, match=r"cannot save it \(No space left on device\); the"):
        backend.write([CellWrite(row=7, col=6, value="OFF", anchor="box|")])
    assert path.read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == ["gpumon-sheet.xlsx"]


def test_saved_file_keeps_its_permissions(tmp_path):
    path = made(tmp_path)
    os.chmod(path, 0o640)
    push_via(XlsxBackend(path), [on("box", [gpu(0, util=99), gpu(1)])])
    assert os.stat(path).st_mode & 0o777 == 0o640


def test_rows_moved_by_a_person_between_read_and_write_are_found_by_anchor(tmp_path):
    path = made(tmp_path, [on("a", [gpu(0)]), on("b", [gpu(0), gpu(1)])])
    backend = XlsxBackend(path)
    grid = backend.read()
    results = [on("a", [gpu(0, util=11)]), on("b", [gpu(0, util=22), gpu(1, util=33)])]
    p = plan(grid, read_layout(grid), results)
    # Meanwhile a person inserts two rows above the table and saves.
    workbook = openpyxl.load_workbook(path)
    workbook.active.insert_rows(8, 2)
    workbook.save(path)
    stats = backend.write(p.writes)
    assert stats.skipped == []
    sheet = openpyxl.load_workbook(path).active
    assert [sheet[f"A{r}"].value for r in (10, 11, 12)] == ["a", "b", None]
    assert [sheet[f"I{r}"].value for r in (10, 11, 12)] == ["11%", "22%", "33%"]
    assert sheet["I8"].value is None and sheet["I9"].value is None


def test_add_rows_inserts_at_the_end_of_the_block_shifting_rows_below(tmp_path):
    path = made(tmp_path, [on("a", [gpu(0)]), on("b", [gpu(0)])])
    workbook = openpyxl.load_workbook(path)
    sheet = workbook.active
    sheet["C9"] = "Niv"  # b's Usage, below the insertion point
    sheet["E9"] = "Niv's box"
    sheet.merge_cells("E9:E10")
    sheet.row_dimensions[9].height = 40
    workbook.save(path)
    backend = XlsxBackend(path)
    push_via(backend, [on("a", [gpu(0), gpu(1), gpu(2)]), on("b", [gpu(0)])])
    sheet = openpyxl.load_workbook(path).active
    assert [sheet[f"B{r}"].value for r in (8, 9, 10, 11)] == [0, 1, 2, 0]
    assert [sheet[f"A{r}"].value for r in (8, 9, 10, 11)] == ["a", None, None, "b"]
    assert (sheet["C11"].value, sheet["E11"].value) == ("Niv", "Niv's box")
    assert "E11:E12" in {str(r) for r in sheet.merged_cells.ranges}
    assert sheet.row_dimensions[11].height == 40
    assert sheet["I10"].value == "0%"


def test_add_rows_refuses_to_shift_rows_below_a_formula(tmp_path):
    path = made(tmp_path, [on("a", [gpu(0)]), on("b", [gpu(0)])])
    workbook = openpyxl.load_workbook(path)
    workbook.active["D20"] = "=COUNTA(A8:A9)"
    workbook.save(path)
    backend = XlsxBackend(path)
    backend.read()
    new = NewRows(before_row=8, server="a", gpus=[1])
    stats = backend.setup(Setup(header_row=6, columns={"server": 0, "gpu": 1}, new_rows=[new]))
    assert stats.skipped == [
        "rows for 'a' not inserted: a formula (D20) below row 9, which gpumon cannot re-point in "
        "an .xlsx; insert the rows by hand (blank Server cell, GPU index in the GPU column)"
    ]
    assert openpyxl.load_workbook(path).active["A9"].value == "b"


def test_named_worksheet_must_exist(tmp_path):
    path = made(tmp_path)
    with pytest.raises(ConfigError, match=r"worksheet = 'Status' is not in .*it has: Sheet1"):
        XlsxBackend(path, worksheet="Status").read()


def test_relative_path_is_relative_to_the_config_file(tmp_path):
    config = Config(path=str(tmp_path / "etc" / "gpumon.toml"), sheet=SheetConfig(path="s.xlsx"))
    assert resolve_path(config) == tmp_path / "etc" / "s.xlsx"
    assert isinstance(open_backend(config), XlsxBackend)
    assert resolve_path(Config(path=None)) == Path("gpumon-sheet.xlsx")


def test_display_text_of_cell_values():
    values = (None, 0, 1.0, 2.5, True, "x")
    assert [display(v) for v in values] == ["", "0", "1", "2.5", "TRUE", "x"]
    assert display(dt.datetime(2019, 3, 14, 15, 26, 45)) == "2019-03-14 15:26:45"
