"""Desired status cells vs the sheet as read → the smallest set of writes. Pure: no I/O.

Rules (DESIGN.md, "Rules of the sheet"):
- only gpumon's columns (``OWNED_COLUMNS``), only rows of a server's block, only cells whose
  text changes, only the top-left cell of a merge — and only a merge that lies inside gpumon's
  columns and inside one block; every other cell is a person's;
- server-wide values (IP, ON/OFF, time, health) go in the block's first row (the top-left of the
  block's merged cell where there is one), per-GPU values in that GPU's row;
- missing status columns become new header cells right of the used range (a ``Setup``);
- on an anchored backend, a row is written only if its anchor reads back as its content says;
  the others are (re-)anchored through the ``Setup`` first;
- GPUs a server reports that have no row are named in its health cell, and get rows only with
  ``add_rows`` (``Setup.new_rows``: inserted at the end of the server's block; a server the sheet
  lacks altogether gets a new block at the end of the table).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from gpumon.config import DEFAULT_COLUMNS, OWNED_COLUMNS
from gpumon.poll.result import ServerResult
from gpumon.sheet.cells import ServerCells, StateCells, render
from gpumon.sheet.grid import CellWrite, Grid, Merge, NewRows, Setup, a1, cell_text
from gpumon.sheet.layout import (
    GPU_COLUMNS,
    PLAIN_ROW,
    SERVER_COLUMNS,
    Block,
    Layout,
    check_anchors,
    row_anchor,
    server_key,
)
from gpumon_agent.bounds import MAX_GPU_INDEX


@dataclass
class Change:
    """One planned cell change, for --dry-run and logs."""

    cell: str  # A1
    server: str
    column: str  # column key: "status", "util", ...
    old: str
    new: str
    row: int = field(default=-1, compare=False)  # as read (-1: a row the set-up inserts)
    col: int = field(default=-1, compare=False)

    def __str__(self) -> str:
        return f"{self.cell} ({self.server}, {self.column}): {self.old!r} → {self.new!r}"


@dataclass
class Plan:
    layout: Layout
    columns: dict[str, int]  # every column key → index, including headers the Setup adds
    writes: list[CellWrite] = field(default_factory=list)
    changes: list[Change] = field(default_factory=list)
    setup: Setup | None = None
    warnings: list[str] = field(default_factory=list)
    unplaced: list[str] = field(default_factory=list)  # polled servers with no block to write

    def describe_setup(self) -> list[str]:
        """Human lines for the Setup (dry run, logs)."""
        if self.setup is None:
            return []
        setup, lines = self.setup, []
        for col, text in sorted(setup.new_headers.items()):
            lines.append(f"{a1(setup.header_row, col)}: add header {text!r}")
        if setup.stale_anchors:
            lines.append(f"remove {len(setup.stale_anchors)} stale row anchor(s)")
        if setup.anchors:
            lines.append(f"anchor {len(setup.anchors)} row(s)")
        for new in setup.new_rows:
            gpus = ", ".join("-" if g is None else str(g) for g in new.gpus)
            kind = "new block" if new.name_first else "end of its block"
            lines.append(
                f"insert {len(new.gpus)} row(s) above row {new.before_row + 1} for "
                f"'{new.server}' ({kind}; GPU {gpus})"
            )
        return lines


def sheet_timezone(grid: Grid, override: str | None) -> tuple[dt.tzinfo, str | None]:
    """The time zone timestamps are shown in, and a warning if the named one is unknown."""
    return named_zone(override or grid.time_zone)


def named_zone(name: str | None) -> tuple[dt.tzinfo, str | None]:
    """The zone of that IANA name (this machine's without one), and a warning if unknown."""
    if not name:
        return _local_zone(), None
    try:
        from zoneinfo import ZoneInfo

        return ZoneInfo(name), None
    except (ValueError, KeyError, OSError):  # ZoneInfoNotFoundError is a KeyError
        return dt.timezone.utc, f"time zone '{name}' is unknown here; times are shown in UTC"


def _local_zone() -> dt.tzinfo:
    zone = dt.datetime.now().astimezone().tzinfo
    return zone if zone is not None else dt.timezone.utc


def plan(
    grid: Grid,
    layout: Layout,
    results: Sequence[ServerResult],
    *,
    columns: dict[str, list[str]] | None = None,
    time_zone: str | None = None,
    add_rows: bool = False,
    states: Mapping[str, StateCells] | None = None,
) -> Plan:
    """The writes (and Setup) that make the sheet say what ``results`` say. ``states``: each
    server's State cells and Health lines, by ``server_key`` (gpumon.gpustate); without, the
    State cells are blank."""
    states = states or {}
    aliases = columns or DEFAULT_COLUMNS
    tz, tz_warning = sheet_timezone(grid, time_zone)
    out = Plan(layout=layout, columns=dict(layout.columns), warnings=list(layout.warnings))
    if tz_warning:
        out.warnings.append(tz_warning)
    setup = Setup(header_row=layout.header_row)
    _add_missing_headers(grid, layout, aliases, out, setup)

    anchors = layout.anchors()
    writable: set[int] | None = None
    if grid.anchored:
        check = check_anchors(grid, layout)
        writable = check.writable
        setup.anchors = check.to_attach
        setup.stale_anchors = check.stale
        out.warnings.extend(check.mismatched)

    targets = _Targets(grid, out, anchors, writable)
    seen: set[str] = set()
    new_cells: dict[int, ServerCells] = {}  # id(NewRows) → the cells its rows will get
    for result in results:
        key = server_key(result.name)
        if key in seen:
            continue
        seen.add(key)
        block = layout.block(result.name)
        if block is None:
            before = len(setup.new_rows)
            _unplaced(layout, result, out, setup, add_rows)
            for new in setup.new_rows[before:]:
                sheet_gpus = {g for g in new.gpus if g is not None}
                try:
                    new_cells[id(new)] = render(result, tz, sheet_gpus, states.get(key))
                except Exception:  # the push after the set-up says why (as below)
                    pass
            continue
        # GPUs listed twice have rows (which the layout warned about): not "missing".
        in_sheet = set(block.gpu_rows) | block.ambiguous_gpus
        if add_rows and result.report is not None:  # as the sheet will be after the set-up
            in_sheet |= {g.index for g in result.report.gpus if 0 <= g.index <= MAX_GPU_INDEX}
        try:
            cells = render(result, tz, in_sheet, states.get(key))
        except Exception as e:  # a value render cannot show costs its server, not the push
            out.warnings.append(
                f"server '{result.name}': its cells could not be made ({type(e).__name__}: "
                f"{str(e)[:200]}); its rows are left as they are"
            )
            continue
        for column in SERVER_COLUMNS:
            value = cells.server.get(column)
            if value is not None:
                targets.server_cell(block, column, value)
        if block.gpu_rows:
            # The server's CPU-only jobs go in the Job cell of its first GPU row (the name row).
            first = min(block.gpu_rows.values())
            for index, row in sorted(block.gpu_rows.items()):
                for column in GPU_COLUMNS:
                    value = cells.gpu_value(index, column, name_row=row == first)
                    targets.gpu_cell(block, row, column, value)
        elif block.plain_row:
            for column in GPU_COLUMNS:  # a server without GPU rows: only its Job cell may speak
                value = cells.gpu_value(PLAIN_ROW, column, name_row=True)
                targets.gpu_cell(block, block.name_row, column, value)
        missing = _rowable(
            result.name, sorted(set(cells.gpus) - set(block.gpu_rows) - block.ambiguous_gpus), out
        )
        if add_rows and missing:
            new = NewRows(
                before_row=block.end,
                server=block.server,
                gpus=list(missing),
                anchors=[row_anchor(block.server, i) for i in missing],
            )
            setup.new_rows.append(new)
            new_cells[id(new)] = cells

    setup.columns = dict(out.columns)
    setup.data_rows = (layout.header_row + 1, layout.table_end)
    # Bottom-up; rows for the same place are inserted last-first, so they end up in poll order.
    order = {id(n): i for i, n in enumerate(setup.new_rows)}
    setup.new_rows.sort(key=lambda n: (n.before_row, order[id(n)]), reverse=True)
    _list_new_row_cells(setup, new_cells, order, out)
    if not setup.is_empty():
        out.setup = setup
    return out


def _list_new_row_cells(
    setup: Setup, new_cells: dict[int, ServerCells], order: dict[int, int], out: Plan
) -> None:
    """The cells the push after the set-up writes into the rows it inserts, as changes (for the
    dry run), and every change at the row it will have once every insertion is done."""
    if not setup.new_rows:
        return
    for change in out.changes:
        if change.row >= 0:
            below = sum(len(n.gpus) for n in setup.new_rows if n.before_row <= change.row)
            change.cell = a1(change.row + below, change.col)
    shift = 0
    for new in sorted(setup.new_rows, key=lambda n: (n.before_row, order[id(n)])):
        cells = new_cells.get(id(new))
        top = new.before_row + shift
        shift += len(new.gpus)
        if cells is None:
            continue
        if new.name_first:
            for column in SERVER_COLUMNS:
                value = cells.server.get(column)
                if value:
                    out.changes.append(
                        _new_cell(top, out.columns[column], new.server, column, value)
                    )
        for offset, index in enumerate(new.gpus):
            for column in GPU_COLUMNS:
                first = new.name_first and offset == 0
                value = cells.gpu_value(PLAIN_ROW if index is None else index, column, first)
                if value:
                    col = out.columns[column]
                    out.changes.append(_new_cell(top + offset, col, new.server, column, value))


def _new_cell(row: int, col: int, server: str, column: str, value: str) -> Change:
    return Change(a1(row, col), server, column, "", str(cell_text(value)))


def _add_missing_headers(
    grid: Grid, layout: Layout, aliases: dict[str, list[str]], out: Plan, setup: Setup
) -> None:
    # Right of everything used, merges included, so no person's cell is covered.
    next_col = max([grid.width, *(m.end_col for m in grid.merges)])
    for key in OWNED_COLUMNS:
        if key not in out.columns:
            names = aliases.get(key) or DEFAULT_COLUMNS[key]
            setup.new_headers[next_col] = names[0]
            out.columns[key] = next_col
            next_col += 1


def _rowable(server: str, indices: list[int], out: Plan) -> list[int]:
    """The GPU indices a row can be added for: those the GPU column reads back (0-999). Rows
    for others would be missing again on every read, and inserted again on every push."""
    bad = [i for i in indices if not 0 <= i <= MAX_GPU_INDEX]
    if bad:
        out.warnings.append(
            f"server '{server}': {_gpus(bad)} — the sheet's GPU column cannot hold such an index "
            f"(0-{MAX_GPU_INDEX}); no row added"
        )
    return [i for i in indices if 0 <= i <= MAX_GPU_INDEX]


def _gpus(indices: list[int]) -> str:
    return ("GPU " if len(indices) == 1 else "GPUs ") + ", ".join(map(str, indices))


def _unplaced(
    layout: Layout, result: ServerResult, out: Plan, setup: Setup, add_rows: bool
) -> None:
    out.unplaced.append(result.name)
    if layout.listed(result.name):
        return  # listed but ambiguous: the layout's warning already says where
    if not add_rows:
        out.warnings.append(
            f"server '{result.name}' has no rows in the sheet: add a row with its name in the "
            "Server column (or run `gpumon push --add-rows`)"
        )
        return
    gpus: list[int | None] = []
    if result.report is not None:
        gpus = [gpu.index for gpu in result.report.gpus]
    if not result.on and not gpus:
        out.warnings.append(
            f"server '{result.name}' has no rows and is OFF; its rows are added once it answers"
        )
        return
    rows = _rowable(result.name, sorted(i for i in gpus if i is not None), out) or [None]
    setup.new_rows.append(
        NewRows(
            before_row=layout.table_end,
            server=result.name,
            gpus=list(rows),
            name_first=True,
            anchors=[row_anchor(result.name, i) for i in rows],
        )
    )


class _Targets:
    """Turns (block, column, value) into CellWrites, enforcing the rules of the sheet."""

    def __init__(
        self, grid: Grid, out: Plan, anchors: dict[int, str], writable: set[int] | None
    ) -> None:
        self.grid, self.out, self.anchors, self.writable = grid, out, anchors, writable
        self.owned_cols = {out.columns[key] for key in OWNED_COLUMNS}
        self.warned: set[tuple[int, int]] = set()

    def server_cell(self, block: Block, column: str, value: str) -> None:
        col = self.out.columns[column]
        row = block.name_row
        merge = self.grid.merge_at(row, col)
        if merge is not None and not self._merge_ok(merge, block, row, col):
            return
        self._write(block, row, col, column, value)

    def gpu_cell(self, block: Block, row: int, column: str, value: str) -> None:
        col = self.out.columns[column]
        merge = self.grid.merge_at(row, col)
        if merge is not None and (merge.end_row - merge.start_row > 1):
            self._warn_once(
                merge,
                f"{_range(merge)}: merged across rows, but '{column}' is per GPU; "
                "not written (unmerge it)",
            )
            return
        if merge is not None and not self._merge_ok(merge, block, row, col):
            return
        self._write(block, row, col, column, value)

    def _merge_ok(self, merge: Merge, block: Block, row: int, col: int) -> bool:
        """A merge is written through its top-left cell, if that is this cell and the merge
        covers only gpumon's columns and this block's rows."""
        if (merge.start_row, merge.start_col) != (row, col):
            self._warn_once(
                merge, f"{_range(merge)}: merged cell starts at another row or column; not written"
            )
            return False
        if any(c not in self.owned_cols for c in range(merge.start_col, merge.end_col)):
            self._warn_once(
                merge, f"{_range(merge)}: merged with a column people keep; not written"
            )
            return False
        if merge.end_row > block.end:
            self._warn_once(
                merge,
                f"{_range(merge)}: merged beyond the rows of '{block.server}'; not written",
            )
            return False
        return True

    def _write(self, block: Block, row: int, col: int, column: str, value: str) -> None:
        assert col in self.owned_cols, (row, col)
        value = cell_text(value)  # as the backend will write it, so an unchanged cell stays
        old = self.grid.cell(row, col)
        if old == value:
            return
        # A row not anchored yet is anchored by the Setup and written by the plan after it: no
        # write now, but the change is listed (a dry run shows what the first push will write).
        if self.writable is None or row in self.writable:
            anchor = self.anchors[row]
            self.out.writes.append(CellWrite(row=row, col=col, value=value, anchor=anchor))
        self.out.changes.append(Change(a1(row, col), block.server, column, old, value, row, col))

    def _warn_once(self, merge: Merge, text: str) -> None:
        key = (merge.start_row, merge.start_col)
        if key not in self.warned:
            self.warned.add(key)
            self.out.warnings.append(text)


def _range(merge: Merge) -> str:
    return f"{a1(merge.start_row, merge.start_col)}:{a1(merge.end_row - 1, merge.end_col - 1)}"
