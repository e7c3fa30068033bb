"""Connections kept across sweeps, re-opened after a restart; last-seen memory; the sweep
deadline; stale reports."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest

from gpumon.poll import result as codes
from gpumon.poll.poller import Poller
from gpumon_agent.report import parse_utc_iso, utc_iso
from harness.sshd import SLEEP, Fleet, canned_report
from harness.timing import SLACK_S


@pytest.fixture
def fleet() -> Iterator[Fleet]:
    fleet = Fleet()
    for i in range(20):  # two sshd processes: 16 + 4 addresses
        fleet.add(f"srv{i:02d}")
    fleet.start()
    yield fleet
    fleet.close()


def test_second_sweep_reuses_the_open_connections(fleet: Fleet, tmp_path: Path) -> None:
    config = fleet.config(tmp_path)
    with Poller(config) as poller:
        first = poller.sweep(list(config.servers))
        accepted = {s.name: fleet.logins_to(s) for s in fleet.servers}
        second = poller.sweep(list(config.servers))
    assert all(r.on and not r.reused for r in first)
    assert all(r.on and r.reused for r in second)
    # sshd accepted no new TCP connection for the second sweep.
    assert {s.name: fleet.logins_to(s) for s in fleet.servers} == accepted


def test_connections_are_reopened_after_the_servers_restart(fleet: Fleet, tmp_path: Path) -> None:
    config = fleet.config(tmp_path)
    with Poller(config) as poller:
        poller.sweep(list(config.servers))
        fleet.restart_sshd(0)  # srv00..srv15: sshd and every session killed, then back
        after = {r.name: r for r in poller.sweep(list(config.servers))}
    assert all(r.on for r in after.values()), [r.reason for r in after.values() if not r.on]
    restarted = [s.name for s in fleet.servers if s.sshd_index == 0]
    assert len(restarted) == 16
    assert not any(after[name].reused for name in restarted)
    assert all(after[s.name].reused for s in fleet.servers if s.sshd_index == 1)


def test_a_server_that_goes_down_keeps_its_last_seen_time_across_processes(
    fleet: Fleet, tmp_path: Path
) -> None:
    config = fleet.config(tmp_path)
    with Poller(config) as poller:
        up = {r.name: r for r in poller.sweep(list(config.servers))}
    seen_at = up["srv19"].polled_at
    assert up["srv19"].last_seen_on == seen_at
    fleet.stop_sshd(1)  # srv16..srv19 go down
    time.sleep(1.1)  # so a later ON time would differ from seen_at
    with Poller(config) as poller:  # a new Poller, as a later `gpumon push` from cron
        down = {r.name: r for r in poller.sweep(list(config.servers))}
    result = down["srv19"]
    assert not result.on
    assert result.reason_code == codes.REFUSED
    assert result.last_seen_on == seen_at
    assert down["srv00"].on and down["srv00"].last_seen_on == down["srv00"].polled_at
    stored = json.loads(config.state_path("last-seen.json").read_text())
    assert stored["srv19"] == seen_at
    assert parse_utc_iso(stored["srv00"]) > parse_utc_iso(seen_at)


def test_a_damaged_last_seen_file_is_moved_aside_not_lost(fleet: Fleet, tmp_path: Path) -> None:
    config = fleet.config(tmp_path)
    path = config.state_path("last-seen.json")
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with Poller(config) as poller:
        results = poller.sweep(["srv00"])
    assert results[0].on
    aside = list(path.parent.glob("last-seen.json.bad-*"))
    assert len(aside) == 1 and aside[0].read_text() == "{not json"
    assert json.loads(path.read_text()) == {"srv00": results[0].polled_at}


def test_the_sweep_returns_at_its_deadline_and_ends_the_stuck_worker(
    fleet: Fleet, tmp_path: Path
) -> None:
    fleet.set_behaviour(fleet.server("srv03"), SLEEP)
    # 5 s: room for the 19 others to answer on a loaded host, not only the stuck one to time out.
    config = fleet.config(tmp_path, command_timeout_s=60.0, sweep_timeout_s=5.0)
    with Poller(config) as poller:
        started = time.monotonic()
        results = {r.name: r for r in poller.sweep(list(config.servers))}
        elapsed = time.monotonic() - started
        stuck = results["srv03"]
        sweep_s = config.poll.sweep_timeout_s
        assert sweep_s <= elapsed < sweep_s + SLACK_S
        assert not stuck.on and stuck.reason_code == codes.TIMEOUT
        assert stuck.stage == "read"
        assert stuck.reason == "timed out at read: the sweep's 5 s ran out"
        assert sum(r.on for r in results.values()) == 19
        # Its transport was closed: no thread is left waiting on the sleeping agent.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            live = [t for t in threading.enumerate() if isinstance(t, paramiko.Transport)]
            if len(live) == 19:
                break
            time.sleep(0.05)
        assert len(live) == 19


def test_a_report_older_than_stale_after_is_on_but_agent_stale(
    fleet: Fleet, tmp_path: Path
) -> None:
    server = fleet.server("srv05")
    old = utc_iso(time.time() - 3600)
    fleet.set_report(server, canned_report(server.name, server.address, generated_at=old))
    config = fleet.config(tmp_path, stale_after_s=30.0)
    with Poller(config) as poller:
        results = {r.name: r for r in poller.sweep(list(config.servers))}
    stale = results["srv05"]
    assert stale.on
    assert stale.reason_code == codes.AGENT_STALE
    assert stale.reason.startswith("agent stale: its report is 60 min old (limit 30 s)")
    assert results["srv06"].on and results["srv06"].reason_code is None


def test_the_pre_7_2_authorized_keys_line_works_too(fleet: Fleet, tmp_path: Path) -> None:
    # deploy/ssh/authorized_keys.example's line for old sshd (no `restrict`).
    fleet.stop()
    fleet.use_legacy_line(fleet.server("srv07"))
    fleet.start()
    config = fleet.config(tmp_path)
    with Poller(config) as poller:
        result = poller.sweep(["srv07"])[0]
    assert result.on, result.reason
    assert result.report.host.hostname == "srv07"
