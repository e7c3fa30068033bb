"""`gpumon-agent report`: the daemon's fresh snapshot as it is, fast (no NVML, no psutil); else a
sample taken once, saying so — never an error for a missing or unreadable state dir."""

from __future__ import annotations

import os
import pwd
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from agent_proc import AGENT, agent_env, imported_modules, report_json

from gpumon_agent import entry
from gpumon_agent.cli import summarize
from gpumon_agent.report import (
    SOURCE_DAEMON,
    SOURCE_ONESHOT,
    ClaimInfo,
    Gpu,
    GpuProcess,
    HealthWarning,
    Host,
    Report,
    utc_iso,
)
from gpumon_agent.settings import AgentSettings
from gpumon_agent.snapshot import latest_report, read_snapshot, write_snapshot
from gpumon_agent.usage import USE_BUSY, USE_UNKNOWN, judge_use
from harness.fakenvml import ONLY_V3_PROCESS_QUERIES, FakeProcess, FakeState, make_gpu


def daemon_report(hostname: str = "gpu7") -> Report:
    return Report(
        generated_at=utc_iso(1_700_000_000),
        host=Host(hostname=hostname, primary_ip="192.0.2.7", load_avg=[0.5, 0.25, 0.125]),
        source=SOURCE_DAEMON,
        interval_s=2.0,
        gpus=[Gpu(index=0, uuid="GPU-aaaa", name="NVIDIA A100", utilization_pct=42.0)],
    )


def fresh_snapshot(state_dir: Path) -> bytes:
    state_dir.mkdir(parents=True, exist_ok=True)
    write_snapshot(AgentSettings(state_dir=str(state_dir)), daemon_report())
    return (state_dir / "report.json").read_bytes()


def test_fresh_snapshot_is_printed_as_is_without_importing_nvml_or_psutil(tmp_path, no_nvml_env):
    state = tmp_path / "state"
    written = fresh_snapshot(state)
    env = agent_env(no_nvml_env, state)
    env["PYTHONPROFILEIMPORTTIME"] = "1"

    done = subprocess.run([str(AGENT), "report", "--json"], env=env, capture_output=True)

    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == written
    modules = imported_modules(done.stderr.decode())
    assert {"gpumon_agent.entry", "gpumon_agent.snapshot"} <= modules  # the probe sees them
    heavy = {"pynvml", "psutil", "gpumon_agent.compose", "gpumon_agent.report", "json"}
    # The console script answers before the full CLI: its argparse/dataclasses/typing cost more
    # than everything else the command does.
    heavy |= {"gpumon_agent.cli", "gpumon_agent.settings", "argparse", "dataclasses", "typing"}
    assert heavy & modules == set(), "imported on the fast path"


@pytest.mark.parametrize(
    "argv",
    [
        ["report", "--json"],
        ["report", "--json", "--state-dir", "{state}"],
        ["report", "--state-dir={state}", "--json", "--max-age", "30"],
        ["report", "--json", "--claims-dir", "/elsewhere", "--max-age=30"],
    ],
)
def test_fast_path_accepts_the_report_command_lines(tmp_path, argv):
    state = tmp_path / "state"
    written = fresh_snapshot(state)
    argv = [a.replace("{state}", str(state)) for a in argv]
    code = subprocess.run(
        [sys.executable, "-c", FAST_ONLY, *argv],
        env={"GPUMON_STATE_DIR": str(state), "PATH": os.environ["PATH"]},
        capture_output=True,
    )
    assert code.returncode == 0, code.stderr.decode()
    assert code.stdout == written


# Runs only the fast path; exits 3 where it would hand over to the full CLI.
FAST_ONLY = """
import sys
from gpumon_agent.entry import fast_report
code = fast_report(sys.argv[1:])
sys.exit(3 if code is None else code)
"""


@pytest.mark.parametrize(
    "argv, env",
    [
        (["report"], {}),  # the human summary
        (["report", "--json", "--max-age", "0"], {}),  # the CLI explains the bad value
        (["report", "--json", "--max-age"], {}),
        (["report", "--json", "--verbose"], {}),
        (["report", "--json"], {"GPUMON_MAX_AGE": "soon"}),
        (["--version"], {}),
        (["claims", "--json"], {}),
        (["report", "--json"], {"GPUMON_STATE_DIR": "/nonexistent/gpumon"}),
    ],
)
def test_fast_path_hands_everything_else_to_the_full_cli(tmp_path, argv, env):
    state = tmp_path / "state"
    fresh_snapshot(state)
    done = subprocess.run(
        [sys.executable, "-c", FAST_ONLY, *argv],
        env={"GPUMON_STATE_DIR": str(state), "PATH": os.environ["PATH"], **env},
        capture_output=True,
    )
    assert (done.returncode, done.stdout) == (3, b"")


def test_fast_path_defaults_mirror_the_agent_settings():
    defaults = AgentSettings()
    assert (
        defaults.state_dir,
        defaults.max_age_s,
    ) == (entry.DEFAULT_STATE_DIR, entry.DEFAULT_MAX_AGE_S)


