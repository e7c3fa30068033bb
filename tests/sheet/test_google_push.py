"""Pushes to Google Sheets end to end: push_once / push with the Google backend, the real gspread
and google-auth, the local Sheets server, and scripted poll results (the SSH side is tested with
a real sshd elsewhere)."""

from __future__ import annotations

import copy
import threading
import time

import pytest
from sheetkit import ScriptedPoller, gpu, off, on, process

from gpumon import fleet as fleet_module
from gpumon.fleet import EXIT_CONFIG, EXIT_LOCKED, EXIT_OK, EXIT_SHEET, push_once
from gpumon.poll.result import ServerResult
from gpumon.push import push
from gpumon.sheet import google as google_module
from gpumon_agent.report import ClaimInfo
from harness.sheets_client import ACCOUNT
from harness.sheets_fixtures import GoogleEnv, google_fixture, sheets_server_fixture  # noqa: F401
from harness.sheets_server import Person
from harness.timing import SLACK_S

GET = "sheets.spreadsheets.get"
WRITE = "sheets.spreadsheets.values.batchUpdateByDataFilter"
SETUP = "sheets.spreadsheets.batchUpdate"
# The seed's servers and how many GPU rows each has.
SEED_GPUS = {
    "hcpbsp": 1, "ganbsp": 1, "trlbsp": 1, "glpbsp": 1, "ecbsp": 1, "lstmbbsp": 1,
    "relbsp": 1, "drlbsp": 2, "mlbsp": 3, "annbsp": 3, "sigbsp": 4, "grubsp": 4,
}  # fmt: skip
IP, STATUS, TIME = 5, 6, 7
JOB = '=IMPORTXML("http://192.0.2.66/x", "//secret")'  # a job name that looks like a formula
OWNED_FROM = 5  # IP onwards: IP, ON/OFF, Time, then the columns gpumon adds
HEADER = 6


def fleet(minute: int = 0, down: dict[str, str] | None = None) -> list[ServerResult]:
    """Every seed server ON at 2019-03-14 16:MM (Seoul), except those named in ``down``."""
    polled = f"2019-03-14T07:{minute:02d}:00Z"
    out = []
    for n, (name, count) in enumerate(SEED_GPUS.items()):
        if down and name in down:
            out.append(off(name, down[name], last_seen_on="2019-03-14T06:00:00Z", polled_at=polled))
            continue
        gpus = [gpu(i, util=10.0 * i, used_gib=i) for i in range(count)]
        if name == "sigbsp":  # untrusted text from a server: written raw
            claim = ClaimInfo(job=JOB, user="lww", pid=4242, started_at=polled)
            gpus[0] = gpu(
                0, 99.0, 10, processes=[process("lww", "python train.py")], claims=[claim]
            )
        out.append(on(name, gpus, ip=f"192.0.2.{100 + n}", polled_at=polled))
    return out


def push_with(google: GoogleEnv, results: list[ServerResult], backend=None):
    backend = backend or google.backend()
    return push_once(google.config, backend, ScriptedPoller(results)), backend


def rows_of(google: GoogleEnv) -> dict[str, list[str]]:
    """Each server's first row (its name row), as displayed now."""
    return {line[0]: line for line in google.values()[7:] if line and line[0]}


def peoples_cells(google: GoogleEnv) -> dict:
    """Every cell gpumon does not own — value, format, note — plus merges and row heights."""
    sheet = google.sheet
    out: dict = {"merges": sorted(map(tuple, sheet.merges)), "rows": sheet.row_count}
    for r, row in enumerate(sheet.rows):
        for c, cell in row.cells.items():
            owned = (r > HEADER and c >= OWNED_FROM) or (r == HEADER and c > TIME)
            if not owned:
                out[(r, c)] = copy.deepcopy(cell)
    return out


@pytest.fixture
def cli(google: GoogleEnv, monkeypatch: pytest.MonkeyPatch):
    """`gpumon push` itself, its backend given the loopback session, its poller scripted."""
    real = google_module.open_backend
    monkeypatch.setattr(
        google_module, "open_backend", lambda config: real(config, session=google.session())
    )
    script: dict = {"results": fleet(), "pause": 0.0}
    monkeypatch.setattr(
        fleet_module,
        "open_poller",
        lambda config: ScriptedPoller(script["results"], script["pause"]),
    )
    return script


