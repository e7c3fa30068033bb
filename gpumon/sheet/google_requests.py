"""The Sheets v4 request bodies gpumon sends, built from what the last read found: pure
functions, no HTTP (gpumon.sheet.google sends them; tests/sheet/test_google_requests.py checks
them alone).

- ``setup_requests``: the ONE ``spreadsheets.batchUpdate`` of a set-up, in the order the
  ``Setup`` contract gives: anchors that must go, header cells (and columns for them), anchors on
  rows as read, inserted rows (bottom-up), and the formats of gpumon's columns.
- ``format_requests``: those formats — ON green / OFF red, utilisation bands, the time format —
  only for the kinds of column not formatted yet, then the "gpumon.setup" sheet metadata that
  records which are.
- ``write_body``: the ``values:batchUpdateByDataFilter`` body of a write: each row addressed by
  its anchor's metadata id, ``[null, …, v]`` so the API leaves the other cells alone.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

from gpumon.sheet.grid import BarChart, Setup, a1, cell_text

ROW_KEY = "gpumon.row"  # row developer metadata: value = the row's anchor
SETUP_KEY = "gpumon.setup"  # sheet developer metadata: value = "1:status,time,util"
SETUP_VERSION = "1"
FORMATTED_KINDS = ("status", "time", "util")

GREEN = {"red": 0.72, "green": 0.88, "blue": 0.8}
RED = {"red": 0.96, "green": 0.78, "blue": 0.76}
AMBER = {"red": 0.99, "green": 0.91, "blue": 0.7}
TIME_FORMAT = {"type": "DATE_TIME", "pattern": "yyyy-mm-dd hh:mm:ss"}

Request = dict[str, Any]


@dataclass
class Anchor:
    value: str
    metadata_id: int
    row: int  # as read


@dataclass
class SheetRead:
    """What the last read found that writes and set-ups rely on."""

    sheet_id: int
    title: str
    cols: int
    values: list[list[str]]
    anchors: dict[str, list[Anchor]] = field(default_factory=dict)  # value → where it sits
    row_metadata: dict[int, list[int]] = field(default_factory=dict)  # row → gpumon.row ids
    setup_id: int | None = None
    formatted: set[str] = field(default_factory=set)  # kinds whose formats are applied


@dataclass
class SetupRequests:
    requests: list[Request] = field(default_factory=list)
    cells: int = 0  # cells the requests write (header cells, new rows' GPU and Server cells)


def setup_requests(read: SheetRead, setup: Setup) -> SetupRequests:
    """The set-up's batchUpdate requests, in the order the Setup contract gives."""
    out = SetupRequests()
    sheet_id = read.sheet_id

    # 1. Anchors that must go: stale ones, others on rows about to be (re-)anchored, and
    #    any copy of an anchor about to be attached elsewhere.
    doomed: set[int] = set()
    for value in [*setup.stale_anchors, *setup.anchors.values()]:
        doomed |= {a.metadata_id for a in read.anchors.get(value, [])}
    for row in setup.anchors:
        doomed |= set(read.row_metadata.get(row, []))
    out.requests.extend(delete_metadata(metadata_id) for metadata_id in sorted(doomed))

    # 2. Header cells, in new columns when the grid is too narrow; styled like the header.
    if setup.new_headers:
        widest = max(setup.new_headers) + 1
        if widest > read.cols:
            out.requests.append(
                {
                    "appendDimension": {
                        "sheetId": sheet_id,
                        "dimension": "COLUMNS",
                        "length": widest - read.cols,
                    }
                }
            )
        first = min(setup.new_headers)
        for col, text in sorted(setup.new_headers.items()):
            if first > 0:
                out.requests.append(
                    {
                        "copyPaste": {
                            "source": cell_range(sheet_id, setup.header_row, first - 1),
                            "destination": cell_range(sheet_id, setup.header_row, col),
                            "pasteType": "PASTE_FORMAT",
                        }
                    }
                )
            out.requests.append(put(sheet_id, setup.header_row, col, text))
            out.cells += 1

    # 3. Anchors on rows as read.
    for row, value in sorted(setup.anchors.items()):
        out.requests.append(anchor_request(sheet_id, row, value))

    # 4. New rows (--add-rows), bottom-up so the indices given stay valid.
    gpu_col, server_col = setup.columns.get("gpu"), setup.columns.get("server")
    for new in setup.new_rows:
        count = len(new.gpus)
        if count == 0:
            continue
        at = new.before_row
        out.requests.append(
            {
                "insertDimension": {
                    "range": {
                        "sheetId": sheet_id,
                        "dimension": "ROWS",
                        "startIndex": at,
                        "endIndex": at + count,
                    },
                    "inheritFromBefore": at > 0,
                }
            }
        )
        for i, gpu in enumerate(new.gpus):
            if gpu is not None and gpu_col is not None:
                out.requests.append(put(sheet_id, at + i, gpu_col, gpu))
                out.cells += 1
        if new.name_first and server_col is not None:
            out.requests.append(put(sheet_id, at, server_col, new.server))
            out.cells += 1
        for i, value in enumerate(new.anchors[:count]):
            out.requests.append(anchor_request(sheet_id, at + i, value))

    # 5. Formats of gpumon's own columns, once (only where the column's kind is new).
    out.requests.extend(format_requests(read, setup))
    return out


