"""`local = true` servers (the embedded default polls this machine): the agent in-process."""

from __future__ import annotations

from pathlib import Path

import pytest

from gpumon.config import Config, PollConfig, ServerEntry
from gpumon.poll.poller import Poller
from gpumon_agent.report import utc_iso
from gpumon_agent.settings import AgentSettings
from gpumon_agent.snapshot import write_snapshot
from harness.sshd import canned_report


def test_a_local_server_reads_the_agents_snapshot_without_ssh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "agent"
    state.mkdir()
    monkeypatch.setenv("GPUMON_STATE_DIR", str(state))
    report = canned_report("here", "127.0.0.1", generated_at=utc_iso())
    write_snapshot(AgentSettings.from_env(), report)
    config = Config(
        path="gpumon.toml",
        state_dir=str(tmp_path / "state"),
        poll=PollConfig(ssh_config=str(tmp_path / "none")),
        servers={"here": ServerEntry(name="here", local=True)},
    )
    with Poller(config) as poller:
        result = poller.sweep(["here"])[0]
    assert result.on, result.reason
    assert result.destination == "local"
    assert result.report == report
