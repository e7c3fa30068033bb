"""~/.ssh/config ProxyCommand: the connection runs through the command, as with OpenSSH — a
relay like `nc %h %p` (tests/harness/relay.py) and `ssh -W %h:%p` through a jump sshd; a
failing or silent proxy costs that server only, says why, and leaves no process behind."""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpumon.config import ConfigError
from gpumon.poll.inventory import resolve
from gpumon.poll.poller import Poller
from harness.sshd import JUMP, Fleet

RELAY = Path(__file__).resolve().parents[1] / "harness" / "relay.py"


@pytest.fixture(scope="module")
def fleet(isolated_home: Path) -> Iterator[Fleet]:
    fleet = Fleet()
    fleet.add("viaproxy")
    fleet.add("gateway", keys=JUMP)
    fleet.start()
    yield fleet
    fleet.close()


def proxied_config(fleet: Fleet, tmp_path: Path, proxy: str, name: str = "viaproxy"):
    """The server reached only through ``proxy`` (written as its ssh config ProxyCommand)."""
    config = fleet.config(tmp_path)
    server = fleet.server(name)
    entry = config.servers[name]
    entry.host = entry.port = None  # from the ssh config, as a lab's ~/.ssh/config says
    Path(config.poll.ssh_config).write_text(
        f"Host {name}\n  HostName {server.address}\n  Port {fleet.port}\n  ProxyCommand {proxy}\n"
    )
    config.servers = {name: entry}
    return config


def relay(runs: Path) -> str:
    return f"{sys.executable} {RELAY} %h %p {runs}"


def alive(pids: list[int]) -> list[int]:
    out = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                state = f.read().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z":
            out.append(pid)
    return out


def test_a_server_behind_a_proxycommand_is_polled_through_it(fleet: Fleet, tmp_path: Path):
    runs = tmp_path / "runs"
    config = proxied_config(fleet, tmp_path, relay(runs))
    with Poller(config) as poller:
        first, second = poller.sweep(["viaproxy"]), poller.sweep(["viaproxy"])
    result = first[0]
    assert result.on, result.reason
    assert "via ProxyCommand" in result.destination
    assert result.report is not None and result.report.host.hostname == "viaproxy"
    assert second[0].on and second[0].reused  # the proxied connection is kept too
    pids = [int(p) for p in runs.read_text().split()]
    assert len(pids) == 1  # one proxy process for both sweeps
    deadline = time.monotonic() + 3
    while alive(pids) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert alive(pids) == []  # closing the poller ended the proxy


@pytest.mark.skipif(shutil.which("ssh") is None, reason="needs the OpenSSH client")
def test_ssh_dash_w_through_a_jump_sshd_as_proxycommand(fleet: Fleet, tmp_path: Path):
    gateway = fleet.server("gateway")
    known = tmp_path / "known_hosts"
    known.write_text(fleet.known_hosts_text())
    proxy = (
        f"ssh -F /dev/null -o BatchMode=yes -o UserKnownHostsFile={known} "
        f"-o StrictHostKeyChecking=yes -i {fleet.client_key} -p {fleet.port} "
        f"-W %h:%p {fleet.user.pw_name}@{gateway.address}"
    )
    result = Poller(proxied_config(fleet, tmp_path, proxy)).sweep(["viaproxy"])[0]
    assert result.on, result.reason


def test_a_proxycommand_that_fails_says_so_with_its_stderr(fleet: Fleet, tmp_path: Path):
    config = proxied_config(fleet, tmp_path, "sh -c 'echo gw: no route to viaproxy >&2; exit 7'")
    started = time.monotonic()
    result = Poller(config).sweep(["viaproxy"])[0]
    assert not result.on
    assert result.reason_code == "unreachable"
    assert "exited with status 7" in result.reason
    assert "gw: no route to viaproxy" in result.reason
    assert time.monotonic() - started < 2  # the failure is seen at once, not at a deadline


