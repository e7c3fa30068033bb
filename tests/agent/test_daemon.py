"""`gpumon-agent run`: a real daemon subprocess over the fake NVML library keeps the snapshot that
`report` prints, follows the GPUs as they change, survives failing samples, and stops cleanly."""

from __future__ import annotations

import os
import re
import signal
import stat
import subprocess
import threading

import pytest
from agent_proc import AGENT, Daemon, agent_env, report_json, wait_for

from gpumon_agent.daemon import DaemonState, loop, tick_once
from gpumon_agent.report import (
    SOURCE_DAEMON,
    SOURCE_ONESHOT,
    HealthWarning,
    Host,
    Report,
    utc_iso,
)
from gpumon_agent.settings import AgentSettings
from gpumon_agent.statelog import StateLog
from harness.fakenvml import FakeState

FAST = ("--interval", "0.2")


def test_report_follows_the_running_daemon(tmp_path, fake_nvml):
    fake = fake_nvml(FakeState.with_gpus(2, utilization_gpu=37))
    state = tmp_path / "state"
    env = agent_env(fake.env(), state)
    with Daemon(env, state, FAST) as daemon:
        daemon.wait_snapshot()
        report, _ = report_json(env)
        assert report.source == SOURCE_DAEMON
        assert report.interval_s == 0.2
        assert [g.utilization_pct for g in report.gpus] == [37.0, 37.0]

        fake.write(FakeState.with_gpus(2, utilization_gpu=88))

        def util_now() -> bool:
            return [g.utilization_pct for g in report_json(env)[0].gpus] == [88.0, 88.0]

        wait_for("report to show the new utilization", util_now, timeout=20, every=0.2)
        assert daemon.stop() == 0


def test_killed_daemon_goes_stale_and_report_samples_once(tmp_path, fake_nvml):
    fake = fake_nvml(FakeState.with_gpus(1, utilization_gpu=55))
    state = tmp_path / "state"
    env = agent_env(fake.env(), state)
    with Daemon(env, state, FAST) as daemon:
        daemon.wait_snapshot()
        assert daemon.stop(signal.SIGKILL) == -signal.SIGKILL
    assert (state / "report.json").exists()  # left behind, so it goes stale

    def stale_report() -> Report | None:
        report = report_json(env, "--max-age", "0.5")[0]
        return report if report.source == SOURCE_ONESHOT else None

    report = wait_for("the snapshot to go stale", stale_report, timeout=20, every=0.2)
    assert re.fullmatch(r"snapshot \d+ s old \(daemon stopped\?\): sampled once", report.notes[0])
    assert report.gpus[0].utilization_pct == 55.0


def test_sigterm_stops_cleanly_and_leaves_no_partial_file(tmp_path, fake_nvml):
    fake = fake_nvml(FakeState.with_gpus(1))
    state = tmp_path / "state"
    env = agent_env(fake.env(), state)
    with Daemon(env, state, FAST) as daemon:
        daemon.wait_snapshot()
        assert daemon.stop(signal.SIGTERM) == 0
        log = daemon.log()

    assert "got SIGTERM: stopping" in log
    assert log.splitlines()[-1].endswith("INFO stopped")
    assert [n for n in os.listdir(state) if n.endswith(".tmp")] == []
    last = Report.from_json((state / "report.json").read_bytes())  # whole, never half-written
    assert last.source == SOURCE_DAEMON

    def stale_note() -> str | None:
        report = report_json(env, "--max-age", "0.5")[0]
        return report.notes[0] if report.source == SOURCE_ONESHOT else None

    note = wait_for("the stopped daemon's snapshot to go stale", stale_note, timeout=20)
    assert re.fullmatch(r"snapshot \d+ s old \(daemon stopped\?\): sampled once", note)


def test_sigint_stops_it_too(tmp_path, fake_nvml):
    fake = fake_nvml(FakeState.with_gpus(1))
    state = tmp_path / "state"
    with Daemon(agent_env(fake.env(), state), state, FAST) as daemon:
        daemon.wait_snapshot()
        assert daemon.stop(signal.SIGINT) == 0


