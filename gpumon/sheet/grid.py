"""What a sheet backend reads and writes, whatever the backend (Google Sheets, .xlsx).

The contract between layout/plan (pure) and the backends (I/O):

- ``Backend.read()`` returns one ``Grid``: the worksheet's displayed values, merges, time zone,
  and the row anchors gpumon left on earlier pushes. One API read for Google.
- ``plan`` turns a Grid plus the poll results into ``CellWrite``s (only changed cells, only in
  gpumon's columns, only top-left cells of merges) and, rarely, a ``Setup``.
- ``Backend.write(writes)`` sends the writes in one request. A write carries its row's anchor:
  a backend whose rows can move between read and write (Google: people insert, delete and sort
  rows at any moment) addresses the row by its anchor, never by the index read earlier, so a
  value lands in the right row or nowhere.
- ``Backend.setup(setup)`` does the one-time work: add missing header cells, anchor rows,
  number formats and colors. Not part of a normal push.

Coordinates are 0-based; ranges are end-exclusive, as in the Sheets API's GridRange.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Union

Value = Union[str, int, float, bool]


@dataclass(frozen=True)
class Merge:
    start_row: int
    end_row: int
    start_col: int
    end_col: int

    def contains(self, row: int, col: int) -> bool:
        return self.start_row <= row < self.end_row and self.start_col <= col < self.end_col


@dataclass
class Grid:
    """One read of the worksheet."""

    title: str  # worksheet title, e.g. "Sheet1"
    time_zone: str  # the spreadsheet's IANA time zone, e.g. "Asia/Seoul"
    values: list[list[str]]  # displayed text, row-major; rows may be ragged (trailing blanks cut)
    merges: list[Merge] = field(default_factory=list)
    sheet_id: int | None = None
    # 0-based row → the anchor gpumon attached to that row earlier (Google: developer metadata,
    # which moves with its row). Empty for backends whose rows cannot move under gpumon.
    row_anchors: dict[int, str] = field(default_factory=dict)

    def cell(self, row: int, col: int) -> str:
        if row < 0 or row >= len(self.values):
            return ""
        line = self.values[row]
        return line[col] if 0 <= col < len(line) else ""

    @property
    def width(self) -> int:
        return max((len(r) for r in self.values), default=0)

    def merge_at(self, row: int, col: int) -> Merge | None:
        for merge in self.merges:
            if merge.contains(row, col):
                return merge
        return None


@dataclass(frozen=True)
class CellWrite:
    row: int  # as read; a backend with anchors uses `anchor` instead
    col: int
    value: Value  # written RAW: "=IMPORTXML(...)" stays text
    anchor: str | None = None  # the row's anchor (see Grid.row_anchors)


@dataclass
class Setup:
    """One-time changes: done when the sheet is adopted or its layout grew, not every push."""

    header_row: int
    new_headers: dict[int, str] = field(default_factory=dict)  # column → header text to add
    anchors: dict[int, str] = field(default_factory=dict)  # row → anchor to attach
    stale_anchors: list[str] = field(default_factory=list)  # anchors to remove (row gone/moved)
    # Columns of gpumon's kinds, for formats: "status", "time", "util", ...
    columns: dict[str, int] = field(default_factory=dict)
    data_rows: tuple[int, int] = (0, 0)  # [start, end) of the rows gpumon manages

    def is_empty(self) -> bool:
        return not (self.new_headers or self.anchors or self.stale_anchors)


@dataclass
class WriteStats:
    requests: int = 0  # API requests this write cost
    cells: int = 0  # cells sent
    skipped: list[str] = field(default_factory=list)  # why some writes were not sent


class Backend(Protocol):
    def read(self) -> Grid: ...

    def write(self, writes: list[CellWrite]) -> WriteStats: ...

    def setup(self, setup: Setup) -> WriteStats: ...
