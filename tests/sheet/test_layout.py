"""Reading the lab's sheet: header, blocks of rows per server, GPU rows, ambiguities."""

from __future__ import annotations

import pytest
from sheetkit import SEED_SERVERS

from gpumon.sheet.grid import Grid, Merge, a1, column_letter
from gpumon.sheet.layout import LayoutError, check_anchors, read_layout, row_anchor


def test_a1_notation_counts_columns_past_z():
    assert [column_letter(c) for c in (0, 25, 26, 27, 51, 52, 701, 702)] == [
        "A", "Z", "AA", "AB", "AZ", "BA", "ZZ", "AAA",
    ]  # fmt: skip
    assert a1(6, 0) == "A7"


def test_seed_header_is_row_7_with_the_lab_columns(seed):
    layout = read_layout(seed)
    assert layout.header_row == 6
    assert layout.columns == {"server": 0, "gpu": 1, "usage": 2, "ip": 5, "status": 6, "time": 7}
    assert layout.warnings == []


def test_seed_has_every_server_in_order(seed):
    assert read_layout(seed).servers() == SEED_SERVERS


def test_seed_blocks_map_each_gpu_to_its_row(seed):
    layout = read_layout(seed)
    assert layout.block("hcpbsp").gpu_rows == {0: 7}
    drlbsp = layout.block("drlbsp")  # rows 15-16: a blank name cell continues the block
    assert (drlbsp.name_row, drlbsp.end, drlbsp.gpu_rows) == (14, 16, {0: 14, 1: 15})
    assert layout.block("sigbsp").gpu_rows == {0: 22, 1: 23, 2: 24, 3: 25}
    grubsp = layout.block("grubsp")  # A27:A30 is one merged name cell
    assert (grubsp.name_row, grubsp.end, grubsp.gpu_rows) == (26, 30, {0: 26, 1: 27, 2: 28, 3: 29})
    assert layout.table_end == 30


def test_server_names_match_case_insensitively(seed):
    assert read_layout(seed).block("SigBSP").server == "sigbsp"


def test_header_names_are_case_and_space_insensitive():
    grid = Grid("S", "UTC", [["  server ", "gpu", "on / off", "LAST SEEN"], ["a1", "0"]])
    layout = read_layout(grid)
    assert layout.columns == {"server": 0, "gpu": 1, "status": 2, "time": 3}


def test_header_uses_configured_aliases():
    grid = Grid("S", "UTC", [["Machine", "Card", "Alive"], ["box1", "0", "ON"]])
    columns = {"server": ["Machine"], "gpu": ["Card"], "status": ["Alive"]}
    layout = read_layout(grid, columns)
    assert layout.columns == {"server": 0, "gpu": 1, "status": 2}
    assert layout.servers() == ["box1"]


def test_missing_server_column_is_a_layout_error_that_says_what_to_do():
    grid = Grid("Sheet1", "UTC", [["Name", "GPU", "IP"], ["box1", "0", "192.0.2.1"]])
    with pytest.raises(LayoutError, match=r"Sheet1.*no header row.*'Server'.*\[sheet.columns\]"):
        read_layout(grid)


def test_title_rows_mentioning_server_are_not_the_header(seed):
    # Row 1 says "Server and GPU usage": not a header cell, since names must match whole.
    assert read_layout(seed).header_row == 6


def test_server_listed_twice_is_left_alone_with_both_cells_named(seed):
    seed.values[22][0] = "mlbsp"  # A23 repeats A17
    layout = read_layout(seed)
    assert "A23: server 'mlbsp' appears twice (also A17)" in layout.warnings[0]
    assert layout.block("mlbsp") is None
    assert "mlbsp" not in layout.servers()
    assert layout.listed("mlbsp")
    assert all(not anchor.startswith("mlbsp|") for anchor in layout.anchors().values())


def test_gpu_index_repeated_in_a_block_leaves_both_rows_alone(seed):
    seed.values[24][1] = "1"  # B25 repeats B24 within sigbsp
    layout = read_layout(seed)
    assert layout.warnings == [
        "B25: GPU 1 of 'sigbsp' appears twice (also B24); no GPU values written in either row"
    ]
    assert layout.block("sigbsp").gpu_rows == {0: 22, 3: 25}


