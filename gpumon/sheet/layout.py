"""Where things are in the lab's sheet: the header row, each server's block of rows, each GPU's row.

The sheet is people's, so the layout is read from what they wrote, never assumed:

- the header row is the row whose cells name the most known columns (aliases from
  ``[sheet.columns]``, compared case- and space-insensitively) and that has a Server column;
- below it, a non-blank Server cell starts a server's block; blank Server cells (or the rest of
  a merged Server cell, whose value sits in its top-left cell) continue the block above; a fully
  blank row ends it;
- the GPU column gives each row's GPU index.

Anything ambiguous — a server listed twice, a GPU index repeated within a block, a row that
cannot be placed — becomes a warning naming the cells (A1 notation), and those rows are left
alone: gpumon would rather not write than write into the wrong row.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from gpumon.config import DEFAULT_COLUMNS, server_key
from gpumon.sheet.grid import Grid, a1
from gpumon_agent.text import cut

# A server name as people write it in the Server column: a host name or an ssh_config alias.
_SERVER_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]{0,253}[A-Za-z0-9])?$")
_GPU_INDEX = re.compile(r"^\s*#?\s*(\d{1,3})\s*$")

# Owned columns whose value describes the whole server (one cell per block), and those whose
# value describes one GPU (one cell per GPU row).
SERVER_COLUMNS = ("ip", "status", "time", "health")
GPU_COLUMNS = ("util", "memory", "running", "job", "state")
# The GPU index that stands for a block's one row when it has no GPU index (a GPU-less
# server's row): its State and its reservation are the server's.
PLAIN_ROW = -1


class LayoutError(Exception):
    """The sheet's layout cannot be used at all (e.g. no header row with a Server column)."""


def normalize(text: str) -> str:
    """Header comparison key: case- and space-insensitive ("ON / OFF" == "on/off")."""
    return "".join(text.split()).casefold()


@dataclass
class Block:
    """One server's rows: [name_row, end)."""

    server: str
    name_row: int  # the row whose Server cell holds the name; server-wide values go here
    end: int  # exclusive
    gpu_rows: dict[int, int] = field(default_factory=dict)  # GPU index → row
    plain_row: bool = False  # the name row has no GPU index (e.g. a GPU-less server)
    ambiguous_gpus: set[int] = field(default_factory=set)  # indices listed twice: left alone
    managed: bool = True  # False: ambiguous (listed twice), left alone entirely

    def rows(self) -> range:
        return range(self.name_row, self.end)


@dataclass
class Layout:
    header_row: int
    columns: dict[str, int]  # column key → column index, for the columns found
    blocks: list[Block]  # in sheet order, the ambiguous ones too (managed=False)
    table_end: int  # the row after the last block: where a new server's block would go
    warnings: list[str] = field(default_factory=list)
    _by_key: dict[str, Block] | None = field(default=None, repr=False, compare=False)

    def block(self, server: str) -> Block | None:
        """The managed block of this server (None if not in the sheet or ambiguous)."""
        block = self._index().get(server_key(server))
        return block if block is not None and block.managed else None

    def listed(self, server: str) -> bool:
        """In the sheet at all (even if ambiguous)."""
        return server_key(server) in self._index()

    def _index(self) -> dict[str, Block]:
        # Built on first use; blocks are not added after read_layout.
        if self._by_key is None:
            self._by_key = {}
            for block in self.blocks:
                self._by_key.setdefault(server_key(block.server), block)
        return self._by_key

    def servers(self) -> list[str]:
        """The managed servers, in sheet order."""
        return [b.server for b in self.blocks if b.managed]

    def anchors(self) -> dict[int, str]:
        """Each managed row's anchor: what its content says it is ("server|gpu")."""
        out: dict[int, str] = {}
        for block in self.blocks:
            if not block.managed:
                continue
            # The name row always has one: server-wide values go there even when its GPU cell
            # is blank or unusable.
            out[block.name_row] = row_anchor(block.server, None)
            for index, row in block.gpu_rows.items():
                out[row] = row_anchor(block.server, index)
        return out


