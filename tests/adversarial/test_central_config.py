"""Attacks through the central box's own inputs: the config file (NaN, infinities, absurd values,
size, nesting), the private keys (too open), and what sheet editors make the central box dial.
Issue 8, "Config, keys, endpoints" (central side)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from central_kit import GPUMON, ScriptedPoller, gpu, gpumon, no_traceback, on, seed_workbook

from gpumon.config import MAX_CONFIG_BYTES, NUMBER_BOUNDS, Config, ConfigError, parse
from gpumon.fleet import MAX_SHEET_SERVERS, poll_names, push_once
from gpumon.poll.poller import Poller
from gpumon.sheet.google_auth import load_credentials
from gpumon.sheet.xlsx import XlsxBackend
from harness.sheets_client import write_service_account_key
from harness.sheets_server import SheetsServer
from harness.sshd import Fleet
from harness.timing import COMMAND_START_S, SLACK_S


def config_file(tmp_path: Path, body: str) -> Path:
    path = tmp_path / "gpumon.toml"
    path.write_text(
        f'state_dir = "{tmp_path / "state"}"\n[sheet]\npath = "sheet.xlsx"\n'
        f"[servers.box]\nlocal = true\n{body}"
    )
    return path


def refused(tmp_path: Path, body: str, *command: str) -> str:
    """`gpumon --config … push` (or ``command``) with ``body`` added: exit 2, no traceback."""
    path = config_file(tmp_path, body)
    done = gpumon("--config", str(path), *(command or ("push",)), cwd=tmp_path, timeout=60)
    no_traceback(done)
    assert done.returncode == 2, (done.returncode, done.stdout, done.stderr)
    assert not (tmp_path / "sheet.xlsx").exists()
    return done.stderr


# --- types: each key's annotation, as typing.get_type_hints resolves it -------------------------


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('[poll]\nconcurrency = "8"', "expected a whole number, got '8'"),
        ("[poll]\nconcurrency = true", "expected a whole number, got True"),
        ("[poll]\nconcurrency = 8.5", "expected a whole number, got 8.5"),
        ('[poll]\nconnect_timeout_s = "3"', "expected a number, got '3'"),
        ("[poll]\nuser = 5", "expected a string, got 5"),  # Optional[str]
        ('[poll]\nagentless = "yes"', "expected true or false, got 'yes'"),
        ('[poll]\nidentity_files = "~/.ssh/id"', "expected a list of strings"),
        ("[poll]\nsheet_names = [1, 2]", "expected a list of strings"),
        ('[servers.box2]\nport = "22"', "expected a whole number, got '22'"),  # Optional[int]
        ("[sheet]\ntime_zone = 9", "expected a string, got 9"),
    ],
)
def test_each_key_takes_the_type_its_field_declares(line, expected):
    with pytest.raises(ConfigError, match=re.escape(expected)):
        parse(line + "\n", "/etc/gpumon/gpumon.toml")


def test_numbers_and_optional_keys_take_what_their_fields_declare():
    config = parse(
        '[poll]\nconnect_timeout_s = 4\nuser = "pollster"\n[servers.box2]\nport = 2222\n',
        "gpumon.toml",
    )

    assert config.poll.connect_timeout_s == 4.0 and isinstance(config.poll.connect_timeout_s, float)
    assert (config.poll.user, config.servers["box2"].port) == ("pollster", 2222)
    assert config.servers["box2"].user is None


# --- numbers: finite, within stated bounds ----------------------------------------------------


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "-1.0", "1e-9", "1e9"])
@pytest.mark.parametrize("dotted", sorted(NUMBER_BOUNDS))
def test_every_number_in_the_config_must_be_finite_and_within_its_bounds(dotted, value):
    section, key = dotted.split(".")
    lo, hi = NUMBER_BOUNDS[dotted]
    if key in ("concurrency", "port", "raw_days", "five_minute_days"):  # whole numbers: so too
        value = {"nan": "0", "inf": "100000", "-inf": "-5", "-1.0": "-1"}.get(value, "10" * 9)
    with pytest.raises(ConfigError) as caught:
        parse(f"[{section}]\n{key} = {value}\n", "/etc/gpumon/gpumon.toml")
    message = str(caught.value)
    assert message.startswith(f"/etc/gpumon/gpumon.toml, line 2, [{section}] {key}: ")
    assert message.endswith(f"is not allowed — give a number from {lo:g} to {hi:g}")


@pytest.mark.parametrize(
    "body, key",
    [
        ("[poll]\ncommand_timeout_s = nan\n", "command_timeout_s"),  # disabled the deadline
        ("[poll]\nsweep_timeout_s = nan\n", "sweep_timeout_s"),  # hung the push
        ("[poll]\nconnect_timeout_s = inf\n", "connect_timeout_s"),
        ("[poll]\nconcurrency = 100000000000000000000\n", "concurrency"),
        ("[poll]\nconnect_timeout_s = 1" + "0" * 400 + "\n", "connect_timeout_s"),
    ],
)
def test_nan_and_absurd_poll_settings_are_exit_2_naming_file_key_and_range(tmp_path, body, key):
    err = refused(tmp_path, body)
    assert f"gpumon.toml, line 7, [poll] {key}: " in err


def test_serve_with_interval_nan_is_exit_2_not_a_crash(tmp_path):
    err = refused(tmp_path, "[serve]\ninterval_s = nan\n", "serve")
    assert "[serve] interval_s: nan is not allowed — give a number from 0.1 to 86400" in err


def test_an_interval_of_a_nanosecond_is_refused_and_google_gets_at_least_ten_seconds(tmp_path):
    with pytest.raises(ConfigError, match=r"\[serve\] interval_s: 1e-09 is not allowed"):
        parse("[servers.box]\nlocal = true\n[serve]\ninterval_s = 1e-9\n", "g.toml")
    google = (
        '[sheet]\nbackend = "google"\nurl = "https://docs.google.com/spreadsheets/d/'
        + "k" * 30
        + '/edit"\n[poll]\nservers_from_sheet = true\n[serve]\ninterval_s = {}\n'
    )
    with pytest.raises(ConfigError, match=r"interval_s: 2 s is too often for Google"):
        parse(google.format(2), "g.toml")
    assert parse(google.format(10), "g.toml").serve.interval_s == 10.0


@pytest.mark.slow
def test_serve_with_a_tiny_interval_against_google_never_starts(tmp_path):
    """Before: 140 requests a minute. Now the config is refused before anything is sent."""
    with SheetsServer() as server:
        key = write_service_account_key(server, tmp_path / "sa.json")
        path = tmp_path / "gpumon.toml"
        path.write_text(
            f'state_dir = "{tmp_path}/state"\n[sheet]\nbackend = "google"\n'
            f'url = "https://docs.google.com/spreadsheets/d/{"k" * 30}/edit"\n'
            f'credentials = "{key}"\n[servers.box]\nlocal = true\n[serve]\ninterval_s = 1e-9\n'
        )
        proc = subprocess.Popen(
            [str(GPUMON), "--config", str(path), "serve"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            _, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
        assert proc.returncode == 2 and "interval_s: 1e-09 is not allowed" in err
        assert server.requests() == []


# --- the file itself: size and nesting --------------------------------------------------------


def test_a_config_file_larger_than_the_cap_is_exit_2_unparsed(tmp_path):
    body = "# padding\n" * (MAX_CONFIG_BYTES // 10 + 10)
    err = refused(tmp_path, body)
    assert f"larger than {MAX_CONFIG_BYTES // 1024} KiB" in err


@pytest.mark.parametrize(
    "nesting", ["a = " + "[" * 20_000 + "]" * 20_000, "a = " + "{b = " * 20_000 + "}" * 20_000]
)
def test_deeply_nested_toml_is_exit_2_not_a_traceback(tmp_path, nesting):
    err = refused(tmp_path, nesting + "\n")
    assert "gpumon.toml: nested too deeply to be a gpumon config" in err


# --- private keys readable by others ----------------------------------------------------------


@pytest.mark.parametrize("mode", [0o644, 0o604, 0o660, 0o666])
def test_a_service_account_key_open_to_others_is_refused_with_the_chmod(tmp_path, mode):
    with SheetsServer() as server:
        key = write_service_account_key(server, tmp_path / "sa.json")
    key.chmod(mode)
    with pytest.raises(ConfigError) as caught:
        load_credentials(str(key), "gpumon.toml")
    fix = f"chmod o-rwx {key}" if mode & 0o007 else f"chmod g-w {key}"
    assert fix in str(caught.value) and f"{mode:04o}" in str(caught.value)
    key.chmod(0o640)  # the README's root:gpumon 0640 is fine
    assert load_credentials(str(key), "gpumon.toml").service_account_email


@pytest.fixture(scope="module")
def one_server(tmp_path_factory):
    home = tmp_path_factory.mktemp("home")
    saved = {k: os.environ.get(k) for k in ("HOME", "SSH_AUTH_SOCK")}
    os.environ["HOME"] = str(home)
    os.environ.pop("SSH_AUTH_SOCK", None)
    fleet = Fleet()
    fleet.add("hcpbsp")
    fleet.start()
    try:
        yield fleet
    finally:
        fleet.close()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.mark.slow
def test_an_ssh_key_readable_by_others_is_not_used_and_the_reason_names_the_chmod(
    one_server: Fleet, tmp_path: Path
):
    """Before: the world-readable key logged in silently (OpenSSH refuses it)."""
    key = one_server.client_key
    config = one_server.config(tmp_path)
    try:
        key.chmod(0o644)
        with Poller(config) as poller:
            [result] = poller.sweep(["hcpbsp"])
        assert not result.on and result.reason_code == "auth_failed"
        assert f"chmod o-rwx {key}" in result.reason
        key.chmod(0o600)  # fixed: the next sweep logs in (a chmod alone is noticed)
        with Poller(config) as poller:
            assert poller.sweep(["hcpbsp"])[0].on
    finally:
        key.chmod(0o600)


# --- what sheet editors make the central box dial ---------------------------------------------


def lab(tmp_path: Path, body: str = "") -> Config:
    return parse(
        f'state_dir = "{tmp_path / "state"}"\n[sheet]\npath = "sheet.xlsx"\n'
        f"[poll]\nservers_from_sheet = true\n{body}",
        str(tmp_path / "gpumon.toml"),
    )


@pytest.mark.parametrize(
    "cell",
    ["127.0.0.1", "127.1", "2130706433", "0x7f000001", "localhost", "LOCALHOST", "db.localhost"],
)
def test_a_server_cell_naming_an_address_or_localhost_is_not_dialled(tmp_path, cell):
    """Before: a Server cell `127.0.0.1` was polled with the central key."""
    warnings: list[str] = []
    assert poll_names(lab(tmp_path), ["hcpbsp", cell], warnings) == ["hcpbsp"]
    assert f"not polled: {cell!r}" in warnings[0] and "sheet_ips = true" in warnings[0]
    assert poll_names(lab(tmp_path, "sheet_ips = true\n"), ["hcpbsp", cell]) == ["hcpbsp", cell]


def test_an_address_the_admin_configured_is_polled_whatever_sheet_ips_says(tmp_path):
    config = lab(tmp_path, '[servers."192.0.2.9"]\nuser = "gpumon"\n')
    assert poll_names(config, ["192.0.2.9"]) == ["192.0.2.9"]


def test_sheet_names_patterns_restrict_what_the_sheet_may_name(tmp_path):
    config = lab(tmp_path, 'sheet_names = ["*BSP", "gpu-??"]\n[servers.extra]\nhost = "h"\n')
    warnings: list[str] = []
    names = poll_names(config, ["hcpbsp", "gpu-01", "evil-box", "gpu-100"], warnings)
    assert names == ["hcpbsp", "gpu-01", "extra"]
    assert warnings == [
        "not polled: 'evil-box', 'gpu-100' — no [poll] sheet_names pattern matches (*BSP, gpu-??)"
    ]


def test_an_empty_sheet_names_pattern_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match=r"\[poll\] sheet_names: an empty pattern"):
        lab(tmp_path, 'sheet_names = [" "]\n')


def test_five_thousand_names_in_the_sheet_poll_only_the_first_512_and_say_so(tmp_path):
    """Before: all 5,000 names were polled."""
    names = [f"gpu{i:04d}" for i in range(5000)]
    warnings: list[str] = []
    polled = poll_names(lab(tmp_path, '[servers.mine]\nhost = "h"\n'), names, warnings)
    assert polled == [*names[:MAX_SHEET_SERVERS], "mine"]
    assert warnings[0].startswith(f"the sheet names 5000 servers; only the first {512} are")


def test_a_push_polls_no_address_from_the_sheet_and_warns(tmp_path):
    path = seed_workbook(tmp_path / "sheet.xlsx")
    import openpyxl

    book = openpyxl.load_workbook(path)
    book.active["A8"] = "127.0.0.1"  # hcpbsp's row, retyped by a sheet editor
    book.save(path)
    poller = ScriptedPoller([on("ganbsp", [gpu(0)])])
    outcome = push_once(lab(tmp_path), XlsxBackend(path), poller)
    assert "127.0.0.1" not in poller.swept[0]
    assert any("not polled: '127.0.0.1'" in w for w in outcome.warnings)


def test_status_and_check_name_what_the_sheet_may_not_make_them_dial(tmp_path):
    path = seed_workbook(tmp_path / "sheet.xlsx")
    import openpyxl

    book = openpyxl.load_workbook(path)
    book.active["A8"] = "localhost"
    book.save(path)
    config = tmp_path / "gpumon.toml"
    config.write_text(
        f'state_dir = "{tmp_path / "state"}"\n[sheet]\npath = "sheet.xlsx"\n'
        '[poll]\nservers_from_sheet = true\nsheet_names = ["hcp*", "localhost"]\n'
        "connect_timeout_s = 0.5\nsweep_timeout_s = 2\n"
    )
    env = dict(os.environ, HOME=str(tmp_path))
    started = time.monotonic()
    done = gpumon("--config", str(config), "status", env=env, cwd=tmp_path)
    no_traceback(done)
    assert "not polled: 'localhost'" in done.stderr
    assert "no [poll] sheet_names pattern matches" in done.stderr
    sweep_s = 2  # sweep_timeout_s above: the sheet's names cost no more than the sweep
    assert time.monotonic() - started < COMMAND_START_S + sweep_s + SLACK_S
