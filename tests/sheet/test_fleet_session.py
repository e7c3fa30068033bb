"""gpumon.fleet, the API the central commands build on: the backend and poller opened when first
asked for and closed once, which servers a command polls, what a push's outcome says, and the
exit status of each failure."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from sheetkit import SEED_SERVERS, ScriptedPoller, gpu, off, on, seed_workbook

from gpumon import fleet as fleet_module
from gpumon.config import Config, ConfigError, PollConfig, ServerEntry, SheetConfig
from gpumon.fleet import (
    EXIT_CODES,
    EXIT_CONFIG,
    EXIT_LAYOUT,
    EXIT_LOCKED,
    EXIT_PROBLEM,
    EXIT_SHEET,
    FleetSession,
    LockHeld,
    exit_code,
    fleet_names,
    open_fleet,
    outcome_messages,
    push_lock,
    push_once,
)
from gpumon.sheet.grid import SheetError, WriteStats
from gpumon.sheet.layout import LayoutError
from gpumon.sheet.xlsx import XlsxBackend


def lab_config(tmp_path: Path, **poll) -> Config:
    return Config(
        path=str(tmp_path / "gpumon.toml"),
        state_dir=str(tmp_path / "state"),
        poll=PollConfig(**poll),
        sheet=SheetConfig(path="sheet.xlsx", time_zone="Asia/Seoul"),
        servers={"extra": ServerEntry("extra")},
    )


class Recorder:
    """Openers whose products say when they are closed."""

    def __init__(self) -> None:
        self.events: list[str] = []

    def opener(self, kind: str, fail: Exception | None = None):
        def open_(config: Config):
            self.events.append(f"open {kind}")
            if fail is not None:
                raise fail
            return Closing(kind, self.events)

        return open_


class Closing:
    def __init__(self, kind: str, events: list[str]) -> None:
        self.kind, self.events = kind, events

    def close(self) -> None:
        self.events.append(f"close {self.kind}")


def test_a_session_opens_each_part_once_when_asked_and_closes_the_poller_first(tmp_path):
    rec = Recorder()
    session = FleetSession(lab_config(tmp_path), rec.opener("backend"), rec.opener("poller"))

    untouched = list(rec.events)
    same = session.backend() is session.backend() and session.poller() is session.poller()
    session.close()
    session.close()  # closing again closes nothing twice

    assert untouched == []
    assert same
    assert rec.events == ["open backend", "open poller", "close poller", "close backend"]


def test_a_session_closes_only_what_it_opened(tmp_path):
    rec = Recorder()
    session = FleetSession(
        lab_config(tmp_path), rec.opener("backend"), rec.opener("poller", ConfigError("no key"))
    )

    session.backend()
    with pytest.raises(ConfigError, match="no key"):
        session.poller()
    session.close()

    assert rec.events == ["open backend", "open poller", "close backend"]


def test_open_fleet_closes_on_the_way_out_of_an_error(tmp_path, monkeypatch):
    rec = Recorder()
    monkeypatch.setattr(fleet_module, "open_backend", rec.opener("backend"))
    monkeypatch.setattr(fleet_module, "open_poller", rec.opener("poller"))

    with pytest.raises(RuntimeError), open_fleet(lab_config(tmp_path)) as fleet:
        fleet.poller()
        raise RuntimeError("a bug mid-push")

    assert rec.events == ["open poller", "close poller"]  # no backend was asked for


def test_fleet_names_are_the_sheets_then_the_configs(tmp_path):
    seed_workbook(tmp_path / "sheet.xlsx")
    warnings: list[str] = []

    names = fleet_names(lab_config(tmp_path), warnings)

    assert names == [*SEED_SERVERS, "extra"] and warnings == []


def test_fleet_names_fall_back_to_the_config_when_the_sheet_cannot_be_read(tmp_path):
    (tmp_path / "sheet.xlsx").write_bytes(b"not a workbook")
    warnings: list[str] = []

    names = fleet_names(lab_config(tmp_path), warnings)

    assert names == ["extra"]
    assert len(warnings) == 1 and "not a readable .xlsx workbook" in warnings[0]
    assert warnings[0].endswith(f"— polling only the servers in {tmp_path / 'gpumon.toml'}")


def test_fleet_names_without_servers_from_sheet_read_no_sheet(tmp_path):
    warnings: list[str] = []  # no workbook exists: reading it would warn

    names = fleet_names(lab_config(tmp_path, servers_from_sheet=False), warnings)

    assert (names, warnings) == (["extra"], [])


def test_a_push_says_its_warnings_then_its_setup_then_its_summary(tmp_path):
    path = seed_workbook(tmp_path / "sheet.xlsx")
    config = lab_config(tmp_path)
    results = [on(n, [gpu(0)]) for n in SEED_SERVERS] + [off("extra", "connection refused")]
    outcome = push_once(config, XlsxBackend(path), ScriptedPoller(results))
    outcome.stats = WriteStats(skipped=["G9: the row anchor moved"])
    outcome.setup_stats = WriteStats(skipped=["set-up: no answer"])

    messages = outcome_messages(outcome, "sheet.xlsx")

    levels = [m.level for m in messages]
    warnings = [m.text for m in messages if m.level == logging.WARNING]
    infos = [m.text for m in messages if m.level == logging.INFO]
    assert levels == sorted(levels, reverse=True)  # every warning before any other line
    assert warnings[-2:] == ["set-up: no answer", "not written: G9: the row anchor moved"]
    assert "server 'extra' has no rows in the sheet" in warnings[0]
    assert infos[0] == "set-up: I7: add header 'GPU util'"
    total = len(SEED_SERVERS) + 1
    assert infos[-1].startswith(
        f"sheet.xlsx: {total} servers, {total - 1} ON, 1 OFF (extra: connection refused); wrote "
    )


def test_a_dry_run_says_so_and_lists_its_changes_or_that_there_are_none(tmp_path):
    path = seed_workbook(tmp_path / "sheet.xlsx")
    config = lab_config(tmp_path, servers_from_sheet=False)
    config.servers = {"sigbsp": ServerEntry("sigbsp")}
    down = [off("sigbsp", "connection refused")]

    planned = outcome_messages(
        push_once(config, XlsxBackend(path), ScriptedPoller(down), dry_run=True), "x"
    )
    config.servers = {}
    nothing = outcome_messages(
        push_once(config, XlsxBackend(path), ScriptedPoller([]), dry_run=True), "x"
    )

    texts = [m.text for m in planned]
    assert texts[0] == "dry run: nothing written."
    assert any(t.startswith("G") and "(sigbsp, status): " in t and "'OFF'" in t for t in texts)
    assert "no cell would change." in [m.text for m in nothing]
    assert "no cell would change." not in texts


@pytest.mark.parametrize(
    ("error", "code"),
    [
        (LockHeld("busy"), EXIT_LOCKED),
        (ConfigError("bad key"), EXIT_CONFIG),
        (SheetError("quota"), EXIT_SHEET),
        (LayoutError("no header"), EXIT_LAYOUT),
        (RuntimeError("a bug"), EXIT_PROBLEM),
    ],
)
def test_each_failure_has_its_exit_status_in_the_one_table(error, code):
    assert exit_code(error) == code
    assert code in EXIT_CODES


def test_a_second_push_lock_is_refused_at_once_naming_the_holder(tmp_path):
    config = lab_config(tmp_path)

    with push_lock(config), pytest.raises(LockHeld, match=r"is running \(pid \d+\)"):
        with push_lock(config):
            pass
    with push_lock(config):  # released: the next push takes it
        pass


def test_a_push_lock_that_is_a_symlink_is_a_config_error_never_followed(tmp_path):
    config = lab_config(tmp_path)
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    (tmp_path / "state").mkdir()
    (tmp_path / "state" / "push.lock").symlink_to(victim)

    with pytest.raises(ConfigError, match=r"push\.lock: cannot create the push lock .*symlink"):
        with push_lock(config):
            pass

    assert victim.read_text() == "precious\n"
