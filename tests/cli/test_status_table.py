"""The terminal table: widths in terminal columns (wide Korean/Chinese characters two, combining
marks none), fitted into a given width by narrowing the widest columns and cutting with "…"."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from wcwidth import wcswidth

from gpumon.table import Cell, cut, format_table, set_color_mode, use_color


def test_cut_counts_terminal_columns():
    assert cut("음성인식", 5) == "음성…"  # 2 + 2 + 1
    assert wcswidth(cut("음성인식", 4)) <= 4
    assert cut("e\u0301cole", 5) == "e\u0301cole"  # é as e + combining accent: 5 columns
    assert cut("abc", 0) == ""


def test_columns_align_by_display_width():
    table = format_table(
        ["JOB", "HEALTH"], [[Cell("음성인식"), Cell("OK")], [Cell("kws"), Cell("OK")]]
    )
    header, first, second = table.splitlines()
    assert wcswidth(first[: first.index("OK")]) == header.index("HEALTH")
    assert wcswidth(second[: second.index("OK")]) == header.index("HEALTH")


def test_kept_columns_are_not_narrowed_and_the_rest_give_way():
    rows = [[Cell("x" * 40), Cell("95%"), Cell("y" * 40)]]
    table = format_table(["A", "UTIL", "B"], rows, width=40, keep=(1,))
    assert all(wcswidth(line) <= 40 for line in table.splitlines())
    assert "95%" in table and "…" in table


def test_colour_mode_flag_beats_no_color(monkeypatch):
    class Tty:
        def isatty(self):
            return True

    monkeypatch.setenv("NO_COLOR", "1")
    try:
        assert use_color(Tty()) is False
        set_color_mode("always")
        assert use_color(Tty()) is True
        set_color_mode("never")
        monkeypatch.delenv("NO_COLOR")
        assert use_color(Tty()) is False
    finally:
        set_color_mode("auto")


text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)


@settings(max_examples=200, deadline=None)
@given(
    rows=st.lists(st.lists(text, min_size=4, max_size=4), min_size=1, max_size=5),
    width=st.integers(min_value=10, max_value=160),
)
def test_no_line_is_ever_wider_than_the_terminal(rows, width):
    cells = [[Cell(t, "red") for t in row] for row in rows]
    table = format_table(["SERVER", "GPU", "JOB", "HEALTH"], cells, width=width, keep=(1,))
    for line in table.splitlines():
        assert wcswidth(line.replace("\033[31m", "").replace("\033[0m", "")) <= width


def test_a_spacing_mark_counts_as_the_terminal_shows_it():
    # U+1C24 (Lepcha, a spacing combining mark): the width is the whole string's, as wcwidth
    # measures it — found by the property test below.
    table = format_table(["SERVER", "GPU"], [[Cell(""), Cell("00\u1c24")]], width=10, keep=(1,))
    assert all(wcswidth(line) <= 10 for line in table.splitlines())


# Characters whose width depends on what surrounds them: combining and spacing marks, Hangul
# jamo and fillers, joiners, variation selectors, emoji and flags, wide CJK.
TRICKY = [
    *"a0 한글中文", "\u1160", "\u11a8", "\u1100", "\u200d", "\ufe0f", "\U0001f468",
    "\U0001f469", "\u0301", "\u1c24", "\u0e33", "\u0f71", "\u302a", "\U0001f1f0",
    "\U0001f1f7", "\u00ad",
]  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    rows=st.lists(
        st.lists(st.text(st.sampled_from(TRICKY), max_size=12), min_size=4, max_size=4),
        min_size=1,
        max_size=4,
    ),
    width=st.integers(min_value=10, max_value=60),
)
def test_text_measured_by_its_neighbours_never_widens_a_line_either(rows, width):
    cells = [[Cell(t) for t in row] for row in rows]
    table = format_table(["SERVER", "GPU", "JOB", "HEALTH"], cells, width=width, keep=(1,))
    assert all(wcswidth(line) <= width for line in table.splitlines())
