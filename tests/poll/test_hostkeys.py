"""known_hosts reading (as OpenSSH writes it) and `gpumon trust HOST`."""

from __future__ import annotations

import io
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpumon.cli import main
from gpumon.poll import result as codes
from gpumon.poll.hostkeys import CHANGED, REVOKED, TRUSTED, UNKNOWN, KnownHosts
from gpumon.poll.poller import Poller
from gpumon.trust import trust
from harness.sshd import Fleet, keygen


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, bytes]]:
    import base64

    found = {}
    for name in ("a", "b"):
        path = tmp_path_factory.mktemp("keys") / name
        line = keygen(path)
        found[name] = (line.split()[1], base64.b64decode(line.split()[1]))
    return found


def known(tmp_path: Path, text: str) -> KnownHosts:
    path = tmp_path / "known_hosts"
    path.write_text(text)
    return KnownHosts([str(path)])


def test_plain_bracketed_and_listed_names_match(tmp_path: Path, keys: dict) -> None:
    a64, a = keys["a"]
    hosts = known(tmp_path, f"gpu1,192.0.2.5 ssh-ed25519 {a64}\n[gpu2]:2222 ssh-ed25519 {a64}\n")
    assert hosts.check("gpu1", "ssh-ed25519", a).status == TRUSTED
    assert hosts.check("192.0.2.5", "ssh-ed25519", a).status == TRUSTED
    assert hosts.check("[gpu2]:2222", "ssh-ed25519", a).status == TRUSTED
    assert hosts.check("gpu2", "ssh-ed25519", a).status == UNKNOWN  # port 22 is another host
    assert hosts.check("[gpu1]:2222", "ssh-ed25519", a).status == UNKNOWN


def test_hashed_names_written_by_ssh_keygen_match(tmp_path: Path, keys: dict) -> None:
    a64, a = keys["a"]
    path = tmp_path / "known_hosts"
    path.write_text(f"[192.0.2.7]:2222 ssh-ed25519 {a64}\n")
    subprocess.run(["ssh-keygen", "-H", "-f", str(path)], check=True, capture_output=True)
    assert path.read_text().startswith("|1|")
    hosts = KnownHosts([str(path)])
    assert hosts.check("[192.0.2.7]:2222", "ssh-ed25519", a).status == TRUSTED
    assert hosts.check("[192.0.2.8]:2222", "ssh-ed25519", a).status == UNKNOWN


def test_wildcards_and_negation(tmp_path: Path, keys: dict) -> None:
    a64, a = keys["a"]
    hosts = known(tmp_path, f"gpu*,!gpu9 ssh-ed25519 {a64}\n")
    assert hosts.check("gpu3", "ssh-ed25519", a).status == TRUSTED
    assert hosts.check("gpu9", "ssh-ed25519", a).status == UNKNOWN
    assert hosts.check("cpu3", "ssh-ed25519", a).status == UNKNOWN


def test_another_key_for_a_known_name_is_a_changed_key(tmp_path: Path, keys: dict) -> None:
    a64, _ = keys["a"]
    _, b = keys["b"]
    verdict = known(tmp_path, f"gpu1 ssh-ed25519 {a64}\n").check("gpu1", "ssh-ed25519", b)
    assert verdict.status == CHANGED
    assert verdict.known[0].where == f"{tmp_path / 'known_hosts'}:1"
    assert "ssh-keygen -R 'gpu1'" in verdict.reason("gpu1")


def test_a_revoked_key_is_refused_for_every_name(tmp_path: Path, keys: dict) -> None:
    a64, a = keys["a"]
    hosts = known(tmp_path, f"gpu1 ssh-ed25519 {a64}\n@revoked * ssh-ed25519 {a64}\n")
    assert hosts.check("gpu1", "ssh-ed25519", a).status == REVOKED


def test_damaged_lines_are_skipped_not_fatal(tmp_path: Path, keys: dict) -> None:
    a64, a = keys["a"]
    hosts = known(tmp_path, f"# comment\ngarbage\ngpu0 ssh-ed25519 !!!\ngpu1 ssh-ed25519 {a64}\n")
    assert hosts.check("gpu1", "ssh-ed25519", a).status == TRUSTED


def test_known_key_types_are_asked_for_first(tmp_path: Path, keys: dict) -> None:
    a64, _ = keys["a"]
    hosts = known(tmp_path, f"gpu1 ssh-rsa {a64}\n")
    offered = ("ssh-ed25519", "ecdsa-sha2-nistp256", "rsa-sha2-512", "rsa-sha2-256")
    assert hosts.preferred_algorithms("gpu1", offered) == [
        "rsa-sha2-512",
        "rsa-sha2-256",
        "ssh-ed25519",
        "ecdsa-sha2-nistp256",
    ]
    assert hosts.preferred_algorithms("gpu2", offered) == list(offered)


# --- gpumon trust against a real sshd ------------------------------------------------------