def test_without_a_daemon_report_samples_once_and_says_so(tmp_path, fake_nvml):
    fake = fake_nvml(FakeState.with_gpus(2, utilization_gpu=37))
    env = agent_env(fake.env(), tmp_path / "never-created")

    report, _ = report_json(env)

    assert report.source == SOURCE_ONESHOT
    assert report.notes[0] == (
        f"no agent daemon running ({tmp_path / 'never-created'} does not exist): sampled once"
    )
    assert [g.utilization_pct for g in report.gpus] == [37.0, 37.0]
    assert not (tmp_path / "never-created").exists()  # a one-shot leaves the state dir alone


def test_empty_state_dir_means_no_daemon(tmp_path, fake_nvml):
    fake = fake_nvml(FakeState.with_gpus(1))
    (tmp_path / "state").mkdir()

    report, _ = report_json(agent_env(fake.env(), tmp_path / "state"))

    assert report.source == SOURCE_ONESHOT
    assert report.notes[0] == "no agent daemon running: sampled once"


def test_stale_snapshot_is_resampled_with_its_age_in_the_note(tmp_path, fake_nvml):
    fake = fake_nvml(FakeState(gpus=[make_gpu(0, utilization_gpu=81)]))
    state = tmp_path / "state"
    fresh_snapshot(state)
    old = time.time() - 95
    os.utime(state / "report.json", (old, old))

    report, _ = report_json(agent_env(fake.env(), state))

    assert report.source == SOURCE_ONESHOT
    assert re.fullmatch(
        r"snapshot 9[5-9] s old \(daemon stopped\?\): sampled once", report.notes[0]
    )
    assert report.gpus[0].utilization_pct == 81.0  # sampled now, not the snapshot's 42


def test_max_age_flag_decides_what_is_stale(tmp_path, fake_nvml):
    fake = fake_nvml(FakeState.with_gpus(1))
    state = tmp_path / "state"
    fresh_snapshot(state)
    old = time.time() - 30
    os.utime(state / "report.json", (old, old))
    env = agent_env(fake.env(), state)

    assert report_json(env, "--max-age", "60")[0].source == SOURCE_DAEMON
    assert report_json(env, "--max-age", "10")[0].source == SOURCE_ONESHOT


def test_unreadable_state_dir_is_not_an_error(tmp_path, fake_nvml):
    fake = fake_nvml(FakeState.with_gpus(1))
    not_a_dir = tmp_path / "state"
    not_a_dir.write_text("a file where the state dir should be")

    report, _ = report_json(agent_env(fake.env(), not_a_dir))

    assert report.source == SOURCE_ONESHOT
    assert report.notes[0].startswith(f"snapshot {not_a_dir / 'report.json'} unreadable (")
    assert report.notes[0].endswith("): sampled once")
    assert len(report.gpus) == 1


def test_a_foreign_file_in_place_of_the_snapshot_is_not_trusted(tmp_path, fake_nvml):
    fake = fake_nvml(FakeState.with_gpus(1))
    state = tmp_path / "state"
    state.mkdir()
    (state / "report.json").write_text("<html>not a report</html>\n")

    report, _ = report_json(agent_env(fake.env(), state))

    assert report.source == SOURCE_ONESHOT
    assert report.notes[0] == f"snapshot {state / 'report.json'} is not a report: sampled once"


def test_a_busy_gpu_behind_a_v3_only_driver_reads_busy_with_its_user(tmp_path, fake_nvml):
    # The case, end to end: a real process on GPU 0, a driver whose only process queries
    # are _v3. In .venv-oldest this runs under nvidia-ml-py 11.450.51 and psutil 5.8.0.
    gpu = make_gpu(0, memory_used=6 << 30, compute_processes=[FakeProcess(os.getpid(), 6 << 30)])
    fake = fake_nvml(FakeState(gpus=[gpu]), omit=ONLY_V3_PROCESS_QUERIES)

    report, _ = report_json(agent_env(fake.env(), tmp_path / "state"))

    [g] = report.gpus
    [p] = g.processes
    assert (p.pid, p.gpu_memory_bytes) == (os.getpid(), 6 << 30)
    assert p.user == pwd.getpwuid(os.geteuid()).pw_name and "python" in p.command
    assert (g.processes_error, g.unclaimed_use) == (None, True)
    assert judge_use(g).state == USE_BUSY


def test_process_queries_not_supported_read_as_unknown_never_as_idle(tmp_path, fake_nvml):
    state = FakeState.with_gpus(1, compute_processes=[FakeProcess(os.getpid())])
    fake = fake_nvml(state.processes_fail("NOT_SUPPORTED"))
    env = agent_env(fake.env(), tmp_path / "state")

    report, _ = report_json(env)
    text = subprocess.run(
        [str(AGENT), "report"], env=env, capture_output=True, text=True, check=True
    ).stdout

    [g] = report.gpus
    assert g.processes is None  # not []: nobody knows who runs there
    assert "nvmlDeviceGetComputeRunningProcesses_v3: Not Supported" in g.processes_error
    assert (g.unclaimed_use, g.claimed_idle, g.idle_since) == (None, False, None)
    gpu_warnings = [w for w in report.warnings if w.gpu_index is not None]  # not this host's load
    assert [(w.code, w.gpu_index) for w in gpu_warnings] == [("gpu_processes_unknown", 0)]
    assert gpu_warnings[0].message.startswith("GPU 0 processes unknown: nvmlDevice")
    assert judge_use(g).state == USE_UNKNOWN
    assert "      processes unknown: nvmlDeviceGetComputeRunningProcesses_v3" in text


