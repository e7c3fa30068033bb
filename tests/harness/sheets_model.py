"""In-memory spreadsheets with the Sheets v4 semantics the local server needs.

A spreadsheet holds sheets; a sheet holds rows (each with its cells and the ids of the developer
metadata attached to that row), column metadata, merges and conditional formats. Rows are
objects, so metadata attached to a row moves with it when rows are inserted, deleted or moved —
as the API documents. ``sortRange`` moves cell contents only; whether row metadata follows a sort
is not documented, so the spreadsheet's ``row_metadata_follows_sort`` chooses (default: it stays
with the row position, the cautious reading — a sort is a cell operation on a column range).

Every operation raises ``ApiError`` with Google's status and wording where Google would refuse.
"""

from __future__ import annotations

import copy
import functools
import random
import re
import zlib
from dataclasses import dataclass, field
from typing import Any

from harness.sheets_values import (
    A1,
    MAX_COLUMNS,
    RangeError,
    a1_range,
    column_letters,
    effective_value,
    formatted,
    parse_a1,
    quote_title,
    raw_input,
    rendered,
    user_entered_input,
)

# What Google returns for a new spreadsheet's properties (recorded by gspread, see the cassettes).
DEFAULT_FORMAT: dict[str, Any] = {
    "backgroundColor": {"red": 1, "green": 1, "blue": 1},
    "padding": {"top": 2, "right": 3, "bottom": 2, "left": 3},
    "verticalAlignment": "BOTTOM",
    "wrapStrategy": "OVERFLOW_CELL",
    "textFormat": {
        "foregroundColor": {},
        "fontFamily": "arial,sans,sans-serif",
        "fontSize": 10,
        "bold": False,
        "italic": False,
        "strikethrough": False,
        "underline": False,
        "foregroundColorStyle": {"rgbColor": {}},
    },
    "backgroundColorStyle": {"rgbColor": {"red": 1, "green": 1, "blue": 1}},
}
_THEME_COLORS = [
    ("TEXT", {}),
    ("BACKGROUND", {"red": 1, "green": 1, "blue": 1}),
    ("ACCENT1", {"red": 0.25882354, "green": 0.52156866, "blue": 0.95686275}),
    ("ACCENT2", {"red": 0.91764706, "green": 0.2627451, "blue": 0.20784314}),
    ("ACCENT3", {"red": 0.9843137, "green": 0.7372549, "blue": 0.015686275}),
    ("ACCENT4", {"red": 0.20392157, "green": 0.65882355, "blue": 0.3254902}),
    ("ACCENT5", {"red": 1, "green": 0.42745098, "blue": 0.003921569}),
    ("ACCENT6", {"red": 0.27450982, "green": 0.7411765, "blue": 0.7764706}),
    ("LINK", {"red": 0.06666667, "green": 0.33333334, "blue": 0.8}),
]
DEFAULT_THEME: dict[str, Any] = {
    "primaryFontFamily": "Arial",
    "themeColors": [{"colorType": t, "color": {"rgbColor": c}} for t, c in _THEME_COLORS],
}
ROW_PIXELS, COLUMN_PIXELS = 21, 100


_STATUS_NAMES = {400: "INVALID_ARGUMENT", 403: "PERMISSION_DENIED", 404: "NOT_FOUND"}