# --- adoption and steady pushes ----------------------------------------------------------------


def test_the_seed_sheet_is_adopted_and_pushed_many_times_keeping_every_persons_cell(
    google: GoogleEnv,
) -> None:
    before = peoples_cells(google)
    backend = google.backend()
    for minute in range(5):
        down = {"mlbsp": "timed out at connect (3 s)"} if minute % 2 else None
        outcome, backend = push_with(google, fleet(minute, down), backend)
        assert outcome.warnings == [] or all("GPU" in w for w in outcome.warnings)
    assert peoples_cells(google) == before
    rules = google.sheet.conditional_formats
    assert rules and all(r["ranges"][0]["startColumnIndex"] >= OWNED_FROM for r in rules)
    rows = rows_of(google)
    assert rows["hcpbsp"][IP : TIME + 1] == ["192.0.2.100", "ON", "2019-03-14 16:04:00"]
    assert google.values()[HEADER][8:] == [
        "GPU util",
        "GPU memory",
        "Running",
        "Job",
        "Health",
        "State",
    ]


def test_a_steady_push_is_one_read_and_one_write_of_only_the_changed_cells(
    google: GoogleEnv,
) -> None:
    _, backend = push_with(google, fleet(0))
    assert [r.method_id for r in google.server.requests()] == [GET, SETUP, GET, WRITE]
    google.server.clear_log()

    second, _ = push_with(google, fleet(1), backend)  # a minute later: the times change
    assert [r.method_id for r in google.server.requests()] == [GET, WRITE]
    [write] = google.server.requests(WRITE)
    assert write.cells == len(second.changes) == len(SEED_GPUS)  # one time cell per server
    assert {c.column for c in second.changes} == {"time"}
    google.server.clear_log()

    third, _ = push_with(google, fleet(1), backend)  # nothing changed: no write at all
    assert [r.method_id for r in google.server.requests()] == [GET]
    assert third.stats.requests == 0


def test_formula_text_from_a_server_is_written_raw(google: GoogleEnv) -> None:
    push_with(google, fleet(0))
    book = google.book
    job = google.values()[HEADER].index("Job")
    row = next(r for r, line in enumerate(google.values()) if line and line[0] == "sigbsp")
    expected = f"{JOB} (lww)"
    assert book.sheets[0].cell(row, job)["userEnteredValue"] == {"stringValue": expected}
    shown = book.read_values(book.bounds(f"Sheet1!A{row + 1}:Z{row + 1}"), render="FORMULA")
    assert shown["values"][0][job] == expected


def test_servers_down_show_off_with_the_reason_and_keep_their_last_seen_time(
    google: GoogleEnv,
) -> None:
    push_with(google, fleet(0))
    push_with(google, fleet(5, down={"relbsp": "connection refused"}))
    relbsp = rows_of(google)["relbsp"]
    health = google.values()[HEADER].index("Health")
    assert relbsp[STATUS] == "OFF"
    assert relbsp[TIME] == "2019-03-14 15:00:00"  # last seen (06:00 UTC), not the poll time
    # Since its first failed poll (07:05 UTC, in the sheet's zone)
    assert relbsp[health] == "connection refused; OFF since 2019-03-14 16:05:00"
    assert rows_of(google)["relbsp"][IP] == "192.0.2.106"  # the last known address stays


# --- people editing during a push ---------------------------------------------------------------


def test_a_row_inserted_by_a_person_between_read_and_write_misplaces_nothing(
    google: GoogleEnv,
) -> None:
    _, backend = push_with(google, fleet(0))
    google.server.after(GET, lambda book: Person(book).insert_rows(10, 2))  # above glpbsp
    push_with(
        google, fleet(7, down={"glpbsp": "timed out at auth (5 s)", "ecbsp": "refused"}), backend
    )
    values = google.values()
    assert values[10] == [] and values[11] == []  # the person's new rows: untouched
    rows = rows_of(google)
    assert rows["glpbsp"][STATUS] == rows["ecbsp"][STATUS] == "OFF"
    assert rows["trlbsp"][STATUS] == rows["lstmbbsp"][STATUS] == "ON"
    assert rows["trlbsp"][TIME] == "2019-03-14 16:07:00"


