"""The Google backend against the local Sheets server, driven by the real gspread + google-auth.

Backend level: read, write, setup, errors. The push scenarios are in test_google_push.py.
"""

from __future__ import annotations

import base64
import json
import time

import pytest

from gpumon.config import ConfigError
from gpumon.sheet.google import GoogleSheetError, open_backend, parse_sheet_url
from gpumon.sheet.grid import CellWrite, NewRows, Setup
from harness.sheets_client import ACCOUNT, write_service_account_key
from harness.sheets_fixtures import GoogleEnv, google_fixture, sheets_server_fixture  # noqa: F401
from harness.sheets_server import Person
from harness.timing import SLACK_S

GET = "sheets.spreadsheets.get"
WRITE = "sheets.spreadsheets.values.batchUpdateByDataFilter"
SETUP = "sheets.spreadsheets.batchUpdate"
STATUS, TIME = 6, 7  # G, H in the seed
ROWS = {"hcpbsp|0": 7, "ganbsp|0": 8, "trlbsp|0": 9, "glpbsp|0": 10, "ecbsp|0": 11}


def adopt(google: GoogleEnv, **overrides: object):
    """A backend on a sheet whose first rows carry anchors (as after the first push's Setup)."""
    backend = google.backend(**overrides)
    backend.read()
    columns = {"server": 0, "gpu": 1, "ip": 5, "status": STATUS, "time": TIME}
    backend.setup(
        Setup(header_row=6, anchors=dict(ROWS_BY_ROW), columns=columns, data_rows=(7, 30))
    )
    grid = backend.read()  # as push does after a set-up
    google.server.clear_log()
    return backend, grid


ROWS_BY_ROW = {row: value for value, row in ROWS.items()}
ROWS_NAMES = [value.split("|")[0] for value in ROWS]


def writes(**cells: str) -> list[CellWrite]:
    """writes(hcpbsp="OFF") → the status cell of that server's row, by anchor."""
    return [
        CellWrite(ROWS[f"{name}|0"], STATUS, value, f"{name}|0") for name, value in cells.items()
    ]


def status(google: GoogleEnv, row: int) -> str:
    line = google.values()[row]
    return line[STATUS] if len(line) > STATUS else ""


# --- reading -----------------------------------------------------------------------------------


def test_read_is_one_get_of_the_sheet_as_displayed(google: GoogleEnv) -> None:
    grid = google.backend().read()
    assert grid.values == google.values()
    assert grid.values[7] == [
        "hcpbsp", "0", "Changha", "", "Changha's personal computer",
        "192.0.2.178", "ON", "2019-03-14 15:26:45",
    ]  # fmt: skip
    assert (grid.title, grid.time_zone, grid.sheet_id, grid.anchored) == (
        "Sheet1",
        "Asia/Seoul",
        0,
        True,
    )
    assert len(grid.merges) == 22 and grid.merge_at(15, 5).start_row == 14
    [request] = google.server.requests()
    assert request.method_id == GET
    assert request.query["includeGridData"] == ["true"] and "fields" in request.query


def test_the_token_asks_for_the_spreadsheets_scope_only_and_no_drive_call_is_made(
    google: GoogleEnv,
) -> None:
    google.backend().read()
    [grant] = google.server.token_requests
    claims = json.loads(_b64(grant["assertion"].split(".")[1]))
    assert claims["scope"] == "https://www.googleapis.com/auth/spreadsheets"
    assert all(r.path.startswith("/v4/spreadsheets/") for r in google.server.requests())


def test_read_finds_the_worksheet_by_title_or_gid(google: GoogleEnv) -> None:
    other = google.book.add_sheet("Notes", rows=5, cols=3)
    Person(google.book, 1).type(0, 0, "meeting on Friday")
    by_title = google.backend(worksheet="Notes").read()
    assert by_title.values == [["meeting on Friday"]]
    assert google.server.requests()[-1].query["ranges"] == ["'Notes'"]
    google.config.sheet.worksheet = None
    google.config.sheet.url = (
        f"https://docs.google.com/spreadsheets/d/{google.book.id}/edit#gid={other.id}"
    )
    assert google.backend().read().title == "Notes"
    google.config.sheet.url = f"https://docs.google.com/spreadsheets/d/{google.book.id}/edit"
    assert google.backend().read().title == "Sheet1"


