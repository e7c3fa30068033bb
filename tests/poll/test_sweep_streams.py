"""Kept-open `stream` channels on the real sshd fleet: the real agent behind the shipped forced
command (`gpumon-agent ssh`), servers still on the old forced command and agents without
`stream` in the same sweep; a stream that stalls, dies, or answers too much; an agent daemon
restarted under an open stream; requests the forced command refuses."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import paramiko
import pytest
from agent_proc import wait_for

from gpumon.poll import result as codes
from gpumon.poll.inventory import resolve
from gpumon.poll.poller import Poller
from gpumon.poll.stream import VIA_NEW_STREAM, VIA_OLD_COMMAND, VIA_ONESHOT, VIA_STREAM
from gpumon.poll.transport import Attempt
from gpumon_agent.report import Report
from harness.agents import AgentFleet
from harness.fakenvml import FakeState, make_gpu
from harness.sshd import (
    HUGE_LINE,
    OLD,
    PLAIN,
    REAL_AGENT,
    REPORT,
    STALL_MID_ANSWER,
    STREAM_ERROR,
    Fleet,
    SimServer,
    canned_report,
)
from harness.timing import SLACK_S

COMMAND_S = 2.0
# An agent from before `stream`: argparse's usage error for the unknown command, else a report.
OLD_AGENT = (
    'case "$GPUMON_FAKE_ASK" in *stream) '
    "echo \"gpumon-agent: error: argument COMMAND: invalid choice: 'stream'\" >&2; exit 2;; "
    "esac; " + REPORT
)


@pytest.fixture
def fleet() -> Iterator[Fleet]:
    fleet = Fleet()
    try:
        yield fleet
    finally:
        fleet.close()


def sweep(poller: Poller) -> dict[str, object]:
    return {r.name: r for r in poller.sweep(list(poller.config.servers))}


def agent_pids(fleet: Fleet) -> list[int]:
    path = fleet.root / "pids" / "agents"
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def stream_pid(fleet: Fleet, server: SimServer) -> int:
    """The pid of the agent process serving ``server``'s open stream (the wrapper execs into
    it, so its pid is the one it recorded)."""
    for pid in reversed(agent_pids(fleet)):
        try:
            with open(f"/proc/{pid}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue  # ended
        connection = next((e for e in env if e.startswith(b"SSH_CONNECTION=")), b"")
        if f" {server.address} ".encode() in connection:
            return pid
    raise AssertionError(f"no live agent process for {server.name}")


def test_stream_and_one_shot_servers_mixed_in_one_sweep(fleet: Fleet, tmp_path: Path) -> None:
    streams = [fleet.add(f"new{i}", behaviour=REAL_AGENT) for i in range(3)]
    old_line = [fleet.add(f"oldline{i}", behaviour=REAL_AGENT, keys=OLD) for i in range(2)]
    old_agent = fleet.add("oldagent", behaviour=OLD_AGENT, keys=PLAIN, stream=False)
    old_agent.report = canned_report(old_agent.name, old_agent.address)
    fleet.start()
    config = fleet.config(tmp_path, command_timeout_s=10.0, sweep_timeout_s=20.0)
    with Poller(config) as poller:
        first = sweep(poller)
        starts = fleet.agent_starts()
        steady = [sweep(poller) for _ in range(3)]
        started_in_steady = fleet.agent_starts() - starts

    for results in [first, *steady]:
        for server in fleet.servers:
            result = results[server.name]
            assert result.on and result.reason_code is None, result
            assert result.report.host.hostname == server.name
    for server in streams:
        assert (first[server.name].via, first[server.name].forced_command) == (
            VIA_NEW_STREAM,
            "ssh",
        )
        for results in steady:
            assert results[server.name].via == VIA_STREAM
            assert results[server.name].reused
    for server in old_line:
        for results in [first, *steady]:
            result = results[server.name]
            assert (result.via, result.forced_command) == (VIA_OLD_COMMAND, "report")
    # The old agent refuses `stream` once; from then on it is polled one-shot, not asked again.
    assert first[old_agent.name].via == VIA_ONESHOT
    assert all(r[old_agent.name].via == VIA_ONESHOT for r in steady)
    # Steady sweeps start no process for stream servers: one per poll of the others only.
    assert started_in_steady == 3 * (len(old_line) + 1)


def test_a_stream_that_stalls_mid_answer_times_out_then_reconnects(
    fleet: Fleet, tmp_path: Path
) -> None:
    stalling = fleet.add("stalls")
    healthy = fleet.add("healthy")
    fleet.start()
    config = fleet.config(tmp_path, command_timeout_s=COMMAND_S)
    with Poller(config) as poller:
        assert sweep(poller)["stalls"].via == VIA_NEW_STREAM
        fleet.set_behaviour(stalling, STALL_MID_ANSWER)
        started = time.monotonic()
        stalled = sweep(poller)
        elapsed = time.monotonic() - started
        fleet.set_behaviour(stalling, REPORT)
        logins = fleet.logins_to(stalling)
        after = sweep(poller)

    result = stalled["stalls"]
    assert not result.on and result.reason_code == codes.TIMEOUT, result
    assert (result.stage, result.reason) == ("read", f"timed out at read ({COMMAND_S:g} s)")
    assert COMMAND_S - 0.1 <= result.elapsed_s < COMMAND_S + SLACK_S
    assert elapsed < COMMAND_S + SLACK_S  # the stall cost its own deadline, not the sweep's
    assert stalled["healthy"].on and stalled["healthy"].via == VIA_STREAM
    # The next sweep reconnects (a stalled transport is not trusted) and opens a new stream.
    assert after["stalls"].on, after["stalls"]
    assert (after["stalls"].reused, after["stalls"].via) == (False, VIA_NEW_STREAM)
    assert fleet.logins_to(stalling) == logins + 1
    assert healthy.name in after


def test_a_stream_process_killed_between_sweeps_is_reopened_in_the_same_sweep(
    fleet: Fleet, tmp_path: Path
) -> None:
    server = fleet.add("gpu1", behaviour=REAL_AGENT)
    fleet.start()
    config = fleet.config(tmp_path)
    with Poller(config) as poller:
        assert sweep(poller)["gpu1"].via == VIA_NEW_STREAM
        os.kill(stream_pid(fleet, server), signal.SIGKILL)
        time.sleep(0.2)  # its channel closes (sshd notices the exit)
        logins = fleet.logins_to(server)
        result = sweep(poller)["gpu1"]
        again = sweep(poller)["gpu1"]
    assert result.on, result
    assert (result.reused, result.via) == (True, VIA_NEW_STREAM)  # same transport, new stream
    assert fleet.logins_to(server) == logins
    assert again.via == VIA_STREAM


def test_an_agent_daemon_restarted_under_an_open_stream_is_read_through_it(
    fleet: Fleet, tmp_path: Path
) -> None:
    agents = AgentFleet()
    try:
        agent = agents.add("gpu1", FakeState(gpus=[make_gpu(0, utilization_gpu=10)]))
        agents.start(interval=0.5)
        server = fleet.add(
            "gpu1",
            behaviour=f"GPUMON_STATE_DIR={agent.state_dir} exec {{agent}} $GPUMON_FAKE_ARGS",
            stream=False,  # the real agent: it speaks the protocol itself
        )
        fleet.start()
        config = fleet.config(tmp_path, stale_after_s=3600.0)
        with Poller(config) as poller:
            before = sweep(poller)["gpu1"]
            pid = stream_pid(fleet, server)
            agent.nvml.state.gpus[0].utilization_gpu = 77
            agent.nvml.write()
            agents.restart(interval=0.5)  # systemctl restart gpumon-agent
            wait_for(
                "the new daemon's snapshot",
                lambda: b'"utilization_pct": 77' in agent.snapshot.read_bytes(),
            )
            after = sweep(poller)["gpu1"]
            assert stream_pid(fleet, server) == pid  # the same stream process answered
    finally:
        agents.close()
    assert before.on and before.via == VIA_NEW_STREAM, before
    assert after.on and after.via == VIA_STREAM, after
    assert before.report.gpus[0].utilization_pct == 10
    assert after.report.gpus[0].utilization_pct == 77  # the new daemon's snapshot
    # Reports are stamped to the second: a quick restart may fall in the same one (the 77 above
    # is what tells the new daemon's snapshot from the old).
    assert after.report.generated_at >= before.report.generated_at


def test_ten_megabytes_on_an_open_stream_are_cut_and_the_stream_reopened(
    fleet: Fleet, tmp_path: Path
) -> None:
    server = fleet.add("gpu1")
    fleet.start()
    config = fleet.config(tmp_path, command_timeout_s=5.0)
    with Poller(config) as poller:
        sweep(poller)
        fleet.set_behaviour(server, HUGE_LINE)
        huge = sweep(poller)["gpu1"]
        fleet.set_behaviour(server, REPORT)
        after = sweep(poller)["gpu1"]
    assert not huge.on and huge.reason_code == codes.BAD_OUTPUT, huge
    assert "more than 1048576 bytes" in huge.reason and "stopped reading" in huge.reason
    assert huge.via == VIA_STREAM
    assert huge.elapsed_s < config.poll.command_timeout_s + SLACK_S  # cut, not waited out
    assert after.on and (after.reused, after.via) == (True, VIA_NEW_STREAM), after


def test_an_agent_error_on_a_stream_is_off_with_its_words_and_the_stream_stays(
    fleet: Fleet, tmp_path: Path
) -> None:
    server = fleet.add("gpu1")
    fleet.start()
    with Poller(fleet.config(tmp_path)) as poller:
        sweep(poller)
        fleet.set_behaviour(server, STREAM_ERROR)
        failed = sweep(poller)["gpu1"]
        fleet.set_behaviour(server, REPORT)
        after = sweep(poller)["gpu1"]
    assert not failed.on and failed.reason_code == codes.AGENT_FAILED, failed
    assert failed.reason == "agent failed: could not sample: RuntimeError: NVML exploded"
    assert after.on and after.via == VIA_STREAM  # the same stream: the agent was still there


def test_streams_off_polls_one_shot(fleet: Fleet, tmp_path: Path) -> None:
    fleet.add("gpu1", behaviour=REAL_AGENT)
    fleet.start()
    with Poller(fleet.config(tmp_path, stream=False)) as poller:
        results = [sweep(poller)["gpu1"] for _ in range(2)]
    assert [(r.on, r.via) for r in results] == [(True, VIA_ONESHOT)] * 2


# --- what the forced command refuses --------------------------------------------------------


@pytest.fixture
def transport(fleet: Fleet, tmp_path: Path) -> Iterator[paramiko.Transport]:
    fleet.add("gpu1", behaviour=REAL_AGENT)
    fleet.start()
    with Poller(fleet.config(tmp_path)) as poller:
        dest = resolve(poller.config, "gpu1", poller.ssh_config)
        conn = poller.opener.open(dest, Attempt("gpu1"))
        try:
            yield conn.transport
        finally:
            conn.close()


def run(
    transport: paramiko.Transport, command: str, stdin: bytes = b""
) -> tuple[int, bytes, bytes]:
    channel = transport.open_session()
    channel.settimeout(30)
    channel.exec_command(command)
    if stdin:
        channel.sendall(stdin)
    channel.shutdown_write()
    out = b"".join(iter(lambda: channel.recv(65536), b""))
    err = b"".join(iter(lambda: channel.recv_stderr(65536), b""))
    return channel.recv_exit_status(), out, err


@pytest.mark.parametrize(
    "command",
    [
        "id",
        "touch {dir}/pwned",
        "gpumon-agent report --json; touch {dir}/pwned",
        "gpumon-agent claims --json",
        "gpumon-agent stream --state-dir /etc",
        "gpumon-agent run --metrics 0.0.0.0:9835",
        "",
    ],
)
def test_the_forced_command_refuses_any_other_request(
    fleet: Fleet, transport: paramiko.Transport, command: str
) -> None:
    code, out, err = run(transport, command.format(dir=fleet.root))
    assert code == 2
    assert out == b""
    assert b"gpumon-agent ssh: " in err and b"this key may only run" in err
    assert not (fleet.root / "pwned").exists()


def test_a_request_line_other_than_report_ends_the_stream(
    fleet: Fleet, transport: paramiko.Transport
) -> None:
    channel = transport.open_session()
    channel.settimeout(30)
    channel.exec_command("gpumon-agent stream")
    lines = channel.makefile("rb")
    assert b'"gpumon.stream"' in lines.readline()  # the hello
    channel.sendall(b"report\n")
    Report.from_json(lines.readline())
    channel.sendall(b"shell\n")
    assert b"refused: unknown request 'shell'" in lines.readline()
    assert lines.readline() == b""  # and it ended
    assert channel.recv_exit_status() == 2
    assert b"refused" in channel.makefile_stderr("rb").read()


def test_requests_sent_before_the_answer_end_the_stream(
    fleet: Fleet, transport: paramiko.Transport
) -> None:
    code, out, _ = run(transport, "gpumon-agent stream", b"report\nreport\n")
    _hello, refusal = out.splitlines()
    assert b"refused: one request at a time" in refusal
    assert code == 2


def test_gpumon_check_names_the_servers_still_on_the_old_forced_command(
    fleet: Fleet, tmp_path: Path
) -> None:
    import io

    from gpumon.check import check

    fleet.add("current", behaviour=REAL_AGENT)
    fleet.add("behind1", behaviour=REAL_AGENT, keys=OLD)
    fleet.add("behind2", behaviour=REAL_AGENT, keys=OLD)
    old_agent = fleet.add("oldagent", behaviour=OLD_AGENT, keys=PLAIN, stream=False)
    old_agent.report = canned_report(old_agent.name, old_agent.address)
    fleet.start()
    config = fleet.config(tmp_path)
    config.poll.servers_from_sheet = False
    config.sheet.path = str(tmp_path / "sheet.xlsx")
    config.sheet.add_rows = True
    out = io.StringIO()
    check(config, out)
    lines = out.getvalue().splitlines()

    def line(start: str) -> str:
        return next(x for x in lines if x.startswith(start))

    assert "new stream" in line("ok   current: ON")
    assert not [x for x in lines if x.startswith("     current: one-shot")]
    assert "old forced command" in line("ok   behind1: ON")
    assert "old `gpumon-agent report --json`" in line("     behind1: one-shot:")
    assert "has no `stream`" in line("     oldagent: one-shot:")
    summary = line("     2 server(s) still on the old forced command")
    assert summary.endswith(
        ': behind1, behind2 — authorized_keys there should say command="gpumon-agent ssh" '
        "(deploy/ssh/README.md)"
    )