def test_rows_sorted_by_a_person_between_read_and_write_get_no_misplaced_value(
    google: GoogleEnv,
) -> None:
    _, backend = push_with(google, fleet(0))
    google.server.after(
        GET, lambda book: Person(book).sort_rows(7, 14, by_col=0)
    )  # no merges there
    down = {"hcpbsp": "refused", "relbsp": "refused"}
    push_with(google, fleet(9, down=down), backend)
    for name, line in rows_of(google).items():
        if name in SEED_GPUS and name not in down:
            assert line[STATUS] == "ON", name  # nobody else's OFF landed here
    push_with(google, fleet(10, down=down), backend)  # the next push re-anchors and catches up
    for name, line in rows_of(google).items():
        if name in SEED_GPUS:
            assert line[STATUS] == ("OFF" if name in down else "ON"), name


# --- failures -----------------------------------------------------------------------------------


def test_429_a_few_times_is_absorbed_by_the_retry(google: GoogleEnv, cli, capsys) -> None:
    assert push(google.config) == EXIT_OK
    google.server.fail(429, times=2, method=GET)
    cli["results"] = fleet(3)
    assert push(google.config) == EXIT_OK
    assert rows_of(google)["hcpbsp"][TIME] == "2019-03-14 16:03:00"


def test_429_for_ever_ends_the_push_with_exit_3_and_the_next_push_recovers(
    google: GoogleEnv, cli, capsys
) -> None:
    assert push(google.config) == EXIT_OK
    google.config.sheet.retry_budget_s = 1.0
    fault = google.server.fail(429, times=None, method=WRITE)
    cli["results"] = fleet(3)
    started = time.monotonic()
    assert push(google.config) == EXIT_SHEET
    assert time.monotonic() - started < google.config.sheet.retry_budget_s + SLACK_S
    assert "quota exceeded (429); gave up after" in capsys.readouterr().err
    fault.times = 0
    assert push(google.config) == EXIT_OK
    assert rows_of(google)["hcpbsp"][TIME] == "2019-03-14 16:03:00"


def test_server_errors_and_an_expired_token_do_not_stop_a_push(google: GoogleEnv, cli) -> None:
    assert push(google.config) == EXIT_OK
    google.server.fail(500, times=1, method=GET)
    google.server.fail(503, times=1, method=WRITE)
    google.server.expire_tokens()
    cli["results"] = fleet(4)
    assert push(google.config) == EXIT_OK
    assert rows_of(google)["hcpbsp"][TIME] == "2019-03-14 16:04:00"


def test_a_sheet_not_shared_with_the_account_says_whom_to_share_it_with(
    google: GoogleEnv, cli, capsys
) -> None:
    google.server.unshare(google.book.id, ACCOUNT)
    assert push(google.config) == EXIT_SHEET
    assert f"Share the sheet with {ACCOUNT} as Editor" in capsys.readouterr().err


def test_answers_slower_than_the_timeout_end_the_push_within_the_budget(
    google: GoogleEnv, cli, capsys
) -> None:
    google.config.sheet.timeout_s, google.config.sheet.retry_budget_s = 0.3, 1.0
    google.server.delay(1.0, times=None, method=GET)
    started = time.monotonic()
    assert push(google.config) == EXIT_SHEET
    assert time.monotonic() - started < google.config.sheet.retry_budget_s + SLACK_S
    assert "no answer within 0.3 s" in capsys.readouterr().err
    google.server.clear_faults()


def test_a_missing_or_broken_key_file_is_exit_2_naming_it(google: GoogleEnv, cli, capsys) -> None:
    google.key_file.unlink()
    assert push(google.config) == EXIT_CONFIG
    assert f"{google.key_file} ([sheet] credentials in" in capsys.readouterr().err
    google.key_file.write_text("{}")
    assert push(google.config) == EXIT_CONFIG
    assert google.server.requests() == []


def test_two_pushes_at_once_only_one_writes(google: GoogleEnv, cli) -> None:
    assert push(google.config) == EXIT_OK
    google.server.clear_log()
    cli["results"], cli["pause"] = fleet(8), 0.5
    codes: list[int] = []
    threads = [threading.Thread(target=lambda: codes.append(push(google.config))) for _ in range(2)]
    for t in threads:
        t.start()
        time.sleep(0.1)
    for t in threads:
        t.join()
    assert sorted(codes) == [EXIT_OK, EXIT_LOCKED]
    assert [r.method_id for r in google.server.requests()] == [GET, WRITE]