def test_an_unknown_worksheet_is_a_config_error_naming_the_ones_there(google: GoogleEnv) -> None:
    google.config.sheet.url = f"https://docs.google.com/spreadsheets/d/{google.book.id}/edit#gid=77"
    with pytest.raises(ConfigError, match=r"no gid=77 \(it has: 'Sheet1'\)"):
        google.backend().read()


@pytest.mark.parametrize(
    ("url", "key", "gid"),
    [
        ("https://docs.google.com/spreadsheets/d/1q4JKDHPubUlub8XbGVShh9ZTCfkOyZnIX0Vlb41j2xM/edit#gid=0",
         "1q4JKDHPubUlub8XbGVShh9ZTCfkOyZnIX0Vlb41j2xM", 0),
        ("https://docs.google.com/spreadsheets/d/1E34abcdefghijklmnopqrst/edit?usp=sharing&gid=42",
         "1E34abcdefghijklmnopqrst", 42),
        ("1q4JKDHPubUlub8XbGVShh9ZTCfkOyZnIX0Vlb41j2xM",
         "1q4JKDHPubUlub8XbGVShh9ZTCfkOyZnIX0Vlb41j2xM", None),
    ],
)  # fmt: skip
def test_sheet_urls_and_bare_keys_are_understood(url: str, key: str, gid: int | None) -> None:
    assert parse_sheet_url(url, "gpumon.toml") == (key, gid)


def test_a_url_that_is_not_a_sheet_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"gpumon.toml, \[sheet\] url: 'Server and GPU usage'"):
        parse_sheet_url("Server and GPU usage", "gpumon.toml")


# --- setup --------------------------------------------------------------------------------------


def test_setup_adds_headers_anchors_and_the_formats_once(google: GoogleEnv) -> None:
    bold = {"textFormat": {"bold": True}}
    google.sheet.rows[6].cells[7]["userEnteredFormat"] = bold  # a person made "Time" bold
    backend = google.backend()
    backend.read()
    setup = Setup(
        header_row=6,
        new_headers={8: "GPU util", 9: "Health"},
        anchors={7: "hcpbsp|0", 8: "ganbsp|0"},
        columns={"status": 6, "time": 7, "util": 8},
        data_rows=(7, 30),
    )
    stats = backend.setup(setup)
    assert stats.requests == 1 and stats.cells == 2
    assert google.values()[6] == [
        "Server",
        "GPU",
        "Usage",
        "Note",
        "Owner",
        "IP",
        "ON/OFF",
        "Time",
        "GPU util",
        "Health",
    ]
    grid = backend.read()
    assert grid.row_anchors == {7: "hcpbsp|0", 8: "ganbsp|0"}
    rules = google.sheet.conditional_formats
    assert {r["ranges"][0]["startColumnIndex"] for r in rules} == {6, 8}
    assert len(rules) == 5  # ON, OFF, three utilisation bands
    time_format = google.sheet.cell(20, 7)["userEnteredFormat"]["numberFormat"]
    assert time_format == {"type": "DATE_TIME", "pattern": "yyyy-mm-dd hh:mm:ss"}
    assert google.sheet.cell(6, 8)["userEnteredFormat"] == bold  # the new header looks alike

    # Again, with one more row to anchor: no second set of formats.
    backend.setup(
        Setup(header_row=6, anchors={9: "trlbsp|0"}, columns=setup.columns, data_rows=(7, 30))
    )
    assert len(google.sheet.conditional_formats) == 5
    assert backend.read().row_anchors == {7: "hcpbsp|0", 8: "ganbsp|0", 9: "trlbsp|0"}


