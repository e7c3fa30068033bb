"""One push into the .xlsx sheet (read, plan, write) on the lab's sheet, beside its I/O floor.

- Steady-state push of the lab's 12 servers (only the Time cells change) vs the baseline of
  openpyxl loading and saving the same workbook once — what any .xlsx writer must pay. The
  ratio is gpumon's overhead (layout, plan, atomic save, change detection) on top of it.
- Cells written per steady push vs rewriting every status cell of every managed row (what a
  writer without a plan would send): the plan's saving.
- Layout + plan alone on a 200-server x 8-GPU sheet vs the lab's sheet: how the pure part scales.

Poll results are built in-process (no SSH), so only the sheet side is measured.

    .venv/bin/python bench/push_xlsx.py [--runs 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests" / "sheet"))

import openpyxl  # noqa: E402
from sheetkit import gpu, on, seed_workbook  # noqa: E402

from gpumon.config import Config, PollConfig, SheetConfig  # noqa: E402
from gpumon.fleet import push_once  # noqa: E402
from gpumon.sheet.grid import Grid  # noqa: E402
from gpumon.sheet.layout import GPU_COLUMNS, SERVER_COLUMNS, read_layout  # noqa: E402
from gpumon.sheet.plan import plan  # noqa: E402
from gpumon.sheet.xlsx import XlsxBackend  # noqa: E402

ROWS = {"drlbsp": 2, "mlbsp": 3, "annbsp": 3, "sigbsp": 4, "grubsp": 4}


class Scripted:
    def __init__(self, stamp: int) -> None:
        self.stamp = stamp

    def sweep(self, names: list[str]):
        when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(1552548405 + self.stamp))
        return [on(n, [gpu(i, util=10.0 * i) for i in range(ROWS.get(n, 1))], polled_at=when)
                for n in names]  # fmt: skip


def median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def bench_push(runs: int, folder: Path) -> None:
    path = seed_workbook(folder / "sheet.xlsx")
    config = Config(
        path=str(folder / "gpumon.toml"),
        state_dir=str(folder / "state"),
        poll=PollConfig(),
        sheet=SheetConfig(path=str(path), time_zone="Asia/Seoul"),
    )
    backend = XlsxBackend(path, time_zone="Asia/Seoul")
    started = time.perf_counter()
    push_once(config, backend, Scripted(0))  # adoption: adds the five columns
    adoption = time.perf_counter() - started

    pushes, cells = [], []
    for i in range(1, runs + 1):
        started = time.perf_counter()
        outcome = push_once(config, backend, Scripted(i))
        pushes.append(time.perf_counter() - started)
        cells.append(outcome.stats.cells)

    floor = []
    for _ in range(runs):
        started = time.perf_counter()
        openpyxl.load_workbook(path, rich_text=True).save(folder / "copy.xlsx")
        floor.append(time.perf_counter() - started)

    layout = read_layout(backend.read())
    rows = sum(len(b.gpu_rows) for b in layout.blocks if b.managed)
    naive = len(layout.blocks) * len(SERVER_COLUMNS) + rows * len(GPU_COLUMNS)
    push_ms, floor_ms = median_ms(pushes), median_ms(floor)
    print(f"lab sheet, 12 servers / {rows} GPU rows, {runs} steady pushes:")
    print(f"  first push (adds 5 columns)     {adoption * 1000:8.1f} ms")
    print(f"  steady push, median             {push_ms:8.1f} ms")
    print(f"  baseline: openpyxl load + save  {floor_ms:8.1f} ms   ratio {push_ms / floor_ms:.2f}"
          "  (the backend keeps the workbook loaded while the file is unchanged)")  # fmt: skip
    print(f"  cells written per push          {statistics.median(cells):8.0f}")
    print(f"  baseline: every status cell     {naive:8d}      ratio "
          f"{statistics.median(cells) / naive:.3f}")  # fmt: skip


def big_grid(servers: int, gpus: int) -> Grid:
    header = ["Server", "GPU", "Usage", "Note", "Owner", "IP", "ON/OFF", "Time",
              "GPU util", "GPU memory", "Running", "Job", "Health"]  # fmt: skip
    values = [["Server and GPU usage"], [], header]
    for s in range(servers):
        for g in range(gpus):
            values.append([f"srv{s:03d}" if g == 0 else "", str(g), "someone"])
    return Grid("Sheet1", "UTC", values)


def bench_plan(runs: int) -> None:
    def timed(grid: Grid, results) -> float:
        samples = []
        for _ in range(runs):
            started = time.perf_counter()
            plan(grid, read_layout(grid), results)
            samples.append(time.perf_counter() - started)
        return median_ms(samples)

    small = big_grid(12, 4)
    small_results = [on(f"srv{s:03d}", [gpu(g) for g in range(4)]) for s in range(12)]
    big = big_grid(200, 8)
    big_results = [on(f"srv{s:03d}", [gpu(g) for g in range(8)]) for s in range(200)]
    small_ms, big_ms = timed(small, small_results), timed(big, big_results)
    print("layout + plan (pure, in memory):")
    print(f"  12 servers x 4 GPUs (baseline)  {small_ms:8.2f} ms")
    print(f"  200 servers x 8 GPUs            {big_ms:8.2f} ms   ratio {big_ms / small_ms:.1f} "
          f"for {200 * 8 / 48:.0f}x the rows")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        bench_push(args.runs, Path(folder))
    bench_plan(args.runs)


if __name__ == "__main__":
    main()