def row_anchor(server: str, gpu: int | None) -> str:
    """The anchor of a row: "sigbsp|2", or "sigbsp|" for a row without a GPU index."""
    return f"{server_key(server)}|{'' if gpu is None else gpu}"


@dataclass
class AnchorCheck:
    """How the anchors read back (Grid.row_anchors) compare with what the rows say."""

    writable: set[int]  # rows whose anchor matches their content: safe to write by anchor
    to_attach: dict[int, str]  # rows to (re-)anchor through Setup
    stale: list[str]  # anchors to remove first (on the wrong row, or on several rows)
    mismatched: list[str]  # warnings: rows whose anchor disagrees with their content


def check_anchors(grid: Grid, layout: Layout) -> AnchorCheck:
    expected = layout.anchors()
    actual = grid.row_anchors
    rows_of: dict[str, list[int]] = {}
    for row, anchor in actual.items():
        rows_of.setdefault(anchor, []).append(row)
    stale = sorted(
        anchor
        for anchor, rows in rows_of.items()
        if len(rows) > 1 or any(expected.get(r) != anchor for r in rows)
    )
    stale_set = set(stale)
    writable = {
        row
        for row, anchor in expected.items()
        if actual.get(row) == anchor and anchor not in stale_set
    }
    to_attach = {row: anchor for row, anchor in expected.items() if row not in writable}
    mismatched = [
        f"row {row + 1}: its anchor says '{actual[row]}' but the row says '{anchor}' "
        "(moved or edited?); not written until re-anchored"
        for row, anchor in sorted(expected.items())
        if row in actual and actual[row] != anchor
    ]
    return AnchorCheck(writable, to_attach, stale, mismatched)


def read_layout(grid: Grid, columns: dict[str, list[str]] | None = None) -> Layout:
    """The layout of one read of the sheet. Raises LayoutError if no header row is found."""
    aliases = columns or DEFAULT_COLUMNS
    lookup: dict[str, str] = {}
    for key, names in aliases.items():
        for name in names:
            lookup.setdefault(normalize(name), key)
    header_row = _find_header(grid, lookup, aliases)
    warnings: list[str] = []
    found = _header_columns(grid, header_row, lookup, warnings)
    blocks, table_end = _find_blocks(grid, header_row, found, lookup, warnings)
    return Layout(header_row, found, blocks, table_end, warnings)


def _find_header(grid: Grid, lookup: dict[str, str], aliases: dict[str, list[str]]) -> int:
    best_row, best_score = -1, 0
    for row, line in enumerate(grid.values):
        keys = {lookup.get(normalize(text)) for text in line if text.strip()}
        keys.discard(None)
        if "server" in keys and len(keys) > best_score:
            best_row, best_score = row, len(keys)
    if best_row < 0:
        names = ", ".join(f"'{n}'" for n in aliases.get("server", ["Server"]))
        raise LayoutError(
            f"worksheet '{grid.title}': no header row — no cell says {names}. gpumon finds "
            "its rows by the header (e.g. Server | GPU | Usage | ... | IP | ON/OFF | Time); "
            'add it, or name your header in [sheet.columns] server = ["..."]'
        )
    return best_row


def _header_columns(
    grid: Grid, header_row: int, lookup: dict[str, str], warnings: list[str]
) -> dict[str, int]:
    found: dict[str, int] = {}
    for col, text in enumerate(grid.values[header_row]):
        key = lookup.get(normalize(text)) if text.strip() else None
        if key is None:
            continue
        if key in found:
            warnings.append(
                f"{a1(header_row, col)}: a second '{text}' column (also "
                f"{a1(header_row, found[key])}); gpumon uses only the first"
            )
            continue
        found[key] = col
    if "gpu" not in found:
        warnings.append(
            f"row {header_row + 1}: no GPU column, so no row belongs to one GPU; per-GPU "
            "values are not written (add a 'GPU' column holding each row's GPU index)"
        )
    return found