def test_setup_moves_an_anchor_found_on_the_wrong_row(google: GoogleEnv) -> None:
    backend, _ = adopt(google)
    backend.read()
    backend.setup(
        Setup(header_row=6, stale_anchors=["ganbsp|0"], anchors={8: "ganbsp|0", 7: "x|0"})
    )
    anchors = backend.read().row_anchors
    assert anchors[8] == "ganbsp|0" and anchors[7] == "x|0"
    assert list(anchors.values()).count("ganbsp|0") == 1
    assert sum(m.key == "gpumon.row" for m in google.book.metadata.values()) == len(ROWS)


def test_setup_inserts_rows_with_the_gpu_index_and_anchors(google: GoogleEnv) -> None:
    backend = google.backend()
    backend.read()
    backend.setup(
        Setup(
            header_row=6,
            columns={"server": 0, "gpu": 1},
            new_rows=[
                NewRows(
                    before_row=30,
                    server="newbsp",
                    gpus=[0, 1],
                    name_first=True,
                    anchors=["newbsp|0", "newbsp|1"],
                ),
                NewRows(before_row=8, server="hcpbsp", gpus=[1], anchors=["hcpbsp|1"]),
            ],
        )
    )
    values = google.values()
    assert values[8][:2] == ["", "1"] and values[9][0] == "ganbsp"
    assert values[31][:2] == ["newbsp", "0"] and values[32][:2] == ["", "1"]
    assert backend.read().row_anchors == {8: "hcpbsp|1", 31: "newbsp|0", 32: "newbsp|1"}


# --- writing -----------------------------------------------------------------------------------


def test_a_write_is_one_request_addressed_by_anchor_with_nulls_for_peoples_cells(
    google: GoogleEnv,
) -> None:
    backend, _ = adopt(google)
    stats = backend.write(
        [*writes(hcpbsp="OFF"), CellWrite(7, TIME, "2019-03-14 16:00:00", "hcpbsp|0")]
    )
    assert (stats.requests, stats.cells, stats.skipped) == (1, 2, [])
    [request] = google.server.requests()
    assert request.method_id == WRITE and request.body["valueInputOption"] == "RAW"
    [data] = request.body["data"]
    assert set(data["dataFilter"]["developerMetadataLookup"]) == {"metadataId"}
    assert data["values"] == [[None] * 6 + ["OFF", "2019-03-14 16:00:00"]]
    assert google.values()[7] == [
        "hcpbsp", "0", "Changha", "", "Changha's personal computer",
        "192.0.2.178", "OFF", "2019-03-14 16:00:00",
    ]  # fmt: skip


def test_nothing_to_write_costs_no_request(google: GoogleEnv) -> None:
    backend, _ = adopt(google)
    assert backend.write([]).requests == 0
    assert google.server.requests() == []


def test_text_is_written_raw_and_reads_back_unchanged_as_formula(google: GoogleEnv) -> None:
    backend, _ = adopt(google)
    job = '=IMPORTXML("http://192.0.2.66/x", "//secret")'
    backend.write([CellWrite(7, 9, job, "hcpbsp|0"), CellWrite(8, 9, "=1+1", "ganbsp|0")])
    book, sheet = google.book, google.sheet
    as_formula = book.read_values(book.bounds("Sheet1!J8:J9"), render="FORMULA")["values"]
    assert as_formula == [[job], ["=1+1"]]
    assert sheet.cell(7, 9)["userEnteredValue"] == {"stringValue": job}
    assert google.values()[8][9] == "=1+1"  # shown as text, not computed


def test_a_row_inserted_between_read_and_write_gets_its_values_all_the_same(
    google: GoogleEnv,
) -> None:
    backend, _ = adopt(google)
    backend.read()
    Person(google.book).insert_rows(8, 2)  # above ganbsp, below hcpbsp
    stats = backend.write(writes(hcpbsp="OFF", ganbsp="OFF", trlbsp="OFF"))
    assert stats.skipped == []
    values = google.values()
    assert [values[r][0] for r in (7, 10, 11)] == ["hcpbsp", "ganbsp", "trlbsp"]
    assert [status(google, r) for r in (7, 8, 9, 10, 11, 12)] == ["OFF", "", "", "OFF", "OFF", "ON"]


