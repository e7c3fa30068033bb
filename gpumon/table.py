"""Plain-text tables for the terminal: aligned columns, optional ANSI colour, widths capped.

Widths are display widths (wcwidth): a Korean or Chinese character takes two terminal columns,
a combining mark none, so columns stay aligned whatever the job names are written in. Given a
``width`` (the terminal's), the table is fitted into it: the widest columns give way first, and
text that does not fit is cut with "…".
"""

from __future__ import annotations

import os
import re
import unicodedata
from dataclasses import dataclass
from typing import TextIO

from wcwidth import wcswidth, wcwidth

RESET = "\033[0m"
STYLES = {
    "green": "\033[32m",
    "red": "\033[31m",
    "yellow": "\033[33m",
    "dim": "\033[2m",
    "bold": "\033[1m",
}
COLUMN_GAP = "  "
MIN_COLUMN = 5  # a column squeezed to fit the terminal keeps at least this many columns

_color_mode = "auto"  # --color: "auto" | "always" | "never"


@dataclass
class Cell:
    text: str
    style: str | None = None  # a key of STYLES


def set_color_mode(mode: str) -> None:
    """The command line's --color, for every table this process prints."""
    if mode not in ("auto", "always", "never"):
        raise ValueError(f"colour mode {mode!r}")
    global _color_mode
    _color_mode = mode


def use_color(stream: TextIO) -> bool:
    """--color=always/never as given; auto: a terminal, unless NO_COLOR is set
    (https://no-color.org)."""
    if _color_mode != "auto":
        return _color_mode == "always"
    return not os.environ.get("NO_COLOR") and is_terminal(stream)


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed, or not a real file
        return False


def terminal_width(stream: TextIO) -> int | None:
    """The terminal's width in columns, or None when ``stream`` is not a terminal (piped
    output is never cut: scripts and grep get every character)."""
    if not is_terminal(stream):
        return None
    try:
        columns = os.get_terminal_size(stream.fileno()).columns
    except (OSError, ValueError, AttributeError):
        return None
    return columns if columns > 0 else None


def format_table(
    headers: list[str],
    rows: list[list[Cell]],
    color: bool = False,
    max_widths: dict[int, int] | None = None,
    width: int | None = None,
    keep: tuple[int, ...] = (),
) -> str:
    """Columns padded to their widest cell (capped per column by ``max_widths``; the text is
    cut with "…"); the last column is never padded. Colour wraps the padded text.

    ``width``: no line is wider than this many terminal columns; columns not in ``keep`` are
    narrowed (widest first) to make room, and a line still too wide is cut at the edge."""
    max_widths = max_widths or {}
    cleaned = [[_clean(cell.text) for cell in row] for row in rows]
    widths = [display_width(h) for h in headers]
    for texts in cleaned:
        for i, text in enumerate(texts):
            widths[i] = max(widths[i], min(display_width(text), max_widths.get(i, 10**9)))
    if width is not None:
        widths = _fit(widths, headers, width, keep)
    lines = [_line([(h, None) for h in headers], widths, False, width)]
    for row, texts in zip(rows, cleaned):
        cells = [(text, cell.style) for cell, text in zip(row, texts)]
        lines.append(_line(cells, widths, color, width))
    return "\n".join(lines)


def _line(
    cells: list[tuple[str, str | None]], widths: list[int], color: bool, width: int | None
) -> str:
    limits = list(widths)
    if width is not None:  # each column gets what is left of the line, left to right
        used = 0
        for i in range(len(limits)):
            gap = len(COLUMN_GAP) if i else 0
            limits[i] = max(0, min(limits[i], width - used - gap))
            used += gap + limits[i]
    while True:
        plain, shown = _compose(cells, limits, color)
        excess = 0 if width is None else display_width(plain) - width
        if excess <= 0:
            return shown
        # Text whose width depends on its neighbours (a mark joining the gap before it):
        # measured in place, the line is still too wide; the rightmost column gives way.
        i = max(j for j, limit in enumerate(limits) if limit > 0 or j == 0)
        limits[i] = max(0, limits[i] - excess)
        if i == 0 and limits[0] == 0:
            return ""


def _compose(
    cells: list[tuple[str, str | None]], limits: list[int], color: bool
) -> tuple[str, str]:
    """The line without and with colour."""
    plain, coloured = [], []
    for i, (text, style) in enumerate(cells):
        if limits[i] <= 0 and i:
            break  # the edge of the terminal: the columns right of it are not shown
        last = i == len(cells) - 1
        shown = cut(text, limits[i])
        padding = "" if last else " " * max(0, limits[i] - display_width(shown))
        plain.append(shown + padding)
        if color and style and shown:
            coloured.append(STYLES[style] + shown + RESET + padding)
        else:
            coloured.append(shown + padding)
    return COLUMN_GAP.join(plain).rstrip(), COLUMN_GAP.join(coloured).rstrip()


def _fit(widths: list[int], headers: list[str], width: int, keep: tuple[int, ...]) -> list[int]:
    widths = list(widths)

    def total() -> int:
        return sum(widths) + len(COLUMN_GAP) * (len(widths) - 1)

    floor = [min(w, max(MIN_COLUMN, min(display_width(h), 8))) for w, h in zip(widths, headers)]
    while total() > width:
        shrinkable = [i for i in range(len(widths)) if i not in keep and widths[i] > floor[i]]
        if not shrinkable:
            break  # what is left is cut at the edge of the line (the last column first)
        widest = max(shrinkable, key=lambda i: (widths[i], i))
        widths[widest] -= 1
    return widths


def display_width(text: str) -> int:
    """Terminal columns ``text`` takes (wide East Asian characters count two, combining marks
    and joined emoji as the terminal shows them): wcwidth's measure of the whole string."""
    width = wcswidth(text)
    if width >= 0:
        return width
    # A control character (never after printable()): count the rest character by character.
    return sum(max(0, wcwidth(c)) for c in text)


def cut(text: str, limit: int) -> str:
    """``text`` in at most ``limit`` terminal columns, ending in "…" when cut."""
    if display_width(text) <= limit:
        return text
    if limit <= 0:
        return ""
    room = limit - 1  # for the "…"
    # The longest prefix that fits (a prefix never gets narrower as it grows).
    low, high = 0, len(text)
    while low < high:
        middle = (low + high + 1) // 2
        if display_width(text[:middle]) <= room:
            low = middle
        else:
            high = middle - 1
    return text[:low] + "…"


# What a terminal would act on rather than show (ESC sequences, C1 controls such as CSI), and
# what a UTF-8 stdout cannot encode at all (lone surrogates: a 0xff byte in a command line).
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")


def printable(text: str) -> str:
    """Remote or people's text made safe to print: each unprintable character becomes U+FFFD."""
    return _UNPRINTABLE.sub("\ufffd", text)


def _clean(text: str) -> str:
    text = printable(" ".join(text.split()))  # no newlines or tabs from remote text in a row
    # A mark with nothing before it to combine with would combine with the gap before the
    # cell, and measure differently there than alone: shown as what it is, unprintable.
    lead = 0
    while lead < len(text) and unicodedata.category(text[lead]) in ("Mn", "Mc", "Me"):
        lead += 1
    return "\ufffd" * lead + text[lead:] if lead else text