class ApiError(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message

    def body(self) -> dict[str, Any]:
        status = _STATUS_NAMES.get(self.code, "UNKNOWN")
        return {"error": {"code": self.code, "message": self.message, "status": status}}


def bad(message: str) -> ApiError:
    return ApiError(400, message)


# --- field masks (partial responses and update masks) -----------------------------------------


def parse_mask(text: str) -> dict[str, Any]:
    """``"a,b/c,d(e,f(g))"`` → ``{"a": {}, "b": {"c": {}}, "d": {"e": {}, "f": {"g": {}}}}``.

    An empty dict means "this field, whole". ``.`` and ``/`` both separate path segments.
    """
    tree, rest = _parse_fields(text.replace(" ", ""), 0)
    if rest != len(text.replace(" ", "")):
        raise bad(f"Invalid field selection {text}")
    return tree


def _parse_fields(text: str, i: int) -> tuple[dict[str, Any], int]:
    tree: dict[str, Any] = {}
    while i < len(text):
        m = re.compile(r"[A-Za-z0-9_*]+(?:[./][A-Za-z0-9_*]+)*").match(text, i)
        if not m:
            raise bad(f"Invalid field selection {text}")
        node = tree
        for part in re.split(r"[./]", m.group()):
            node = node.setdefault(part, {})
        i = m.end()
        if i < len(text) and text[i] == "(":
            sub, i = _parse_fields(text, i + 1)
            if i >= len(text) or text[i] != ")":
                raise bad(f"Invalid field selection {text}")
            i += 1
            _merge_tree(node, sub)
        if i < len(text) and text[i] == ",":
            i += 1
            continue
        break
    return tree, i


def _merge_tree(into: dict[str, Any], other: dict[str, Any]) -> None:
    for key, sub in other.items():
        _merge_tree(into.setdefault(key, {}), sub)


def apply_mask(value: Any, tree: dict[str, Any]) -> Any:
    if not tree or "*" in tree:
        return value
    if isinstance(value, list):
        return [apply_mask(item, tree) for item in value]
    if not isinstance(value, dict):
        return value
    out = {}
    for key, sub in tree.items():
        if key in value:
            out[key] = apply_mask(value[key], sub)
    return out


def mask_paths(text: str) -> list[list[str]]:
    paths: list[list[str]] = []

    def walk(tree: dict[str, Any], prefix: list[str]) -> None:
        for key, sub in tree.items():
            if sub:
                walk(sub, [*prefix, key])
            else:
                paths.append([*prefix, key])

    walk(parse_mask(text), [])
    return paths


def update_masked(target: dict[str, Any], source: dict[str, Any], fields: str) -> None:
    """Copy the fields named by an update mask from source to target (absent → cleared)."""
    if not fields:
        raise bad("At least one field must be specified in 'fields'.")
    for path in mask_paths(fields):
        if path == ["*"]:
            target.clear()
            target.update(copy.deepcopy(source))
            continue
        src: Any = source
        for part in path:
            src = src.get(part) if isinstance(src, dict) else None
        node = target
        for part in path[:-1]:
            node = node.setdefault(part, {})
        if src is None:
            node.pop(path[-1], None)
        else:
            node[path[-1]] = copy.deepcopy(src)


# --- the model --------------------------------------------------------------------------------


@dataclass
class Row:
    cells: dict[int, dict[str, Any]] = field(default_factory=dict)  # col → CellData fields
    meta: list[int] = field(default_factory=list)  # developer metadata ids on this row


@dataclass
class Sheet:
    props: dict[str, Any]
    rows: list[Row]
    col_meta: list[list[int]]
    merges: list[list[int]] = field(
        default_factory=list
    )  # [start_row, end_row, start_col, end_col]
    conditional_formats: list[dict[str, Any]] = field(default_factory=list)
    charts: list[dict[str, Any]] = field(default_factory=list)  # EmbeddedChart objects

    @property
    def id(self) -> int:
        return self.props["sheetId"]

    @property
    def title(self) -> str:
        return self.props["title"]

    @property
    def row_count(self) -> int:
        return len(self.rows)

    @property
    def col_count(self) -> int:
        return len(self.col_meta)

    def properties(self) -> dict[str, Any]:
        props = copy.deepcopy(self.props)
        grid = props.setdefault("gridProperties", {})
        grid["rowCount"], grid["columnCount"] = self.row_count, self.col_count
        return props

    def cell(self, row: int, col: int) -> dict[str, Any] | None:
        return self.rows[row].cells.get(col) if row < len(self.rows) else None

    def merge_at(self, row: int, col: int) -> list[int] | None:
        for m in self.merges:
            if m[0] <= row < m[1] and m[2] <= col < m[3]:
                return m
        return None


@dataclass
class Metadata:
    id: int
    key: str
    value: str | None
    visibility: str
    kind: str  # SPREADSHEET | SHEET | ROW | COLUMN
    sheet_id: int | None = None  # SHEET: the sheet; ROW/COLUMN: found through the sheet's rows


@dataclass
class Bounds:
    sheet: Sheet
    start_row: int
    end_row: int
    start_col: int
    end_col: int

    def a1(self) -> str:
        return a1_range(
            self.sheet.title, self.start_row, self.end_row, self.start_col, self.end_col
        )

    def holds(self, merge: list[int]) -> bool:
        """The merge [start_row, end_row, start_col, end_col] lies wholly inside these bounds."""
        return (
            self.start_row <= merge[0]
            and merge[1] <= self.end_row
            and self.start_col <= merge[2]
            and merge[3] <= self.end_col
        )

    def overlaps(self, merge: list[int]) -> bool:
        return (
            merge[0] < self.end_row
            and self.start_row < merge[1]
            and merge[2] < self.end_col
            and self.start_col < merge[3]
        )


class Spreadsheet:
    def __init__(self, spreadsheet_id: str, title: str, time_zone: str = "Etc/GMT") -> None:
        self.id = spreadsheet_id
        self.props: dict[str, Any] = {
            "title": title,
            "locale": "en_US",
            "autoRecalc": "ON_CHANGE",
            "timeZone": time_zone,
            "defaultFormat": copy.deepcopy(DEFAULT_FORMAT),
            "spreadsheetTheme": copy.deepcopy(DEFAULT_THEME),
        }
        self.sheets: list[Sheet] = []
        self.metadata: dict[int, Metadata] = {}
        self.row_metadata_follows_sort = False
        self._where: dict[int, tuple[Sheet, int]] | None = None
        self._random = random.Random(zlib.crc32(spreadsheet_id.encode()))

    # -- lookup ---------------------------------------------------------------------------------

    def url(self) -> str:
        return f"https://docs.google.com/spreadsheets/d/{self.id}/edit"

    def sheet_by_id(self, sheet_id: int) -> Sheet:
        for sheet in self.sheets:
            if sheet.id == sheet_id:
                return sheet
        raise bad(f"No grid with id: {sheet_id}")

    def sheet_by_title(self, title: str) -> Sheet | None:
        for sheet in self.sheets:
            if sheet.title == title:
                return sheet
        return None

    def add_sheet(
        self, title: str, rows: int = 1000, cols: int = 26, sheet_id: int | None = None
    ) -> Sheet:
        if self.sheet_by_title(title) is not None:
            raise bad(
                f'Invalid requests[0].addSheet: A sheet with the name "{title}" already exists. '
                "Please enter another name."
            )
        if sheet_id is None:
            sheet_id = 0 if not self.sheets else self._random.randint(1, 2**31 - 1)
        elif any(sheet.id == sheet_id for sheet in self.sheets):
            raise bad(f"Invalid requests[0].addSheet: Sheet with id {sheet_id} already exists.")
        props = {
            "sheetId": sheet_id,
            "title": title,
            "index": len(self.sheets),
            "sheetType": "GRID",
            "gridProperties": {"rowCount": rows, "columnCount": cols},
        }
        sheet = Sheet(props, [Row() for _ in range(rows)], [[] for _ in range(cols)])
        self.sheets.append(sheet)
        return sheet

    def bounds(self, a1: A1 | str) -> Bounds:
        """A1 text or parsed range → concrete bounds clipped to the grid."""
        if isinstance(a1, str):
            try:
                a1 = parse_a1(a1)
            except RangeError:
                raise bad(f"Unable to parse range: {a1}") from None
        sheet = self.sheets[0] if a1.sheet is None else self.sheet_by_title(a1.sheet)
        if sheet is None:
            raise bad(f"Unable to parse range: {a1.sheet}")
        sr = a1.start_row or 0
        er = sheet.row_count if a1.end_row is None else a1.end_row
        sc = a1.start_col or 0
        ec = sheet.col_count if a1.end_col is None else a1.end_col
        if sr >= sheet.row_count or sc >= sheet.col_count:
            raise bad(
                f"Range ({quote_title(sheet.title)}!{_ref(sr, sc)}) exceeds grid limits. "
                f"Max rows: {sheet.row_count}, max columns: {sheet.col_count}"
            )
        return Bounds(sheet, sr, min(er, sheet.row_count), sc, min(ec, sheet.col_count))

    def grid_bounds(self, grid_range: dict[str, Any]) -> Bounds:
        sheet = self.sheet_by_id(grid_range.get("sheetId", 0))
        sr = grid_range.get("startRowIndex", 0)
        er = grid_range.get("endRowIndex", sheet.row_count)
        sc = grid_range.get("startColumnIndex", 0)
        ec = grid_range.get("endColumnIndex", sheet.col_count)
        if not (0 <= sr <= er <= sheet.row_count and 0 <= sc <= ec <= sheet.col_count):
            raise bad(
                f"Range ({quote_title(sheet.title)}!{_ref(sr, sc)}) exceeds grid limits. "
                f"Max rows: {sheet.row_count}, max columns: {sheet.col_count}"
            )
        return Bounds(sheet, sr, er, sc, ec)

    # -- developer metadata ---------------------------------------------------------------------

    def metadata_location(self, meta: Metadata) -> tuple[Sheet | None, int | None]:
        """(sheet, row or column index) where a metadata entry sits now."""
        if meta.kind == "SPREADSHEET":
            return None, None
        if meta.kind == "SHEET":
            return self.sheet_by_id(meta.sheet_id or 0), None
        if self._where is None:  # one pass over every row and column, kept until rows move
            self._where = {}
            for sheet in self.sheets:
                for lines in ([r.meta for r in sheet.rows], sheet.col_meta):
                    for index, ids in enumerate(lines):
                        for meta_id in ids:
                            self._where[meta_id] = (sheet, index)
        if meta.id not in self._where:
            raise AssertionError(f"metadata {meta.id} lost its location")
        return self._where[meta.id]

    def moved(self) -> None:
        """Rows, columns or metadata changed place: forget where metadata was."""
        self._where = None

    def metadata_json(self, meta: Metadata) -> dict[str, Any]:
        sheet, index = self.metadata_location(meta)
        location: dict[str, Any] = {"locationType": meta.kind}
        if meta.kind == "SPREADSHEET":
            location["spreadsheet"] = True
        elif meta.kind == "SHEET":
            location["sheetId"] = meta.sheet_id
        else:
            assert sheet is not None and index is not None
            location["dimensionRange"] = {
                **({"sheetId": sheet.id} if sheet.id else {}),
                "dimension": "ROWS" if meta.kind == "ROW" else "COLUMNS",
                "startIndex": index,
                "endIndex": index + 1,
            }
        out: dict[str, Any] = {"metadataId": meta.id, "metadataKey": meta.key}
        if meta.value is not None:
            out["metadataValue"] = meta.value
        out["location"] = location
        out["visibility"] = meta.visibility
        return out

    def create_metadata(self, spec: dict[str, Any]) -> dict[str, Any]:
        key = spec.get("metadataKey")
        if not key:
            raise bad("Invalid requests[0].createDeveloperMetadata: metadataKey is required.")
        visibility = spec.get("visibility")
        if visibility not in ("DOCUMENT", "PROJECT"):
            raise bad(
                "Invalid requests[0].createDeveloperMetadata: Developer metadata must have a "
                "visibility specified."
            )
        meta_id = spec.get("metadataId")
        if meta_id is not None:
            meta_id = int(meta_id)
            if meta_id <= 0 or meta_id in self.metadata:
                raise bad(f"Invalid developer metadata id: {meta_id}")
        else:
            meta_id = self._random.randint(1, 2**31 - 1)
            while meta_id in self.metadata:
                meta_id = self._random.randint(1, 2**31 - 1)
        location = spec.get("location") or {}
        meta = Metadata(meta_id, key, spec.get("metadataValue"), visibility, "SPREADSHEET")
        if location.get("dimensionRange"):
            dim = location["dimensionRange"]
            sheet = self.sheet_by_id(dim.get("sheetId", 0))
            start, end = dim.get("startIndex"), dim.get("endIndex")
            rows = dim.get("dimension") == "ROWS"
            count = sheet.row_count if rows else sheet.col_count
            if start is None or end is None or end - start != 1 or not 0 <= start < count:
                raise bad(
                    "Invalid requests[0].createDeveloperMetadata: Developer metadata location "
                    "must be a single row or column."
                )
            meta.kind = "ROW" if rows else "COLUMN"
            (sheet.rows[start].meta if rows else sheet.col_meta[start]).append(meta_id)
        elif location.get("sheetId") is not None:
            meta.kind, meta.sheet_id = "SHEET", self.sheet_by_id(location["sheetId"]).id
        elif location.get("spreadsheet"):
            meta.kind = "SPREADSHEET"
        else:
            raise bad("Invalid requests[0].createDeveloperMetadata: A location is required.")
        self.metadata[meta_id] = meta
        self.moved()
        return self.metadata_json(meta)

    def delete_metadata(self, meta: Metadata) -> None:
        self.moved()
        del self.metadata[meta.id]
        for sheet in self.sheets:
            for ids in [r.meta for r in sheet.rows] + sheet.col_meta:
                if meta.id in ids:
                    ids.remove(meta.id)

    def lookup(self, spec: dict[str, Any]) -> list[Metadata]:
        """DeveloperMetadataLookup → the metadata it selects."""
        found = []
        candidates = self.metadata.values()
        if "metadataId" in spec:  # ids are unique: no need to look further
            one = self.metadata.get(int(spec["metadataId"]))
            candidates = [one] if one is not None else []
        for meta in candidates:
            if "metadataId" in spec and int(spec["metadataId"]) != meta.id:
                continue
            if "metadataKey" in spec and spec["metadataKey"] != meta.key:
                continue
            if "metadataValue" in spec and spec["metadataValue"] != meta.value:
                continue
            if spec.get("visibility") not in (None, meta.visibility):
                continue
            if spec.get("locationType") not in (None, meta.kind):
                continue
            where = spec.get("metadataLocation")
            if where and not self._location_matches(meta, where, spec):
                continue
            found.append(meta)
        return found

    def _location_matches(
        self, meta: Metadata, where: dict[str, Any], spec: dict[str, Any]
    ) -> bool:
        exact = spec.get("locationMatchingStrategy") == "EXACT_LOCATION"
        sheet, index = self.metadata_location(meta)
        if where.get("spreadsheet"):
            return meta.kind == "SPREADSHEET"
        if where.get("sheetId") is not None:
            if exact:
                return meta.kind == "SHEET" and meta.sheet_id == where["sheetId"]
            return sheet is not None and sheet.id == where["sheetId"]
        dim = where.get("dimensionRange") or {}
        if sheet is None or sheet.id != dim.get("sheetId", 0):
            return False
        kind = "ROW" if dim.get("dimension") == "ROWS" else "COLUMN"
        inside = index is not None and dim.get("startIndex", 0) <= index < dim.get("endIndex", 0)
        if meta.kind == kind:
            return inside
        return not exact and meta.kind in ("ROW", "COLUMN")

    def data_filter_bounds(self, data_filter: dict[str, Any]) -> list[Bounds]:
        """The ranges a DataFilter selects (metadata on rows → whole rows, and so on)."""
        kinds = [k for k in ("developerMetadataLookup", "a1Range", "gridRange") if k in data_filter]
        if len(kinds) != 1:
            raise bad(
                "A DataFilter must set exactly one of developerMetadataLookup, a1Range, gridRange."
            )
        if "a1Range" in data_filter:
            return [self.bounds(data_filter["a1Range"])]
        if "gridRange" in data_filter:
            return [self.grid_bounds(data_filter["gridRange"])]
        out = []
        for meta in self.lookup(data_filter["developerMetadataLookup"]):
            sheet, index = self.metadata_location(meta)
            if meta.kind == "ROW" and sheet is not None and index is not None:
                out.append(Bounds(sheet, index, index + 1, 0, sheet.col_count))
            elif meta.kind == "COLUMN" and sheet is not None and index is not None:
                out.append(Bounds(sheet, 0, sheet.row_count, index, index + 1))
            elif meta.kind == "SHEET" and sheet is not None:
                out.append(Bounds(sheet, 0, sheet.row_count, 0, sheet.col_count))
        return out

    # -- cells ----------------------------------------------------------------------------------

    def set_user_value(self, sheet: Sheet, row: int, col: int, user: Any, fmt: Any = None) -> None:
        cells = sheet.rows[row].cells
        cell = cells.get(col, {})
        if user is None:
            cell.pop("userEnteredValue", None)
        else:
            cell["userEnteredValue"] = user
        if fmt is not None and "numberFormat" not in cell.get("userEnteredFormat", {}):
            cell.setdefault("userEnteredFormat", {})["numberFormat"] = fmt
        if cell:
            cells[col] = cell
        else:
            cells.pop(col, None)

    def write_values(
        self, bounds: Bounds, values: list[list[Any]], major: str, option: str, exact: bool
    ) -> tuple[Bounds, int, set[int], set[int]]:
        """Write a values array at the top-left of bounds; null skips a cell.

        ``exact``: the range was given with an end (A1:B2), so values must fit inside it.
        Returns the range written and (cells, rows, columns) touched.
        """
        if option not in ("RAW", "USER_ENTERED"):
            raise bad("Invalid valueInputOption: INPUT_VALUE_OPTION_UNSPECIFIED")
        grid = values or []
        if major == "COLUMNS":
            width = max((len(v) for v in grid), default=0)
            grid = [[col[i] if i < len(col) else None for col in grid] for i in range(width)]
        height = len(grid)
        width = max((len(r) for r in grid), default=0)
        sheet = bounds.sheet
        if exact and height > bounds.end_row - bounds.start_row:
            raise bad(
                f"Requested writing within range [{bounds.a1()}], but tried writing to row "
                f"[{bounds.start_row + height}]"
            )
        if exact and width > bounds.end_col - bounds.start_col:
            raise bad(
                f"Requested writing within range [{bounds.a1()}], but tried writing to column "
                f"[{column_letters(bounds.start_col + width - 1)}]"
            )
        if (
            bounds.start_row + height > sheet.row_count
            or bounds.start_col + width > sheet.col_count
        ):
            raise bad(
                f"Range ({bounds.a1()}) exceeds grid limits. Max rows: {sheet.row_count}, "
                f"max columns: {sheet.col_count}"
            )
        cells, rows, cols = 0, set(), set()
        for i, line in enumerate(grid):
            for j, value in enumerate(line):
                if value is None:
                    continue
                r, c = bounds.start_row + i, bounds.start_col + j
                if option == "RAW":
                    self.set_user_value(sheet, r, c, raw_input(value))
                else:
                    self.set_user_value(sheet, r, c, *user_entered_input(value))
                cells += 1
                rows.add(r)
                cols.add(c)
        written = Bounds(
            sheet,
            bounds.start_row,
            bounds.start_row + max(height, 1),
            bounds.start_col,
            bounds.start_col + max(width, 1),
        )
        return written, cells, rows, cols

    def read_values(
        self,
        bounds: Bounds,
        major: str = "ROWS",
        render: str = "FORMATTED_VALUE",
        date_render: str = "SERIAL_NUMBER",
    ) -> dict[str, Any]:
        sheet = bounds.sheet
        grid = []
        for r in range(bounds.start_row, bounds.end_row):
            line = []
            for c in range(bounds.start_col, bounds.end_col):
                cell = sheet.rows[r].cells.get(c) or {}
                fmt = cell.get("userEnteredFormat", {}).get("numberFormat")
                value = rendered(cell.get("userEnteredValue"), fmt, render, date_render)
                line.append("" if value is None else value)
            while line and line[-1] == "":
                line.pop()
            grid.append(line)
        if major == "COLUMNS":
            width = max((len(r) for r in grid), default=0)
            grid = [[r[i] if i < len(r) else "" for r in grid] for i in range(width)]
            for line in grid:
                while line and line[-1] == "":
                    line.pop()
        while grid and not grid[-1]:
            grid.pop()
        out: dict[str, Any] = {"range": bounds.a1(), "majorDimension": major}
        if grid:
            out["values"] = grid
        return out

    def cell_data(self, cell: dict[str, Any] | None) -> dict[str, Any]:
        if not cell:
            return {}
        out: dict[str, Any] = {}
        user = cell.get("userEnteredValue")
        fmt = cell.get("userEnteredFormat")
        if user is not None:
            effective = effective_value(user)
            out["userEnteredValue"] = dict(user)
            out["effectiveValue"] = effective
            out["formattedValue"] = formatted(effective, (fmt or {}).get("numberFormat"))
        if fmt:
            out["userEnteredFormat"] = fmt
        if user is not None or fmt:
            out["effectiveFormat"] = _deep_merge(self.props["defaultFormat"], fmt or {})
        if "note" in cell:
            out["note"] = cell["note"]
        return out

    def grid_data(self, bounds: Bounds) -> dict[str, Any]:
        sheet = bounds.sheet
        row_data = []
        for r in range(bounds.start_row, bounds.end_row):
            cells = sheet.rows[r].cells
            used = [c for c in cells if bounds.start_col <= c < bounds.end_col]
            end = max(used) + 1 if used else bounds.start_col
            values = [self.cell_data(cells.get(c)) for c in range(bounds.start_col, end)]
            while values and not values[-1]:
                values.pop()
            row_data.append({"values": values} if values else {})
        while row_data and not row_data[-1]:
            row_data.pop()
        out: dict[str, Any] = {}
        if bounds.start_row:
            out["startRow"] = bounds.start_row
        if bounds.start_col:
            out["startColumn"] = bounds.start_col
        if row_data:
            out["rowData"] = row_data
        out["rowMetadata"] = [
            self._dimension_props(sheet.rows[r].meta, ROW_PIXELS)
            for r in range(bounds.start_row, bounds.end_row)
        ]
        out["columnMetadata"] = [
            self._dimension_props(sheet.col_meta[c], COLUMN_PIXELS)
            for c in range(bounds.start_col, bounds.end_col)
        ]
        return out

    def _dimension_props(self, ids: list[int], pixels: int) -> dict[str, Any]:
        props: dict[str, Any] = {"pixelSize": pixels}
        if ids:
            props["developerMetadata"] = [self.metadata_json(self.metadata[i]) for i in ids]
        return props

    # -- the whole spreadsheet as spreadsheets.get returns it -----------------------------------

    def to_json(self, ranges: list[str] | None = None, grid: bool = False) -> dict[str, Any]:
        wanted: list[tuple[Sheet, list[Bounds]]] = []
        if ranges:
            for text in ranges:
                b = self.bounds(text)
                for sheet, lst in wanted:
                    if sheet is b.sheet:
                        lst.append(b)
                        break
                else:
                    wanted.append((b.sheet, [b]))
        else:
            wanted = [(s, [Bounds(s, 0, s.row_count, 0, s.col_count)]) for s in self.sheets]
        sheets = []
        for sheet, bounds in wanted:
            item: dict[str, Any] = {"properties": sheet.properties()}
            if grid:
                item["data"] = [self.grid_data(b) for b in bounds]
            if sheet.merges:
                item["merges"] = [_grid_range(sheet.id, m) for m in sheet.merges]
            if sheet.conditional_formats:
                item["conditionalFormats"] = copy.deepcopy(sheet.conditional_formats)
            if sheet.charts:
                item["charts"] = copy.deepcopy(sheet.charts)
            metas = [
                m for m in self.metadata.values() if m.kind == "SHEET" and m.sheet_id == sheet.id
            ]
            if metas:
                item["developerMetadata"] = [self.metadata_json(m) for m in metas]
            sheets.append(item)
        out: dict[str, Any] = {
            "spreadsheetId": self.id,
            "properties": copy.deepcopy(self.props),
            "sheets": sheets,
        }
        metas = [m for m in self.metadata.values() if m.kind == "SPREADSHEET"]
        if metas:
            out["developerMetadata"] = [self.metadata_json(m) for m in metas]
        out["spreadsheetUrl"] = self.url()
        return out

    # -- spreadsheets.batchUpdate ---------------------------------------------------------------

    def batch_update(self, requests: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Apply every request or none (Google's batchUpdate is atomic)."""
        saved = copy.deepcopy((self.props, self.sheets, self.metadata))
        self.moved()
        try:
            replies = []
            for i, request in enumerate(requests):
                if len(request) != 1:
                    raise bad(f"Invalid requests[{i}]: exactly one kind of request is allowed.")
                ((kind, body),) = request.items()
                handler = getattr(self, f"_req_{kind}", None)
                if handler is None:
                    raise ApiError(
                        501, f"requests[{i}].{kind} is not implemented by the local server"
                    )
                try:
                    replies.append(handler(body or {}) or {})
                except ApiError as e:
                    e.message = re.sub(r"requests\[0\]", f"requests[{i}]", e.message)
                    raise
            return replies
        except Exception:
            self.props, self.sheets, self.metadata = saved
            raise
        finally:
            self.moved()

    def _req_addSheet(self, body: dict[str, Any]) -> dict[str, Any]:
        props = body.get("properties", {})
        grid = props.get("gridProperties", {})
        title = props.get("title") or f"Sheet{len(self.sheets) + 1}"
        sheet = self.add_sheet(
            title, grid.get("rowCount", 1000), grid.get("columnCount", 26), props.get("sheetId")
        )
        return {"addSheet": {"properties": sheet.properties()}}

    def _req_deleteSheet(self, body: dict[str, Any]) -> None:
        self.moved()
        sheet = self.sheet_by_id(body.get("sheetId", 0))
        if len(self.sheets) == 1:
            raise bad(
                "Invalid requests[0].deleteSheet: You can't remove all the sheets in a document."
            )
        for meta in [m for m in self.metadata.values() if self.metadata_location(m)[0] is sheet]:
            self.delete_metadata(meta)
        self.sheets.remove(sheet)
        for i, s in enumerate(self.sheets):
            s.props["index"] = i

    def _req_updateSheetProperties(self, body: dict[str, Any]) -> None:
        props = body.get("properties", {})
        sheet = self.sheet_by_id(props.get("sheetId", 0))
        current = sheet.properties()
        update_masked(current, props, body.get("fields", ""))
        grid = current.get("gridProperties", {})
        rows, cols = grid.get("rowCount", sheet.row_count), grid.get("columnCount", sheet.col_count)
        if rows < 1 or cols < 1:
            raise bad(
                "Invalid requests[0].updateSheetProperties: grid must keep one row and column"
            )
        if rows < sheet.row_count:
            self._delete(sheet, "ROWS", rows, sheet.row_count)
        elif rows > sheet.row_count:
            self._insert(sheet, "ROWS", sheet.row_count, rows, inherit_before=False)
        if cols < sheet.col_count:
            self._delete(sheet, "COLUMNS", cols, sheet.col_count)
        elif cols > sheet.col_count:
            self._insert(sheet, "COLUMNS", sheet.col_count, cols, inherit_before=False)
        sheet.props = current

    def _req_updateSpreadsheetProperties(self, body: dict[str, Any]) -> None:
        update_masked(self.props, body.get("properties", {}), body.get("fields", ""))

    def _req_insertDimension(self, body: dict[str, Any]) -> None:
        dim = body.get("range", {})
        sheet = self.sheet_by_id(dim.get("sheetId", 0))
        start, end = dim.get("startIndex", 0), dim.get("endIndex", 0)
        count = sheet.row_count if dim.get("dimension") == "ROWS" else sheet.col_count
        if not 0 <= start < end or start > count:
            raise bad("Invalid requests[0].insertDimension: range is out of the grid")
        if start == 0 and body.get("inheritFromBefore"):
            raise bad(
                "Invalid requests[0].insertDimension: Cannot inherit from before the first row"
            )
        self._insert(sheet, dim.get("dimension"), start, end, bool(body.get("inheritFromBefore")))

    def _req_appendDimension(self, body: dict[str, Any]) -> None:
        sheet = self.sheet_by_id(body.get("sheetId", 0))
        rows = body.get("dimension") == "ROWS"
        count = sheet.row_count if rows else sheet.col_count
        length = body.get("length", 0)
        if length <= 0:
            raise bad("Invalid requests[0].appendDimension: length must be positive")
        self._insert(sheet, "ROWS" if rows else "COLUMNS", count, count + length, False)

    def _req_deleteDimension(self, body: dict[str, Any]) -> None:
        dim = body.get("range", {})
        sheet = self.sheet_by_id(dim.get("sheetId", 0))
        rows = dim.get("dimension") == "ROWS"
        count = sheet.row_count if rows else sheet.col_count
        start, end = dim.get("startIndex", 0), dim.get("endIndex", count)
        if not 0 <= start < end <= count:
            raise bad("Invalid requests[0].deleteDimension: range is out of the grid")
        if end - start == count:
            what = "rows" if rows else "columns"
            raise bad(f"Invalid requests[0]: You can't delete all the {what} on the sheet.")
        self._delete(sheet, "ROWS" if rows else "COLUMNS", start, end)

    def _req_moveDimension(self, body: dict[str, Any]) -> None:
        self.moved()
        src = body.get("source", {})
        sheet = self.sheet_by_id(src.get("sheetId", 0))
        rows = src.get("dimension") == "ROWS"
        count = sheet.row_count if rows else sheet.col_count
        start, end, dest = (
            src.get("startIndex", 0),
            src.get("endIndex", 0),
            body.get("destinationIndex", 0),
        )
        if not (0 <= start < end <= count and 0 <= dest <= count):
            raise bad("Invalid requests[0].moveDimension: range is out of the grid")
        order = list(range(count))
        moved = order[start:end]
        rest = order[:start] + order[end:]
        at = dest if dest <= start else dest - (end - start)
        order = rest[:at] + moved + rest[at:]  # new position → old index
        new_of = {old: new for new, old in enumerate(order)}
        for m in sheet.merges:
            lo, hi = (m[0], m[1]) if rows else (m[2], m[3])
            mapped = sorted(new_of[i] for i in range(lo, hi))
            if mapped[-1] - mapped[0] != hi - lo - 1:
                raise bad(
                    "Invalid requests[0].moveDimension: You must select all cells in a merged "
                    "range to move them."
                )
            if rows:
                m[0], m[1] = mapped[0], mapped[-1] + 1
            else:
                m[2], m[3] = mapped[0], mapped[-1] + 1
        if rows:
            sheet.rows = [sheet.rows[old] for old in order]
        else:
            sheet.col_meta = [sheet.col_meta[old] for old in order]
            for row in sheet.rows:
                row.cells = {new_of[c]: v for c, v in row.cells.items()}

    def _req_sortRange(self, body: dict[str, Any]) -> None:
        self.moved()
        b = self.grid_bounds(body.get("range", {}))
        sheet = b.sheet
        for m in sheet.merges:
            if b.overlaps(m) and m[1] - m[0] > 1:
                raise bad(
                    "Invalid requests[0].sortRange: You can't sort a range containing vertical "
                    "merges."
                )
        specs = body.get("sortSpecs") or [{"dimensionIndex": b.start_col, "sortOrder": "ASCENDING"}]

        def key_of(r: int, col: int) -> tuple[int, Any]:
            cell = sheet.rows[r].cells.get(col) or {}
            eff = effective_value(cell.get("userEnteredValue"))
            if eff is None:
                return (3, "")
            if "numberValue" in eff:
                return (0, eff["numberValue"])
            if "stringValue" in eff:
                return (1, eff["stringValue"].lower())
            return (2, str(eff))

        def compare(r1: int, r2: int) -> int:
            for spec in specs:
                col = spec.get("dimensionIndex", 0)
                k1, k2 = key_of(r1, col), key_of(r2, col)
                if k1 == k2:
                    continue
                if k1[0] == 3 or k2[0] == 3:  # blanks sort last either way
                    return 1 if k1[0] == 3 else -1
                result = -1 if k1 < k2 else 1
                return -result if spec.get("sortOrder") == "DESCENDING" else result
            return 0

        old = list(range(b.start_row, b.end_row))
        order = sorted(old, key=functools.cmp_to_key(compare))
        moved = {
            r: {c: sheet.rows[r].cells.get(c) for c in range(b.start_col, b.end_col)} for r in old
        }
        metas = {r: sheet.rows[r].meta for r in old}
        for new, src in zip(old, order):
            cells = sheet.rows[new].cells
            for c, cell in moved[src].items():
                if cell is None:
                    cells.pop(c, None)
                else:
                    cells[c] = cell
            if self.row_metadata_follows_sort:
                sheet.rows[new].meta = metas[src]

    def _req_updateCells(self, body: dict[str, Any]) -> None:
        fields = body.get("fields", "")
        if "start" in body:
            start = body["start"]
            sheet = self.sheet_by_id(start.get("sheetId", 0))
            r0, c0 = start.get("rowIndex", 0), start.get("columnIndex", 0)
            limit = None
        else:
            b = self.grid_bounds(body.get("range", {}))
            sheet, r0, c0 = b.sheet, b.start_row, b.start_col
            limit = b
        rows = body.get("rows", [])
        if limit is not None:
            # Google: with a range, the fields of every cell in it that the rows do not give
            # are cleared.
            for r in range(limit.start_row, min(limit.end_row, sheet.row_count)):
                given = rows[r - r0].get("values", []) if 0 <= r - r0 < len(rows) else []
                for c in range(limit.start_col + len(given), min(limit.end_col, sheet.col_count)):
                    if sheet.rows[r].cells.get(c):
                        self._update_cell(sheet, r, c, {}, fields)
        for i, row in enumerate(rows):
            for j, data in enumerate(row.get("values", [])):
                r, c = r0 + i, c0 + j
                if limit and (r >= limit.end_row or c >= limit.end_col):
                    continue
                if r >= sheet.row_count or c >= sheet.col_count:
                    raise bad(
                        f"Invalid requests[0].updateCells: Attempting to write row: {r}, beyond "
                        f"the last requested row of: {sheet.row_count - 1}"
                    )
                self._update_cell(sheet, r, c, data or {}, fields)

    def _update_cell(self, sheet: Sheet, r: int, c: int, data: dict[str, Any], fields: str) -> None:
        cell = sheet.rows[r].cells.get(c, {})
        update_masked(cell, data, fields)
        for key in [k for k, v in cell.items() if v in ({}, None)]:
            del cell[key]
        if cell:
            sheet.rows[r].cells[c] = cell
        else:
            sheet.rows[r].cells.pop(c, None)

    def _req_addChart(self, body: dict[str, Any]) -> dict[str, Any]:
        chart = copy.deepcopy(body.get("chart", {}))
        anchor = chart.get("position", {}).get("overlayPosition", {}).get("anchorCell", {})
        sheet = self.sheet_by_id(anchor.get("sheetId", 0)) if anchor else None
        if sheet is None:
            sheet_id = chart.get("position", {}).get("sheetId")
            if sheet_id is None:
                raise bad("Invalid requests[0].addChart: the chart needs a position.")
            sheet = self.sheet_by_id(sheet_id)
        spec = chart.get("spec", {})
        for series in spec.get("basicChart", {}).get("series", []):
            for source in series.get("series", {}).get("sourceRange", {}).get("sources", []):
                self.sheet_by_id(source.get("sheetId", 0))  # a range on a missing sheet fails
        chart.setdefault("chartId", self._random.randint(1, 2**31 - 1))
        sheet.charts.append(chart)
        return {"addChart": {"chart": copy.deepcopy(chart)}}

    def _req_repeatCell(self, body: dict[str, Any]) -> None:
        b = self.grid_bounds(body.get("range", {}))
        for r in range(b.start_row, b.end_row):
            for c in range(b.start_col, b.end_col):
                self._update_cell(b.sheet, r, c, body.get("cell", {}), body.get("fields", ""))

    def _req_copyPaste(self, body: dict[str, Any]) -> None:
        src = self.grid_bounds(body.get("source", {}))
        dst = self.grid_bounds(body.get("destination", {}))
        paste = body.get("pasteType", "PASTE_NORMAL")
        fields = {
            "PASTE_NORMAL": "*",
            "PASTE_FORMAT": "userEnteredFormat",
            "PASTE_VALUES": "userEnteredValue",
        }
        if paste not in fields:
            raise ApiError(
                501, f"copyPaste pasteType {paste} is not implemented by the local server"
            )
        h, w = src.end_row - src.start_row, src.end_col - src.start_col
        snapshot = {
            (i, j): copy.deepcopy(src.sheet.cell(src.start_row + i, src.start_col + j) or {})
            for i in range(h)
            for j in range(w)
        }
        for r in range(dst.start_row, max(dst.end_row, dst.start_row + h)):
            for c in range(dst.start_col, max(dst.end_col, dst.start_col + w)):
                if r < dst.sheet.row_count and c < dst.sheet.col_count:
                    data = snapshot[((r - dst.start_row) % h, (c - dst.start_col) % w)]
                    self._update_cell(dst.sheet, r, c, data, fields[paste])

    def _req_mergeCells(self, body: dict[str, Any]) -> None:
        b = self.grid_bounds(body.get("range", {}))
        kind = body.get("mergeType", "MERGE_ALL")
        if kind == "MERGE_ALL":
            pieces = [(b.start_row, b.end_row, b.start_col, b.end_col)]
        elif kind == "MERGE_ROWS":
            pieces = [(r, r + 1, b.start_col, b.end_col) for r in range(b.start_row, b.end_row)]
        elif kind == "MERGE_COLUMNS":
            pieces = [(b.start_row, b.end_row, c, c + 1) for c in range(b.start_col, b.end_col)]
        else:
            raise bad(f"Invalid requests[0].mergeCells: unknown mergeType {kind}")
        sheet = b.sheet
        for m in list(sheet.merges):
            if b.holds(m):
                sheet.merges.remove(m)
            elif b.overlaps(m):
                raise bad(
                    "Invalid requests[0].mergeCells: You can't merge cells that are already "
                    "partially merged."
                )
        for sr, er, sc, ec in pieces:
            if (er - sr) * (ec - sc) < 2:
                continue
            sheet.merges.append([sr, er, sc, ec])
            for r in range(sr, er):
                for c in range(sc, ec):
                    if (r, c) != (sr, sc):  # a merge keeps the top-left value only
                        self.set_user_value(sheet, r, c, None)

    def _req_unmergeCells(self, body: dict[str, Any]) -> None:
        b = self.grid_bounds(body.get("range", {}))
        for m in list(b.sheet.merges):
            if b.holds(m):
                b.sheet.merges.remove(m)
            elif b.overlaps(m):
                raise bad(
                    "Invalid requests[0].unmergeCells: You must select all cells in a merged range "
                    "to merge or unmerge them."
                )

    def _req_addConditionalFormatRule(self, body: dict[str, Any]) -> None:
        rule = copy.deepcopy(body.get("rule", {}))
        ranges = rule.get("ranges") or []
        if not ranges or ("booleanRule" in rule) == ("gradientRule" in rule):
            raise bad(
                "Invalid requests[0].addConditionalFormatRule: a rule needs ranges and one of "
                "booleanRule, gradientRule"
            )
        sheet = self.grid_bounds(ranges[0]).sheet
        for r in ranges:
            if self.grid_bounds(r).sheet is not sheet:
                raise bad(
                    "Invalid requests[0].addConditionalFormatRule: All ranges must be on the "
                    "same sheet."
                )
        index = body.get("index", 0)
        sheet.conditional_formats.insert(min(index, len(sheet.conditional_formats)), rule)

    def _req_createDeveloperMetadata(self, body: dict[str, Any]) -> dict[str, Any]:
        created = self.create_metadata(body.get("developerMetadata", {}))
        return {"createDeveloperMetadata": {"developerMetadata": created}}

    def _req_deleteDeveloperMetadata(self, body: dict[str, Any]) -> dict[str, Any]:
        data_filter = body.get("dataFilter") or {}
        if "developerMetadataLookup" not in data_filter:
            raise bad(
                "Invalid requests[0].deleteDeveloperMetadata: a developerMetadataLookup is required"
            )
        found = self.lookup(data_filter["developerMetadataLookup"])
        deleted = [self.metadata_json(m) for m in found]
        for meta in found:
            self.delete_metadata(meta)
        reply: dict[str, Any] = {}
        if deleted:
            reply["deletedDeveloperMetadata"] = deleted
        return {"deleteDeveloperMetadata": reply}

    # -- dimension edits shared by insert/delete/resize -----------------------------------------

    def _insert(
        self, sheet: Sheet, dimension: str | None, start: int, end: int, inherit_before: bool
    ) -> None:
        self.moved()
        n = end - start
        rows = dimension == "ROWS"
        if not rows and sheet.col_count + n > MAX_COLUMNS:
            raise bad("Invalid requests[0]: too many columns")
        if rows:
            donor = start - 1 if inherit_before else start
            fmt_source = sheet.rows[donor].cells if 0 <= donor < sheet.row_count else {}
            new_rows = [
                Row(
                    {
                        c: {"userEnteredFormat": copy.deepcopy(v["userEnteredFormat"])}
                        for c, v in fmt_source.items()
                        if "userEnteredFormat" in v
                    }
                )
                for _ in range(n)
            ]
            sheet.rows[start:start] = new_rows
        else:
            sheet.col_meta[start:start] = [[] for _ in range(n)]
            for row in sheet.rows:
                row.cells = {(c if c < start else c + n): v for c, v in row.cells.items()}
        lo, hi = (0, 1) if rows else (2, 3)
        for m in sheet.merges:
            m[lo], m[hi] = _after_insert(m[lo], m[hi], start, n)
        for rule in sheet.conditional_formats:
            for gr in rule.get("ranges", []):
                _shift_grid_range(gr, rows, lambda s, e: _after_insert(s, e, start, n))

    def _delete(self, sheet: Sheet, dimension: str, start: int, end: int) -> None:
        self.moved()
        rows = dimension == "ROWS"
        gone = (
            [i for r in sheet.rows[start:end] for i in r.meta]
            if rows
            else [i for ids in sheet.col_meta[start:end] for i in ids]
        )
        for meta_id in gone:
            del self.metadata[meta_id]
        if rows:
            del sheet.rows[start:end]
        else:
            n = end - start
            del sheet.col_meta[start:end]
            for row in sheet.rows:
                row.cells = {
                    (c if c < start else c - n): v
                    for c, v in row.cells.items()
                    if not start <= c < end
                }
        lo, hi = (0, 1) if rows else (2, 3)
        kept = []
        for m in sheet.merges:
            m[lo], m[hi] = _after_delete(m[lo], m[hi], start, end)
            if m[hi] > m[lo] and (m[1] - m[0]) * (m[3] - m[2]) > 1:
                kept.append(m)
        sheet.merges = kept
        for rule in sheet.conditional_formats:
            for gr in rule.get("ranges", []):
                _shift_grid_range(gr, rows, lambda s, e: _after_delete(s, e, start, end))
            rule["ranges"] = [gr for gr in rule.get("ranges", []) if not _empty_range(gr)]
        sheet.conditional_formats = [r for r in sheet.conditional_formats if r.get("ranges")]


def _after_insert(s: int, e: int, at: int, n: int) -> tuple[int, int]:
    if at <= s:
        return s + n, e + n
    if at < e:
        return s, e + n
    return s, e


def _after_delete(s: int, e: int, ds: int, de: int) -> tuple[int, int]:
    n = de - ds

    def start(p: int) -> int:
        return p if p < ds else (ds if p < de else p - n)

    def end(p: int) -> int:
        return p if p <= ds else (ds if p <= de else p - n)

    return start(s), end(e)


def _shift_grid_range(gr: dict[str, Any], rows: bool, shift: Any) -> None:
    lo, hi = ("startRowIndex", "endRowIndex") if rows else ("startColumnIndex", "endColumnIndex")
    if lo in gr and hi in gr:
        gr[lo], gr[hi] = shift(gr[lo], gr[hi])


def _empty_range(gr: dict[str, Any]) -> bool:
    rows = gr.get("endRowIndex", 1) - gr.get("startRowIndex", 0)
    cols = gr.get("endColumnIndex", 1) - gr.get("startColumnIndex", 0)
    return rows <= 0 or cols <= 0


def _grid_range(sheet_id: int, m: list[int]) -> dict[str, int]:
    out = {"sheetId": sheet_id} if sheet_id else {}  # Google leaves out a zero sheetId
    return {
        **out,
        "startRowIndex": m[0],
        "endRowIndex": m[1],
        "startColumnIndex": m[2],
        "endColumnIndex": m[3],
    }


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    """base with over's fields on top; shares unchanged parts (answers are only serialised)."""
    if not over:
        return base
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def _ref(row: int, col: int) -> str:
    return f"{column_letters(col)}{row + 1}"