def test_a_row_deleted_between_read_and_write_is_skipped_not_misplaced(google: GoogleEnv) -> None:
    backend, _ = adopt(google)
    backend.read()
    Person(google.book).delete_rows(8)  # ganbsp
    stats = backend.write(writes(ganbsp="OFF", trlbsp="OFF"))
    assert stats.skipped == ["row 9 ('ganbsp|0') was deleted before the write"]
    assert [google.values()[r][0] for r in (8, 9)] == ["trlbsp", "glpbsp"]
    assert [status(google, r) for r in (7, 8, 9)] == ["ON", "OFF", "ON"]


@pytest.mark.parametrize(
    "metadata_follows", [True, False], ids=["metadata-follows-sort", "metadata-stays"]
)
def test_rows_sorted_between_read_and_write_get_no_misplaced_value(
    google: GoogleEnv, metadata_follows: bool
) -> None:
    google.book.row_metadata_follows_sort = metadata_follows
    backend, _ = adopt(google)
    backend.read()
    Person(google.book).sort_rows(7, 12, by_col=0, descending=True)  # hcpbsp … ecbsp reversed
    backend.write(writes(hcpbsp="OFF", glpbsp="OFF"))
    by_name = {line[0]: line[STATUS] for line in google.values()[7:12]}
    # Metadata that follows its row takes the values along; metadata that stays put would have
    # put them on other servers' rows, so those rows get their own values back and the two
    # values wait for the next push (which re-anchors the rows).
    off = {"hcpbsp", "glpbsp"} if metadata_follows else set()
    assert by_name == {name: "OFF" if name in off else "ON" for name in ROWS_NAMES}
    assert len(google.server.requests(WRITE)) == (1 if metadata_follows else 2)


def test_writes_without_a_unique_anchor_are_skipped(google: GoogleEnv) -> None:
    backend, _ = adopt(google)
    google.book.create_metadata(
        {
            "metadataKey": "gpumon.row",
            "metadataValue": "ganbsp|0",
            "visibility": "DOCUMENT",
            "location": {"dimensionRange": {"dimension": "ROWS", "startIndex": 20, "endIndex": 21}},
        }
    )
    backend.read()
    stats = backend.write([CellWrite(9, STATUS, "OFF"), *writes(ganbsp="OFF")])
    assert stats.skipped == [
        "G10: row has no anchor yet",
        "G9: the row anchor 'ganbsp|0' is on several rows",
    ]
    assert google.server.requests(WRITE) == []


# --- errors and retries ------------------------------------------------------------------------