def test_a_second_daemon_on_the_same_state_dir_refuses(tmp_path, fake_nvml):
    fake = fake_nvml(FakeState.with_gpus(1))
    state = tmp_path / "state"
    env = agent_env(fake.env(), state)
    with Daemon(env, state, FAST) as first:
        first.wait_snapshot()
        second = subprocess.run(
            [str(AGENT), "run", *FAST], env=env, capture_output=True, text=True, timeout=60
        )
        assert second.returncode == 1
        assert f"another gpumon-agent daemon (pid {first.proc.pid}) already runs on" in (
            second.stderr
        )
        assert first.proc.poll() is None
        assert first.stop() == 0


def test_files_get_their_modes_whatever_the_umask(tmp_path, fake_nvml):
    """The unit runs with UMask=0077; `report` (any user) and trainers (any user) still get in."""
    fake = fake_nvml(FakeState.with_gpus(1))
    state = tmp_path / "run" / "gpumon"
    env = agent_env(fake.env(), state)
    with Daemon(env, state, FAST, preexec_fn=lambda: os.umask(0o077)) as daemon:
        daemon.wait_snapshot()
        modes = {n: stat.S_IMODE(os.stat(state / n).st_mode) for n in ("report.json", "claims")}
        dir_mode = stat.S_IMODE(os.stat(state).st_mode)
        assert daemon.stop() == 0
    assert dir_mode == 0o755
    assert modes == {"report.json": 0o644, "claims": 0o1777}


