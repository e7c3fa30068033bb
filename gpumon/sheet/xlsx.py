"""The local .xlsx backend (openpyxl): the embedded default's sheet, ./gpumon-sheet.xlsx.

- A missing workbook is made in the layout of the lab's "Server and GPU usage" sheet: title rows,
  the header (Server, GPU, Usage, Note, Owner, IP, ON/OFF, Time, then gpumon's columns) and no
  server rows; push's Setup adds the rows of the servers it polls (the embedded default adds this
  machine's block, one row per GPU, or one row for a GPU-less machine). The seed's example
  servers are not copied in: they are not this lab's machines, nothing would ever update them,
  and 2019 "ON" rows would mislead a reader.
- Only gpumon's cells change: the workbook is loaded (rich text kept), gpumon's cells set, and
  saved to a temporary file that replaces the workbook atomically. People's values, merges,
  styles and other sheets come back as openpyxl read them. A workbook holding what openpyxl
  cannot carry through a save (drawings — charts, images, shapes —, macros, or anything
  openpyxl warns it will drop, such as extension data validations) is never rewritten: gpumon
  says so and stops.
- A workbook open in LibreOffice or Excel (their lock file sits beside it) is not written:
  the person's next save would silently undo gpumon's, or theirs would be lost.
- Rows cannot move under gpumon unless someone saves the file between gpumon's read and write;
  then the writes are re-placed by their row anchors on the fresh read (or dropped).
- ``push --add-rows`` inserts rows at the end of a server's block. Rows below are shifted down
  with their merges and heights; if something there would need re-pointing that openpyxl cannot
  re-point (formulas, tables, conditional formats, data validation below the insertion), the
  rows are not inserted and the reason is reported.
"""

from __future__ import annotations

import datetime as dt
import os
import warnings
import zipfile
from copy import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpumon.config import DEFAULT_COLUMNS, OWNED_COLUMNS, Config, ConfigError
from gpumon.sheet.grid import (
    OWNED_MARKER,
    BarChart,
    CellWrite,
    Grid,
    Merge,
    NewRows,
    OwnedWrite,
    Setup,
    SheetError,
    WriteStats,
    cell_text,
)
from gpumon.sheet.layout import LayoutError, read_layout
from gpumon_agent.atomic import atomic_file
from gpumon_agent.text import cut

# The lab's sheet, as far as the seed shows it (rows 1-7 of the fixture).
TITLE = "Server and GPU usage"
NOTES = [
    "Reserve a GPU by writing your name in 'Usage'. "
    "Ask the owner before using a personal computer.",
    "",
    "Legend: ON = reachable, OFF = down. gpumon writes IP, ON/OFF, Time and the columns right of "
    "them; every other cell is yours.",
]
HEADER_ROW = 6  # 0-based: row 7, as in the lab's sheet
PEOPLE_HEADERS = ["Server", "GPU", "Usage", "Note", "Owner"]
_UNSAFE_PARTS = (
    ("xl/drawings/", "drawings (charts, images or shapes)"),
    ("xl/vbaProject.bin", "macros"),
)


def open_backend(config: Config) -> XlsxBackend:
    return XlsxBackend(
        resolve_path(config),
        worksheet=config.sheet.worksheet,
        columns=config.sheet.columns,
        time_zone=config.sheet.time_zone or "",
        origin=config.origin,
        owned_title=config.history.sheet_title if config.history.sheet else None,
    )


def resolve_path(config: Config) -> Path:
    """[sheet] path: relative to the config file's folder, or to the working directory when
    there is no config file (the embedded default: ./gpumon-sheet.xlsx)."""
    path = Path(os.path.expanduser(config.sheet.path))
    if not path.is_absolute() and config.path is not None:
        path = Path(os.path.expanduser(config.path)).resolve().parent / path
    return path


