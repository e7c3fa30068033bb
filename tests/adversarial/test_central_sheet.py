"""Attacks on the sheet's set-up: a dry run that hides what the first push writes, --add-rows
that inserts one block per push, a set-up request resent after a read timeout (rows and anchors
applied twice), and GPU indices the layout cannot read back. Issue 8, "The workbook and the
sheet"."""

from __future__ import annotations

import io
import json
from collections import Counter

import openpyxl
import pytest
from central_kit import ScriptedPoller, gpu, off, on, seed_workbook

from gpumon.config import Config, PollConfig, ServerEntry, SheetConfig
from gpumon.fleet import push_once
from gpumon.poll.answer import interpret
from gpumon.poll.result import ServerResult
from gpumon.poll.transport import CommandOutput, PollFailure
from gpumon.push import print_outcome
from gpumon.sheet.google_requests import ROW_KEY
from gpumon.sheet.xlsx import XlsxBackend
from gpumon_agent.report import utc_iso
from harness.sheets_fixtures import GoogleEnv, google_fixture, sheets_server_fixture  # noqa: F401
from harness.sshd import canned_report

GET = "sheets.spreadsheets.get"
WRITE = "sheets.spreadsheets.values.batchUpdateByDataFilter"
SETUP = "sheets.spreadsheets.batchUpdate"
POLLED = "2019-03-14T07:00:00Z"


def lab_fleet() -> list[ServerResult]:
    """Three seed servers (mlbsp with a GPU the sheet lacks), one down, one the sheet lacks."""
    return [
        on("hcpbsp", [gpu(0, util=40)], ip="192.0.2.17", polled_at=POLLED),
        on("mlbsp", [gpu(i, util=10 * i) for i in range(4)], ip="192.0.2.25", polled_at=POLLED),
        off("ganbsp", last_seen_on="2019-03-14T06:00:00Z", polled_at=POLLED),
        on("newbox", [gpu(0, util=90), gpu(1)], ip="192.0.2.77", polled_at=POLLED),
    ]


def anchors(google: GoogleEnv) -> Counter:
    return Counter(m.value for m in google.book.metadata.values() if m.key == ROW_KEY)


# --- the dry run before the first push --------------------------------------------------------


@pytest.mark.parametrize("add_rows", [False, True])
def test_google_dry_run_before_the_first_push_lists_every_cell_the_first_push_writes(
    google: GoogleEnv, add_rows: bool
):
    """Before: rows not anchored yet were skipped, so the dry run listed no cells at all."""
    google.config.servers = {"newbox": ServerEntry("newbox")}
    dry = push_once(
        google.config,
        google.backend(),
        ScriptedPoller(lab_fleet()),
        dry_run=True,
        add_rows=add_rows,
    )
    assert google.server.requests(SETUP) == [] and google.server.requests(WRITE) == []
    listed = {(c.cell, c.server, c.column, c.new) for c in dry.changes}
    assert listed, "the dry run listed nothing"
    out = io.StringIO()
    print_outcome(google.config, dry, out=out, err=io.StringIO())
    for change in dry.changes:
        assert str(change) in out.getvalue()

    real = push_once(
        google.config, google.backend(), ScriptedPoller(lab_fleet()), add_rows=add_rows
    )
    written = {(c.cell, c.server, c.column, c.new) for c in real.changes}
    assert listed == written
    assert real.stats.cells == len(written)
    servers = {c.server for c in dry.changes}
    assert {"hcpbsp", "mlbsp", "ganbsp"} <= servers
    assert ("newbox" in servers) is add_rows


def test_xlsx_dry_run_lists_the_cells_of_rows_the_first_push_inserts(tmp_path):
    path = seed_workbook(tmp_path / "sheet.xlsx")
    config = Config(
        path=str(tmp_path / "gpumon.toml"),
        state_dir=str(tmp_path / "state"),
        poll=PollConfig(servers_from_sheet=True),
        sheet=SheetConfig(path="sheet.xlsx", time_zone="Asia/Seoul"),
        servers={"newbox": ServerEntry("newbox")},
    )
    dry = push_once(
        config, XlsxBackend(path), ScriptedPoller(lab_fleet()), dry_run=True, add_rows=True
    )
    real = push_once(config, XlsxBackend(path), ScriptedPoller(lab_fleet()), add_rows=True)
    assert {(c.cell, c.new) for c in dry.changes} == {(c.cell, c.new) for c in real.changes}
    assert any(c.server == "newbox" and c.column == "util" for c in dry.changes)