@pytest.fixture
def fleet() -> Iterator[Fleet]:
    fleet = Fleet()
    fleet.add("newbox")
    fleet.add("oldbox")
    fleet.start()
    yield fleet
    fleet.close()


def real_fingerprint(fleet: Fleet) -> str:
    out = subprocess.run(
        ["ssh-keygen", "-l", "-f", str(fleet.root / "keys" / "host0.pub")],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return out.split()[1]


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_trust_yes_records_the_key_and_the_server_comes_on(
    fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = fleet.config(tmp_path, known_hosts=fleet.known_hosts_text(skip=("newbox",)))
    before = Path(config.poll.known_hosts).read_text()
    with Poller(config) as poller:
        assert poller.sweep(["newbox"])[0].reason_code == codes.HOST_KEY_UNKNOWN

    assert trust(config, "newbox", assume_yes=True) == 0

    out = capsys.readouterr().out
    assert f"offers ssh-ed25519 key {real_fingerprint(fleet)}" in out
    after = Path(config.poll.known_hosts).read_text()
    assert after.startswith(before)  # appended; nothing rewritten
    added = after[len(before) :].split()
    assert added[:2] == [f"[127.0.0.2]:{fleet.port}", "ssh-ed25519"]
    assert added[2] == fleet.host_keys[0]
    with Poller(config) as poller:
        assert poller.sweep(["newbox"])[0].on


def test_trust_of_a_trusted_key_changes_nothing(fleet: Fleet, tmp_path: Path) -> None:
    config = fleet.config(tmp_path)
    before = Path(config.poll.known_hosts).read_text()
    assert trust(config, "newbox", assume_yes=True) == 0
    assert Path(config.poll.known_hosts).read_text() == before


def test_trust_refuses_to_replace_a_changed_key_and_says_how(
    fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = fleet.config(tmp_path, known_hosts=fleet.known_hosts_text(wrong=("oldbox",)))
    before = Path(config.poll.known_hosts).read_text()
    assert trust(config, "oldbox", assume_yes=True) == 1
    err = capsys.readouterr().err
    assert "refusing — HOST KEY CHANGED" in err
    assert f"ssh-keygen -R '[127.0.0.3]:{fleet.port}' -f FILE" in err
    assert Path(config.poll.known_hosts).read_text() == before


def test_trust_without_yes_off_a_terminal_records_nothing(
    fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    config = fleet.config(tmp_path, known_hosts="")
    monkeypatch.setattr("sys.stdin", io.StringIO("y\n"))
    assert trust(config, "newbox", assume_yes=False) == 1
    assert "gpumon trust newbox --yes" in capsys.readouterr().err
    assert Path(config.poll.known_hosts).read_text() == ""


@pytest.mark.parametrize(("answer", "rc", "recorded"), [("y\n", 0, True), ("\n", 1, False)])
def test_trust_asks_on_a_terminal(
    fleet: Fleet,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    answer: str,
    rc: int,
    recorded: bool,
) -> None:
    config = fleet.config(tmp_path, known_hosts="")
    monkeypatch.setattr("sys.stdin", Tty(answer))
    assert trust(config, "newbox", assume_yes=False) == rc
    assert bool(Path(config.poll.known_hosts).read_text()) is recorded


def test_trust_records_in_the_users_known_hosts_by_default(fleet: Fleet, tmp_path: Path) -> None:
    config = fleet.config(tmp_path, known_hosts="")
    config.poll.known_hosts = None
    assert trust(config, "newbox", assume_yes=True) == 0
    user_file = Path(os.environ["HOME"]) / ".ssh" / "known_hosts"
    assert user_file.read_text().startswith(f"[127.0.0.2]:{fleet.port} ssh-ed25519 ")
    assert user_file.stat().st_mode & 0o777 == 0o600
    assert user_file.parent.stat().st_mode & 0o777 == 0o700


def test_trust_of_an_unreachable_server_says_why(tmp_path: Path, fleet: Fleet, capsys) -> None:
    config = fleet.config(tmp_path)
    fleet.stop()
    assert trust(config, "newbox", assume_yes=True) == 1
    assert "connection refused" in capsys.readouterr().err


def test_gpumon_trust_command_line(fleet: Fleet, tmp_path: Path) -> None:
    known_hosts = tmp_path / "kh"
    known_hosts.write_text("")
    config = tmp_path / "gpumon.toml"
    server = fleet.server("newbox")
    config.write_text(
        f'[poll]\nknown_hosts = "{known_hosts}"\nuser = "{fleet.user.pw_name}"\n'
        f'identity_files = ["{fleet.client_key}"]\nssh_config = "{tmp_path}/none"\n'
        f'[servers.newbox]\nhost = "{server.address}"\nport = {fleet.port}\n'
    )
    assert main(["--config", str(config), "trust", "newbox", "--yes"]) == 0
    assert known_hosts.read_text().startswith(f"[{server.address}]:{fleet.port} ssh-ed25519 ")
