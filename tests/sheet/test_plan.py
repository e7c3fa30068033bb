"""Planning the writes: only gpumon's cells, only changed ones, only where they belong."""

from __future__ import annotations

import copy

from sheetkit import SEED_SERVERS, apply, gpu, off, on, process, with_status_columns

from gpumon.config import OWNED_COLUMNS
from gpumon.sheet.grid import Grid, Merge
from gpumon.sheet.layout import read_layout
from gpumon.sheet.plan import plan

SEED_GPUS = {
    "hcpbsp": 1, "ganbsp": 1, "trlbsp": 1, "glpbsp": 1, "ecbsp": 1, "lstmbbsp": 1, "relbsp": 1,
    "drlbsp": 2, "mlbsp": 3, "annbsp": 3, "sigbsp": 4, "grubsp": 4,
}  # fmt: skip


def fleet_on(polled_at: str = "2019-03-14T07:00:00Z"):
    return [
        on(name, [gpu(i, util=10.0 * i) for i in range(SEED_GPUS[name])], ip=f"192.0.2.{n}",
           polled_at=polled_at)
        for n, name in enumerate(SEED_SERVERS, 10)
    ]  # fmt: skip


def plan_for(grid: Grid, results, **kwargs):
    return plan(grid, read_layout(grid), results, **kwargs)


def cells(p) -> dict[str, str]:
    return {c.cell: c.new for c in p.changes}


def test_first_push_adds_missing_status_headers_right_of_the_used_range(seed):
    p = plan_for(seed, fleet_on())
    assert p.setup is not None
    assert p.setup.new_headers == {
        8: "GPU util", 9: "GPU memory", 10: "Running", 11: "Job", 12: "Health", 13: "State",
    }  # fmt: skip
    assert p.setup.header_row == 6
    assert p.columns["health"] == 12 and p.setup.columns["server"] == 0
    assert p.describe_setup()[0] == "I7: add header 'GPU util'"


def test_writes_only_gpumons_columns_and_only_block_rows(seed):
    p = plan_for(seed, fleet_on())
    owned = {p.columns[key] for key in OWNED_COLUMNS}
    rows = {r for b in read_layout(seed).blocks for r in b.rows()}
    assert p.writes
    for write in p.writes:
        assert write.col in owned and write.row in rows
        assert write.row > 6


def test_server_values_go_to_the_top_left_of_the_blocks_merged_cells(seed):
    results = fleet_on()
    results[7] = off("drlbsp", last_seen_on="2019-03-14T06:59:00Z")
    got = cells(plan_for(seed, results))
    # drlbsp: rows 15-16, E15:E16..H15:H16 merged; written once, at the top-left cells.
    assert (got["G15"], got["H15"]) == ("OFF", "2019-03-14 15:59:00")
    assert "G16" not in got and "H16" not in got
    # grubsp: A27:A30 merged name, F27:F30 and H27:H30 merged IP and time.
    assert (got["F27"], got["H27"]) == ("192.0.2.21", "2019-03-14 16:00:00")
    assert "F28" not in got and "H28" not in got
    # health goes to the block's first row; per-GPU cells to every GPU row.
    assert got["M27"] == "OK" and "M28" not in got
    assert [got[f"I{r}"] for r in (27, 28, 29, 30)] == ["0%", "10%", "20%", "30%"]
    assert got["J28"] == "0/11 GiB"


def test_only_changed_cells_are_written(seed):
    results = fleet_on()
    first = plan_for(seed, results)
    grid = apply(with_status_columns(seed), first.writes)
    again = plan_for(grid, results)
    assert again.writes == [] and again.setup is None
    results[3] = off("glpbsp", "timed out at connect (3 s)", "2019-03-14T07:00:00Z")
    third = plan_for(grid, results)
    assert cells(third) == {"G11": "OFF", "M11": "timed out at connect (3 s)", "I11": "",
                            "J11": ""}  # fmt: skip


