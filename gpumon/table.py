"""Plain-text tables for the terminal: aligned columns, optional ANSI colour, widths capped."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import TextIO

from gpumon_agent.text import cut

RESET = "\033[0m"
STYLES = {"green": "\033[32m", "red": "\033[31m", "yellow": "\033[33m", "dim": "\033[2m"}


@dataclass
class Cell:
    text: str
    style: str | None = None  # a key of STYLES


def use_color(stream: TextIO) -> bool:
    """Colour only on a terminal, and never when NO_COLOR is set (https://no-color.org)."""
    return not os.environ.get("NO_COLOR") and is_terminal(stream)


def is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # closed, or not a real file
        return False


def format_table(
    headers: list[str],
    rows: list[list[Cell]],
    color: bool = False,
    max_widths: dict[int, int] | None = None,
) -> str:
    """Columns padded to their widest cell (capped per column by ``max_widths``; the text is
    cut with "…"); the last column is never padded. Colour wraps the padded text."""
    max_widths = max_widths or {}
    cut = [[_cut(cell.text, max_widths.get(i)) for i, cell in enumerate(row)] for row in rows]
    widths = [len(h) for h in headers]
    for texts in cut:
        for i, text in enumerate(texts):
            widths[i] = max(widths[i], len(text))
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()]
    for row, texts in zip(rows, cut):
        parts = []
        for i, (cell, text) in enumerate(zip(row, texts)):
            padded = text if i == len(row) - 1 else text.ljust(widths[i])
            if color and cell.style and text:
                padded = STYLES[cell.style] + text + RESET + padded[len(text) :]
            parts.append(padded)
        lines.append("  ".join(parts).rstrip())
    return "\n".join(lines)


# What a terminal would act on rather than show (ESC sequences, C1 controls such as CSI), and
# what a UTF-8 stdout cannot encode at all (lone surrogates: a 0xff byte in a command line).
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufffe\uffff]")


def printable(text: str) -> str:
    """Remote or people's text made safe to print: each unprintable character becomes U+FFFD."""
    return _UNPRINTABLE.sub("\ufffd", text)


def _cut(text: str, limit: int | None) -> str:
    text = printable(" ".join(text.split()))  # no newlines or tabs from remote text in a row
    return text if limit is None else cut(text, limit)
