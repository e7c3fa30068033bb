"""One sweep over a fleet of 20 healthy simulated servers plus one server per fault: each fault
gives OFF with its reason within its own deadline, and every other server is still reported —
twice: every server behind the shipped forced command, answering over a `stream` channel, and
every server behind the old forced command (`gpumon-agent report --json`), one-shot."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import paramiko
import pytest

from gpumon.config import ServerEntry
from gpumon.poll import result as codes
from gpumon.poll.poller import Poller
from gpumon.poll.result import ServerResult
from gpumon.poll.stream import VIA_NEW_STREAM, VIA_OLD_COMMAND
from harness.sshd import (
    FAILING,
    FORCED,
    GARBAGE,
    HUGE,
    NONE,
    OLD,
    SLEEP,
    Fleet,
    RefusedPort,
    SilentListener,
)
from harness.timing import SLACK_S

HEALTHY = 20
HANDSHAKE_S = 2.0
AUTH_S = 2.0
COMMAND_S = 2.0


# What gpumon-agent 0.1.0 (Report schema 1) prints, sampled now; braces doubled for the
# behaviour template, the time spliced in from `date` between single-quoted shell strings.
V1_REPORT = (
    '{{"schema": "gpumon.report", "version": 1, '
    '"generated_at": "\'"$(date -u +%Y-%m-%dT%H:%M:%SZ)"\'", '
    '"host": {{"hostname": "old-agent", "users": []}}, "nvml": {{"available": true}}, '
    '"gpus": [{{"index": 0, "processes": [{{"pid": 7, "user": "lww", "command": "python"}}], '
    '"unclaimed_use": true}}, {{"index": 1, "processes": [], "unclaimed_use": false}}]}}'
)


@dataclass
class Sweep:
    fleet: Fleet
    poller: Poller
    results: dict[str, ServerResult]
    elapsed_s: float
    warnings: list[logging.LogRecord]
    via: str  # how the healthy servers answer


@pytest.fixture(scope="module", params=[VIA_NEW_STREAM, VIA_OLD_COMMAND])
def sweep(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, isolated_home: Path
) -> Iterator[Sweep]:
    fleet = Fleet()
    line = FORCED if request.param == VIA_NEW_STREAM else OLD
    for i in range(HEALTHY):
        fleet.add(f"ok{i:02d}", keys=line)
    fleet.add("auth-rejected", keys=NONE)
    fleet.add("key-changed", keys=line)
    fleet.add("key-unknown", keys=line)
    fleet.add("agent-missing", agent_on_path=False, keys=line)
    fleet.add("agent-garbage", behaviour=GARBAGE, keys=line)
    fleet.add("agent-10mb", behaviour=HUGE, keys=line)
    fleet.add("agent-sleeps", behaviour=SLEEP, keys=line)
    fleet.add("agent-fails", behaviour=FAILING, keys=line)
    fleet.add("agent-v1", behaviour=f"echo '{V1_REPORT}'", keys=line)  # not upgraded yet
    fleet.add(
        "agent-v3",
        behaviour="""echo '{{"schema": "gpumon.report", "version": 3, "host": {{}}}}'""",
        keys=line,
    )
    listeners = {
        "port-refused": RefusedPort("127.0.0.200"),
        "silent-listener": SilentListener("127.0.0.201"),
        "banner-then-silence": SilentListener("127.0.0.202", banner=b"SSH-2.0-OpenSSH_9.2\r\n"),
    }
    fleet.start()
    work = tmp_path_factory.mktemp("faults")
    config = fleet.config(
        work,
        known_hosts=fleet.known_hosts_text(skip=("key-unknown",), wrong=("key-changed",)),
        connect_timeout_s=2.0,
        handshake_timeout_s=HANDSHAKE_S,
        auth_timeout_s=AUTH_S,
        command_timeout_s=COMMAND_S,
        sweep_timeout_s=15.0,
        agentless=False,
    )
    for name, listener in listeners.items():
        config.servers[name] = ServerEntry(name=name, host=listener.address, port=listener.port)
    warnings: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = warnings.append  # type: ignore[method-assign]
    logging.getLogger("gpumon").addHandler(handler)
    poller = Poller(config)
    try:
        started = time.monotonic()
        results = poller.sweep(list(config.servers))
        elapsed = time.monotonic() - started
        yield Sweep(fleet, poller, {r.name: r for r in results}, elapsed, warnings, request.param)
    finally:
        logging.getLogger("gpumon").removeHandler(handler)
        poller.close()
        fleet.close()
        for listener in listeners.values():
            listener.close()


def off(sweep: Sweep, name: str, code: str) -> ServerResult:
    result = sweep.results[name]
    assert not result.on, result
    assert result.reason_code == code, result
    assert result.report is None
    return result


def test_every_healthy_server_is_on_with_its_own_report(sweep: Sweep) -> None:
    for i in range(HEALTHY):
        result = sweep.results[f"ok{i:02d}"]
        server = sweep.fleet.server(f"ok{i:02d}")
        assert result.on, result
        assert result.reason_code is None
        assert result.report is not None
        assert result.report.host.hostname == server.name
        assert [g.uuid for g in result.report.gpus] == [g.uuid for g in server.report.gpus]
        assert result.address == server.address
        assert result.via == sweep.via
        assert (
            result.destination == f"{sweep.fleet.user.pw_name}@{server.address}:{sweep.fleet.port}"
        )


def test_faults_cost_only_their_own_deadline(sweep: Sweep) -> None:
    # Every fault runs at once: the sweep takes about the longest single deadline, not the sum.
    assert sweep.elapsed_s < max(HANDSHAKE_S, AUTH_S, COMMAND_S) + 2 * SLACK_S
    assert len(sweep.results) == HEALTHY + 10 + 3


def test_refused_port_is_off_refused(sweep: Sweep) -> None:
    result = off(sweep, "port-refused", codes.REFUSED)
    assert result.stage == "connect"
    assert "connection refused" in result.reason
    assert result.elapsed_s < SLACK_S


def test_listener_that_never_speaks_times_out_at_banner(sweep: Sweep) -> None:
    result = off(sweep, "silent-listener", codes.TIMEOUT)
    assert result.stage == "banner"
    assert result.reason == f"timed out at banner ({HANDSHAKE_S:g} s)"
    assert HANDSHAKE_S - 0.1 <= result.elapsed_s < HANDSHAKE_S + SLACK_S


def test_banner_then_silence_times_out_at_key_exchange(sweep: Sweep) -> None:
    result = off(sweep, "banner-then-silence", codes.TIMEOUT)
    assert result.stage == "kex"
    assert result.reason == f"timed out at kex ({HANDSHAKE_S:g} s)"
    assert result.elapsed_s < HANDSHAKE_S + SLACK_S


def test_rejected_key_is_off_auth_failed(sweep: Sweep) -> None:
    result = off(sweep, "auth-rejected", codes.AUTH_FAILED)
    assert result.stage == "auth"
    assert f"key rejected for {sweep.fleet.user.pw_name}@" in result.reason
    assert "authorized_keys" in result.reason


def _auth_attempts_logged(fleet: Fleet, name: str) -> list[str]:
    server = fleet.server(name)
    log = fleet.log(server.sshd_index).splitlines()
    ports = [
        line.split(" port ")[1].split()[0]
        for line in log
        if line.startswith("Connection from") and f" on {server.address} " in line
    ]
    return [
        line
        for line in log
        if any(f"port {p} " in line or line.endswith(f"port {p}") for p in ports)
        and ("publickey" in line or "Accepted" in line)
    ]


def test_changed_host_key_is_off_with_a_loud_warning_and_no_login(sweep: Sweep) -> None:
    result = off(sweep, "key-changed", codes.HOST_KEY_CHANGED)
    assert result.stage == "kex"
    assert result.reason.startswith("HOST KEY CHANGED")
    assert "ssh-keygen -R" in result.reason
    assert any(
        r.levelno == logging.WARNING and "HOST KEY CHANGED" in r.getMessage()
        for r in sweep.warnings
    )
    assert _auth_attempts_logged(sweep.fleet, "key-changed") == []


def test_unknown_host_key_is_off_and_says_how_to_trust_it(sweep: Sweep) -> None:
    result = off(sweep, "key-unknown", codes.HOST_KEY_UNKNOWN)
    assert result.reason == "host key unknown — run `gpumon trust key-unknown`"
    assert _auth_attempts_logged(sweep.fleet, "key-unknown") == []


def test_missing_agent_is_off_agent_missing(sweep: Sweep) -> None:
    result = off(sweep, "agent-missing", codes.AGENT_MISSING)
    assert "gpumon-agent" in result.reason
    assert "not found" in result.reason


def test_garbage_output_is_off_bad_output(sweep: Sweep) -> None:
    result = off(sweep, "agent-garbage", codes.BAD_OUTPUT)
    assert "not JSON" in result.reason
    assert "Segmentation fault" in result.reason


def test_ten_megabytes_of_output_is_cut_at_the_limit(sweep: Sweep) -> None:
    result = off(sweep, "agent-10mb", codes.BAD_OUTPUT)
    assert "more than 1048576 bytes" in result.reason
    assert "stopped reading" in result.reason
    assert result.elapsed_s < COMMAND_S + SLACK_S


def test_agent_that_sleeps_forever_times_out_at_read(sweep: Sweep) -> None:
    result = off(sweep, "agent-sleeps", codes.TIMEOUT)
    assert result.stage == "read"
    assert result.reason == f"timed out at read ({COMMAND_S:g} s)"
    assert COMMAND_S - 0.1 <= result.elapsed_s < COMMAND_S + SLACK_S


def test_failing_agent_is_off_with_its_own_words(sweep: Sweep) -> None:
    result = off(sweep, "agent-fails", codes.AGENT_FAILED)
    assert result.reason.startswith("agent failed (exit 3): ")
    assert "RuntimeError: NVML exploded" in result.reason


def test_a_version_1_report_from_an_agent_not_yet_upgraded_is_read(sweep: Sweep) -> None:
    result = sweep.results["agent-v1"]
    assert result.on and result.reason_code is None, result
    report = result.report
    assert (report.version, report.host.hostname) == (1, "old-agent")
    busy, idle = report.gpus
    assert [p.user for p in busy.processes] == ["lww"] and busy.unclaimed_use is True
    assert (idle.processes, idle.processes_error) == ([], None)


def test_newer_schema_version_is_bad_output_naming_the_upgrade(sweep: Sweep) -> None:
    result = off(sweep, "agent-v3", codes.BAD_OUTPUT)
    assert "schema version 3" in result.reason
    assert "upgrade gpumon on the central box" in result.reason


def test_stuck_workers_do_not_outlive_the_sweep(sweep: Sweep) -> None:
    # Aborted attempts close their transports: only the kept-open connections remain.
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        transports = [t for t in threading.enumerate() if isinstance(t, paramiko.Transport)]
        if len(transports) == len(sweep.poller._connections):
            break
        time.sleep(0.05)
    assert len(transports) == len(sweep.poller._connections)
    kept = set(sweep.poller._connections)
    assert {f"ok{i:02d}" for i in range(HEALTHY)} <= kept
    assert "agent-sleeps" not in kept