def format_requests(read: SheetRead, setup: Setup) -> list[Request]:
    """Formats for the kinds of gpumon column not formatted yet (none if all are, or the sheet
    has no data rows), then the sheet metadata recording every kind formatted."""
    start, end = setup.data_rows
    kinds = [k for k in FORMATTED_KINDS if k in setup.columns and k not in read.formatted]
    if not kinds or end <= start:
        return []
    out: list[Request] = []
    for kind in kinds:
        col = setup.columns[kind]
        span = {
            "sheetId": read.sheet_id,
            "startRowIndex": start,
            "endRowIndex": end,
            "startColumnIndex": col,
            "endColumnIndex": col + 1,
        }
        if kind == "status":
            for text, color in (("ON", GREEN), ("OFF", RED)):
                out.append(color_rule(span, "TEXT_EQ", text, color))
        elif kind == "util":
            # Utilisation is text ("37%"): bands by formula, since a gradient needs numbers.
            cell = a1(start, col)
            number = f'IFERROR(VALUE(SUBSTITUTE({cell},"%","")),-1)'
            for formula, color in (
                (f"={number}>=80", RED),
                (f"=AND({number}>=30,{number}<80)", AMBER),
                (f"=AND({number}>=0,{number}<30)", GREEN),
            ):
                out.append(color_rule(span, "CUSTOM_FORMULA", formula, color))
        elif kind == "time":
            out.append(
                {
                    "repeatCell": {
                        "range": span,
                        "cell": {"userEnteredFormat": {"numberFormat": TIME_FORMAT}},
                        "fields": "userEnteredFormat.numberFormat",
                    }
                }
            )
    done = sorted(read.formatted | set(kinds))
    if read.setup_id is not None:
        out.append(delete_metadata(read.setup_id))
    out.append(
        {
            "createDeveloperMetadata": {
                "developerMetadata": {
                    "metadataKey": SETUP_KEY,
                    "metadataValue": f"{SETUP_VERSION}:{','.join(done)}",
                    "location": {"sheetId": read.sheet_id},
                    "visibility": "DOCUMENT",
                }
            }
        }
    )
    return out


def write_body(read: SheetRead, rows: dict[str, dict[int, Any]], verify: bool) -> Request:
    """The values:batchUpdateByDataFilter body writing ``rows`` (anchor → column → value; each
    anchor sits on exactly one row of ``read``). ``verify``: ask for the rows back."""
    data = []
    for value, cols in rows.items():
        line: list[Any] = [None] * (max(cols) + 1)
        for col, cell in cols.items():
            line[col] = cell_text(cell)  # Google refuses lone surrogates, long cells
        lookup = {"metadataId": read.anchors[value][0].metadata_id}
        data.append(
            {
                "dataFilter": {"developerMetadataLookup": lookup},
                "majorDimension": "ROWS",
                "values": [line],
            }
        )
    body: Request = {"valueInputOption": "RAW", "data": data}
    if verify:
        body["includeValuesInResponse"] = True
    return body


def cell_range(sheet_id: int, row: int, col: int) -> dict[str, int]:
    return {
        "sheetId": sheet_id,
        "startRowIndex": row,
        "endRowIndex": row + 1,
        "startColumnIndex": col,
        "endColumnIndex": col + 1,
    }


def put(sheet_id: int, row: int, col: int, value: Any) -> Request:
    """One cell's value, RAW (a number stays a number, text stays text)."""
    if isinstance(value, bool):
        typed = {"boolValue": value}
    elif isinstance(value, (int, float)):
        typed = {"numberValue": value}
    else:
        typed = {"stringValue": cell_text(str(value))}
    return {
        "updateCells": {
            "rows": [{"values": [{"userEnteredValue": typed}]}],
            "fields": "userEnteredValue",
            "start": {"sheetId": sheet_id, "rowIndex": row, "columnIndex": col},
        }
    }


def anchor_request(sheet_id: int, row: int, value: str) -> Request:
    """Attach the anchor ``value`` to ``row`` (row developer metadata, moving with the row)."""
    return {
        "createDeveloperMetadata": {
            "developerMetadata": {
                "metadataKey": ROW_KEY,
                "metadataValue": value,
                "location": {
                    "dimensionRange": {
                        "sheetId": sheet_id,
                        "dimension": "ROWS",
                        "startIndex": row,
                        "endIndex": row + 1,
                    }
                },
                "visibility": "DOCUMENT",
            }
        }
    }


