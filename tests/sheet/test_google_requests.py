"""The Sheets request bodies (gpumon.sheet.google_requests), built without HTTP: a set-up's
batchUpdate in the contract's order, formats applied once per kind of column, and the write's
body addressing rows by anchor only."""

from __future__ import annotations

from gpumon.sheet.google_requests import (
    AMBER,
    GREEN,
    RED,
    ROW_KEY,
    SETUP_KEY,
    Anchor,
    SheetRead,
    format_requests,
    put,
    setup_requests,
    write_body,
)
from gpumon.sheet.grid import CELL_MAX_CHARS, NewRows, Setup

SHEET_ID = 77
RULE = "addConditionalFormatRule"


def sheet_read(**kwargs) -> SheetRead:
    defaults = {"sheet_id": SHEET_ID, "title": "usage", "cols": 8, "values": []}
    return SheetRead(**{**defaults, **kwargs})


def kinds_of(requests: list[dict]) -> list[str]:
    return [next(iter(r)) for r in requests]


def rule_value(rule: dict) -> str:
    return rule["booleanRule"]["condition"]["values"][0]["userEnteredValue"]


def rule_color(rule: dict) -> dict:
    return rule["booleanRule"]["format"]["backgroundColor"]


def column_of(rule: dict) -> int:
    return rule["ranges"][0]["startColumnIndex"]


def test_a_setup_goes_in_the_contract_order():
    read = sheet_read(anchors={"old|0": [Anchor("old|0", 5, 9)]})
    setup = Setup(
        header_row=6,
        new_headers={8: "Util"},
        anchors={7: "a|0"},
        stale_anchors=["old|0"],
        columns={"server": 0, "gpu": 1},
        new_rows=[NewRows(before_row=12, server="b", gpus=[0], name_first=True, anchors=["b|0"])],
    )

    out = setup_requests(read, setup)

    assert kinds_of(out.requests) == [
        "deleteDeveloperMetadata",  # 1. stale anchors
        "appendDimension",  # 2. a column for the new header
        "copyPaste",
        "updateCells",
        "createDeveloperMetadata",  # 3. anchors on rows as read
        "insertDimension",  # 4. new rows
        "updateCells",
        "updateCells",
        "createDeveloperMetadata",
    ]
    assert out.cells == 3  # the header, the new row's GPU and Server cells


def test_anchors_that_must_go_are_deleted_once_each():
    read = sheet_read(
        anchors={
            "stale|0": [Anchor("stale|0", 11, 3)],
            "a|0": [Anchor("a|0", 12, 4), Anchor("a|0", 13, 20)],  # copied with its row
        },
        row_metadata={7: [14, 12]},  # row 7 is re-anchored: whatever it carries goes
    )
    setup = Setup(header_row=0, anchors={7: "a|0"}, stale_anchors=["stale|0", "stale|0"])

    requests = setup_requests(read, setup).requests
    deleted = [
        r["deleteDeveloperMetadata"]["dataFilter"]["developerMetadataLookup"]["metadataId"]
        for r in requests
        if "deleteDeveloperMetadata" in r
    ]

    assert deleted == [11, 12, 13, 14]


def test_header_cells_take_the_header_style_and_new_columns_only_when_needed():
    wide_enough = setup_requests(
        sheet_read(cols=12), Setup(header_row=6, new_headers={8: "Util", 9: "Memory"})
    )
    at_the_left = setup_requests(sheet_read(cols=12), Setup(header_row=6, new_headers={0: "S"}))
    too_narrow = setup_requests(sheet_read(cols=8), Setup(header_row=6, new_headers={9: "M"}))

    copies = [r["copyPaste"] for r in wide_enough.requests if "copyPaste" in r]
    assert "appendDimension" not in kinds_of(wide_enough.requests)
    assert [c["source"]["startColumnIndex"] for c in copies] == [7, 7]  # left of the first new
    assert [c["destination"]["startColumnIndex"] for c in copies] == [8, 9]
    assert {c["pasteType"] for c in copies} == {"PASTE_FORMAT"}
    assert kinds_of(at_the_left.requests) == ["updateCells"]  # nothing left of it to copy
    assert too_narrow.requests[0]["appendDimension"]["length"] == 2


def test_new_rows_carry_their_gpu_index_as_a_number_and_the_name_only_when_first():
    setup = Setup(
        header_row=0,
        columns={"server": 0, "gpu": 2},
        new_rows=[
            NewRows(before_row=20, server="new", gpus=[0, 1], name_first=True, anchors=["n|0"]),
            NewRows(before_row=9, server="old", gpus=[3], anchors=["o|3"]),
            NewRows(before_row=5, server="empty", gpus=[]),
        ],
    )

    requests = setup_requests(sheet_read(), setup).requests
    inserts = [r["insertDimension"] for r in requests if "insertDimension" in r]
    cells = [r["updateCells"] for r in requests if "updateCells" in r]
    assert [(i["range"]["startIndex"], i["range"]["endIndex"]) for i in inserts] == [
        (20, 22),
        (9, 10),
    ]  # bottom-up, as listed; an empty NewRows inserts nothing
    assert all(i["inheritFromBefore"] for i in inserts)
    assert [
        (c["start"]["rowIndex"], c["start"]["columnIndex"], c["rows"][0]["values"][0])
        for c in cells
    ] == [
        (20, 2, {"userEnteredValue": {"numberValue": 0}}),
        (21, 2, {"userEnteredValue": {"numberValue": 1}}),
        (20, 0, {"userEnteredValue": {"stringValue": "new"}}),
        (9, 2, {"userEnteredValue": {"numberValue": 3}}),
    ]
    placed = [
        (meta["metadataValue"], meta["location"]["dimensionRange"]["startIndex"])
        for meta in (
            r["createDeveloperMetadata"]["developerMetadata"]
            for r in requests
            if "createDeveloperMetadata" in r
        )
    ]
    assert placed == [("n|0", 20), ("o|3", 9)]  # the second new row of "new" has no anchor given


