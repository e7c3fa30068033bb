"""Text cut to a length, the cut shown by "…": the project's one way to shorten text for a cell,
a table column, a message or a bounded Report field.

Must stay importable on Python 3.8, and cheap to import.
"""

from __future__ import annotations

ELLIPSIS = "…"


def cut(text: str, chars: int) -> str:
    """``text`` at most ``chars`` characters (at least 1), its end replaced by "…" if cut."""
    if len(text) <= chars:
        return text
    return text[: max(chars, 1) - 1] + ELLIPSIS


def cut_start(text: str, chars: int) -> str:
    """``text`` at most ``chars`` characters, its start replaced by "…" if cut (for output
    whose last lines say what went wrong)."""
    if len(text) <= chars:
        return text
    return ELLIPSIS + text[len(text) - max(chars, 1) + 1 :]