class Sleeps(list):
    """Records back-off sleeps instead of sleeping (the budget still counts them)."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


def test_429s_are_retried_with_growing_jittered_back_off(google: GoogleEnv) -> None:
    backend, _ = adopt(google)
    backend.retry.sleep = sleeps = Sleeps()
    google.server.fail(429, times=3, method=WRITE)
    stats = backend.write(writes(hcpbsp="OFF"))
    assert stats.requests == 4 and status(google, 7) == "OFF"
    assert len(sleeps) == 3
    for n, seconds in enumerate(sleeps):
        ceiling = 0.5 * 2**n
        assert ceiling / 2 <= seconds < ceiling


def test_429_for_ever_gives_up_within_the_budget_and_the_next_push_recovers(
    google: GoogleEnv,
) -> None:
    backend, _ = adopt(google, retry_budget_s=1.5)
    fault = google.server.fail(429, times=None, method=WRITE)
    started = time.monotonic()
    with pytest.raises(
        GoogleSheetError, match=r"quota exceeded \(429\); gave up after \d+ tries"
    ) as e:
        backend.write(writes(hcpbsp="OFF"))
    assert time.monotonic() - started < 1.5 + SLACK_S  # the retry budget
    assert e.value.kind == "quota" and len(google.server.requests(WRITE)) >= 2
    fault.times = 0
    backend.read()  # the next push: a fresh budget
    assert backend.write(writes(hcpbsp="OFF")).requests == 1


def test_server_errors_are_retried(google: GoogleEnv) -> None:
    backend, _ = adopt(google)
    backend.retry.sleep = Sleeps()
    google.server.fail(500, times=1, method=GET)
    google.server.fail(503, times=1, method=GET)
    assert backend.read().values[7][0] == "hcpbsp"
    assert [r.status for r in google.server.requests(GET)] == [500, 503, 200]


def test_a_slow_answer_times_out_and_is_retried_then_given_up(google: GoogleEnv) -> None:
    backend = google.backend(timeout_s=0.3, retry_budget_s=10)
    google.server.delay(1.0, times=1, method=GET)
    assert backend.read().title == "Sheet1"  # the second try was quick
    backend = google.backend(timeout_s=0.3, retry_budget_s=1.0)
    google.server.delay(1.0, times=None, method=GET)
    started = time.monotonic()
    with pytest.raises(GoogleSheetError, match=r"no answer within 0\.3 s") as e:
        backend.read()
    assert e.value.kind == "timeout" and time.monotonic() - started < 1.0 + SLACK_S  # the budget
    google.server.clear_faults()


def test_an_expired_token_is_refreshed_once(google: GoogleEnv) -> None:
    backend, _ = adopt(google)
    google.server.expire_tokens()
    backend.write(writes(hcpbsp="OFF"))
    assert [r.status for r in google.server.requests(WRITE)] == [401, 200]
    assert len(google.server.token_requests) == 2


def test_401_after_a_refresh_names_the_key_file(google: GoogleEnv) -> None:
    backend, _ = adopt(google)
    google.server.fail(401, times=2, method=WRITE)
    with pytest.raises(ConfigError, match=r"service-account.json .*refused the access token of"):
        backend.write(writes(hcpbsp="OFF"))


def test_a_sheet_not_shared_names_the_account_to_share_it_with(google: GoogleEnv) -> None:
    google.server.unshare(google.book.id, ACCOUNT)
    with pytest.raises(GoogleSheetError, match=f"Share the sheet with {ACCOUNT} as Editor") as e:
        google.backend().read()
    assert e.value.kind == "forbidden"


def test_an_unknown_key_says_so(google: GoogleEnv) -> None:
    google.config.sheet.url = "1NoSuchSheetAnywhere000000000000000000"
    with pytest.raises(GoogleSheetError, match=r"no spreadsheet with key 1NoSuchSheetAnywhere0+ "):
        google.backend().read()


def test_a_revoked_key_is_a_config_error_naming_the_file(google: GoogleEnv) -> None:
    google.server.revoke_account(ACCOUNT)
    with pytest.raises(ConfigError, match=r"service-account.json .*would not issue a token for"):
        google.backend().read()


def test_an_unreachable_token_endpoint_is_retried_then_given_up(google: GoogleEnv) -> None:
    write_service_account_key(google.server, google.key_file, token_uri="http://127.0.0.1:9/token")
    with pytest.raises(GoogleSheetError, match="cannot reach Google") as e:
        google.backend(retry_budget_s=1.0).read()
    assert e.value.kind == "network"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file — create one in the Google Cloud console"),
        ("{not json", "not a JSON key file"),
        ('{"installed": {"client_id": "x"}}', "an OAuth client ID file, not a service-account key"),
        ('{"type": "authorized_user"}', "a 'authorized_user' credentials file"),
        ('{"type": "service_account", "client_email": "a@b", "token_uri": "x", "private_key": "x"}',
         "not a usable service-account key"),
    ],
)  # fmt: skip
def test_a_missing_or_bad_key_file_is_a_config_error_naming_it(
    google: GoogleEnv, content: str | None, message: str
) -> None:
    if content is None:
        google.key_file.unlink()
    else:
        google.key_file.write_text(content)
    with pytest.raises(ConfigError, match=message) as e:
        open_backend(google.config, session=google.session())
    assert str(google.key_file) in str(e.value) and "[sheet] credentials" in str(e.value)


def _b64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
