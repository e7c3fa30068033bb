"""A push over real SSH: the lab's sheet (as .xlsx) and its 12 servers simulated by real sshd on
127.0.0.2-13 (tests/harness/sshd.py), names taken from the sheet's Server column."""

from __future__ import annotations

from collections.abc import Iterator

import openpyxl
import pytest
from sheetkit import SEED_SERVERS, seed_workbook

from gpumon.config import SheetConfig
from gpumon.fleet import open_poller, push_once
from gpumon.sheet.xlsx import XlsxBackend
from harness.sshd import GARBAGE, Fleet, canned_report

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fleet(tmp_path_factory) -> Iterator[Fleet]:
    fleet = Fleet()
    rows = {"drlbsp": 2, "mlbsp": 3, "annbsp": 3, "sigbsp": 4, "grubsp": 4}  # GPU rows per server
    for name in SEED_SERVERS:
        server = fleet.add(name)
        server.report = canned_report(name, server.address, gpus=rows.get(name, 1))
    fleet.start()
    yield fleet
    fleet.close()


def test_push_over_ssh_fills_the_lab_sheet_and_a_broken_server_turns_off(
    fleet, tmp_path, monkeypatch
):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    path = seed_workbook(tmp_path / "sheet.xlsx")
    config = fleet.config(tmp_path)
    config.sheet = SheetConfig(path=str(path), time_zone="Asia/Seoul")
    assert config.poll.servers_from_sheet
    backend = XlsxBackend(path, time_zone="Asia/Seoul")
    poller = open_poller(config)
    try:
        first = push_once(config, backend, poller)
        assert [r.name for r in first.results] == SEED_SERVERS
        assert first.off == [], [r.reason for r in first.off]
        sheet = openpyxl.load_workbook(path).active
        seen = sheet["H17"].value  # mlbsp's Time, written from this poll
        assert sheet["G17"].value == "ON" and seen != "2019-03-14 15:26:45"
        assert sheet["F17"].value == fleet.server("mlbsp").report.host.primary_ip
        gpus = fleet.server("mlbsp").report.gpus
        assert [sheet[f"I{r}"].value for r in (17, 18, 19)] == [
            f"{g.utilization_pct:.0f}%" for g in gpus
        ]
        assert sheet["K17"].value == "niv: python train.py"
        assert sheet["M17"].value == "OK"

        fleet.set_behaviour(fleet.server("mlbsp"), GARBAGE)
        second = push_once(config, backend, poller)
        assert [r.name for r in second.off] == ["mlbsp"]
        assert all(r.reused for r in second.results if r.on)  # connections were kept open
    finally:
        poller.close()
    sheet = openpyxl.load_workbook(path).active
    assert sheet["G17"].value == "OFF"
    assert sheet["H17"].value == seen  # last seen, not the failed poll's time
    assert sheet["M17"].value and "report" in sheet["M17"].value.lower()
    assert sheet["G23"].value == "ON"