def test_a_proxycommand_that_never_answers_times_out_and_is_ended(fleet: Fleet, tmp_path: Path):
    pid_file = tmp_path / "proxy.pid"
    config = proxied_config(fleet, tmp_path, f"sh -c 'echo $$ > {pid_file}; exec sleep 600'")
    config.poll.handshake_timeout_s = 0.5
    result = Poller(config).sweep(["viaproxy"])[0]
    assert not result.on and result.reason_code == "timeout"
    assert result.stage == "banner"
    pid = int(pid_file.read_text())
    deadline = time.monotonic() + 3
    while alive([pid]) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert alive([pid]) == []  # no sleep left behind


def test_a_missing_proxy_program_is_an_off_reason(fleet: Fleet, tmp_path: Path):
    config = proxied_config(fleet, tmp_path, "/nonexistent/proxy %h %p")
    result = Poller(config).sweep(["viaproxy"])[0]
    assert not result.on
    assert "/nonexistent/proxy" in result.reason


def test_proxycommand_none_means_a_direct_connection(fleet: Fleet, tmp_path: Path):
    config = proxied_config(fleet, tmp_path, "none")
    assert resolve(config, "viaproxy").proxy_command is None
    assert Poller(config).sweep(["viaproxy"])[0].on


def test_proxyjump_and_proxycommand_together_are_a_config_error(fleet: Fleet, tmp_path: Path):
    config = proxied_config(fleet, tmp_path, relay(tmp_path / "runs"))
    path = Path(config.poll.ssh_config)
    path.write_text(path.read_text() + "  ProxyJump gateway\n")
    with pytest.raises(ConfigError, match="both ProxyJump and ProxyCommand"):
        resolve(config, "viaproxy")
    result = Poller(config).sweep(["viaproxy"])[0]
    assert not result.on and result.reason_code == "config_error"


def test_gpumon_check_names_the_proxycommand(fleet: Fleet, tmp_path: Path):
    import io

    from gpumon.check import check

    config = proxied_config(fleet, tmp_path, relay(tmp_path / "runs"))
    config.poll.servers_from_sheet = False
    config.sheet.path = str(tmp_path / "sheet.xlsx")
    config.sheet.add_rows = True
    out = io.StringIO()
    check(config, out)
    line = next(x for x in out.getvalue().splitlines() if x.startswith("ok   viaproxy"))
    assert "via ProxyCommand" in line and "relay.py" in line


def test_the_relay_refuses_addresses_off_loopback(tmp_path: Path):
    import subprocess

    done = subprocess.run(
        [sys.executable, str(RELAY), "192.0.2.1", "22", str(tmp_path / "runs")],
        capture_output=True,
        text=True,
        timeout=30,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 2 and "not a loopback address" in done.stderr
    assert not os.path.exists(tmp_path / "runs")


@pytest.mark.parametrize("name", ["x;touch {marker}", "$(touch {marker})", "-oProxyCommand=x",
                                  "a b", "`touch {marker}`"])  # fmt: skip
def test_a_name_from_the_sheet_never_reaches_the_proxycommand_shell(
    name, fleet: Fleet, tmp_path: Path
):
    """`Host *` with `ProxyCommand nc %h %p` puts every polled name into a shell command line;
    sheet editors choose those names. Only plain host names get there."""
    marker = tmp_path / "pwned"
    name = name.format(marker=marker)
    config = fleet.config(tmp_path)
    config.servers = {}
    runs = tmp_path / "runs"
    Path(config.poll.ssh_config).write_text(f"Host *\n  ProxyCommand {relay(runs)}\n")
    with pytest.raises(ConfigError, match="not a plain host name"):
        resolve(config, name)
    result = Poller(config).sweep([name])[0]
    assert not result.on and result.reason_code == "config_error"
    assert not marker.exists() and not runs.exists()  # nothing ran at all