# --- xlsx --add-rows: every missing block in one push -----------------------------------------


def test_xlsx_add_rows_inserts_every_missing_block_in_one_push_despite_a_formula_above(tmp_path):
    """Before: with any formula in the sheet, one block went in per push, and the formula above
    the insertion point was named as the blocker."""
    path = seed_workbook(tmp_path / "sheet.xlsx")
    book = openpyxl.load_workbook(path)
    book.active["D9"] = "=1+1"  # a person's formula, above every insertion point
    book.active["D2"] = "=COUNTA(A8:A12)"  # refers to rows above the insertions only
    book.save(path)
    config = Config(
        path=str(tmp_path / "gpumon.toml"),
        state_dir=str(tmp_path / "state"),
        poll=PollConfig(servers_from_sheet=True),
        sheet=SheetConfig(path="sheet.xlsx"),
        servers={"newbox": ServerEntry("newbox"), "zbox": ServerEntry("zbox")},
    )
    results = [*lab_fleet(), on("zbox", [gpu(0)], polled_at=POLLED)]
    results.append(on("sigbsp", [gpu(i) for i in range(6)], polled_at=POLLED))  # 4 rows → 6
    outcome = push_once(config, XlsxBackend(path), ScriptedPoller(results), add_rows=True)
    assert outcome.setup_stats is not None and outcome.setup_stats.skipped == []
    assert not any("set-up not complete" in w for w in outcome.warnings), outcome.warnings
    sheet = openpyxl.load_workbook(path).active
    column_a = [sheet.cell(r, 1).value for r in range(8, sheet.max_row + 1)]
    gpus = [sheet.cell(r, 2).value for r in range(8, sheet.max_row + 1)]
    # mlbsp got its GPU 3, sigbsp its 4 and 5, and the new blocks follow the table, in order.
    ml = column_a.index("mlbsp")
    assert gpus[ml : ml + 4] == [0, 1, 2, 3] and column_a[ml + 1 : ml + 4] == [None] * 3
    sig = column_a.index("sigbsp")
    assert gpus[sig : sig + 6] == [0, 1, 2, 3, 4, 5]
    assert column_a.index("newbox") < column_a.index("zbox")
    assert column_a.index("grubsp") < column_a.index("newbox")
    second = push_once(config, XlsxBackend(path), ScriptedPoller(results), add_rows=True)
    assert second.setup_stats is None  # nothing left to insert


def test_xlsx_add_rows_names_a_formula_below_the_insertion_point_and_inserts_the_rest(tmp_path):
    path = seed_workbook(tmp_path / "sheet.xlsx")
    book = openpyxl.load_workbook(path)
    book.active["D30"] = "=1+1"  # below the table: inserting above it would move it
    notes = book.create_sheet("Notes")
    notes["A1"] = "=Sheet1!A40"  # refers below the table from another sheet
    book.save(path)
    config = Config(
        path=str(tmp_path / "gpumon.toml"),
        state_dir=str(tmp_path / "state"),
        poll=PollConfig(servers_from_sheet=True),
        sheet=SheetConfig(path="sheet.xlsx"),
        servers={"newbox": ServerEntry("newbox")},
    )
    outcome = push_once(config, XlsxBackend(path), ScriptedPoller(lab_fleet()), add_rows=True)
    skipped = outcome.setup_stats.skipped
    assert skipped and all("a formula (D30)" in s for s in skipped), skipped
    book.active["D30"] = None
    book.save(path)
    outcome = push_once(config, XlsxBackend(path), ScriptedPoller(lab_fleet()), add_rows=True)
    assert outcome.setup_stats.skipped and "Notes!A1" in outcome.setup_stats.skipped[0]


# --- the set-up request is never resent -------------------------------------------------------


