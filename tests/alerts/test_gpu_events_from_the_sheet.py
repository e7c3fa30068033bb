"""The GPU events judged from the sheet itself: the lab's Usage column read by the push
(gpumon.fleet.judge_gpus, the reservations issue) hands its GPU states to the alerts, and the
real HTTP receiver gets the conflict — no hand-made state records in between."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sheet"))  # sheetkit

from alertkit import config, push
from sheetkit import gpu, on, process, seed_grid

from gpumon.config import Person
from gpumon.fleet import judge_gpus
from gpumon.sheet.layout import read_layout

NOW = 1552548405.0  # 2019-03-14 07:26:45 UTC, the fixture's own day


def test_someone_on_a_gpu_the_usage_column_reserves_for_another_is_told_once(tmp_path, hook):
    people = {"Niv": Person(name="Niv", users=["niv", "nkim"])}
    cfg = config(tmp_path / "state", webhook=hook.url(), people=people)
    grid = seed_grid()
    busy = gpu(1, util=90, processes=[process("lww", "python3 train.py")])
    results = [on("mlbsp", [gpu(0), busy, gpu(2)])]
    judged = judge_gpus(cfg, grid, read_layout(grid), results, {}, NOW)
    assert any(s.kind == "other_on_reserved" for s in judged.states)

    push(cfg, results, NOW, gpu_states=judged.states)
    [told] = hook.wait(1)
    assert "mlbsp GPU 1: lww running on a GPU reserved by Niv" in told.text
    push(cfg, results, NOW + 60, gpu_states=judged.states)  # it lasts: not told again
    assert len(hook.wait(2, timeout_s=0.5)) == 1
