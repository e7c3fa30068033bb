"""Attacks through reservations and the State column: hostile Usage cells, hostile names from
the servers, a State directory that cannot hold the times, a times file planted by someone else.
A bad value costs that value, never the push, another server or a person's cell."""

from __future__ import annotations

import os
import stat

import openpyxl
from central_kit import ScriptedPoller, gpu, on, process, seed_workbook

from gpumon.config import Config, SheetConfig
from gpumon.fleet import push_once
from gpumon.sheet.xlsx import XlsxBackend
from gpumon.statedb import DB_NAME
from gpumon.usetimes import FILE_NAME
from gpumon_agent.report import ClaimInfo

POLLED = "2019-03-14T07:00:00Z"
STATE = "N"


def push(tmp_path, usage: dict[str, str], results, people=None, state_dir=None):
    path = seed_workbook(tmp_path / "sheet.xlsx")
    book = openpyxl.load_workbook(path)
    for cell, text in usage.items():
        book.active[cell] = text
    book.save(path)
    config = Config(
        path=str(tmp_path / "gpumon.toml"),
        state_dir=str(state_dir or tmp_path / "state"),
        sheet=SheetConfig(path=str(path), time_zone="Asia/Seoul"),
        people=people or {},
    )
    backend = XlsxBackend(path, time_zone="Asia/Seoul")
    outcome = push_once(config, backend, ScriptedPoller(results))
    return outcome, openpyxl.load_workbook(path).active


def test_a_formula_in_usage_is_no_name_and_stays_as_typed(tmp_path):
    formula = '=IMPORTXML("http://192.0.2.1/x", "//a")'
    _, sheet = push(tmp_path, {"C17": formula}, [on("mlbsp", [gpu(0), gpu(1), gpu(2)])])
    assert sheet["C17"].value == formula
    assert sheet[f"{STATE}17"].value == "free"
    assert sheet[f"{STATE}18"].value == "free — reserved by Niv"


def test_a_huge_usage_cell_costs_a_cut_state_cell(tmp_path):
    huge = "Verylongname" + "x" * 49_000 + ", " + ", ".join(f"p{i}" for i in range(3000))
    _, sheet = push(tmp_path, {"C17": huge}, [on("mlbsp", [gpu(0), gpu(1), gpu(2)])])
    state = sheet[f"{STATE}17"].value
    assert state.startswith("free — reserved by Verylongname") and len(state) <= 120
    assert sheet["C17"].value == huge[:32767]  # the person's cell, as the workbook holds it


def test_direction_overrides_and_invisible_characters_in_usage_are_not_names(tmp_path):
    usage = {"C17": "\u202eviN", "C18": "\u200b\u200b 12", "C19": "Niv\u200b"}
    _, sheet = push(tmp_path, usage, [on("mlbsp", [gpu(0), gpu(1), gpu(2)])])
    assert [sheet[f"{STATE}{r}"].value for r in (17, 18, 19)] == [
        "free", "free", "free — reserved by Niv"
    ]  # fmt: skip
    assert sheet["C18"].value == "\u200b\u200b 12"


def test_a_servers_hostile_user_and_job_names_are_written_as_text(tmp_path):
    hostile = process('=HYPERLINK("http://192.0.2.1")', "=cmd|' /C calc'!A0")
    claim = ClaimInfo(job="=1+1\udcff" + "j" * 500, user="=2+2", pid=1, started_at=POLLED)
    results = [on("mlbsp", [gpu(0, util=90, processes=[hostile]), gpu(1, claims=[claim]), gpu(2)])]
    _, sheet = push(tmp_path, {}, results)
    assert sheet[f"{STATE}17"].value.startswith('=HYPERLINK("http://192.0.2.1") — reserved by')
    assert sheet[f"{STATE}17"].data_type == "s"  # text, not a formula
    job_state = sheet[f"{STATE}18"].value
    assert job_state.startswith("=2+2 — claimed '=1+1\ufffd") and len(job_state) <= 120
    assert "on Niv's reservation" in sheet["M17"].value


def test_a_state_directory_that_cannot_hold_the_times_costs_a_warning_not_the_push(tmp_path):
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("a file where the state directory should be")
    outcome, sheet = push(tmp_path, {}, [on("mlbsp", [gpu(0), gpu(1), gpu(2)])], state_dir=blocked)
    assert sheet[f"{STATE}17"].value == "free — reserved by Niv"
    assert any("cannot save the GPUs' idle/unused times" in w for w in outcome.warnings)


def test_a_planted_times_file_is_moved_aside_and_the_times_kept_0600_in_the_database(tmp_path):
    state = tmp_path / "state"
    state.mkdir()
    planted = state / FILE_NAME
    planted.write_text('{"version": 1, "gpus": {"mlbsp|GPU-00000000": {"unused_since": -5}}}')
    os.chmod(planted, 0o666)
    _, sheet = push(tmp_path, {}, [on("mlbsp", [gpu(0), gpu(1), gpu(2)])])
    assert sheet[f"{STATE}17"].value == "free — reserved by Niv"  # the count started afresh
    assert not planted.exists()
    assert [p.name.startswith(f"{FILE_NAME}.bad-") for p in state.iterdir()].count(True) == 1
    assert stat.S_IMODE(os.stat(state / DB_NAME).st_mode) == 0o600


def test_many_reserved_gpus_with_conflicts_keep_health_within_its_limit(tmp_path):
    gpus = [gpu(i, util=90, processes=[process(f"user{i}", "python3 x.py")]) for i in range(3)]
    _, sheet = push(tmp_path, {}, [on("mlbsp", gpus)])
    health = sheet["M17"].value
    assert "GPU 0: user0 on Niv's reservation" in health and len(health) <= 240


def test_a_dry_run_saves_no_times(tmp_path):
    path = seed_workbook(tmp_path / "sheet.xlsx")
    config = Config(
        path=str(tmp_path / "gpumon.toml"),
        state_dir=str(tmp_path / "state"),
        sheet=SheetConfig(path=str(path), time_zone="Asia/Seoul"),
    )
    backend = XlsxBackend(path, time_zone="Asia/Seoul")
    results = [on("mlbsp", [gpu(0), gpu(1), gpu(2)])]
    outcome = push_once(config, backend, ScriptedPoller(results), dry_run=True)
    assert not (tmp_path / "state" / FILE_NAME).exists()
    assert not (tmp_path / "state" / DB_NAME).exists()
    mlbsp = [s.text for s in outcome.gpu_states if s.server == "mlbsp"]
    assert mlbsp == ["free — reserved by Niv"] * 3


def test_free_json_survives_server_text_that_is_not_utf8(tmp_path):
    import io
    import json

    from sheetkit import seed_grid

    from gpumon.fleet import judge_gpus
    from gpumon.free import pick, to_json
    from gpumon.sheet.layout import read_layout

    grid = seed_grid()
    claim = ClaimInfo(job="kws\udcff", user="lww", pid=1, started_at=POLLED)
    results = [on("ecbsp", [gpu(0)]), on("trlbsp", [gpu(0, claims=[claim])])]
    config = Config(path="t.toml")
    judged = judge_gpus(config, grid, read_layout(grid), results, {}, 0.0)
    out = io.StringIO()
    json.dump(to_json(pick(judged, "lww", None)), out)
    assert [row["server"] for row in json.loads(out.getvalue())] == ["ecbsp"]
    assert "claimed 'kws\udcff'" in next(s.text for s in judged.states if s.server == "trlbsp")