def template_headers(columns: dict[str, list[str]] | None = None) -> list[str]:
    """The header of a new workbook: the lab's columns, then gpumon's added ones."""
    names = columns or DEFAULT_COLUMNS
    return [*PEOPLE_HEADERS, *(names[key][0] for key in OWNED_COLUMNS)]


def new_workbook(columns: dict[str, list[str]] | None = None) -> Any:
    """The layout of the lab's sheet, without server rows."""
    from openpyxl import Workbook
    from openpyxl.styles import Alignment, Font, PatternFill

    headers = template_headers(columns)
    workbook = Workbook()
    sheet = workbook.active
    sheet.title = "Sheet1"
    sheet.cell(1, 1, TITLE).font = Font(bold=True, size=14)
    sheet.merge_cells(start_row=1, start_column=1, end_row=1, end_column=len(headers))
    for offset, text in enumerate(NOTES):
        if text:
            sheet.cell(2 + offset, 1, text).font = Font(italic=True, color="666666")
    fill = PatternFill("solid", fgColor="D9D9D9")
    for col, text in enumerate(headers, 1):
        cell = sheet.cell(HEADER_ROW + 1, col, text)
        cell.font = Font(bold=True)
        cell.fill = fill
        cell.alignment = Alignment(horizontal="center")
    widths = {"Usage": 12, "Note": 16, "Owner": 28, "IP": 15, "Time": 20, "Running": 30}
    widths.update({"Job": 24, "Health": 40, "GPU memory": 14})
    for col, text in enumerate(headers, 1):
        sheet.column_dimensions[_letter(col)].width = widths.get(text, max(9, len(text) + 2))
    sheet.freeze_panes = sheet.cell(HEADER_ROW + 2, 1)
    return workbook


class _ChangedSinceRead(Exception):
    """Someone saved the workbook while gpumon was writing its copy: keep theirs."""


@dataclass(frozen=True)
class _Stamp:
    """Identifies one version of the file: a save by anyone changes it."""

    inode: int
    size: int
    mtime_ns: int


