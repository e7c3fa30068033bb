"""The local Sheets v4 server: Google's request checks, its spreadsheet semantics, its faults."""

from __future__ import annotations

import base64
import json
import time
from pathlib import Path

import pytest
import requests
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from google.auth.transport.requests import AuthorizedSession, Request
from google.oauth2.service_account import Credentials

from harness import sheets_server as srv
from harness.sheets_client import ACCOUNT, authorized, google_session
from harness.sheets_fixtures import GoogleEnv, google_fixture, sheets_server_fixture  # noqa: F401
from harness.sheets_server import SCOPE, Person

BASE = "https://sheets.googleapis.com/v4/spreadsheets"
GET = "sheets.spreadsheets.get"


@pytest.fixture
def api(google: GoogleEnv) -> AuthorizedSession:
    """A session authorized the way gpumon is (service account, spreadsheets scope)."""
    return authorized(google.server, google.key_file)


def url(google: GoogleEnv, tail: str = "") -> str:
    return f"{BASE}/{google.book.id}{tail}"


def anchor(google: GoogleEnv, row: int, value: str) -> int:
    created = google.book.create_metadata(
        {
            "metadataKey": "gpumon.row",
            "metadataValue": value,
            "visibility": "DOCUMENT",
            "location": {
                "dimensionRange": {"dimension": "ROWS", "startIndex": row, "endIndex": row + 1}
            },
        }
    )
    return created["metadataId"]


def row_of(google: GoogleEnv, metadata_id: int) -> int | None:
    meta = google.book.metadata.get(metadata_id)
    return None if meta is None else google.book.metadata_location(meta)[1]


# --- requests are checked against the discovery document ------------------------------------


def test_unknown_field_in_a_body_is_a_400_and_recorded(google: GoogleEnv, api) -> None:
    body = {"valueInputOption": "RAW", "data": [{"range": "A1", "values": [["x"]], "colour": 1}]}
    answer = api.post(url(google, "/values:batchUpdate"), json=body, timeout=5)
    assert answer.status_code == 400
    assert 'Unknown name "colour"' in answer.json()["error"]["message"]
    assert google.values()[0] == ["Server and GPU usage"]  # nothing written
    recorded = google.server.take_invalid()
    assert len(recorded) == 1 and "colour" in recorded[0]


def test_wrong_types_and_enums_are_refused_wherever_they_are(google: GoogleEnv, api) -> None:
    cases = [
        ("get", "/values/A1", {"valueRenderOption": "PRETTY"}, None, "valueRenderOption"),
        ("get", "", {"includeGridData": "yes"}, None, "includeGridData"),
        ("get", "", {"colour": "red"}, None, "colour"),
        (
            "post",
            ":batchUpdate",
            None,
            {"requests": [{"insertDimension": {"range": {"startIndex": "two"}}}]},
            "requests[0].insertDimension.range.startIndex",
        ),
        (
            "post",
            ":batchUpdate",
            None,
            {"requests": [{"mergeCells": {"mergeType": "MERGE_SOME", "range": {}}}]},
            "requests[0].mergeCells.mergeType",
        ),
        ("post", "/values:batchUpdate", None, {"data": "A1"}, "data"),
    ]
    for verb, tail, params, body, named in cases:
        answer = api.request(verb, url(google, tail), params=params, json=body, timeout=5)
        assert answer.status_code == 400, (tail, answer.text)
        assert named in answer.json()["error"]["message"]
    assert len(google.server.take_invalid()) == len(cases)


def test_a_path_no_method_has_is_a_404_and_recorded(google: GoogleEnv, api) -> None:
    answer = api.get(url(google, "/notes"), timeout=5)
    assert answer.status_code == 404
    assert len(google.server.take_invalid()) == 1