def test_unchanged_seed_status_cells_are_not_rewritten(seed):
    # hcpbsp already says ON with this IP and time: only the new columns get values.
    result = on("hcpbsp", [gpu(0)], ip="192.0.2.178", polled_at="2019-03-14T06:26:45Z")
    got = cells(plan_for(seed, [result]))
    assert set(got) == {"I8", "J8", "M8"}


def test_off_keeps_the_last_seen_time_and_the_ip(seed):
    got = cells(plan_for(with_status_columns(seed), [off("mlbsp")]))
    assert got["G17"] == "OFF"
    assert "H17" not in got and "F17" not in got  # never seen: the time there stays
    got = cells(plan_for(seed, [off("mlbsp", last_seen_on="2019-03-14T06:30:00Z")]))
    assert got["H17"] == "2019-03-14 15:30:00"


def test_gpus_without_rows_are_named_in_health_and_added_only_with_add_rows(seed):
    result = on("drlbsp", [gpu(i) for i in range(4)])
    p = plan_for(with_status_columns(seed), [result])
    assert cells(p)["M15"] == "GPUs 2, 3 not in the sheet"
    assert p.setup is None
    p = plan_for(with_status_columns(seed), [result, on("sigbsp", [gpu(i) for i in range(5)])],
                 add_rows=True)  # fmt: skip
    new = p.setup.new_rows
    assert [(n.before_row, n.server, n.gpus, n.name_first) for n in new] == [
        (26, "sigbsp", [4], False),  # bottom-up: sigbsp's block ends above row 27
        (16, "drlbsp", [2, 3], False),
    ]
    assert new[1].anchors == ["drlbsp|2", "drlbsp|3"]


def test_server_missing_from_the_sheet_is_warned_or_gets_a_new_block(seed):
    p = plan_for(with_status_columns(seed), [on("newbox", [gpu(0), gpu(1)])])
    assert p.unplaced == ["newbox"]
    assert "server 'newbox' has no rows in the sheet" in p.warnings[0]
    p = plan_for(with_status_columns(seed), [on("newbox", [gpu(0), gpu(1)]), on("cpubox")],
                 add_rows=True)  # fmt: skip
    assert [(n.before_row, n.server, n.gpus, n.name_first) for n in p.setup.new_rows] == [
        (30, "cpubox", [None], True),  # same place: inserted last-first, so newbox ends on top
        (30, "newbox", [0, 1], True),
    ]


def test_unknown_servers_in_the_sheet_are_left_alone(seed):
    p = plan_for(with_status_columns(seed), [on("hcpbsp", [gpu(0)])])
    assert {c.server for c in p.changes} == {"hcpbsp"}


def test_ambiguous_server_gets_no_writes(seed):
    seed.values[22][0] = "mlbsp"
    p = plan_for(with_status_columns(seed), [on("mlbsp", [gpu(0)])])
    assert p.writes == [] and p.unplaced == ["mlbsp"]
    assert "appears twice" in p.warnings[0]


def test_merge_reaching_into_a_people_column_is_not_written():
    grid = Grid(
        "S", "UTC",
        [["Server", "GPU", "Owner", "IP", "ON/OFF", "Time", "GPU util", "GPU memory", "Running",
          "Job", "Health", "State"], ["a", "0", "x", "", "", "keep"]],
        merges=[Merge(1, 2, 2, 4)],  # C2:D2: Owner merged with IP
    )  # fmt: skip
    p = plan_for(grid, [on("a", [gpu(0)])])
    assert "D2" not in cells(p)
    assert p.warnings == ["C2:D2: merged cell starts at another row or column; not written"]


def test_per_gpu_column_merged_across_rows_is_not_written(seed):
    with_status_columns(seed)
    seed.merges.append(Merge(22, 26, 8, 9))  # I23:I26 merged over sigbsp's GPU rows
    p = plan_for(seed, [on("sigbsp", [gpu(i) for i in range(4)])])
    assert not any(c.cell.startswith("I2") and c.server == "sigbsp" for c in p.changes)
    assert "I23:I26: merged across rows, but 'util' is per GPU; not written (unmerge it)" in (
        p.warnings
    )


