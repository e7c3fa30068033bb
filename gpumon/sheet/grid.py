"""What a sheet backend reads and writes, whatever the backend (Google Sheets, .xlsx).

The contract between layout/plan (pure) and the backends (I/O):

- ``Backend.read()`` returns one ``Grid``: the worksheet's displayed values, merges, time zone,
  and the row anchors gpumon left on earlier pushes. One API read for Google.
- ``plan`` turns a Grid plus the poll results into ``CellWrite``s (only changed cells, only in
  gpumon's columns, only top-left cells of merges) and, rarely, a ``Setup``.
- ``Backend.write(writes)`` sends the writes in one request. A write carries its row's anchor:
  a backend whose rows can move between read and write (Google: people insert, delete and sort
  rows at any moment) addresses the row by its anchor, never by the index read earlier, so a
  value lands in the right row or nowhere. ``write([])`` sends no request (push calls it every
  time; the .xlsx backend uses it to create a missing workbook).
- ``Backend.setup(setup)`` does the one-time work: add missing header cells, anchor rows,
  number formats and colors, insert rows (``push --add-rows``). Not part of a normal push; after
  a setup, push reads the sheet again and plans afresh (one extra read, only on that push).
- Errors: a backend raises ``SheetError`` when the sheet cannot be read or written (unreachable,
  quota exhausted, permission refused, a corrupt or locked file), with a message that says what
  to do; a problem with the [sheet] config or the credentials file is a
  ``gpumon.config.ConfigError``. ``gpumon push`` turns them into distinct exit codes.
- Each backend module (``gpumon.sheet.xlsx``, ``gpumon.sheet.google``) exposes
  ``open_backend(config: gpumon.config.Config) -> Backend``; ``gpumon.sheet.backends.open_backend``
  picks the module by ``[sheet] backend``. A backend may have ``close()``; serve keeps one open
  across pushes and calls it at the end.

Coordinates are 0-based; ranges are end-exclusive, as in the Sheets API's GridRange.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Protocol, Union

from gpumon_agent.text import cut

Value = Union[str, int, float, bool]

# The most text one cell holds: Excel's limit (Google's is 50,000), so a value fits both.
CELL_MAX_CHARS = 32767
# What XML 1.0 (an .xlsx) cannot hold — most C0 controls, lone surrogates (a command-line byte
# 0xff arrives as U+DCFF), U+FFFE, U+FFFF — and Google's JSON refuses (lone surrogates).
_UNCELLABLE = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
REPLACEMENT = "\ufffd"


class SheetError(Exception):
    """The sheet cannot be read or written now; the message names it and says what to do."""


def cell_text(value: Value) -> Value:
    """``value`` as a cell can hold it: text a cell cannot hold replaced by U+FFFD, and cut to
    ``CELL_MAX_CHARS``. Every backend writes text through this (and plan compares with it)."""
    if not isinstance(value, str):
        return value
    return cut(_UNCELLABLE.sub(REPLACEMENT, value), CELL_MAX_CHARS)


def column_letter(col: int) -> str:
    """0 → "A", 25 → "Z", 26 → "AA"."""
    letters = ""
    col += 1
    while col:
        col, rem = divmod(col - 1, 26)
        letters = chr(ord("A") + rem) + letters
    return letters


def a1(row: int, col: int) -> str:
    """0-based (row, col) → A1 notation: (6, 0) → "A7"."""
    return f"{column_letter(col)}{row + 1}"


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
    # True when the backend addresses writes by row anchor (Google). Plan then writes only rows
    # whose anchor reads back as their content says, and asks Setup to anchor the others.
    anchored: bool = False

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
class NewRows:
    """Rows to insert for GPUs (or a whole server) the sheet lacks — only with push --add-rows.

    The backend inserts ``len(gpus)`` rows above ``before_row`` (0-based, as read; the end of the
    server's block, or the end of the table for a new block), so no person's cell is shifted
    sideways or overwritten. In the new rows it writes only the GPU index into the GPU column and,
    when ``name_first``, the server name into the Server column of the first new row (a new
    block; otherwise the blank name continues the block above). Row formatting may be copied
    from the row above, as a person inserting a row would get.
    """

    before_row: int
    server: str
    gpus: list[int | None]  # one new row each; None: a row without a GPU index (GPU-less server)
    name_first: bool = False
    anchors: list[str] = field(default_factory=list)  # each new row's anchor (anchored backends)


@dataclass
class Setup:
    """One-time changes: done when the sheet is adopted or its layout grew, not every push.

    A backend applies them in this order: remove ``stale_anchors``, add ``new_headers`` (the
    grid may need more columns first), attach ``anchors`` (rows as read), then insert
    ``new_rows`` — listed bottom-up (descending ``before_row``) so the indices given stay valid.
    """

    header_row: int
    new_headers: dict[int, str] = field(default_factory=dict)  # column → header text to add
    anchors: dict[int, str] = field(default_factory=dict)  # row → anchor to attach
    stale_anchors: list[str] = field(default_factory=list)  # anchors to remove (row gone/moved)
    # Column of each kind, for formats and new rows: "server", "gpu", "status", "time", ...
    columns: dict[str, int] = field(default_factory=dict)
    data_rows: tuple[int, int] = (0, 0)  # [start, end) of the rows gpumon manages
    new_rows: list[NewRows] = field(default_factory=list)

    def is_empty(self) -> bool:
        return not (self.new_headers or self.anchors or self.stale_anchors or self.new_rows)


@dataclass
class WriteStats:
    requests: int = 0  # API requests this write cost
    cells: int = 0  # cells sent
    skipped: list[str] = field(default_factory=list)  # why some writes were not sent


# The first words of cell A1 of every worksheet gpumon owns: a worksheet without them is a
# person's, and never rewritten.
OWNED_MARKER = "gpumon writes this worksheet"


@dataclass(frozen=True)
class BarChart:
    """A bar chart over a table of a gpumon-owned worksheet (0-based, end-exclusive rows):
    categories in ``category_col``, one series per ``series_cols``, their names in
    ``header_row``, the values in rows [first_row, end_row)."""

    title: str
    header_row: int
    first_row: int
    end_row: int
    category_col: int
    series_cols: tuple[int, ...]
    anchor_row: int = 0  # where the chart sits (its top-left cell)
    anchor_col: int = 0


@dataclass
class OwnedWrite:
    """What writing a gpumon-owned worksheet did: requests sent, whether gpumon's worksheet is
    there now and whether this write made it (with its chart), and why nothing was written
    when ``problem`` is set."""

    requests: int = 0
    exists: bool = False
    created: bool = False
    problem: str | None = None


class Backend(Protocol):
    def read(self) -> Grid: ...

    def write(self, writes: list[CellWrite]) -> WriteStats: ...

    def setup(self, setup: Setup) -> WriteStats: ...

    def close(self) -> None:
        """Release what the backend holds (an HTTP session, a workbook); it is not used after."""
