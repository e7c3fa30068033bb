"""Google Sheets pushes: requests, cells and latency per push, beside a naive gspread loop.

For a fleet of 15 and of 500 servers (1-4 GPU rows each, in the lab's sheet layout) on the
local Sheets v4 server (tests/harness, discovery-checked, 127.0.0.1), driven by the real
gspread + google-auth:

- gpumon: the adopting push (read, set-up, read, write), then steady pushes where every
  server's time changes and a few servers go down or come back — requests, cells sent and
  end-to-end latency (``push_once``; poll results are built in-process, so only the sheet side
  is measured). Limit: 2 requests per steady push, whatever the fleet size.
- baseline: the same cell changes sent the way a plain gspread script does it —
  ``gc.open_by_key(key).worksheet(title)`` then ``worksheet.update_cell(row, col, value)`` per
  cell — on a second copy of the same sheet in the same server, in the same run.

At Google's quota of 60 write requests per minute per user, the baseline's request count also
says how long a push would take there (printed as "quota time").

    .venv/bin/python bench/sheet_push.py [--sizes 15 500] [--runs 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "sheet"))

import gspread  # noqa: E402
from sheetkit import gpu, off, on  # noqa: E402

from gpumon.config import Config, SheetConfig  # noqa: E402
from gpumon.fleet import push_once  # noqa: E402
from gpumon.sheet.google import open_backend  # noqa: E402
from harness.sheets_client import (  # noqa: E402
    ACCOUNT,
    authorized,
    google_session,
    write_service_account_key,
)
from harness.sheets_model import Spreadsheet  # noqa: E402
from harness.sheets_server import SheetsServer  # noqa: E402
from harness.sheets_values import user_entered_input  # noqa: E402

WRITE_QUOTA_PER_MIN = 60
HEADER = ["Server", "GPU", "Usage", "Note", "Owner", "IP", "ON/OFF", "Time"]


def gpus_of(i: int) -> int:
    return i % 4 + 1


def lab_sheet(key: str, servers: int) -> Spreadsheet:
    """The lab's layout: title rows, the header on row 7, a block of GPU rows per server."""
    rows = [["Server and GPU usage"], [], [], [], [], [], HEADER]
    for i in range(servers):
        for g in range(gpus_of(i)):
            name = f"gpu{i:03d}" if g == 0 else ""
            rows.append([name, str(g), "lww" if g % 2 else "", "", "", "", "", ""])
    book = Spreadsheet(key, "Server and GPU usage", "Asia/Seoul")
    sheet = book.add_sheet("Sheet1", rows=len(rows) + 50, cols=26)
    for r, line in enumerate(rows):
        for c, text in enumerate(line):
            book.set_user_value(sheet, r, c, *user_entered_input(text))
    return book


class Scripted:
    """Poll results for the generated fleet; ``minute`` moves the clock, some servers flip."""

    def __init__(self, servers: int, minute: int) -> None:
        self.servers, self.minute = servers, minute

    def sweep(self, names: list[str]):
        when = f"2019-03-14T07:{self.minute:02d}:00Z"
        out = []
        for n, name in enumerate(names):
            if (n + self.minute) % 7 == 0:
                out.append(off(name, "timed out at connect (3 s)", "2019-03-14T06:00:00Z", when))
            else:
                gpus = [gpu(g, util=(10.0 * g + n) % 100) for g in range(gpus_of(n))]
                out.append(on(name, gpus, ip=f"192.0.2.{n % 250 + 1}", polled_at=when))
        return out