def test_rows_that_cannot_be_placed_are_named():
    grid = Grid(
        "S",
        "UTC",
        [
            ["Server", "GPU", "Usage"],
            ["", "0", "orphan"],  # A2: no server above
            ["box1", "0", "x"],
            ["", "gpu?", "y"],  # B4: not an index
            ["", "", "z"],  # B5: continuation without a GPU index
            [],
            ["Total: 2 servers"],  # A7: not a server name
        ],
    )
    layout = read_layout(grid)
    assert layout.warnings == [
        "A2: no server name here or above it; row left alone",
        "B4: GPU 'gpu?' of 'box1' is not a GPU index (0, 1, ...); no GPU values written in "
        "this row",
        "B5: no GPU index in this row of 'box1'; row left alone",
        "A7: 'Total: 2 servers' is not a server name (letters, digits, '.', '-', '_'); row left "
        "alone",
    ]
    assert layout.block("box1").gpu_rows == {0: 2}
    assert layout.table_end == 5


def test_blank_row_ends_a_block():
    grid = Grid("S", "UTC", [["Server", "GPU"], ["box1", "0"], [], ["", "1"]])
    layout = read_layout(grid)
    assert layout.block("box1").gpu_rows == {0: 1}
    assert layout.warnings == ["A4: no server name here or above it; row left alone"]


def test_gpu_less_server_has_one_plain_row():
    grid = Grid("S", "UTC", [["Server", "GPU", "IP"], ["cpubox", "", "192.0.2.5"]])
    block = read_layout(grid).block("cpubox")
    assert block.plain_row and block.gpu_rows == {}
    assert read_layout(grid).anchors() == {1: "cpubox|"}


def test_second_header_row_stops_the_table():
    grid = Grid("S", "UTC", [["Server", "GPU"], ["a", "0"], ["Server", "GPU"], ["b", "0"]])
    layout = read_layout(grid)
    assert layout.servers() == ["a"]
    assert layout.warnings[0].startswith("A3: a second header row")


def test_second_column_with_the_same_name_is_ignored_with_a_warning():
    grid = Grid("S", "UTC", [["Server", "GPU", "Time", "Note", "Time"], ["a", "0"]])
    layout = read_layout(grid)
    assert layout.columns["time"] == 2
    assert layout.warnings == ["E1: a second 'Time' column (also C1); gpumon uses only the first"]


def test_missing_gpu_column_is_warned_and_rows_have_no_gpu():
    grid = Grid("S", "UTC", [["Server", "IP"], ["a", ""], ["", ""], ["b"]])
    layout = read_layout(grid)
    assert layout.block("a").gpu_rows == {} and layout.block("a").end == 2
    assert "no GPU column" in layout.warnings[0]


def test_merged_name_cell_continues_its_block_even_with_a_blank_gpu_row_inside():
    grid = Grid(
        "S",
        "UTC",
        [["Server", "GPU"], ["a", "0"], ["", "1"], ["b", "0"]],
        merges=[Merge(1, 3, 0, 1)],
    )
    layout = read_layout(grid)
    assert layout.block("a").gpu_rows == {0: 1, 1: 2}
    assert layout.block("b").gpu_rows == {0: 3}


def test_anchors_name_each_managed_row(seed):
    anchors = read_layout(seed).anchors()
    assert anchors[7] == "hcpbsp|0"
    assert anchors[23] == "sigbsp|1"
    assert anchors[29] == "grubsp|3"
    assert row_anchor("SigBSP", None) == "sigbsp|"


def test_anchor_check_writes_only_rows_whose_anchor_matches(seed):
    layout = read_layout(seed)
    expected = layout.anchors()
    seed.anchored = True
    seed.row_anchors = dict(expected)
    # Row 24 (sigbsp GPU 1) now carries GPU 2's anchor: a person moved rows around.
    seed.row_anchors[23] = "sigbsp|2"
    del seed.row_anchors[8]  # ganbsp's row was inserted by a person: no anchor yet
    check = check_anchors(seed, layout)
    assert 23 not in check.writable and 24 not in check.writable
    assert 8 not in check.writable
    assert 7 in check.writable and 25 in check.writable
    assert check.to_attach == {8: "ganbsp|0", 23: "sigbsp|1", 24: "sigbsp|2"}
    assert check.stale == ["sigbsp|2"]
    assert "row 24: its anchor says 'sigbsp|2' but the row says 'sigbsp|1'" in check.mismatched[0]