def test_an_unwritable_state_dir_is_a_clear_error(tmp_path, fake_nvml):
    fake = fake_nvml(FakeState.with_gpus(1))
    blocker = tmp_path / "file"
    blocker.write_text("")
    state = blocker / "gpumon"  # below a regular file: cannot be created, even by root

    done = subprocess.run(
        [str(AGENT), "run"],
        env=agent_env(fake.env(), state),
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert done.returncode == 1
    assert f"cannot create the state dir {state}" in done.stderr
    assert "GPUMON_STATE_DIR" in done.stderr


def test_a_claim_shows_on_its_gpu_in_the_daemons_report(tmp_path, fake_nvml):
    fake = fake_nvml(FakeState.with_gpus(2))
    state = tmp_path / "state"
    env = agent_env(fake.env(), state)
    with Daemon(env, state, FAST) as daemon:
        daemon.wait_snapshot()
        claimer = subprocess.Popen(
            [str(AGENT), "claim", "--gpus", "1", "--job", "kws ch32", "--", "sleep", "60"],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:

            def claimed() -> list[str]:
                report = report_json(env)[0]
                return [c.job for c in report.gpus[1].claims]

            assert wait_for("the claim in the report", claimed, timeout=30, every=0.2) == [
                "kws ch32"
            ]
            assert report_json(env)[0].gpus[0].claims == []
        finally:
            claimer.terminate()
            claimer.wait(20)
        assert daemon.stop() == 0


def test_a_lost_gpu_is_reported_and_the_daemon_keeps_going(tmp_path, fake_nvml):
    fake = fake_nvml(FakeState.with_gpus(2))
    state = tmp_path / "state"
    env = agent_env(fake.env(), state)
    with Daemon(env, state, FAST) as daemon:
        daemon.wait_snapshot()
        lost = FakeState.with_gpus(2)
        lost.gpus[1].lost = True
        fake.write(lost)

        def gpu1_lost() -> Report | None:
            report = report_json(env)[0]
            return report if report.gpus[1].state == "lost" else None

        report = wait_for("GPU 1 to be reported lost", gpu1_lost, timeout=20, every=0.2)
        assert report.source == SOURCE_DAEMON
        assert report.gpus[0].state == "ok"
        assert [(w.code, w.gpu_index) for w in gpu_warnings(report)] == [("gpu_lost", 1)]

        fake.write(FakeState.with_gpus(2))  # back on the bus

        def all_ok() -> bool:
            return [g.state for g in report_json(env)[0].gpus] == ["ok", "ok"]

        wait_for("GPU 1 to come back", all_ok, timeout=20, every=0.2)
        assert daemon.stop() == 0


def test_a_hung_nvml_call_does_not_stall_the_snapshot(tmp_path, fake_nvml):
    """NVML can block for minutes on a wedged GPU; the daemon's snapshot must stay fresh."""
    fake = fake_nvml(FakeState.with_gpus(2))
    state = tmp_path / "state"
    env = agent_env(fake.env(), state)
    with Daemon(env, state, FAST) as daemon:
        daemon.wait_snapshot()
        wedged = FakeState.with_gpus(2)
        wedged.gpus[0].hang = ["nvmlDeviceGetUtilizationRates"]
        fake.write(wedged)
        try:

            def gpu0_failing() -> Report | None:
                report = report_json(env, "--max-age", "8")[0]
                return report if report.gpus[0].state != "ok" else None

            report = wait_for("GPU 0's hung call to show", gpu0_failing, timeout=30, every=0.3)
            assert report.source == SOURCE_DAEMON  # still fresh: the daemon kept writing
            assert report.gpus[0].utilization_pct is None
            assert report.gpus[1].state == "ok" and report.gpus[1].utilization_pct == 0.0
        finally:
            fake.write(FakeState.with_gpus(2))  # let the hung call return

        def recovered() -> bool:
            return [g.state for g in report_json(env)[0].gpus] == ["ok", "ok"]

        wait_for("GPU 0 to answer again", recovered, timeout=30, every=0.3)
        assert daemon.stop() == 0


def gpu_warnings(report: Report) -> list[HealthWarning]:
    """The GPU warnings (host ones depend on the machine running the tests)."""
    return [w for w in report.warnings if w.code.startswith("gpu_")]


def test_the_gpu_count_is_remembered_across_restarts(tmp_path, fake_nvml):
    fake = fake_nvml(FakeState.with_gpus(2))
    state = tmp_path / "state"
    env = agent_env(fake.env(), state)
    with Daemon(env, state, FAST) as daemon:
        daemon.wait_snapshot()
        assert daemon.stop() == 0
    assert (state / "gpu-count").read_text() == "2\n"

    fake.write(FakeState.with_gpus(1))  # a GPU fell off while the agent was down

    def oneshot() -> Report | None:
        report = report_json(env, "--max-age", "0.5")[0]
        return report if report.source == SOURCE_ONESHOT else None

    report = wait_for("a one-shot report", oneshot, timeout=20)
    assert [w.code for w in gpu_warnings(report)] == ["gpu_count_dropped"]
    with Daemon(env, state, FAST) as daemon:

        def restarted() -> Report | None:
            report = daemon.wait_snapshot()
            return report if len(report.gpus) == 1 else None

        report = wait_for("the restarted daemon's snapshot", restarted, timeout=20)
        assert [(w.code, w.message) for w in gpu_warnings(report)] == [
            ("gpu_count_dropped", "1 GPUs, had 2")
        ]
        assert daemon.stop() == 0
    assert (state / "gpu-count").read_text() == "2\n"  # still expecting two


# --- in-process: what a real NVML cannot be made to do on cue -----------------------------------


class FlakyComposer:
    """Fails on the samples named in ``fail_on`` (1-based), else returns a small Report."""

    def __init__(self, fail_on: set[int]) -> None:
        self.fail_on = fail_on
        self.calls = 0

    def compose(self) -> Report:
        self.calls += 1
        if self.calls in self.fail_on:
            raise RuntimeError("first sample broke" if self.calls == 1 else "driver went away")
        return Report(generated_at=utc_iso(1_700_000_000 + self.calls), host=Host(hostname="h"))


def test_a_failing_sample_keeps_the_last_good_values_and_says_so(tmp_path, caplog):
    settings = AgentSettings(state_dir=str(tmp_path))
    state = DaemonState()
    composer = FlakyComposer(fail_on={1, 3, 4})
    failures = StateLog()

    def tick() -> Report:
        tick_once(settings, composer, state, failures)
        return Report.from_json((tmp_path / "report.json").read_bytes())

    first = tick()  # fails before any good sample: a report that says why, not nothing
    assert first.nvml.error_code == "sample_failed"
    assert "RuntimeError: first sample broke" in first.notes[0]
    assert state.sample_ok is False

    good = tick()
    assert good.notes == [] and good.generated_at == utc_iso(1_700_000_002)
    assert state.sample_ok is True

    third = tick()
    assert third.generated_at == good.generated_at  # the values keep their own time
    assert re.fullmatch(
        r"sample failed at \S+Z \(RuntimeError: driver went away\); values are from "
        + good.generated_at,
        third.notes[0],
    )
    fourth = tick()
    assert len(fourth.notes) == 1  # notes do not pile up
    assert (state.samples, state.sample_errors) == (4, 3)
    # The same error twice in a row is logged once (with its traceback), not every 2 s.
    logged = [r for r in caplog.records if "sample failed" in r.getMessage()]
    assert [r.getMessage() for r in logged] == [
        "sample failed: RuntimeError: first sample broke",
        "sample failed: RuntimeError: driver went away",
    ]


class FakeClock:
    """Monotonic time that moves only when the daemon samples (``cost``) or sleeps."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.mark.parametrize(
    "costs, expected_starts",
    [
        # Each sample takes 0.3 s of a 2 s period: starts stay on the 2 s grid, no drift.
        ([0.3] * 5, [0.0, 2.0, 4.0, 6.0, 8.0]),
        # A 4.5 s sample skips the slots it overran instead of bursting to catch up.
        ([0.3, 4.5, 0.3, 0.3], [0.0, 2.0, 8.0, 10.0]),
    ],
)
def test_ticks_stay_on_a_fixed_grid(tmp_path, costs, expected_starts):
    settings = AgentSettings(state_dir=str(tmp_path), interval_s=2.0)
    clock = FakeClock()
    stop = threading.Event()
    starts: list[float] = []

    class TimedComposer:
        def compose(self) -> Report:
            starts.append(clock.now - 1000.0)
            clock.now += costs[len(starts) - 1]
            if len(starts) == len(costs):
                stop.set()
            return Report(generated_at=utc_iso(), host=Host(hostname="h"))

    def sleep(seconds: float) -> None:
        assert seconds > 0
        clock.now += seconds

    loop(settings, TimedComposer(), DaemonState(), stop, clock=clock, wait=sleep)

    assert starts == pytest.approx(expected_starts)


def run_with_journal_stream(argv: list[str], env: dict, as_journal: bool) -> tuple[int, str]:
    """Run the agent with stderr into a pipe; with ``as_journal``, JOURNAL_STREAM names that
    pipe as systemd names the journal's stream. (exit status, what it wrote.)"""
    read_end, write_end = os.pipe()
    st = os.fstat(write_end)
    inode = st.st_ino if as_journal else st.st_ino + 1
    env = dict(env, JOURNAL_STREAM=f"{st.st_dev}:{inode}")
    with os.fdopen(read_end) as reader:
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=write_end)
        os.close(write_end)
        text = reader.read()
    return proc.wait(timeout=60), text


def test_under_journald_the_daemons_lines_carry_their_priority(tmp_path, fake_nvml):
    """`journalctl -u gpumon-agent -p warning` shows its errors, not its info lines."""
    fake = fake_nvml(FakeState.with_gpus(1))
    blocker = tmp_path / "file"
    blocker.write_text("")
    env = agent_env(fake.env(), blocker / "gpumon")  # cannot be created: an error, exit 1
    code, text = run_with_journal_stream([str(AGENT), "run"], env, as_journal=True)
    assert code == 1
    assert text.startswith("<3>ERROR cannot create the state dir")
    code, text = run_with_journal_stream([str(AGENT), "run"], env, as_journal=False)
    assert text.split()[2] == "ERROR"  # by hand: date, time, level — no prefix
    assert not text.startswith("<")

    state = tmp_path / "state"
    read_end, write_end = os.pipe()
    st = os.fstat(write_end)
    env = dict(agent_env(fake.env(), state), JOURNAL_STREAM=f"{st.st_dev}:{st.st_ino}")
    proc = subprocess.Popen([str(AGENT), "run", *FAST], env=env, stderr=write_end)
    os.close(write_end)
    with os.fdopen(read_end) as reader:
        first = reader.readline()
        proc.send_signal(signal.SIGTERM)
        rest = reader.read()
    assert proc.wait(timeout=30) == 0
    assert first.startswith("<6>INFO gpumon-agent ")
    assert all(line.startswith(("<6>", "<4>")) for line in rest.splitlines())