class XlsxBackend:
    def __init__(
        self,
        path: Path,
        *,
        worksheet: str | None = None,
        columns: dict[str, list[str]] | None = None,
        time_zone: str = "",
        origin: str = "the config",
        owned_title: str | None = None,
    ) -> None:
        self.path = Path(path)
        self.owned_title = owned_title  # gpumon's own worksheet: its chart may be rewritten
        self.worksheet = worksheet
        self.columns = columns or DEFAULT_COLUMNS
        self.time_zone = time_zone
        self.origin = origin
        self._workbook: Any = None
        self._stamp: _Stamp | None = None  # None with a workbook: the template, not saved yet
        self._unsafe: str | None = None
        self._col_keys: dict[int, str] = {}  # column → key, as of the last read

    # --- Backend -------------------------------------------------------------------------

    def read(self) -> Grid:
        stamp = self._current_stamp()
        if stamp is None:
            self._workbook, self._stamp, self._unsafe = new_workbook(self.columns), None, None
        elif self._workbook is None or stamp != self._stamp:
            self._load(stamp)
        grid = self._grid()
        try:
            layout = read_layout(grid, self.columns)
            self._col_keys = {col: key for key, col in layout.columns.items()}
        except LayoutError:
            self._col_keys = {}
        return grid

    def write(self, writes: list[CellWrite]) -> WriteStats:
        stats = WriteStats()
        for _ in range(3):
            stats.skipped = []
            self._check_writable()
            placed = self._place(writes, stats)
            if placed is None:
                continue  # the file changed again while re-placing
            if not placed and self._stamp is not None:
                return stats  # nothing to change in an existing workbook: no save at all
            sheet = self._sheet()
            for write in placed:
                _set(sheet.cell(write.row + 1, write.col + 1), write.value)
            if self._save():
                stats.requests, stats.cells = 1, len(placed)
                return stats
            # Someone saved the file between our placing and saving: place again on theirs.
        raise SheetError(f"{self.path}: keeps changing while gpumon writes it; try again later")

    def setup(self, setup: Setup) -> WriteStats:
        stats = WriteStats()
        self._check_writable()
        if self._stamp is not None and self._current_stamp() != self._stamp:
            stats.skipped.append(f"{self.path} changed since it was read: set-up postponed")
            return stats
        sheet = self._sheet()
        for col, text in sorted(setup.new_headers.items()):
            _add_header(sheet, setup.header_row, col, text)
            stats.cells += 1
        for new in setup.new_rows:  # bottom-up, so each before_row is still as read
            problem = _insert_rows(sheet, new, setup.columns)
            if problem:
                stats.skipped.append(problem)
            else:
                stats.cells += len(new.gpus)
        # Anchors: rows of a file cannot move between gpumon's read and write except through a
        # save, which write() detects and answers by re-placing; nothing to attach.
        if stats.cells or self._stamp is None:
            if not self._save():
                stats.skipped.append(f"{self.path} changed while saving: set-up postponed")
                return stats
            stats.requests = 1
        return stats

    def close(self) -> None:
        self._workbook = None

    def writable_problem(self) -> str | None:
        """Why a write would be refused now (for `gpumon check`), or None."""
        try:
            self._check_writable()
        except SheetError as e:
            return str(e)
        folder = self.path.parent
        if not os.access(folder if folder.exists() else Path.cwd(), os.W_OK):
            return f"{folder}: not writable, so {self.path.name} cannot be saved"
        return None

    # --- reading ---------------------------------------------------------------------------

    def _current_stamp(self) -> _Stamp | None:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return None
        except OSError as e:
            raise SheetError(f"{self.path}: cannot read it ({e.strerror})") from None
        return _Stamp(st.st_ino, st.st_size, st.st_mtime_ns)

    def _load(self, stamp: _Stamp) -> None:
        from openpyxl import load_workbook

        try:
            with zipfile.ZipFile(self.path) as archive:
                names = archive.namelist()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                workbook = load_workbook(self.path, rich_text=True)
        except OSError as e:
            raise SheetError(f"{self.path}: cannot read it ({e.strerror or e})") from None
        except Exception as e:
            # A damaged workbook fails anywhere in zipfile, openpyxl or the XML parser (e.g.
            # xml.etree's ParseError on a character XML cannot hold): all mean "unreadable".
            detail = cut(f"{type(e).__name__}: {e}", 200)
            raise SheetError(
                f"{self.path}: not a readable .xlsx workbook ({detail}). gpumon leaves it "
                "exactly as it is: restore it, or move it away and gpumon makes a fresh one"
            ) from None
        self._unsafe = None
        for prefix, what in _UNSAFE_PARTS:
            if any(name.startswith(prefix) for name in names):
                self._unsafe = what
        if self._unsafe == _UNSAFE_PARTS[0][1] and self._only_owned_charts(workbook):
            self._unsafe = None  # the drawings are gpumon's own chart, which openpyxl keeps
        # openpyxl says what it reads but would not write back ("... will be removed",
        # "... is being dropped"): saving would lose a person's work.
        dropped = [
            str(w.message)
            for w in caught
            if any(word in str(w.message) for word in ("removed", "dropped", "discarded"))
        ]
        if dropped:
            self._unsafe = f"parts openpyxl cannot keep ({'; '.join(dropped[:3])})"
        self._workbook, self._stamp = workbook, stamp

    def _only_owned_charts(self, workbook: Any) -> bool:
        """Every drawing in the file is a chart on gpumon's own worksheet (openpyxl reads
        charts back and writes them again; pictures and shapes it would drop)."""
        if self.owned_title is None:
            return False
        try:
            drawn = _sheets_with_drawings(self.path)
        except (OSError, KeyError, ValueError, zipfile.BadZipFile, SyntaxError):
            return False
        if drawn is None or set(drawn) - {self.owned_title}:
            return False
        if self.owned_title not in workbook.sheetnames:
            return False
        sheet = workbook[self.owned_title]
        return _is_owned(sheet) and not getattr(sheet, "_images", [])

    def write_owned(
        self,
        title: str,
        rows: list[list[Any]],
        chart: BarChart | None,
        *,
        create: bool = False,
        clear_rows: int = 0,
    ) -> OwnedWrite:
        """Rewrite gpumon's own worksheet ``title`` in the workbook (made, with its chart, if
        missing) and save once, atomically; a worksheet of that name that gpumon did not make is
        left alone. ``create`` and ``clear_rows`` are the Google backend's; here the workbook
        itself says whether the worksheet is there. Raises SheetError."""
        del create, clear_rows
        self.read()  # the file as it is now
        if title == self._sheet().title:
            return OwnedWrite(
                problem=f"[history] sheet_title {title!r} names the lab's own worksheet; give "
                "gpumon's another name"
            )
        self._check_writable()
        workbook = self._workbook
        out = OwnedWrite()
        if title in workbook.sheetnames:
            sheet = workbook[title]
            if not _is_owned(sheet):
                return OwnedWrite(
                    problem=f"{self.path}: a worksheet named {title!r} that gpumon did not make "
                    "is in the workbook; gpumon leaves it alone — rename it, or set [history] "
                    "sheet_title to another name"
                )
            if sheet.max_row:
                sheet.delete_rows(1, sheet.max_row)
        else:
            sheet = workbook.create_sheet(title)
            out.created = True
        out.exists = True
        for r, values in enumerate(rows, 1):
            for c, value in enumerate(values, 1):
                if value is not None and value != "":
                    _set(sheet.cell(r, c), value)
        if out.created and chart is not None:
            _add_chart(sheet, chart)
        if not self._save():
            return OwnedWrite(
                exists=not out.created,
                problem=f"{self.path} changed while gpumon wrote it; next time",
            )
        out.requests = 1
        return out

    def _sheet(self) -> Any:
        workbook = self._workbook
        if self.worksheet is None:
            return workbook.worksheets[0]
        if self.worksheet not in workbook.sheetnames:
            raise ConfigError(
                f"{self.origin}: [sheet] worksheet = {self.worksheet!r} is not in {self.path} "
                f"(it has: {', '.join(workbook.sheetnames)})"
            )
        return workbook[self.worksheet]

    def _grid(self) -> Grid:
        sheet = self._sheet()
        values: list[list[str]] = []
        for row in sheet.iter_rows(values_only=True):
            line = [display(v) for v in row]
            while line and not line[-1]:
                line.pop()
            values.append(line)
        while values and not values[-1]:
            values.pop()
        merges = [
            Merge(r.min_row - 1, r.max_row, r.min_col - 1, r.max_col)
            for r in sheet.merged_cells.ranges
        ]
        return Grid(title=sheet.title, time_zone=self.time_zone, values=values, merges=merges)

    # --- writing ---------------------------------------------------------------------------

    def _check_writable(self) -> None:
        if self._unsafe:
            raise SheetError(
                f"{self.path}: holds {self._unsafe}, which openpyxl would drop on saving; gpumon "
                "does not rewrite it. Keep the status sheet in a workbook without them (or use "
                "the google backend)"
            )
        for lock in _lock_files(self.path):
            if lock.exists():
                who = _lock_owner(lock)
                raise SheetError(
                    f"{self.path}: open in a spreadsheet program{who} (lock file {lock}); gpumon "
                    "writes it once it is closed. If nobody has it open, delete the lock file"
                )

    def _place(self, writes: list[CellWrite], stats: WriteStats) -> list[CellWrite] | None:
        """The writes at the rows and columns of the file as it is now (re-placed by anchor
        if someone saved it since the read); None if it changed again meanwhile."""
        stamp = self._current_stamp()
        if stamp == self._stamp or (stamp is None and self._stamp is None):
            return list(writes)
        old_keys = dict(self._col_keys)
        if stamp is None:
            raise SheetError(f"{self.path}: deleted while gpumon was writing it; nothing written")
        self._load(stamp)
        grid = self._grid()
        try:
            layout = read_layout(grid, self.columns)
        except LayoutError as e:
            raise SheetError(f"{self.path}: changed while gpumon was writing it: {e}") from None
        self._col_keys = {col: key for key, col in layout.columns.items()}
        rows = {anchor: row for row, anchor in layout.anchors().items()}
        placed = []
        for write in writes:
            key = old_keys.get(write.col)
            row = rows.get(write.anchor) if write.anchor else None
            col = layout.columns.get(key) if key else None
            if row is None or col is None:
                stats.skipped.append(f"{write.anchor}: row or column gone since the read")
                continue
            placed.append(CellWrite(row, col, write.value, write.anchor))
        return placed if self._current_stamp() == stamp else None

    def _save(self) -> bool:
        """Save atomically; False (nothing saved) if the file changed since it was read."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_file(self.path, mode=None) as f:
                self._workbook.save(f)
                f.flush()
                if self._current_stamp() != self._stamp:
                    raise _ChangedSinceRead
        except _ChangedSinceRead:
            return False
        except OSError as e:
            raise SheetError(
                f"{self.path}: cannot save it ({e.strerror or e}); the workbook is unchanged"
            ) from None
        self._stamp = self._current_stamp()
        return True


# --- cells ---------------------------------------------------------------------------------


def display(value: Any) -> str:
    """A cell's value as the text a reader sees (close enough for layout and comparisons)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else repr(value)
    if isinstance(value, dt.datetime):
        return value.strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, dt.date):
        return value.strftime("%Y-%m-%d")
    if isinstance(value, dt.time):
        return value.strftime("%H:%M:%S")
    return str(value)