def bench(servers: int, runs: int, folder: Path) -> dict[str, float]:
    server = SheetsServer().start()
    try:
        ours = server.add_spreadsheet(lab_sheet("1" + "a" * 43, servers), [ACCOUNT])
        theirs = server.add_spreadsheet(lab_sheet("1" + "b" * 43, servers), [ACCOUNT])
        key_file = write_service_account_key(server, folder / f"sa-{servers}.json")
        config = Config(
            path=str(folder / "gpumon.toml"),
            state_dir=str(folder / "state"),
            sheet=SheetConfig(
                backend="google",
                url=f"https://docs.google.com/spreadsheets/d/{ours.id}/edit#gid=0",
                credentials=str(key_file),
            ),
        )
        backend = open_backend(config, session=google_session(server))

        started = time.perf_counter()
        push_once(config, backend, Scripted(servers, 0))
        adopt_s = time.perf_counter() - started
        adopt_requests = len(server.requests())

        latencies, requests, cells, served = [], [], [], []
        changes = []
        for minute in range(1, runs + 1):
            server.clear_log()
            started = time.perf_counter()
            outcome = push_once(config, backend, Scripted(servers, minute))
            latencies.append(time.perf_counter() - started)
            requests.append(len(server.requests()))
            served.append(sum(r.seconds for r in server.requests()))
            cells.append(sum(r.cells for r in server.requests()))
            changes = outcome.changes

        # The baseline: the last steady push's changes, one update_cell each, on the copy.
        session = authorized(server, key_file)
        server.clear_log()
        started = time.perf_counter()
        worksheet = gspread.Client(auth=session.credentials, session=session).open_by_key(theirs.id)
        worksheet = worksheet.worksheet("Sheet1")
        for change in changes:
            cell = gspread.utils.a1_to_rowcol(change.cell)
            worksheet.update_cell(*cell, change.new)
        naive_s = time.perf_counter() - started
        naive_served = sum(r.seconds for r in server.requests())
        naive_requests = len(server.requests())
        naive_cells = sum(r.cells for r in server.requests())
        assert server.invalid == [], server.invalid
    finally:
        server.stop()
    return {
        "adopt_s": adopt_s,
        "adopt_requests": adopt_requests,
        "requests": max(requests),
        "cells": cells[-1],  # the push whose changes the baseline sends
        "latency_s": statistics.median(latencies),
        "served_s": statistics.median(served),
        "changes": len(changes),
        "naive_requests": naive_requests,
        "naive_cells": naive_cells,
        "naive_s": naive_s,
        "naive_served_s": naive_served,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[15, 500])
    parser.add_argument("--runs", type=int, default=3, help="steady pushes per size")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = {n: bench(n, args.runs, Path(tmp)) for n in args.sizes}
    print("steady push (every server's time changes, ~1/7 of servers flip ON/OFF):")
    print(
        f"{'servers':>7} | {'gpumon req':>10} {'cells':>6} {'latency':>9} | "
        f"{'naive req':>9} {'cells':>6} {'latency':>9} {'quota time':>10} | "
        f"{'req ratio':>9} {'latency ratio':>13}"
    )
    ok = True
    for n, r in results.items():
        ok = ok and r["requests"] <= 2
        print(
            f"{n:>7} | {r['requests']:>10} {r['cells']:>6} {r['latency_s'] * 1000:>7.0f}ms | "
            f"{r['naive_requests']:>9} {r['naive_cells']:>6} {r['naive_s'] * 1000:>7.0f}ms "
            f"{r['naive_requests'] / WRITE_QUOTA_PER_MIN:>8.1f}min | "
            f"{r['naive_requests'] / r['requests']:>8.0f}x {r['naive_s'] / r['latency_s']:>12.1f}x"
        )
    for n, r in results.items():
        print(
            f"{n} servers: the local server's own work was {r['served_s'] * 1000:.0f} ms of "
            f"gpumon's {r['latency_s'] * 1000:.0f} ms and {r['naive_served_s'] * 1000:.0f} ms of "
            f"the baseline's {r['naive_s'] * 1000:.0f} ms (Google's would differ; client-side: "
            f"gpumon {(r['latency_s'] - r['served_s']) * 1000:.0f} ms, baseline "
            f"{(r['naive_s'] - r['naive_served_s']) * 1000:.0f} ms)"
        )
    for n, r in results.items():
        print(
            f"adopting push, {n} servers: {r['adopt_requests']} requests "
            f"(read, set-up, read, write), {r['adopt_s'] * 1000:.0f} ms"
        )
    print(f"limit 2 requests per steady push: {'met' if ok else 'NOT MET'}")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
