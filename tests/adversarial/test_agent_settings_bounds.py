"""The agent's own settings (GPUMON_* variables and the flags that override them) are parsed in
one place with bounds: NaN, infinities, zero, negative and absurd values are refused with an
error naming the variable and the range — a clear message from the commands, a ClaimError (never
SystemExit) inside a trainer's `with claim()`."""

from __future__ import annotations

import subprocess

import pytest
from agent_proc import AGENT, agent_env

from gpumon.config import Config, PollConfig, ServerEntry
from gpumon.poll.poller import Poller
from gpumon_agent import entry
from gpumon_agent.claims import ClaimError
from gpumon_agent.hook import claim
from gpumon_agent.settings import BOUNDS, AgentSettings, SettingsError
from harness.fakenvml import FakeState

BAD = ["nan", "inf", "-inf", "0", "-1", "1e-9", "1e300", "abc", "2 s"]
VARIABLES = [variable for variable, *_ in BOUNDS.values()]


@pytest.mark.parametrize("variable", VARIABLES)
@pytest.mark.parametrize("raw", BAD)
def test_a_bad_variable_is_refused_naming_it(variable, raw):
    with pytest.raises(SettingsError) as err:
        AgentSettings.from_env({variable: raw})
    message = str(err.value)
    assert message.startswith(f"{variable}=")
    assert "give seconds from" in message or "is not a number" in message


def test_values_within_bounds_are_taken_and_empty_means_default():
    s = AgentSettings.from_env(
        {
            "GPUMON_INTERVAL": "0.1",
            "GPUMON_WINDOW": "86400",
            "GPUMON_IDLE_AFTER": "",
            "GPUMON_MAX_AGE": "5",
        }
    )
    assert (s.interval_s, s.window_s, s.idle_after_s, s.max_age_s) == (0.1, 86400.0, 600.0, 5.0)


@pytest.mark.parametrize(
    "argv, named",
    [
        (["run"], "GPUMON_INTERVAL=nan"),
        (["run", "--interval", "nan"], "--interval=nan"),
        (["run", "--interval", "1e-9"], "--interval=1e-09"),
        (["run", "--window", "inf"], "--window=inf"),
        (["report", "--json", "--max-age", "-5"], "--max-age=-5.0"),
    ],
)
def test_commands_exit_2_with_the_message_never_a_traceback(tmp_path, fake_nvml, argv, named):
    fake = fake_nvml(FakeState.with_gpus(1))
    env = agent_env(fake.env(), tmp_path / "state")
    if argv == ["run"]:
        env["GPUMON_INTERVAL"] = "nan"
    done = subprocess.run([str(AGENT), *argv], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith(f"gpumon-agent: {named}")
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "state").exists()  # refused before anything was made


def test_a_trainers_claim_gets_a_claim_error_not_system_exit(monkeypatch, tmp_path):
    monkeypatch.setenv("GPUMON_IDLE_AFTER", "nan")
    monkeypatch.setenv("GPUMON_CLAIMS_DIR", str(tmp_path / "claims"))
    with pytest.raises(ClaimError, match="GPUMON_IDLE_AFTER=nan: give seconds from 1 to"):
        with claim(required=False):
            pass


@pytest.mark.parametrize("raw", ["inf", "nan", "1e9", "0.01"])
def test_the_report_fast_path_takes_no_max_age_the_full_cli_refuses(tmp_path, raw):
    # A fresh snapshot exists; a bad GPUMON_MAX_AGE must reach the CLI's error, not be used.
    state = tmp_path / "state"
    state.mkdir()
    (state / "report.json").write_text('{"schema": "gpumon.report"}\n')
    env = {"GPUMON_STATE_DIR": str(state), "GPUMON_MAX_AGE": raw}
    assert entry.fast_report(["report", "--json"], env) is None
    with pytest.raises(SettingsError, match="GPUMON_MAX_AGE"):
        AgentSettings.from_env(env)


def test_the_fast_paths_bounds_mirror_the_settings():
    assert BOUNDS["max_age_s"][3:5] == entry.MAX_AGE_BOUNDS


def test_the_local_poller_reports_a_bad_variable_as_that_servers_failure(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUMON_MAX_AGE", "nan")
    config = Config(
        path="gpumon.toml",
        state_dir=str(tmp_path / "state"),
        poll=PollConfig(ssh_config=str(tmp_path / "none")),
        servers={"here": ServerEntry(name="here", local=True)},
    )
    with Poller(config) as poller:
        result = poller.sweep(["here"])[0]
    assert not result.on
    assert result.reason == (
        "local agent: GPUMON_MAX_AGE=nan: give seconds from 0.1 to 86400 (default 10)"
    )


@pytest.mark.parametrize("raw", ["maybe", "2", "enabled", "tru", "-1", "１"])
def test_a_bad_dcgm_names_switch_is_refused_naming_it(raw):
    with pytest.raises(SettingsError) as err:
        AgentSettings.from_env({"GPUMON_METRICS_DCGM_NAMES": raw})
    assert str(err.value).startswith("GPUMON_METRICS_DCGM_NAMES=")
    assert "give 1 (or true, yes, on) or 0 (or false, no, off)" in str(err.value)


@pytest.mark.parametrize(
    "raw, expected",
    [("1", True), ("TRUE", True), (" yes ", True), ("on", True), ("0", False), ("off", False),
     ("", False)],
)  # fmt: skip
def test_the_dcgm_names_switch_reads_the_usual_words(raw, expected):
    assert AgentSettings.from_env({"GPUMON_METRICS_DCGM_NAMES": raw}).metrics_dcgm_names is expected