def _set(cell: Any, value: Any) -> None:
    if isinstance(value, str):
        # openpyxl saves any str, then cannot read back what XML cannot hold (U+FFFF, lone
        # surrogates): the whole workbook, people's cells included, would be unreadable.
        cell.value = cell_text(value)
        # openpyxl makes "=..." a formula; gpumon writes untrusted text raw: keep it text.
        cell.data_type = "s"
    else:
        cell.value = value


def _add_header(sheet: Any, row: int, col: int, text: str) -> None:
    cell = sheet.cell(row + 1, col + 1)
    _set(cell, text)
    if col > 0:
        left = sheet.cell(row + 1, col)
        if left.has_style:
            cell._style = copy(left._style)
    width = max(10, len(text) + 2)
    sheet.column_dimensions[_letter(col + 1)].width = width


def _insert_rows(sheet: Any, new: NewRows, columns: dict[str, int]) -> str | None:
    """Insert the rows of ``new``; the reason if they cannot be inserted safely."""
    at = new.before_row + 1  # 1-based: the new rows take this row's place
    count = len(new.gpus)
    if at <= sheet.max_row:
        problem = _shift_blocker(sheet, at)
        if problem:
            return (
                f"rows for '{new.server}' not inserted: {problem} below row {at}, which gpumon "
                "cannot re-point in an .xlsx; insert the rows by hand (blank Server cell, GPU "
                "index in the GPU column)"
            )
        _shift_down(sheet, at, count)
    server_col, gpu_col = columns.get("server"), columns.get("gpu")
    style_row = at - 1 if at - 1 > 0 else None
    for offset, index in enumerate(new.gpus):
        row = at + offset
        if style_row is not None and not new.name_first:
            for col in range(1, sheet.max_column + 1):
                above = sheet.cell(style_row, col)
                if above.has_style and not isinstance(above, _merged_cell_type()):
                    sheet.cell(row, col)._style = copy(above._style)
        if gpu_col is not None and index is not None:
            sheet.cell(row, gpu_col + 1, index)
        if new.name_first and offset == 0 and server_col is not None:
            _set(sheet.cell(row, server_col + 1), new.server)
    return None