def test_untrusted_text_is_planned_raw(seed):
    evil = '=IMPORTXML("http://192.0.2.1/","//a")'
    result = on("hcpbsp", [gpu(0, processes=[process(evil, "x")])])
    p = plan_for(with_status_columns(seed), [result])
    assert cells(p)["K8"] == f"{evil}: x"


def test_anchored_grid_writes_only_anchored_rows_and_sets_up_the_rest(seed):
    with_status_columns(seed)
    seed.anchored = True
    p = plan_for(seed, fleet_on())
    assert p.writes == []
    assert len(p.setup.anchors) == 23  # every managed row
    seed.row_anchors = dict(p.setup.anchors)
    p = plan_for(seed, fleet_on())
    assert p.setup is None and p.writes
    assert all(w.anchor == seed.row_anchors[w.row] for w in p.writes)


def test_every_write_carries_its_row_anchor_even_unanchored(seed):
    p = plan_for(seed, fleet_on())
    write = next(w for w in p.writes if w.row == 23)
    assert write.anchor == "sigbsp|1"


def test_time_zone_override_and_unknown_zone(seed):
    result = on("hcpbsp", [gpu(0)], polled_at="2019-03-14T06:26:45Z")
    assert cells(plan_for(seed, [result], time_zone="UTC"))["H8"] == "2019-03-14 06:26:45"
    seed.time_zone = "Mars/Olympus"
    p = plan_for(seed, [result])
    assert cells(p)["H8"] == "2019-03-14 06:26:45"
    assert "time zone 'Mars/Olympus' is unknown here" in p.warnings[0]


def test_cpu_only_jobs_go_to_the_job_cell_of_the_servers_first_row_only(seed):
    from gpumon_agent.report import ClaimInfo

    result = on("sigbsp", [gpu(i) for i in range(4)])
    result.report.cpu_claims = [
        ClaimInfo(job="kws ch32", user="lww", pid=5, started_at="2019-03-14T06:00:00Z")
    ]
    first = plan_for(with_status_columns(seed), [result])
    got = cells(first)
    assert got["L23"] == "lww: kws ch32 (CPU)"  # sigbsp's name row (GPU 0)
    assert not any(cell in got for cell in ("L24", "L25", "L26"))  # blank as before
    apply(seed, first.writes)
    assert seed.values[22][11] == "lww: kws ch32 (CPU)"
    ended = plan_for(seed, [on("sigbsp", [gpu(i) for i in range(4)])])
    assert cells(ended)["L23"] == ""  # the job ended: the cell is cleared
    assert seed.values[22][11] == "lww: kws ch32 (CPU)" and apply(seed, ended.writes)
    assert seed.values[22][11] == ""


def test_a_server_polled_twice_is_planned_once(seed):
    p = plan_for(seed, [on("hcpbsp", [gpu(0)]), off("hcpbsp")])
    assert "OFF" not in cells(p).values()
    assert [c.cell for c in p.changes].count("M8") == 1


def test_gpu_listed_twice_is_neither_missing_nor_added(seed):
    seed.values[24][1] = "1"  # sigbsp: GPUs 0, 1, 1, 3 — GPU 1 twice, GPU 2 without a row
    grid = with_status_columns(seed)
    unchanged = copy.deepcopy(grid)
    p = plan_for(grid, [on("sigbsp", [gpu(i) for i in range(4)])], add_rows=True)
    assert [(n.server, n.gpus) for n in p.setup.new_rows] == [("sigbsp", [2])]
    # With add_rows the plan describes the sheet after its set-up (GPU 2 then has a row); as
    # the sheet is, GPU 2 is named in health.
    assert cells(p)["M23"] == "OK"
    as_is = plan_for(unchanged, [on("sigbsp", [gpu(i) for i in range(4)])])
    assert cells(as_is)["M23"] == "GPU 2 not in the sheet"
    assert not {"I24", "I25"} & set(cells(p))