@pytest.mark.slow
def test_a_set_up_applied_but_answered_too_late_is_not_resent(google: GoogleEnv):
    """The local server applies the batchUpdate, then stalls its answer past the client's
    timeout. Before: the set-up was retried and applied twice — duplicated rows, and anchors on
    several rows that then blocked those rows for good."""
    google.config.servers = {"newbox": ServerEntry("newbox")}
    google.server.stall(2.5, method=SETUP)
    backend = google.backend(timeout_s=1.0, retry_budget_s=15.0)
    rows_before = google.sheet.row_count
    outcome = push_once(google.config, backend, ScriptedPoller(lab_fleet()), add_rows=True)
    assert len(google.server.requests(SETUP)) == 1
    assert any("not sent again" in s for s in outcome.setup_stats.skipped)
    assert google.sheet.row_count == rows_before + 3  # mlbsp's GPU 3, newbox's two GPUs
    assert max(anchors(google).values()) == 1
    # The re-read found the set-up applied: this same push wrote every cell.
    assert not any("set-up not complete" in w for w in outcome.warnings), outcome.warnings
    values = google.values()
    names = [line[0] if line else "" for line in values]
    assert names.count("newbox") == 1
    assert values[names.index("newbox")][6] == "ON"
    again = push_once(google.config, backend, ScriptedPoller(lab_fleet()), add_rows=True)
    assert again.setup_stats is None and len(google.server.requests(SETUP)) == 1


def test_a_set_up_answered_with_a_server_error_is_not_resent_and_the_next_push_completes_it(
    google: GoogleEnv,
):
    google.server.fail(500, method=SETUP)  # answered before applying: nothing happened
    backend = google.backend()
    first = push_once(google.config, backend, ScriptedPoller(lab_fleet()))
    assert len(google.server.requests(SETUP)) == 1
    assert any("Google Sheets answered 500" in s for s in first.setup_stats.skipped)
    assert any("set-up not complete yet" in w for w in first.warnings)
    assert anchors(google) == Counter()
    second = push_once(google.config, backend, ScriptedPoller(lab_fleet()))
    assert len(google.server.requests(SETUP)) == 2 and second.setup_stats.skipped == []
    assert max(anchors(google).values()) == 1
    rows = {line[0]: line for line in google.values()[7:] if line and line[0]}
    assert rows["hcpbsp"][5:7] == ["192.0.2.17", "ON"]


def test_a_set_up_refused_for_quota_is_retried_it_was_never_applied(google: GoogleEnv):
    google.server.fail(429, method=SETUP, retry_after=0.1)
    outcome = push_once(google.config, google.backend(), ScriptedPoller(lab_fleet()))
    assert len(google.server.requests(SETUP)) == 2 and outcome.setup_stats.skipped == []
    assert max(anchors(google).values()) == 1


# --- GPU indices the layout cannot read back --------------------------------------------------


def test_a_gpu_index_over_999_never_gets_rows_inserted_push_after_push(google: GoogleEnv):
    """The GPU column reads back 1-3 digits: rows for GPU 1000 were inserted again at every
    push. An agent claiming such an index is now bad output (its server shows OFF)."""
    data = canned_report("mlbsp", "127.0.0.10", gpus=4, generated_at=utc_iso()).to_dict()
    data["gpus"][3]["index"] = 1000
    out = CommandOutput(exit_status=0, stdout=json.dumps(data).encode(), stderr=b"")
    with pytest.raises(PollFailure) as caught:
        interpret(out, "gpumon-agent report --json")
    reason = caught.value.reason
    assert reason.startswith("bad output: report.gpus[3].index: 1000 is out of range (0 to 999)")
    mlbsp = ServerResult("mlbsp", "x", False, utc_iso(), reason_code="bad_output", reason=reason)
    backend = google.backend()
    rows = google.sheet.row_count
    for _ in range(3):
        push_once(google.config, backend, ScriptedPoller([mlbsp]), add_rows=True)
    assert google.sheet.row_count == rows


def test_plan_never_inserts_rows_for_an_index_the_layout_cannot_read_back(google: GoogleEnv):
    """Below the decoder too (a report built in-process): such a GPU is named in Health only."""
    big = gpu(0)
    big.index = 1000
    results = [on("mlbsp", [gpu(0), gpu(1), gpu(2), big], polled_at=POLLED)]
    backend = google.backend()
    rows = google.sheet.row_count
    for _ in range(3):
        outcome = push_once(google.config, backend, ScriptedPoller(results), add_rows=True)
    assert google.sheet.row_count == rows
    assert any("GPU 1000" in w and "cannot hold" in w for w in outcome.warnings)