def test_without_json_a_short_human_summary(tmp_path, no_nvml_env):
    state = tmp_path / "state"
    fresh_snapshot(state)

    done = subprocess.run(
        [str(AGENT), "report"], env=agent_env(no_nvml_env, state), capture_output=True, text=True
    )

    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("gpu7  192.0.2.7  ")
    assert "(daemon, " in lines[0]
    assert any(re.match(r"\s+GPU 0 NVIDIA A100\s+util 42%", line) for line in lines)


def test_summary_of_a_oneshot_without_nvml_says_why(tmp_path, no_nvml_env):
    done = subprocess.run(
        [str(AGENT), "report"],
        env=agent_env(no_nvml_env, tmp_path / "nothing"),
        capture_output=True,
        text=True,
    )

    assert done.returncode == 0, done.stderr
    assert "(oneshot, " in done.stdout.splitlines()[0]
    assert "  NVML unavailable: " in done.stdout
    assert "  note: no agent daemon running" in done.stdout


def test_gpumon_agent_report_via_the_central_command_is_the_same(tmp_path, no_nvml_env):
    state = tmp_path / "state"
    written = fresh_snapshot(state)
    gpumon = Path(sys.executable).with_name("gpumon")

    done = subprocess.run(
        [str(gpumon), "agent", "report", "--json"],
        env=agent_env(no_nvml_env, state),
        capture_output=True,
    )

    assert done.returncode == 0, done.stderr.decode()
    assert done.stdout == written


def test_latest_report_in_process_reads_a_fresh_snapshot(tmp_path):
    state = tmp_path / "state"
    fresh_snapshot(state)

    report = latest_report(AgentSettings(state_dir=str(state)))

    assert report == daemon_report()


def test_read_snapshot_tells_fresh_from_stale_by_mtime(tmp_path):
    state = tmp_path / "state"
    written = fresh_snapshot(state)
    settings = AgentSettings(state_dir=str(state), max_age_s=10)
    mtime = (state / "report.json").stat().st_mtime

    assert read_snapshot(settings, now=mtime + 9) == (written, True, "")
    data, fresh, why = read_snapshot(settings, now=mtime + 11)
    assert (data, fresh, why) == (
        written,
        False,
        "snapshot 11 s old (daemon stopped?): sampled once",
    )
    data, fresh, why = read_snapshot(settings, now=mtime - 60)
    assert not fresh and why.startswith("snapshot dated 60 s in the future (clock changed?)")


def test_summary_names_processes_claims_warnings_and_notes():
    report = daemon_report()
    gpu = report.gpus[0]
    gpu.processes = [GpuProcess(pid=4242, user="alice", command="python train.py")]
    gpu.claims = [ClaimInfo(job="kws ch32", user="alice", pid=4242, started_at=utc_iso(0))]
    report.warnings = [HealthWarning(code="gpu_hot", message="91 C", gpu_index=0)]
    report.notes.append("sample failed at 2024-01-01T00:00:00Z (X: y)")

    lines = summarize(report, now=1_700_000_005).splitlines()

    assert lines[0] == "gpu7  192.0.2.7  2023-11-14T22:13:20Z (daemon, 5 s ago)"
    assert "      pid 4242 alice: python train.py" in lines
    assert "      claimed by alice for 'kws ch32' (pid 4242)" in lines
    assert "  warning GPU 0: 91 C (gpu_hot)" in lines
    assert lines[-1] == "  note: sample failed at 2024-01-01T00:00:00Z (X: y)"


# --- docs/report-schema.md stays true to the code ----------------------------------------------

SCHEMA_DOC = Path(__file__).resolve().parents[2] / "docs" / "report-schema.md"


def test_schema_doc_names_every_field_and_code():
    import dataclasses

    from gpumon_agent import report as schema
    from gpumon_agent.health import HEALTH_CODES
    from gpumon_agent.nvml import NVML_ERROR_CODES, THROTTLE_REASONS

    doc = SCHEMA_DOC.read_text()
    records = [
        schema.Report,
        schema.Host,
        schema.Address,
        schema.LoggedInUser,
        schema.Nvml,
        schema.Gpu,
        schema.GpuProcess,
        schema.ClaimInfo,
        schema.HealthWarning,
        schema.ClaimFileProblem,
    ]
    fields = {f.name for record in records for f in dataclasses.fields(record)}
    codes = set(HEALTH_CODES) | set(NVML_ERROR_CODES) | {name for _, name in THROTTLE_REASONS}
    missing = sorted(name for name in fields | codes if f"`{name}`" not in doc)
    assert missing == []
    example = doc.split("## Example", 1)[1].split("```json", 1)[1].split("```", 1)[0]
    assert Report.from_json(example).version == 2  # the example is a valid Report
