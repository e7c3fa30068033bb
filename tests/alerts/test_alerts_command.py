"""`gpumon alerts`, `gpumon alerts test` and a dry run, as commands (in-process), on a server
whose port refuses, against a real HTTP receiver on loopback."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cli"))
from clikit import clean_env, gpumon_here, local_config

from harness.sshd import RefusedPort


@pytest.fixture
def refused():
    port = RefusedPort("127.0.0.1")
    yield port
    port.close()


def setup(tmp_path: Path, hook, refused, no_nvml_env, alerts: str = "") -> tuple[Path, dict]:
    extra = (
        f'[alerts]\ndown_after_s = 1\nwebhook = "{hook.url()}"\n{alerts}'
        f'[servers.gone]\nhost = "127.0.0.1"\nport = {refused.port}\n'
        f'[poll]\nconnect_timeout_s = 1\nknown_hosts = "{tmp_path}/known_hosts"\n'
    )
    config = local_config(tmp_path / "work", tmp_path / "state", extra=extra)
    text = config.read_text().replace("[poll]\nservers_from_sheet = false\n", "", 1)
    text = text.replace("[poll]\nconnect", "[poll]\nservers_from_sheet = false\nconnect")
    # Only the refused server: this machine's own warnings (its load) are not this test's.
    text = text.replace("[servers.box]\nlocal = true\n", "")
    config.write_text(text)
    return config, clean_env(tmp_path / "home", no_nvml_env)


def push_twice(config: Path, env: dict, cwd: Path):
    """Two pushes more than down_after_s (1 s) apart: the refused server is down."""
    first = gpumon_here("--config", str(config), "push", env=env, cwd=cwd)
    assert first.returncode == 0, first.stderr
    time.sleep(1.1)
    second = gpumon_here("--config", str(config), "push", env=env, cwd=cwd)
    assert second.returncode == 0, second.stderr
    return second


def test_a_dry_run_tells_nothing_and_keeps_no_state(tmp_path, hook, refused, no_nvml_env):
    config, env = setup(tmp_path, hook, refused, no_nvml_env)
    done = gpumon_here("--config", str(config), "push", "--dry-run", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert hook.wait(1, timeout_s=0.3) == []
    assert not (tmp_path / "state" / "history.sqlite3").exists()
    done = push_twice(config, env, tmp_path)
    assert "DOWN    gone: connection refused" in hook.wait(1)[0].text
    assert "alerts: sent through webhook http://127.0.0.1:" in done.stdout


def test_alerts_json_lists_what_is_active(tmp_path, hook, refused, no_nvml_env):
    config, env = setup(tmp_path, hook, refused, no_nvml_env)
    push_twice(config, env, tmp_path)
    listed = gpumon_here("--config", str(config), "alerts", "--json", env=env, cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    data = json.loads(listed.stdout)
    [down] = data["conditions"]
    assert (down["kind"], down["server"]) == ("down", "gone")
    assert down["told_at"] and down["already_down_at_start"]
    [channel] = data["channels"]
    assert channel["ok"] and channel["pending"] == 0 and channel["last_delivered"]
    assert "s3cr3t" not in listed.stdout


def test_alerts_with_no_state_yet(tmp_path, hook, refused, no_nvml_env):
    config, env = setup(tmp_path, hook, refused, no_nvml_env)
    listed = gpumon_here("--config", str(config), "alerts", env=env, cwd=tmp_path)
    assert listed.returncode == 0
    assert "no alert state yet" in listed.stdout
    assert "ok   webhook http://127.0.0.1:" in listed.stdout and "nothing sent yet" in listed.stdout


def test_alerts_test_without_a_channel_says_how_to_set_one(tmp_path, no_nvml_env):
    config = local_config(tmp_path / "work", tmp_path / "state")
    env = clean_env(tmp_path / "home", no_nvml_env)
    done = gpumon_here("--config", str(config), "alerts", "test", env=env, cwd=tmp_path)
    assert done.returncode == 2
    assert "no alert channel" in done.stderr and "[alerts] webhook" in done.stderr


def test_alerts_test_names_the_channel_that_fails(tmp_path, hook, refused, no_nvml_env):
    hook.status = 500
    config, env = setup(tmp_path, hook, refused, no_nvml_env)
    done = gpumon_here("--config", str(config), "alerts", "test", env=env, cwd=tmp_path)
    assert done.returncode == 1
    assert "FAIL webhook http://127.0.0.1:" in done.stdout and "HTTP 500" in done.stdout
    assert "s3cr3t" not in done.stdout + done.stderr