def _merged_cell_type() -> type:
    from openpyxl.cell.cell import MergedCell

    return MergedCell


def _shift_blocker(sheet: Any, at: int) -> str | None:
    """What would need re-pointing if rows were inserted at 1-based row ``at``: a formula at or
    below it, or one anywhere in the workbook that refers to this sheet's rows from ``at`` on
    (openpyxl moves cells, never the references to them); None if nothing does."""
    for other in sheet.parent.worksheets:
        for row in other.iter_rows():
            for cell in row:
                if cell.data_type != "f":
                    continue
                here = other is sheet
                if (here and cell.row >= at) or _refers_below(str(cell.value), sheet, here, at):
                    where = cell.coordinate if here else f"{other.title}!{cell.coordinate}"
                    return f"a formula ({where})"
    for name, defined in _defined_names(sheet):
        if _refers_below("=" + str(defined.attr_text), sheet, False, at):
            return f"a defined name ({name})"
    if sheet.tables:
        return "a table"
    for cf in sheet.conditional_formatting:
        if any(r.max_row >= at for r in cf.sqref.ranges):
            return "conditional formatting"
    for validation in sheet.data_validations.dataValidation:
        if any(r.max_row >= at for r in validation.sqref.ranges):
            return "data validation"
    if sheet.print_area or sheet.print_title_rows:
        return "a print area"
    return None