def _name_at(grid: Grid, row: int, col: int) -> tuple[str, int | None]:
    """The Server cell's text, and the row of its merge's top-left cell if it continues one."""
    merge = grid.merge_at(row, col)
    if merge is not None and merge.start_row < row:
        return grid.cell(merge.start_row, merge.start_col).strip(), merge.start_row
    return grid.cell(row, col).strip(), None


def _find_blocks(
    grid: Grid,
    header_row: int,
    found: dict[str, int],
    lookup: dict[str, str],
    warnings: list[str],
) -> tuple[list[Block], int]:
    server_col = found["server"]
    gpu_col = found.get("gpu")
    blocks: list[Block] = []
    first_seen: dict[str, Block] = {}
    current: Block | None = None
    table_end = header_row + 1
    for row in range(header_row + 1, len(grid.values)):
        name, merged_from = _name_at(grid, row, server_col)
        if merged_from is None and not any(t.strip() for t in grid.values[row]):
            current = None  # a blank row ends the block
            continue
        if merged_from is not None:
            if current is None or current.name_row != merged_from:
                # The merge's top-left is not a block we are in (e.g. it started above the
                # header, or at a row left alone): nothing to continue.
                current = None
                continue
        elif name:
            if lookup.get(normalize(name)) == "server":
                warnings.append(
                    f"{a1(row, server_col)}: a second header row; the rows below it are left "
                    "alone (gpumon manages one table per worksheet)"
                )
                break
            if not _SERVER_NAME.match(name):
                warnings.append(
                    f"{a1(row, server_col)}: '{cut(name, 30)}' is not a server name (letters, "
                    "digits, '.', '-', '_'); row left alone"
                )
                current = None
                continue
            current = Block(server=name, name_row=row, end=row + 1)
            blocks.append(current)
            earlier = first_seen.get(server_key(name))
            if earlier is None:
                first_seen[server_key(name)] = current
            else:
                warnings.append(
                    f"{a1(row, server_col)}: server '{name}' appears twice (also "
                    f"{a1(earlier.name_row, server_col)}); both left alone until one is removed"
                )
                earlier.managed = False
                current.managed = False
        elif current is None:
            warnings.append(
                f"{a1(row, server_col)}: no server name here or above it; row left alone"
            )
            continue
        current.end = row + 1
        table_end = row + 1
        if gpu_col is not None:
            _place_gpu_row(grid, current, row, gpu_col, warnings)
    return blocks, table_end


def _place_gpu_row(grid: Grid, block: Block, row: int, gpu_col: int, warnings: list[str]) -> None:
    text = grid.cell(row, gpu_col).strip()
    where = a1(row, gpu_col)
    if not text:
        if row == block.name_row:
            block.plain_row = True
        else:
            warnings.append(
                f"{where}: no GPU index in this row of '{block.server}'; row left alone"
            )
        return
    match = _GPU_INDEX.match(text)
    if match is None:
        warnings.append(
            f"{where}: GPU '{cut(text, 30)}' of '{block.server}' is not a GPU index (0, 1, ...); "
            "no GPU values written in this row"
        )
        return
    index = int(match.group(1))
    if index in block.ambiguous_gpus:
        warnings.append(
            f"{where}: GPU {index} of '{block.server}' appears again; no GPU values written here"
        )
        return
    earlier = block.gpu_rows.pop(index, None)
    if earlier is not None:
        block.ambiguous_gpus.add(index)
        warnings.append(
            f"{where}: GPU {index} of '{block.server}' appears twice (also "
            f"{a1(earlier, gpu_col)}); no GPU values written in either row"
        )
        return
    block.gpu_rows[index] = row