def test_a_row_inserted_at_the_top_inherits_nothing():
    setup = Setup(header_row=0, columns={"gpu": 1}, new_rows=[NewRows(0, "s", [0], anchors=[])])

    insert = setup_requests(sheet_read(), setup).requests[0]["insertDimension"]

    assert insert["inheritFromBefore"] is False


def test_formats_cover_the_data_rows_of_each_new_kind_once():
    setup = Setup(header_row=6, columns={"status": 3, "util": 5, "time": 4}, data_rows=(7, 30))

    first = format_requests(sheet_read(), setup)
    status_done = format_requests(sheet_read(formatted={"status"}, setup_id=41), setup)
    all_done = format_requests(sheet_read(formatted={"status", "time", "util"}), setup)
    no_rows = format_requests(sheet_read(), Setup(header_row=6, columns={"status": 3}))

    rules = [r["addConditionalFormatRule"]["rule"] for r in first if kinds_of([r]) == [RULE]]
    status = [(rule_value(r), rule_color(r)) for r in rules if column_of(r) == 3]
    util = [(rule_value(r), rule_color(r)) for r in rules if column_of(r) == 5]
    assert status == [("ON", GREEN), ("OFF", RED)]
    assert [color for _, color in util] == [RED, AMBER, GREEN]
    assert all("F8" in formula for formula, _ in util)  # relative to the first data row
    spans = {(r["ranges"][0]["startRowIndex"], r["ranges"][0]["endRowIndex"]) for r in rules}
    assert spans == {(7, 30)}
    time_cells = [r["repeatCell"] for r in first if "repeatCell" in r]
    assert time_cells[0]["range"]["startColumnIndex"] == 4
    marker = first[-1]["createDeveloperMetadata"]["developerMetadata"]
    assert (marker["metadataKey"], marker["metadataValue"]) == (SETUP_KEY, "1:status,time,util")

    assert kinds_of(status_done).count("addConditionalFormatRule") == 3  # util only
    assert kinds_of(status_done)[-2:] == ["deleteDeveloperMetadata", "createDeveloperMetadata"]
    assert status_done[-2]["deleteDeveloperMetadata"]["dataFilter"] == {
        "developerMetadataLookup": {"metadataId": 41}
    }
    assert all_done == [] and no_rows == []


def test_the_write_addresses_rows_by_anchor_and_leaves_other_cells_null():
    read = sheet_read(anchors={"a|0": [Anchor("a|0", 901, 7)], "b|1": [Anchor("b|1", 902, 8)]})
    rows = {"a|0": {2: "ON", 4: 37.5}, "b|1": {3: "bad \ud800 text", 1: "x" * (CELL_MAX_CHARS + 9)}}

    body = write_body(read, rows, verify=True)
    unverified = write_body(read, rows, verify=False)

    assert body["valueInputOption"] == "RAW" and body["includeValuesInResponse"] is True
    assert "includeValuesInResponse" not in unverified
    (a, b) = body["data"]
    assert a["dataFilter"] == {"developerMetadataLookup": {"metadataId": 901}}
    assert a["values"] == [[None, None, "ON", None, 37.5]]
    assert b["values"][0][3] == "bad \ufffd text"  # Google refuses lone surrogates
    assert len(b["values"][0][1]) == CELL_MAX_CHARS and b["values"][0][1].endswith("…")
    assert {d["majorDimension"] for d in body["data"]} == {"ROWS"}


def test_a_cell_keeps_its_type_and_a_formula_stays_text():
    def value(v):
        return put(SHEET_ID, 1, 2, v)["updateCells"]["rows"][0]["values"][0]["userEnteredValue"]

    assert value(True) == {"boolValue": True}
    assert value(3) == {"numberValue": 3}
    assert value(0.5) == {"numberValue": 0.5}
    assert value("=IMPORTXML(1)") == {"stringValue": "=IMPORTXML(1)"}


def test_row_anchors_use_gpumons_key_and_cover_one_row():
    requests = setup_requests(sheet_read(), Setup(header_row=0, anchors={4: "s|0"})).requests

    meta = requests[0]["createDeveloperMetadata"]["developerMetadata"]

    assert meta["metadataKey"] == ROW_KEY and meta["visibility"] == "DOCUMENT"
    assert meta["location"]["dimensionRange"] == {
        "sheetId": SHEET_ID,
        "dimension": "ROWS",
        "startIndex": 4,
        "endIndex": 5,
    }
