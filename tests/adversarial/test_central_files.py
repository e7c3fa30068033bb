"""Files the central box leaves behind or loses: the workbook's temporary files after `kill -9`
pushes (26 were left before), and last-seen times lost by concurrent merges. Issue 8, "Temp files
are left behind on failure"."""

from __future__ import annotations

import multiprocessing
import os
import signal
import subprocess
import time
from pathlib import Path

import openpyxl
import pytest
from central_kit import GPUMON, gpumon, no_traceback

from gpumon.poll.lastseen import LastSeen

TMP_MARK = ".gpumon-tmp-"


def temporaries(folder: Path, name: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(f".{name}{TMP_MARK}"))


def big_workbook(path: Path) -> None:
    """The lab's layout plus a large sheet of people's notes, so a save takes a while."""
    book = openpyxl.Workbook()
    sheet = book.active
    sheet.title = "Sheet1"
    for col, text in enumerate(["Server", "GPU", "Usage", "Note", "Owner", "IP"], 1):
        sheet.cell(7, col, text)
    notes = book.create_sheet("Notes")
    for row in range(1, 40_001):
        notes.cell(row, 1, f"note {row}")
        notes.cell(row, 2, row)
    book.save(path)


@pytest.mark.slow
def test_kill_9_during_pushes_leaves_at_most_one_temporary_file_and_none_after_the_next(
    tmp_path, no_nvml_env
):
    path = tmp_path / "sheet.xlsx"
    big_workbook(path)
    config = tmp_path / "gpumon.toml"
    config.write_text(
        f'state_dir = "{tmp_path / "state"}"\n[poll]\nservers_from_sheet = false\n'
        '[sheet]\npath = "sheet.xlsx"\nadd_rows = true\n[servers.box]\nlocal = true\n'
    )
    env = dict(no_nvml_env, HOME=str(tmp_path), GPUMON_STATE_DIR=str(tmp_path / "agent"))
    killed = 0
    for _ in range(4):
        proc = subprocess.Popen(
            [str(GPUMON), "--config", str(config), "push"],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 120
        mine = f".sheet.xlsx{TMP_MARK}{proc.pid}-"
        while proc.poll() is None and time.monotonic() < deadline:
            if any(n.startswith(mine) for n in temporaries(tmp_path, "sheet.xlsx")):
                proc.send_signal(signal.SIGKILL)  # mid-save: its temporary file is left
                killed += 1
                break
            time.sleep(0.005)
        proc.wait(timeout=60)
        left = temporaries(tmp_path, "sheet.xlsx")
        assert len(left) <= 1, left  # each writer removed the one its killed predecessor left
        openpyxl.load_workbook(path, read_only=True).close()  # never half a workbook
    assert killed >= 2, "no push was killed while saving: the test proved nothing"
    done = gpumon("--config", str(config), "push", env=env, cwd=tmp_path)
    no_traceback(done)
    assert done.returncode == 0, done.stderr
    assert temporaries(tmp_path, "sheet.xlsx") == []


def _record(path: str, worker: int, rounds: int) -> None:
    for i in range(rounds):
        LastSeen(Path(path)).update({f"w{worker}-{i}": "2019-03-14T06:26:45Z"})


def test_concurrent_pushes_never_lose_each_others_last_seen_times(tmp_path):
    """Before: read-merge-write without a lock — two writers read the same file, each wrote
    its own merge, and the first one's new times were gone."""
    path = tmp_path / "state" / "last-seen.json"
    workers, rounds = 6, 25
    context = multiprocessing.get_context("fork")
    procs = [context.Process(target=_record, args=(str(path), w, rounds)) for w in range(workers)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(timeout=120)
        assert proc.exitcode == 0
    times = LastSeen(path).times
    assert len(times) == workers * rounds
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert temporaries(path.parent, "last-seen.json") == []


def test_last_seen_later_time_wins_under_the_lock(tmp_path):
    path = tmp_path / "last-seen.json"
    LastSeen(path).update({"box": "2019-03-14T06:26:45Z"})
    LastSeen(path).update({"box": "2019-03-14T05:00:00Z"})
    assert LastSeen(path).get("box") == "2019-03-14T06:26:45Z"
