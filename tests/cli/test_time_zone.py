"""A time zone that does not exist is a config error (exit 2) for every command — naming the
file, line and key, and the zones it was probably meant to be — never a push that quietly
writes UTC times. A spreadsheet whose own zone this machine does not know fails `gpumon check`."""

from __future__ import annotations

import io

import pytest
from clikit import clean_env, gpumon_here, local_config

from gpumon.check import Checklist, _check_sheet
from gpumon.config import ConfigError, parse
from harness.sheets_fixtures import google_fixture, sheets_server_fixture  # noqa: F401


@pytest.mark.parametrize(
    ("zone", "meant"),
    [("Asia/Seol", "Asia/Seoul"), ("asia/seoul", "Asia/Seoul"), ("Europe/Berln", "Europe/Berlin")],
)
def test_a_misspelt_zone_is_refused_with_the_zone_meant(zone, meant):
    with pytest.raises(ConfigError) as error:
        parse(f'[sheet]\npath = "s.xlsx"\ntime_zone = "{zone}"\n', "/etc/gpumon/gpumon.toml")
    message = str(error.value)
    assert message.startswith("/etc/gpumon/gpumon.toml, line 3, [sheet] time_zone: ")
    assert f"did you mean '{meant}'" in message


@pytest.mark.parametrize("zone", ["", "Mars/Olympus_Mons", "../../../etc/passwd", "/etc/localtime",
                                  "x" * 10_000, "Asia/Seoul\u0000"])  # fmt: skip
def test_nonsense_zones_are_refused_without_a_crash(zone):
    text = '[sheet]\npath = "s.xlsx"\ntime_zone = ' + repr(zone).replace("'", '"') + "\n"
    with pytest.raises(ConfigError, match=r"\[sheet\] time_zone"):
        parse(text.replace("\\x00", "\\u0000"), "gpumon.toml")


def test_real_zones_pass():
    for zone in ("Asia/Seoul", "UTC", "America/Argentina/Buenos_Aires", "Etc/GMT-9"):
        assert parse(f'[sheet]\ntime_zone = "{zone}"\n', "g.toml").sheet.time_zone == zone


@pytest.mark.parametrize("command", ["check", "push", "serve", "status"])
def test_every_command_stops_at_a_bad_zone_with_exit_2(command, tmp_path, no_nvml_env):
    config = local_config(tmp_path / "c", state_dir=tmp_path / "state")
    config.write_text(config.read_text().replace("[sheet]\n", '[sheet]\ntime_zone = "Asia/Seol"\n'))
    done = gpumon_here(command, "--config", str(config), env=clean_env(tmp_path, no_nvml_env),
                       cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2
    assert "[sheet] time_zone: 'Asia/Seol' is not a time zone" in done.stderr
    assert "did you mean 'Asia/Seoul'" in done.stderr
    assert not (tmp_path / "c" / "sheet.xlsx").exists()


def test_check_fails_on_a_spreadsheet_zone_unknown_here(google):
    google.book.props["timeZone"] = "Mars/Olympus_Mons"
    checks = Checklist(io.StringIO())
    _check_sheet(google.config, google.backend(), checks)
    assert any("time zone 'Mars/Olympus_Mons' is unknown here" in f for f in checks.failures)
    google.book.props["timeZone"] = "Asia/Seoul"
    checks = Checklist(io.StringIO())
    _check_sheet(google.config, google.backend(), checks)
    assert checks.failures == []
    assert "time zone Asia/Seoul" in checks.out.getvalue()