def _refers_below(formula: str, sheet: Any, here: bool, at: int) -> bool:
    """Does ``formula`` (in this sheet when ``here``) refer to rows ``at`` or lower of
    ``sheet``? A reference it cannot read (a defined name, a damaged formula) counts as yes."""
    from openpyxl.formula import Tokenizer
    from openpyxl.utils.cell import range_boundaries

    try:
        tokens = Tokenizer(formula).items
    except Exception:  # openpyxl's tokenizer raises bare errors on what it cannot read
        return True
    for token in tokens:
        if token.type != "OPERAND" or token.subtype != "RANGE":
            continue
        target, bang, ref = token.value.rpartition("!")
        if bang:
            if target.strip("'").replace("''", "'") != sheet.title:
                continue
        elif not here:
            continue
        try:
            max_row = range_boundaries(ref.replace("$", ""))[3]
        except ValueError:
            return True  # a defined name or a table reference: cannot tell, so it may
        if max_row is None or max_row >= at:
            return True
    return False


def _defined_names(sheet: Any) -> list[tuple[str, Any]]:
    names = list(sheet.parent.defined_names.items())
    names += list(getattr(sheet, "defined_names", {}).items())
    return names


def _shift_down(sheet: Any, at: int, count: int) -> None:
    from openpyxl.worksheet.cell_range import MultiCellRange

    sheet.insert_rows(at, count)  # moves cells (values, styles, comments, links) only
    ranges = []
    for merged in sheet.merged_cells.ranges:
        if merged.min_row >= at:
            merged.shift(row_shift=count)
        elif merged.max_row >= at:  # the insertion lands inside it: it grows, as in Excel
            merged.expand(down=count)
        ranges.append(merged)
    sheet.merged_cells = MultiCellRange(ranges)
    heights = sorted((r, d) for r, d in sheet.row_dimensions.items() if r >= at)
    for r, _ in heights:
        del sheet.row_dimensions[r]
    for r, dim in heights:
        dim.index = r + count
        sheet.row_dimensions[r + count] = dim
    if sheet.freeze_panes:
        frozen = sheet[sheet.freeze_panes]
        if frozen.row >= at:
            sheet.freeze_panes = sheet.cell(frozen.row + count, frozen.column)
    if sheet.auto_filter.ref:
        from openpyxl.worksheet.cell_range import CellRange

        box = CellRange(sheet.auto_filter.ref)
        if box.min_row >= at:
            box.shift(row_shift=count)
        elif box.max_row >= at:
            box.expand(down=count)
        sheet.auto_filter.ref = box.coord