def delete_metadata(metadata_id: int) -> Request:
    lookup = {"developerMetadataLookup": {"metadataId": metadata_id}}
    return {"deleteDeveloperMetadata": {"dataFilter": lookup}}


def color_rule(span: dict[str, int], kind: str, value: str, color: dict[str, float]) -> Request:
    """Conditional background: ``kind`` "TEXT_EQ" (value = the text) or "CUSTOM_FORMULA"."""
    condition = {"type": kind, "values": [{"userEnteredValue": value}]}
    return {
        "addConditionalFormatRule": {
            "rule": {
                "ranges": [span],
                "booleanRule": {"condition": condition, "format": {"backgroundColor": color}},
            },
            "index": 0,
        }
    }


# --- a gpumon-owned worksheet ("GPU hours") ---------------------------------------------------

OWNED_COLS = 30  # the columns an owned worksheet is made with, and cleared on each rewrite


def owned_sheet_id(title: str) -> int:
    """The sheetId gpumon gives its own worksheet named ``title`` (Sheets lets the client
    choose it): the same on every run, so a rewrite addresses it without a read."""
    return 0x40000000 | (zlib.crc32(("gpumon:" + title).encode("utf-8")) & 0x3FFFFFFF)


def _cell(value: Any) -> dict[str, Any]:
    if isinstance(value, bool) or value is None:
        return {"userEnteredValue": {"stringValue": "" if value is None else str(value)}}
    if isinstance(value, (int, float)):
        return {"userEnteredValue": {"numberValue": value}}
    return {"userEnteredValue": {"stringValue": cell_text(value)}}


def owned_sheet_requests(
    sheet_id: int,
    title: str,
    rows: list[list[Any]],
    chart: BarChart | None,
    create: bool,
    clear_rows: int,
) -> list[Request]:
    """One batchUpdate that (with ``create``) adds the worksheet, then clears its values and
    writes ``rows`` from A1, then (with ``create``) adds the chart — a chart once, so a reader's
    changes to it are kept. Values are userEnteredValue strings and numbers (never formulas)."""
    below_chart = chart.anchor_row + 25 if chart is not None else 0  # the chart's rows too
    height = max(len(rows), clear_rows, below_chart) + 1
    width = max([OWNED_COLS, *(len(r) for r in rows)])
    out: list[Request] = []
    if create:
        out.append(
            {
                "addSheet": {
                    "properties": {
                        "sheetId": sheet_id,
                        "title": title,
                        "gridProperties": {
                            "rowCount": height,
                            "columnCount": width,
                            "frozenRowCount": 1,
                        },
                    }
                }
            }
        )
    else:
        out.append(
            {
                "updateSheetProperties": {
                    "properties": {
                        "sheetId": sheet_id,
                        "gridProperties": {"rowCount": height, "columnCount": width},
                    },
                    "fields": "gridProperties(rowCount,columnCount)",
                }
            }
        )
    span = {
        "sheetId": sheet_id,
        "startRowIndex": 0,
        "endRowIndex": height,
        "startColumnIndex": 0,
        "endColumnIndex": width,
    }
    out.append(
        {
            "updateCells": {
                "range": span,
                "rows": [{"values": [_cell(v) for v in row]} for row in rows],
                "fields": "userEnteredValue",
            }
        }
    )
    if create and chart is not None:
        out.append({"addChart": {"chart": _chart(sheet_id, chart)}})
    return out


def _chart(sheet_id: int, chart: BarChart) -> dict[str, Any]:
    def source(col: int, first: int) -> dict[str, Any]:
        return {
            "sourceRange": {
                "sources": [
                    {
                        "sheetId": sheet_id,
                        "startRowIndex": first,
                        "endRowIndex": chart.end_row,
                        "startColumnIndex": col,
                        "endColumnIndex": col + 1,
                    }
                ]
            }
        }

    return {
        "spec": {
            "title": chart.title,
            "basicChart": {
                "chartType": "BAR",
                "legendPosition": "BOTTOM_LEGEND",
                "headerCount": 1,
                "axis": [{"position": "BOTTOM_AXIS", "title": "GPU-hours"}],
                "domains": [{"domain": source(chart.category_col, chart.header_row)}],
                "series": [
                    {"series": source(col, chart.header_row), "targetAxis": "BOTTOM_AXIS"}
                    for col in chart.series_cols
                ],
            },
        },
        "position": {
            "overlayPosition": {
                "anchorCell": {
                    "sheetId": sheet_id,
                    "rowIndex": chart.anchor_row,
                    "columnIndex": chart.anchor_col,
                },
                "widthPixels": 640,
                "heightPixels": 400,
            }
        },
    }
