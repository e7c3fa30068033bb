"""Auth: keys from files or a real ssh-agent; never passwords, never a prompt; a stuck auth
costs its own deadline."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpumon.poll import result as codes
from gpumon.poll.poller import Poller
from harness.sshd import Fleet
from harness.timing import SLACK_S

SLEEP = shutil.which("sleep") or "/bin/sleep"


@pytest.fixture(scope="module")
def fleet(isolated_home: Path) -> Iterator[Fleet]:
    fleet = Fleet()
    fleet.add("keyed")
    fleet.add(
        "password-only",
        sshd_options=("PubkeyAuthentication no", "PasswordAuthentication yes"),
    )
    # A key lookup that never returns (an LDAP server down, say): sshd stalls in auth.
    fleet.add(
        "auth-hangs",
        sshd_options=(
            "AuthorizedKeysFile none",
            f"AuthorizedKeysCommand {SLEEP} 60",
            "AuthorizedKeysCommandUser nobody",
        ),
    )
    fleet.start()
    yield fleet
    fleet.close()


@pytest.fixture
def agent(tmp_path: Path, fleet: Fleet, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A real ssh-agent holding the central key (and nothing on disk for gpumon to find)."""
    sock = tmp_path / "agent.sock"
    proc = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 5
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        env = dict(os.environ, SSH_AUTH_SOCK=str(sock))
        subprocess.run(["ssh-add", str(fleet.client_key)], env=env, check=True, capture_output=True)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        yield sock
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(5)


def test_a_key_held_by_ssh_agent_logs_in(fleet: Fleet, tmp_path: Path, agent: Path) -> None:
    config = fleet.config(tmp_path, identity_files=[])
    with Poller(config) as poller:
        result = poller.sweep(["keyed"])[0]
    assert result.on, result.reason


def test_without_any_key_the_reason_says_where_keys_come_from(fleet: Fleet, tmp_path: Path) -> None:
    config = fleet.config(tmp_path, identity_files=[])
    with Poller(config) as poller:
        result = poller.sweep(["keyed"])[0]
    assert result.reason_code == codes.AUTH_FAILED
    assert "no key to log in as" in result.reason
    assert "ssh-agent" in result.reason


def test_a_passphrase_protected_key_is_not_prompted_for(fleet: Fleet, tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    shutil.copy(fleet.client_key, locked)
    os.chmod(locked, 0o600)
    subprocess.run(
        ["ssh-keygen", "-q", "-p", "-N", "secret", "-f", str(locked)],
        check=True,
        capture_output=True,
    )
    config = fleet.config(tmp_path, identity_files=[str(locked)])
    with Poller(config) as poller:
        result = poller.sweep(["keyed"])[0]
    assert result.reason_code == codes.AUTH_FAILED
    assert "passphrase-protected" in result.reason
    assert "ssh-add" in result.reason


def test_a_server_that_wants_a_password_is_off_not_prompted(fleet: Fleet, tmp_path: Path) -> None:
    with Poller(fleet.config(tmp_path)) as poller:
        result = poller.sweep(["password-only"])[0]
    assert not result.on
    assert result.reason_code == codes.AUTH_FAILED
    assert "does not accept keys (allows: password" in result.reason
    assert "never uses passwords" in result.reason


def test_a_stuck_auth_times_out_at_auth(fleet: Fleet, tmp_path: Path) -> None:
    config = fleet.config(tmp_path, auth_timeout_s=1.0)
    with Poller(config) as poller:
        started = time.monotonic()
        results = {r.name: r for r in poller.sweep(["auth-hangs", "keyed"])}
        elapsed = time.monotonic() - started
    stuck = results["auth-hangs"]
    assert stuck.reason_code == codes.TIMEOUT
    assert stuck.stage == "auth"
    assert stuck.reason == "timed out at auth (1 s)"
    assert elapsed < config.poll.auth_timeout_s + SLACK_S
    assert results["keyed"].on