def _is_owned(sheet: Any) -> bool:
    value = sheet.cell(1, 1).value
    return isinstance(value, str) and value.startswith(OWNED_MARKER)


def _add_chart(sheet: Any, chart: BarChart) -> None:
    from openpyxl.chart import BarChart as XlBarChart
    from openpyxl.chart import Reference

    bar = XlBarChart()
    bar.type = "bar"
    bar.title = chart.title
    bar.y_axis.title = "GPU-hours"
    bar.width, bar.height = 18, 10
    for col in chart.series_cols:
        data = Reference(
            sheet, min_col=col + 1, min_row=chart.header_row + 1, max_row=chart.end_row
        )
        bar.add_data(data, titles_from_data=True)
    bar.set_categories(
        Reference(
            sheet,
            min_col=chart.category_col + 1,
            min_row=chart.first_row + 1,
            max_row=chart.end_row,
        )
    )
    sheet.add_chart(bar, sheet.cell(chart.anchor_row + 1, chart.anchor_col + 1).coordinate)


_REL = "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}"
_PKG_REL = "{http://schemas.openxmlformats.org/package/2006/relationships}Relationship"
_MAIN = "{http://schemas.openxmlformats.org/spreadsheetml/2006/main}"
_SHAPES = (b"<xdr:sp", b"<xdr:pic", b"<xdr:cxnSp", b"<xdr:grpSp", b"<xdr:contentPart")


def _sheets_with_drawings(path: Path) -> dict[str, int] | None:
    """The worksheets (by title) that hold drawings, and how many; None if any drawing holds
    more than charts (pictures, shapes) or the package cannot be followed."""
    import posixpath
    from xml.etree import ElementTree

    def rels(archive: zipfile.ZipFile, part: str) -> dict[str, tuple[str, str]]:
        folder, name = posixpath.split(part)
        rel_name = posixpath.join(folder, "_rels", name + ".rels")
        if rel_name not in archive.namelist():
            return {}
        out = {}
        for rel in ElementTree.fromstring(archive.read(rel_name)).iter(_PKG_REL):
            target = rel.get("Target", "")
            target = (
                target.lstrip("/")
                if target.startswith("/")
                else posixpath.normpath(posixpath.join(folder, target))
            )
            out[rel.get("Id", "")] = (rel.get("Type", "").rsplit("/", 1)[-1], target)
        return out

    with zipfile.ZipFile(path) as archive:
        book = ElementTree.fromstring(archive.read("xl/workbook.xml"))
        book_rels = rels(archive, "xl/workbook.xml")
        drawn: dict[str, int] = {}
        for sheet in book.iter(f"{_MAIN}sheet"):
            kind, part = book_rels.get(sheet.get(f"{_REL}id", ""), ("", ""))
            if kind != "worksheet":
                continue
            for rel_kind, target in rels(archive, part).values():
                if rel_kind != "drawing":
                    continue
                xml = archive.read(target)
                if any(shape in xml for shape in _SHAPES):
                    return None
                title = sheet.get("name", "")
                drawn[title] = drawn.get(title, 0) + 1
        return drawn


def _lock_files(path: Path) -> list[Path]:
    name = path.name
    return [
        path.with_name(f".~lock.{name}#"),  # LibreOffice
        path.with_name(f"~${name}"),  # Excel
        path.with_name(f"~${name[2:]}"),  # Excel, long names
    ]


def _lock_owner(lock: Path) -> str:
    try:
        text = lock.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    owner = text.split(",", 1)[0].strip()
    return f" by {owner}" if owner and "\x00" not in owner and len(owner) < 80 else ""


def _letter(col: int) -> str:
    from openpyxl.utils import get_column_letter

    return get_column_letter(col)
