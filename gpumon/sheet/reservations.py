"""Who reserved which GPU: the sheet's Usage column, read (never written). Pure: no I/O.

The lab reserves a GPU by typing a name into its row's Usage cell. What people type:

- a name (``Niv``), several (``Niv, lww``, ``Niv and lww``, ``Niv / lww``, one per line);
- a name with a date or a note (``Niv until 3/20``, ``lww (exp 4)``, ``Niv using CPU``): the
  first word of each part is the name, the rest is a note, kept in ``Reservation.text``;
- blank, or a word that says nobody (``-``, ``free``, ``none``, ``n/a``): no reservation.

A reservation covers the whole server (``server_wide``) when its Usage cell is the block's first
row and either merged down the block, or the only one filled in a block of several rows, or on
a row without a GPU index (a GPU-less server's one row).

Names become people and Unix users: a ``[people]`` key (``Niv = ["niv", "nkim"]``, compared
without case or spaces), a Unix user listed there (the person it belongs to), else a Unix user
known on the fleet (case-insensitive). A name that matches none of these is kept as typed in
``unmatched`` (``gpumon check`` names it); the reservation still holds.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from gpumon.sheet.grid import Grid, a1
from gpumon.sheet.layout import PLAIN_ROW, Block, Layout, server_key
from gpumon_agent.text import cut

# A hostile cell (50,000 characters, thousands of names) costs no more than this.
MAX_READ_CHARS = 500
MAX_NAMES = 8
MAX_NAME_CHARS = 40
# Words that mean "nobody" when they are all a cell says.
NOBODY = frozenset({"-", "--", "—", "–", "free", "none", "nobody", "n/a", "na", "empty", "x"})

_SEPARATORS = re.compile(r"[,;&+\n\r\t]|\band\b|(?<!\d)/(?!\d)", re.IGNORECASE)
_NOTES = re.compile(r"\([^)]*\)?|\[[^\]]*\]?")
# A name: starts with a letter (any script), then letters, digits, '.', '_', '-', "'".
_NAME = re.compile(r"[^\W\d_][\w.'\-]*")


@dataclass(frozen=True)
class Reservation:
    text: str  # the Usage cell as typed (cut for display)
    people: tuple[str, ...]  # matched: a [people] key, or the Unix user name matched
    users: tuple[str, ...]  # the Unix users those people map to
    unmatched: tuple[str, ...]  # names that match nobody, as typed
    server_wide: bool = False
    cell: str = ""  # where it was read, A1 ("C17")

    @property
    def names(self) -> tuple[str, ...]:
        """Everyone it names, for people to read: the matched first, then the unmatched."""
        return self.people + self.unmatched

    def label(self) -> str:
        """ "Niv", "Niv, lww"."""
        return ", ".join(self.names)

    def holds(self, user: str) -> bool:
        """Whether the Unix user ``user`` is one of the reservers (a reservation whose names
        match nobody holds for no user)."""
        return user in self.users


@dataclass(frozen=True)
class People:
    """Who is who: ``[people]`` and the Unix users seen on the fleet."""

    by_name: dict[str, tuple[str, tuple[str, ...]]]  # folded name → (person, users)
    by_user: dict[str, tuple[str, tuple[str, ...]]]  # folded user → (person, users)

    @classmethod
    def of(cls, config_people: Mapping[str, Sequence[str]], known_users: Iterable[str]) -> People:
        by_name: dict[str, tuple[str, tuple[str, ...]]] = {}
        by_user: dict[str, tuple[str, tuple[str, ...]]] = {}
        for user in sorted(set(known_users)):
            if user and user != "?":
                by_user.setdefault(user.casefold(), (user, (user,)))
        for person, users in config_people.items():
            entry = (person, tuple(users))
            by_name[_fold(person)] = entry
            for user in users:
                by_user[user.casefold()] = entry  # [people] wins over a bare user name
        return cls(by_name, by_user)

    def match(self, name: str) -> tuple[str, tuple[str, ...]] | None:
        """(person, their Unix users) for a name as typed, or None."""
        return self.by_name.get(_fold(name)) or self.by_user.get(name.casefold())

    def person_of(self, user: str) -> str:
        """The person a Unix user is ([people]), else the user name itself."""
        found = self.by_user.get(user.casefold())
        return found[0] if found is not None else user

    def resolve(self, name: str) -> tuple[str, tuple[str, ...]]:
        """As ``match``, and a name that matches nobody is taken as a Unix user of that name
        (`gpumon free --for lww` before lww ever ran anything)."""
        return self.match(name) or (name, (name,))


def _fold(name: str) -> str:
    return " ".join(name.split()).casefold()


def parse_usage(text: str, people: People) -> Reservation | None:
    """The reservation one Usage cell holds, or None when it names nobody."""
    head = text[:MAX_READ_CHARS]
    if not head.strip() or head.strip().casefold() in NOBODY:
        return None
    matched: list[tuple[str, tuple[str, ...]]] = []
    unmatched: list[str] = []
    for part in _SEPARATORS.split(_NOTES.sub(" ", head)):
        name = _name_in(part, people)
        if name is None:
            continue
        found = people.match(name)
        if found is not None:
            if found not in matched:
                matched.append(found)
        elif name.casefold() not in {u.casefold() for u in unmatched}:
            unmatched.append(name)
        if len(matched) + len(unmatched) >= MAX_NAMES:
            break
    if not matched and not unmatched:
        return None
    users = tuple(dict.fromkeys(u for _, group in matched for u in group))
    return Reservation(
        text=cut(text.strip(), 200),
        people=tuple(person for person, _ in matched),
        users=users,
        unmatched=tuple(unmatched),
    )


def _name_in(part: str, people: People) -> str | None:
    """The name a part of a cell starts with: a [people] name of several words if it starts
    with one ("Hyun-Chul Kim until May"), else its first word if that is a name."""
    words = part.split()
    if not words:
        return None
    for n in range(min(len(words), 4), 1, -1):
        candidate = " ".join(words[:n])
        if _fold(candidate) in people.by_name:
            return candidate
    first = _NAME.match(words[0])
    if first is None or first.group(0).casefold() in NOBODY:
        return None
    return first.group(0).rstrip(".'-")[:MAX_NAME_CHARS] or None


def read_reservations(
    grid: Grid,
    layout: Layout,
    config_people: Mapping[str, Sequence[str]],
    known_users: Iterable[str] = (),
) -> dict[tuple[str, int], Reservation]:
    """Every GPU row's reservation, keyed by (``server_key(server)``, GPU index).

    A server-wide reservation is under each GPU row of its block; ``server_reservation`` finds
    it for a GPU the sheet has no row for. Without a Usage column: none.
    """
    col = layout.columns.get("usage")
    if col is None:
        return {}
    people = People.of(config_people, known_users)
    out: dict[tuple[str, int], Reservation] = {}
    for block in layout.blocks:
        if not block.managed:
            continue
        wide = _server_wide(grid, block, col, people)
        key = server_key(block.server)
        for index, row in block.gpu_rows.items():
            if wide is not None:
                out[(key, index)] = wide
                continue
            found = parse_usage(_cell(grid, row, col), people)
            if found is not None:
                out[(key, index)] = _at(found, grid, row, col, server_wide=False)
        if wide is not None and not block.gpu_rows:
            out[(key, PLAIN_ROW)] = wide
    return out


class ReservationIndex:
    """Looks reservations up by server and GPU, the server-wide ones included, in O(1)."""

    def __init__(self, reservations: Mapping[tuple[str, int], Reservation]) -> None:
        self.reservations = reservations
        self.wide: dict[str, Reservation] = {}
        for (server, _), reservation in reservations.items():
            if reservation.server_wide:
                self.wide.setdefault(server, reservation)

    def get(self, server: str, gpu: int) -> Reservation | None:
        """The reservation on GPU ``gpu`` of ``server``: its row's, else the server-wide one
        (which also covers a GPU the sheet has no row for)."""
        key = server_key(server)
        found = self.reservations.get((key, gpu))
        return found if found is not None else self.wide.get(key)


def server_reservation(
    reservations: Mapping[tuple[str, int], Reservation], server: str
) -> Reservation | None:
    """The server-wide reservation of ``server``, if its block has one."""
    return ReservationIndex(reservations).wide.get(server_key(server))


def reservation_for(
    reservations: Mapping[tuple[str, int], Reservation], server: str, gpu: int
) -> Reservation | None:
    """The reservation on GPU ``gpu`` of ``server`` (one look-up; for many, ReservationIndex)."""
    return ReservationIndex(reservations).get(server, gpu)


def _server_wide(grid: Grid, block: Block, col: int, people: People) -> Reservation | None:
    top = block.name_row
    found = parse_usage(_cell(grid, top, col), people)
    if found is None:
        return None
    rows = block.rows()
    merge = grid.merge_at(top, col)
    merged = merge is not None and merge.start_row == top and merge.end_row >= block.end
    alone = len(rows) > 1 and not any(_cell(grid, r, col).strip() for r in rows if r != top)
    plain = not block.gpu_rows or (block.plain_row and len(rows) == 1)
    if merged or alone or plain:
        return _at(found, grid, top, col, server_wide=True)
    return None


def _cell(grid: Grid, row: int, col: int) -> str:
    merge = grid.merge_at(row, col)
    if merge is not None and merge.start_row < row:
        return ""  # the rest of a merge: its value is the top-left cell's
    return grid.cell(row, col)


def _at(found: Reservation, grid: Grid, row: int, col: int, *, server_wide: bool) -> Reservation:
    return replace(found, server_wide=server_wide, cell=a1(row, col))
