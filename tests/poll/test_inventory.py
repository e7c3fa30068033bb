"""Name → destination: the [servers.NAME] table, else the ~/.ssh/config alias, else the name;
and polling through an alias and a ProxyJump hop."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from gpumon.config import Config, ConfigError, PollConfig, ServerEntry
from gpumon.poll import result as codes
from gpumon.poll.inventory import parse_jump, resolve
from gpumon.poll.poller import Poller
from gpumon.trust import trust
from harness.sshd import JUMP, Fleet


def config_with(tmp_path: Path, ssh_config: str, **servers: ServerEntry) -> Config:
    path = tmp_path / "ssh_config"
    path.write_text(ssh_config)
    return Config(
        path="gpumon.toml",
        poll=PollConfig(ssh_config=str(path), user="pollster", identity_files=["~/.ssh/gpumon"]),
        servers=dict(servers),
    )


def test_an_ssh_config_alias_gives_host_port_user_key_and_jump(tmp_path: Path) -> None:
    config = config_with(
        tmp_path,
        "Host hcbbsp\n  HostName 192.0.2.8\n  Port 2222\n  User lab\n"
        "  IdentityFile ~/.ssh/lab_key\n  ProxyJump gate@192.0.2.1:2200\n",
    )
    dest = resolve(config, "hcbbsp")
    home = str(Path("~").expanduser())
    assert (dest.host, dest.port, dest.user) == ("192.0.2.8", 2222, "lab")
    assert dest.identity_files == [f"{home}/.ssh/lab_key", f"{home}/.ssh/gpumon"]
    assert dest.proxy_jump == ["gate@192.0.2.1:2200"]
    assert dest.label == "lab@192.0.2.8:2222 via gate@192.0.2.1:2200"
    assert dest.known_hosts_name == "[192.0.2.8]:2222"


def test_the_servers_table_overrides_the_ssh_config(tmp_path: Path) -> None:
    config = config_with(
        tmp_path,
        "Host ganbsp\n  HostName 192.0.2.9\n  Port 2222\n  User lab\n",
        ganbsp=ServerEntry(name="ganbsp", host="192.0.2.99", user="gpumon"),
    )
    dest = resolve(config, "ganbsp")
    assert (dest.host, dest.port, dest.user) == ("192.0.2.99", 2222, "gpumon")


def test_an_unknown_name_is_dialled_as_itself_on_port_22(tmp_path: Path) -> None:
    dest = resolve(config_with(tmp_path, ""), "tribsp")
    assert (dest.host, dest.port, dest.user) == ("tribsp", 22, "pollster")
    assert dest.known_hosts_name == "tribsp"


def test_a_missing_ssh_config_is_no_error(tmp_path: Path) -> None:
    config = Config(poll=PollConfig(ssh_config=str(tmp_path / "absent")))
    assert resolve(config, "relbsp").host == "relbsp"


def test_a_bad_port_in_the_ssh_config_names_file_and_host(tmp_path: Path) -> None:
    config = config_with(tmp_path, "Host mlbsp\n  Port eighty\n")
    with pytest.raises(ConfigError, match=r"ssh_config: Host mlbsp: Port 'eighty'"):
        resolve(config, "mlbsp")


@pytest.mark.parametrize(
    ("spec", "parsed"),
    [
        ("gw", (None, "gw", None)),
        ("me@gw:2200", ("me", "gw", 2200)),
        ("me@[2001:db8::1]:2200", ("me", "2001:db8::1", 2200)),
    ],
)
def test_proxy_jump_hops_parse(spec: str, parsed: tuple[str | None, str, int | None]) -> None:
    assert parse_jump(spec) == parsed


def test_a_proxy_jump_port_must_be_a_port() -> None:
    with pytest.raises(ConfigError, match="not a TCP port"):
        parse_jump("gw:99999")


@pytest.fixture
def fleet() -> Iterator[Fleet]:
    fleet = Fleet()
    fleet.add("target")
    fleet.add("gateway", keys=JUMP)  # deploy/ssh/README.md's gateway line: forwarding only
    fleet.add("other")
    fleet.start()
    yield fleet
    fleet.close()


def test_polling_a_name_known_only_to_the_ssh_config(fleet: Fleet, tmp_path: Path) -> None:
    config = fleet.config(tmp_path)
    config.servers.clear()
    target = fleet.server("target")
    (tmp_path / "ssh_config").write_text(
        f"Host lab-a\n  HostName {target.address}\n  Port {fleet.port}\n"
        f"  User {fleet.user.pw_name}\n  IdentityFile {fleet.client_key}\n"
    )
    with Poller(config) as poller:
        result = poller.sweep(["lab-a"])[0]
    assert result.on, result.reason
    assert result.report.host.hostname == "target"
    assert result.destination == f"{fleet.user.pw_name}@{target.address}:{fleet.port}"


def test_polling_through_a_proxy_jump_host(fleet: Fleet, tmp_path: Path) -> None:
    config = fleet.config(tmp_path)
    gateway, target, other = (fleet.server(n) for n in ("gateway", "target", "other"))
    jump = f"{gateway.address}:{fleet.port}"
    for name in ("target", "other"):
        config.servers[name].proxy_jump = jump
    before = fleet.logins_to(gateway)
    with Poller(config) as poller:
        first = {r.name: r for r in poller.sweep(["target", "other"])}
        second = {r.name: r for r in poller.sweep(["target", "other"])}
    assert first["target"].on, first["target"].reason
    assert first["target"].report.host.hostname == "target"
    assert first["other"].report.host.hostname == "other"
    assert first["target"].destination.endswith(f" via {jump}")
    assert all(r.reused for r in second.values())
    # Both servers went through one kept connection to the gateway.
    assert fleet.logins_to(gateway) == before + 1
    assert fleet.logins_to(target) == 1 and fleet.logins_to(other) == 1


def test_the_gateway_line_forwards_only_to_the_fleet(fleet: Fleet, tmp_path: Path) -> None:
    config = fleet.config(tmp_path)
    gateway = fleet.server("gateway")
    config.servers["elsewhere"] = ServerEntry(
        name="elsewhere",
        host="127.0.0.250",
        port=fleet.port,
        proxy_jump=f"{gateway.address}:{fleet.port}",
    )
    with Poller(config) as poller:
        result = poller.sweep(["elsewhere"])[0]
    assert not result.on
    assert result.reason_code == codes.UNREACHABLE
    assert result.stage == "connect"
    assert f"jump host {gateway.address}:{fleet.port} could not reach 127.0.0.250" in result.reason


def test_trust_reaches_a_server_through_its_proxy_jump_host(fleet: Fleet, tmp_path, capsys):
    config = fleet.config(tmp_path)
    gateway = fleet.server("gateway")
    config.servers["target"].proxy_jump = f"{gateway.address}:{fleet.port}"
    before = fleet.logins_to(gateway)

    code = trust(config, "target", assume_yes=True)

    out, err = capsys.readouterr()
    assert code == 0, err
    assert "offers ssh-ed25519 key SHA256:" in out and "already trusted" in out
    assert fleet.logins_to(gateway) == before + 1  # the key exchange went through the hop
    assert fleet.logins_to(fleet.server("target")) == 0  # a key exchange only: no login