def test_an_answer_off_its_schema_is_caught_as_a_harness_bug(
    google: GoogleEnv, api, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(srv._METHODS, GET, lambda server, book, call: {"spreadsheetID": "x"})
    assert api.get(url(google), timeout=5).status_code == 500
    assert "off-schema" in google.server.take_invalid()[0]


# --- auth: tokens, scope, sharing --------------------------------------------------------------


def test_a_request_without_a_valid_token_is_401(google: GoogleEnv) -> None:
    session = google.session()
    assert session.get(url(google), timeout=5).status_code == 401
    headers = {"Authorization": "Bearer ya29.made-up"}
    assert session.get(url(google), headers=headers, timeout=5).status_code == 401


def test_the_token_endpoint_wants_the_spreadsheets_scope_alone(google: GoogleEnv) -> None:
    scopes = [SCOPE, "https://www.googleapis.com/auth/drive"]
    credentials = Credentials.from_service_account_file(str(google.key_file), scopes=scopes)
    with pytest.raises(Exception, match="invalid_scope"):
        credentials.refresh(Request(google.session()))
    assert "auth/drive" in google.server.take_invalid()[0]


def test_the_token_endpoint_checks_the_jwt_signature(google: GoogleEnv) -> None:
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    now = int(time.time())
    header = b64(json.dumps({"alg": "RS256", "typ": "JWT", "kid": "x"}).encode())
    claims = {
        "iss": ACCOUNT,
        "scope": SCOPE,
        "aud": srv.GOOGLE_TOKEN_AUDIENCE,
        "iat": now,
        "exp": now + 3600,
    }
    payload = b64(json.dumps(claims).encode())
    signature = stranger.sign(f"{header}.{payload}".encode(), padding.PKCS1v15(), hashes.SHA256())
    form = {
        "grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer",
        "assertion": f"{header}.{payload}.{b64(signature)}",
    }
    answer = requests.post(google.server.token_uri, data=form, timeout=5)
    assert answer.status_code == 400
    assert answer.json()["error_description"] == "Invalid JWT Signature."


def test_a_sheet_not_shared_with_the_account_is_403_and_an_unknown_key_404(
    google: GoogleEnv, api
) -> None:
    google.server.unshare(google.book.id, ACCOUNT)
    assert api.get(url(google), timeout=5).status_code == 403
    answer = api.get(f"{BASE}/1NoSuchSpreadsheetKeyAtAllxxxxxxxxxx", timeout=5)
    assert answer.status_code == 404
    assert answer.json()["error"]["status"] == "NOT_FOUND"


def test_expired_tokens_are_refused_until_refreshed(google: GoogleEnv, api) -> None:
    assert api.get(url(google), timeout=5).status_code == 200
    google.server.expire_tokens()
    assert api.get(url(google), timeout=5).status_code == 200  # google-auth refreshed on 401
    statuses = [r.status for r in google.server.requests(GET)]
    assert statuses == [200, 401, 200]
    assert len(google.server.token_requests) == 2


# --- spreadsheet semantics ---------------------------------------------------------------------


def test_field_masks_select_nested_fields(google: GoogleEnv, api) -> None:
    params = {
        "includeGridData": "true",
        "ranges": "Sheet1!A7:B8",
        "fields": "properties/timeZone,"
        "sheets(properties(title),data(startRow,rowData.values.formattedValue))",
    }
    got = api.get(url(google), params=params, timeout=5).json()
    assert got == {
        "properties": {"timeZone": "Asia/Seoul"},
        "sheets": [
            {
                "properties": {"title": "Sheet1"},
                "data": [
                    {
                        "startRow": 6,
                        "rowData": [
                            {"values": [{"formattedValue": "Server"}, {"formattedValue": "GPU"}]},
                            {"values": [{"formattedValue": "hcpbsp"}, {"formattedValue": "0"}]},
                        ],
                    }
                ],
            }
        ],
    }


def test_raw_text_stays_text_and_user_entered_is_parsed(google: GoogleEnv, api) -> None:
    formula = '=IMPORTXML("http://192.0.2.1/x", "//a")'
    api.put(url(google, "/values/Sheet1!Z1:Z2"), params={"valueInputOption": "RAW"},
            json={"values": [[formula], ["=1+1"]]}, timeout=5)  # fmt: skip
    api.put(url(google, "/values/Sheet1!Y1:Y2"), params={"valueInputOption": "USER_ENTERED"},
            json={"values": [["=1+1"], ["2019-03-14 15:26:45"]]}, timeout=5)  # fmt: skip
    shown = api.get(url(google, "/values/Sheet1!Y1:Z2"), timeout=5).json()["values"]
    formulas = api.get(url(google, "/values/Sheet1!Y1:Z2"), params={"valueRenderOption": "FORMULA"},
                       timeout=5).json()["values"]  # fmt: skip
    assert shown == [["2", formula], ["2019-03-14 15:26:45", "=1+1"]]
    assert formulas == [["=1+1", formula], [43538.64357638889, "=1+1"]]


def test_row_metadata_moves_with_inserted_moved_and_deleted_rows(google: GoogleEnv) -> None:
    person = google.person()
    ids = {row: anchor(google, row, f"r{row}") for row in (8, 9, 10)}
    person.insert_rows(8, 2)  # above all three
    assert [row_of(google, ids[r]) for r in (8, 9, 10)] == [10, 11, 12]
    person.move_rows(12, 1, 10)  # the third one to the top of the three
    assert [row_of(google, ids[r]) for r in (8, 9, 10)] == [11, 12, 10]
    person.delete_rows(11)
    assert row_of(google, ids[8]) is None and google.book.metadata.get(ids[8]) is None
    assert [row_of(google, ids[r]) for r in (9, 10)] == [11, 10]
    assert google.values()[10][0] == "glpbsp"  # the moved row's content went with it


def test_merges_grow_and_shrink_with_rows_inside_them(google: GoogleEnv) -> None:
    person, sheet = google.person(), google.sheet
    assert [14, 16, 4, 5] in sheet.merges
    person.insert_rows(15)  # inside drlbsp's block
    assert [14, 17, 4, 5] in sheet.merges
    assert [17, 20, 4, 5] in sheet.merges  # mlbsp's block shifted down
    person.delete_rows(14, 2)
    assert not any(m[0] == 14 and m[2] == 4 for m in sheet.merges)  # one row left: no merge


def test_a_sort_moves_cells_and_leaves_row_metadata_unless_told(google: GoogleEnv) -> None:
    person = google.person()
    first = anchor(google, 7, "hcpbsp|0")
    person.sort_rows(7, 14, by_col=0)  # rows 8-14, no merges there
    names = [line[0] for line in google.values()[7:14]]
    assert names == sorted(names)
    assert names.index("hcpbsp") != 0 and row_of(google, first) == 7  # the metadata stayed

    google.book.row_metadata_follows_sort = True
    holder = names[0]  # the content on the anchored row now
    person.sort_rows(7, 14, by_col=0, descending=True)
    names = [line[0] for line in google.values()[7:14]]
    assert names == sorted(names, reverse=True)
    assert row_of(google, first) == 7 + names.index(holder)  # it went with that content


def test_sorting_across_vertical_merges_is_refused(google: GoogleEnv) -> None:
    with pytest.raises(srv.ApiError, match="vertical"):
        google.person().sort_rows(7, 30, by_col=0)


def test_batch_update_is_all_or_nothing(google: GoogleEnv, api) -> None:
    body = {
        "requests": [
            {"insertDimension": {"range": {"dimension": "ROWS", "startIndex": 0, "endIndex": 1}}},
            {
                "deleteDimension": {
                    "range": {"dimension": "ROWS", "startIndex": 5000, "endIndex": 5001}
                }
            },
        ]
    }
    answer = api.post(url(google, ":batchUpdate"), json=body, timeout=5)
    assert answer.status_code == 400 and "requests[1]" in answer.json()["error"]["message"]
    assert google.values()[0] == ["Server and GPU usage"]
    assert len(google.server.take_invalid()) == 1


def test_by_data_filter_writes_follow_the_metadata_and_skip_nulls(google: GoogleEnv, api) -> None:
    meta = anchor(google, 9, "trlbsp|0")
    Person(google.book).insert_rows(5)
    body = {
        "valueInputOption": "RAW",
        "includeValuesInResponse": True,
        "data": [
            {
                "dataFilter": {"developerMetadataLookup": {"metadataId": meta}},
                "values": [[None, None, None, "x"]],
            },
            {
                "dataFilter": {"developerMetadataLookup": {"metadataId": 12345}},
                "values": [["lost"]],
            },
        ],
    }
    answer = api.post(url(google, "/values:batchUpdateByDataFilter"), json=body, timeout=5).json()
    assert google.values()[10][:5] == ["trlbsp", "0", "", "x", "Niv using CPU"]
    assert len(answer["responses"]) == 1  # the filter that matched nothing wrote nothing
    assert answer["responses"][0]["updatedRange"] == "Sheet1!A11:D11"
    assert answer["responses"][0]["updatedData"]["values"][0][:4] == ["trlbsp", "0", "", "x"]
    assert answer["totalUpdatedCells"] == 1


def test_metadata_search_and_reads_by_data_filter_find_the_anchored_row(
    google: GoogleEnv, api
) -> None:
    meta = anchor(google, 12, "lstmbbsp|0")
    Person(google.book).insert_rows(0)
    lookup = {
        "developerMetadataLookup": {"metadataKey": "gpumon.row", "metadataValue": "lstmbbsp|0"}
    }
    found = api.post(
        url(google, "/developerMetadata:search"), json={"dataFilters": [lookup]}, timeout=5
    )
    [match] = found.json()["matchedDeveloperMetadata"]
    assert match["developerMetadata"]["metadataId"] == meta
    assert match["developerMetadata"]["location"]["dimensionRange"]["startIndex"] == 13
    body = {"dataFilters": [lookup], "valueRenderOption": "FORMATTED_VALUE"}
    got = api.post(url(google, "/values:batchGetByDataFilter"), json=body, timeout=5).json()
    assert got["valueRanges"][0]["valueRange"]["values"][0][:3] == ["lstmbbsp", "0", "khc"]


# --- faults ------------------------------------------------------------------------------------


def test_injected_errors_answer_the_next_matching_requests_then_stop(
    google: GoogleEnv, api
) -> None:
    google.server.fail(429, times=2, method=GET)
    statuses = [api.get(url(google), timeout=5).status_code for _ in range(3)]
    assert statuses == [429, 429, 200]
    assert api.get(url(google, "/values/A1"), timeout=5).status_code == 200


def test_a_delay_outlasts_a_client_timeout(google: GoogleEnv, api) -> None:
    google.server.delay(1.0, method=GET)
    with pytest.raises(requests.Timeout):
        api.get(url(google), timeout=0.3)
    assert api.get(url(google), timeout=5).status_code == 200


def test_a_hook_acts_as_a_person_after_a_request_before_its_answer(google: GoogleEnv, api) -> None:
    google.server.after(GET, lambda book: Person(book).insert_rows(0))
    first = api.get(url(google, "/values/A1"), timeout=5).json()  # not the hooked method
    api.get(url(google), params={"fields": "spreadsheetId"}, timeout=5)
    second = api.get(url(google, "/values/A2"), timeout=5).json()
    assert first["values"] == second["values"] == [["Server and GPU usage"]]


def test_the_seed_sheet_loads_as_the_fixture_shows_it(google: GoogleEnv) -> None:
    data = json.loads(Path(srv.FIXTURE).read_text(encoding="utf-8"))
    assert google.values() == [line for line in data["values"]]
    assert len(google.sheet.merges) == len(data["merges"])
    assert google.book.props["timeZone"] == "Asia/Seoul"


def test_nothing_leaves_the_machine(google: GoogleEnv) -> None:
    session = google_session(google.server)
    with pytest.raises(requests.ConnectionError, match="loopback only"):
        session.get("https://www.googleapis.com/drive/v3/files", timeout=5)
