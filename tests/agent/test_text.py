"""gpumon_agent.text: the one way text is cut to a length, the cut shown by "…"."""

from __future__ import annotations

import pytest

from gpumon_agent.text import ELLIPSIS, cut, cut_start


@pytest.mark.parametrize(
    ("text", "chars", "expected"),
    [
        ("abc", 3, "abc"),  # fits: untouched
        ("abcd", 3, "ab…"),
        ("abcd", 1, "…"),
        ("", 0, ""),
        ("한국어 텍스트", 4, "한국어…"),  # characters, not bytes
    ],
)
def test_cut_keeps_the_start_within_the_length(text, chars, expected):
    assert cut(text, chars) == expected
    assert len(cut(text, chars)) <= max(chars, 1)


@pytest.mark.parametrize(
    ("text", "chars", "expected"),
    [("error: disk full", 16, "error: disk full"), ("line 1 | error: disk full", 10, "…disk full")],
)
def test_cut_start_keeps_the_end_where_errors_are(text, chars, expected):
    assert cut_start(text, chars) == expected


def test_a_cut_is_always_marked():
    assert cut("x" * 10_000, 200).endswith(ELLIPSIS) and cut_start("x" * 300, 200)[0] == ELLIPSIS
