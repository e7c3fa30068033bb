"""Reading reservations from the Usage column: what people type, blocks, [people], hostile
cells."""

from __future__ import annotations

import pytest
from sheetkit import seed_grid

from gpumon.sheet.grid import Grid, Merge
from gpumon.sheet.layout import PLAIN_ROW, read_layout
from gpumon.sheet.reservations import (
    MAX_NAMES,
    People,
    parse_usage,
    read_reservations,
    reservation_for,
    server_reservation,
)

PEOPLE = {"Niv": ["niv", "nkim"], "Hyun-Chul Kim": ["khc"]}
KNOWN = ["lww", "jmy", "niv"]


def parse(text: str, people=PEOPLE, known=KNOWN):
    return parse_usage(text, People.of(people, known))


@pytest.mark.parametrize(
    ("typed", "people", "users", "unmatched"),
    [
        ("Niv", ("Niv",), ("niv", "nkim"), ()),
        ("niv", ("Niv",), ("niv", "nkim"), ()),  # a [people] name without case
        ("nkim", ("Niv",), ("niv", "nkim"), ()),  # a user listed under [people]: that person
        ("Niv, lww", ("Niv", "lww"), ("niv", "nkim", "lww"), ()),
        ("Niv and LWW", ("Niv", "lww"), ("niv", "nkim", "lww"), ()),  # a known user, any case
        ("Niv / lww; jmy", ("Niv", "lww", "jmy"), ("niv", "nkim", "lww", "jmy"), ()),
        ("Niv\nlww", ("Niv", "lww"), ("niv", "nkim", "lww"), ()),
        ("Niv until 3/20", ("Niv",), ("niv", "nkim"), ()),
        ("lww (exp 4)", ("lww",), ("lww",), ()),
        ("Niv using CPU", ("Niv",), ("niv", "nkim"), ()),
        ("Hyun-Chul Kim until May", ("Hyun-Chul Kim",), ("khc",), ()),
        ("Changha", (), (), ("Changha",)),
        ("민수 (실험 3)", (), (), ("민수",)),
        ("Niv, Niv, niv", ("Niv",), ("niv", "nkim"), ()),
        ("bob, Bob", (), (), ("bob",)),
    ],
)
def test_what_people_type_in_usage_reads_as_names(typed, people, users, unmatched):
    found = parse(typed)
    assert found is not None
    assert (found.people, found.users, found.unmatched) == (people, users, unmatched)
    assert found.text == typed.strip()


@pytest.mark.parametrize("typed", ["", "   ", "-", "—", "free", "None", "n/a", "3/20", "(exp 4)"])
def test_a_blank_or_nobody_cell_is_no_reservation(typed):
    assert parse(typed) is None


def test_a_formula_looking_cell_is_text_not_a_name():
    assert parse('=IMPORTXML("http://x", "//a")') is None
    found = parse("lww =HYPERLINK(1)")
    assert found is not None and found.people == ("lww",)


def test_a_huge_cell_costs_a_few_names_and_a_cut_text():
    found = parse(", ".join(f"user{i}" for i in range(20000)))
    assert found is not None
    assert len(found.unmatched) == MAX_NAMES
    assert len(found.text) <= 200
    huge = parse("x" * 100_000)
    assert huge is not None and len(huge.unmatched[0]) <= 40


def test_a_name_matches_a_unix_user_only_case_insensitively_and_only_a_known_one():
    people = People.of({}, ["lww"])
    assert people.match("LWW") == ("lww", ("lww",))
    assert people.match("lw") is None
    assert people.resolve("bob") == ("bob", ("bob",))  # `free --for bob`: taken as a user


def test_the_lab_sheet_reads_one_reservation_per_gpu_row():
    grid = seed_grid()
    layout = read_layout(grid)
    found = read_reservations(grid, layout, PEOPLE, KNOWN)
    assert found[("mlbsp", 1)].people == ("Niv",)
    assert found[("mlbsp", 1)].cell == "C18"
    assert found[("hcpbsp", 0)].unmatched == ("Changha",)
    assert ("trlbsp", 0) not in found  # blank Usage; "Niv using CPU" is the Owner's cell
    assert ("ecbsp", 0) not in found
    assert not any(r.server_wide for r in found.values())  # every row filled in
    assert len(found) == 21


def _block_grid(usage: list[str], merges=()) -> Grid:
    values = [["Server", "GPU", "Usage", "IP"]]
    for i, text in enumerate(usage):
        values.append(["gpusrv" if i == 0 else "", str(i), text])
    values.append(["other", "0", "lww"])
    return Grid("S", "UTC", values, merges=list(merges))


def test_only_the_first_row_filled_reserves_the_whole_server():
    grid = _block_grid(["Niv until 3/20", "", "", ""])
    found = read_reservations(grid, read_layout(grid), PEOPLE, KNOWN)
    assert [found[("gpusrv", i)].server_wide for i in range(4)] == [True] * 4
    assert found[("gpusrv", 3)].text == "Niv until 3/20"
    assert not found[("other", 0)].server_wide
    # A GPU the server reports but the sheet has no row for is still under it.
    assert reservation_for(found, "GPUSRV", 7) is found[("gpusrv", 0)]
    assert reservation_for(found, "other", 7) is None


def test_a_usage_cell_merged_down_the_block_reserves_the_whole_server():
    grid = _block_grid(["lww", "", ""], merges=[Merge(1, 4, 2, 3)])
    found = read_reservations(grid, read_layout(grid), PEOPLE, KNOWN)
    assert server_reservation(found, "gpusrv") is not None
    assert all(found[("gpusrv", i)].people == ("lww",) for i in range(3))


def test_several_rows_filled_are_per_gpu_reservations():
    grid = _block_grid(["Niv", "", "lww", ""])
    found = read_reservations(grid, read_layout(grid), PEOPLE, KNOWN)
    assert found[("gpusrv", 0)].people == ("Niv",) and not found[("gpusrv", 0)].server_wide
    assert ("gpusrv", 1) not in found
    assert found[("gpusrv", 2)].people == ("lww",)
    assert server_reservation(found, "gpusrv") is None


def test_a_server_row_without_a_gpu_index_is_reserved_as_a_whole():
    grid = Grid("S", "UTC", [["Server", "GPU", "Usage"], ["cpubox", "", "Niv using CPU"]])
    found = read_reservations(grid, read_layout(grid), PEOPLE, KNOWN)
    assert found[("cpubox", PLAIN_ROW)].server_wide
    assert reservation_for(found, "cpubox", 0) is found[("cpubox", PLAIN_ROW)]


def test_no_usage_column_means_no_reservations():
    grid = Grid("S", "UTC", [["Server", "GPU"], ["a", "0"]])
    assert read_reservations(grid, read_layout(grid), PEOPLE, KNOWN) == {}


def test_a_renamed_usage_column_is_found_through_sheet_columns():
    grid = Grid("S", "UTC", [["Server", "GPU", "Who"], ["a", "0", "lww"]])
    columns = {"server": ["Server"], "gpu": ["GPU"], "usage": ["Who"]}
    layout = read_layout(grid, columns)
    assert read_reservations(grid, layout, {}, ["lww"])[("a", 0)].people == ("lww",)


def test_an_ambiguous_block_has_no_reservations():
    grid = Grid("S", "UTC", [["Server", "GPU", "Usage"], ["a", "0", "lww"], ["a", "0", "Niv"]])
    assert read_reservations(grid, read_layout(grid), PEOPLE, KNOWN) == {}
