"""What the State column costs a push: reading the reservations and judging every GPU
(``gpumon.fleet.judge_gpus``), beside the plan of the cells without it, in the same run.

A sheet in the lab's layout with N servers of 8 GPU rows each, Usage filled as people fill it
(a name per row, server-wide names, several names, notes, blanks), poll results with processes
of several users, claims and free GPUs built in-process — only the central CPU is measured.
Target: judging adds at most the plan's own time (ratio <= 1.0) at 512 servers.

    .venv/bin/python bench/state_judge.py [--sizes 15 512] [--runs 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "sheet"))

from sheetkit import gpu, on, process  # noqa: E402

from gpumon.config import Config  # noqa: E402
from gpumon.fleet import judge_gpus  # noqa: E402
from gpumon.sheet.grid import Grid  # noqa: E402
from gpumon.sheet.layout import read_layout  # noqa: E402
from gpumon.sheet.plan import plan  # noqa: E402
from gpumon_agent.report import ClaimInfo  # noqa: E402

GPUS = 8
USAGE = ["Niv", "lww (exp 4)", "", "Niv, lww", "jmy until 3/20", "", "khc", ""]
HEADER = ["Server", "GPU", "Usage", "Note", "Owner", "IP", "ON/OFF", "Time", "GPU util",
          "GPU memory", "Running", "Job", "Health", "State"]  # fmt: skip


def fleet(servers: int) -> tuple[Grid, list]:
    rows = [["Server and GPU usage"], [], [], [], [], [], HEADER]
    results = []
    for s in range(servers):
        name = f"gpu{s:03d}"
        wide = s % 5 == 0  # every fifth server reserved as a whole
        for g in range(GPUS):
            usage = ("Niv" if g == 0 else "") if wide else USAGE[(s + g) % len(USAGE)]
            rows.append([name if g == 0 else "", str(g), usage])
        gpus = []
        for g in range(GPUS):
            kind = (s + 3 * g) % 4
            if kind == 0:
                gpus.append(gpu(g, util=80, used_gib=6, processes=[process("lww", "python3 a.py")]))
            elif kind == 1:
                claim = ClaimInfo("kws", "niv", 1, "2019-03-14T01:00:00Z")
                gpus.append(gpu(g, claims=[claim], claimed_idle=True))
            else:
                gpus.append(gpu(g))
        results.append(on(name, gpus, polled_at="2019-03-14T07:00:00Z"))
    return Grid("Sheet1", "Asia/Seoul", rows), results


def timed(fn, runs: int) -> float:
    samples = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[15, 512])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    config = Config(path="bench.toml", people={"Niv": ["niv", "nkim"], "lww": ["lww"]})
    now = time.time()
    for servers in args.sizes:
        measure(config, servers, args.runs, now)


def measure(config: Config, servers: int, runs: int, now: float) -> None:
    grid, results = fleet(servers)
    layout = read_layout(grid)
    baseline = timed(lambda: plan(grid, layout, results, time_zone="Asia/Seoul"), runs)
    judged = judge_gpus(config, grid, layout, results, {}, now)
    judge = timed(lambda: judge_gpus(config, grid, layout, results, {}, now), runs)
    with_states = timed(
        lambda: plan(grid, layout, results, time_zone="Asia/Seoul", states=judged.cells), runs
    )
    kinds: dict[str, int] = {}
    for state in judged.states:
        kinds[state.kind] = kinds.get(state.kind, 0) + 1
    print(
        f"{servers} servers x {GPUS} GPUs: judge {judge * 1000:.1f} ms "
        f"({len(judged.reservations)} reservations, {len(judged.states)} states), plan with "
        f"states {with_states * 1000:.1f} ms; baseline plan without {baseline * 1000:.1f} ms; "
        f"judge/plan = {judge / baseline:.2f}x (target <= 1.0)"
    )
    print("  kinds:", ", ".join(f"{k} {n}" for k, n in sorted(kinds.items())))


if __name__ == "__main__":
    main()
