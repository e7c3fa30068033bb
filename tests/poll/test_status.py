"""`gpumon status`: the fleet as a table (colour only on a terminal) or as JSON."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from gpumon.cli import main
from gpumon.poll.result import ServerResult
from gpumon.status import render_table, status
from gpumon_agent.report import ClaimInfo, Gpu, HealthWarning, Host, Nvml, Report
from harness.sshd import Fleet, canned_report


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(scope="module")
def fleet(isolated_home: Path) -> Iterator[Fleet]:
    fleet = Fleet()
    busy = fleet.add("hcbbsp")
    report = canned_report("hcbbsp", busy.address)
    report.gpus[0].claims = [
        ClaimInfo(job="kws", user="lww", pid=1000, started_at="2019-03-14T06:00:00Z")
    ]
    report.gpus[1].unclaimed_use = True
    report.warnings = [HealthWarning(code="load_high", message="load 31 on 8 CPUs")]
    busy.report = report
    fleet.add("ganbsp")
    fleet.start()
    yield fleet
    fleet.close()


def test_the_table_has_a_row_per_gpu_with_users_jobs_and_health(
    fleet: Fleet, tmp_path: Path
) -> None:
    out, err = io.StringIO(), io.StringIO()
    assert status(fleet.config(tmp_path), out=out, err=err) == 0
    lines = out.getvalue().splitlines()
    assert lines[0].split() == [
        "SERVER", "STATE", "IP", "GPU", "UTIL", "MEMORY", "RUNNING", "JOB", "HEALTH"
    ]  # fmt: skip
    assert len(lines) == 1 + 2 + 2  # header, two GPUs on each server
    first = lines[1]
    assert first.startswith("hcbbsp")
    for text in ("ON", "192.0.2.2", "niv: python train.py", "kws (lww)", "load 31 on 8 CPUs"):
        assert text in first
    assert lines[2].split()[0] == "1"  # the second GPU's row: no server name repeated
    assert "used without a claim" in lines[2]
    assert "\033[" not in out.getvalue()  # piped: plain
    assert err.getvalue() == ""  # no progress line off a terminal


def test_an_off_server_shows_its_reason_and_when_it_was_last_seen(
    fleet: Fleet, tmp_path: Path
) -> None:
    config = fleet.config(tmp_path)
    status(config, out=io.StringIO(), err=io.StringIO())  # seen ON once
    fleet.stop()
    try:
        out = io.StringIO()
        assert status(config, out=out, err=io.StringIO()) == 1
    finally:
        fleet.start()
    row = next(line for line in out.getvalue().splitlines() if line.startswith("ganbsp"))
    assert "OFF connection refused" in row
    assert "127.0.0.3" in row
    assert "last seen 20" in row and "s ago)" in row


def test_colour_on_a_terminal_unless_no_color(
    fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = fleet.config(tmp_path)
    out, err = Tty(), Tty()
    status(config, out=out, err=err)
    assert "\033[32mON\033[0m" in out.getvalue()
    assert "polling" in err.getvalue()  # progress on a terminal's stderr
    assert err.getvalue().endswith("\r\033[K")  # and wiped before the table
    monkeypatch.setenv("NO_COLOR", "1")
    plain = Tty()
    status(config, out=plain, err=io.StringIO())
    assert "\033[" not in plain.getvalue()


def test_json_for_scripts(fleet: Fleet, tmp_path: Path) -> None:
    out = io.StringIO()
    assert status(fleet.config(tmp_path), as_json=True, out=out, err=io.StringIO()) == 0
    data = json.loads(out.getvalue())
    servers = data["servers"]
    assert [s["name"] for s in servers] == ["hcbbsp", "ganbsp"]
    assert servers[0]["on"] is True
    assert servers[0]["report"]["gpus"][0]["claims"][0]["job"] == "kws"
    assert servers[0]["address"] == "127.0.0.2"


def test_names_hook_polls_what_the_caller_gives(fleet: Fleet, tmp_path: Path) -> None:
    out = io.StringIO()
    status(fleet.config(tmp_path), as_json=True, names=["ganbsp"], out=out, err=io.StringIO())
    assert [s["name"] for s in json.loads(out.getvalue())["servers"]] == ["ganbsp"]


def test_nothing_to_poll_says_so(fleet: Fleet, tmp_path: Path) -> None:
    config = fleet.config(tmp_path)
    config.servers.clear()
    err = io.StringIO()
    assert status(config, out=io.StringIO(), err=err) == 2
    assert "no servers" in err.getvalue()


def test_gpumon_status_json_command_line(
    fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    known = tmp_path / "known_hosts"
    known.write_text(fleet.known_hosts_text())
    config = tmp_path / "gpumon.toml"
    config.write_text(
        f'state_dir = "{tmp_path}/state"\n[poll]\nknown_hosts = "{known}"\n'
        f'user = "{fleet.user.pw_name}"\nidentity_files = ["{fleet.client_key}"]\n'
        f'ssh_config = "{tmp_path}/none"\nservers_from_sheet = false\n'
        + "".join(
            f'[servers.{s.name}]\nhost = "{s.address}"\nport = {fleet.port}\n'
            for s in fleet.servers
        )
    )
    assert main(["--config", str(config), "status", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [s["on"] for s in data["servers"]] == [True, True]


def test_gpumon_status_polls_the_servers_named_in_the_sheet(
    fleet: Fleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import openpyxl

    sheet = tmp_path / "sheet.xlsx"
    book = openpyxl.Workbook()
    book.active.append(["Server", "GPU", "Usage", "IP", "ON/OFF", "Time"])
    book.active.append(["hcbbsp", "0", "lww"])
    book.active.append(["ganbsp", "0", "Niv"])
    book.save(sheet)
    busy, other = fleet.servers
    known = tmp_path / "known_hosts"
    known.write_text(fleet.known_hosts_text())
    # ganbsp is only in the sheet: ~/.ssh/config says where it is (no name is looked up).
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text(f"Host ganbsp\n  HostName {other.address}\n  Port {fleet.port}\n")
    config = tmp_path / "gpumon.toml"
    config.write_text(
        f'state_dir = "{tmp_path}/state"\n[sheet]\nbackend = "xlsx"\npath = "{sheet}"\n'
        f'[poll]\nknown_hosts = "{known}"\nuser = "{fleet.user.pw_name}"\n'
        f'identity_files = ["{fleet.client_key}"]\nssh_config = "{ssh_config}"\n'
        f'[servers.hcbbsp]\nhost = "{busy.address}"\nport = {fleet.port}\n'
    )
    assert main(["--config", str(config), "status", "--json"]) == 0
    servers = json.loads(capsys.readouterr().out)["servers"]
    assert [(s["name"], s["on"], s["address"]) for s in servers] == [
        ("hcbbsp", True, busy.address),
        ("ganbsp", True, other.address),
    ]


def test_unknown_processes_show_a_question_mark_and_the_reason() -> None:
    why = "nvidia-smi --query-compute-apps failed: x"
    seen = {"utilization_pct": 0.0, "memory_used_bytes": 0, "memory_total_bytes": 8 << 30}
    unknown = Gpu(index=0, processes=None, processes_error=why, **seen)
    report = Report(
        generated_at="2019-03-14T06:26:45Z",
        host=Host(hostname="bare"),
        nvml=Nvml(available=True),
        gpus=[unknown, Gpu(index=1, processes=[], **seen)],
    )
    result = ServerResult(
        name="bare", destination="192.0.2.9:22", on=True, polled_at=report.generated_at,
        report=report,
    )  # fmt: skip

    row0, row1 = render_table([result]).splitlines()[1:3]

    assert " ? " in row0 and f"GPU 0 processes unknown: {why}" in row0
    assert " ? " not in row1 and row1.rstrip().endswith("OK")
