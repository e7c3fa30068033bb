"""`gpumon prometheus-targets`: the fleet (the sheet's servers under the [poll] rules, then the
config's) as a Prometheus file_sd file, replaced atomically and only when it changes, and never
emptied by a sheet that cannot be read."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import openpyxl
import pytest
from promkit import GPUMON, gpumon

from gpumon.targets import EXIT_WRITE

SHEET_DIR = Path(__file__).resolve().parents[1] / "sheet"


def seed(path: Path) -> Path:
    import sys

    if str(SHEET_DIR) not in sys.path:
        sys.path.insert(0, str(SHEET_DIR))
    from sheetkit import seed_workbook

    return seed_workbook(path)


def seed_servers() -> list[str]:
    from sheetkit import SEED_SERVERS

    return list(SEED_SERVERS)


def config(tmp_path: Path, body: str = "", from_sheet: bool = True) -> Path:
    seed(tmp_path / "sheet.xlsx")
    path = tmp_path / "gpumon.toml"
    path.write_text(
        f'state_dir = "{tmp_path / "state"}"\n'
        '[sheet]\nbackend = "xlsx"\npath = "sheet.xlsx"\n'
        f"[poll]\nservers_from_sheet = {'true' if from_sheet else 'false'}\n"
        "[metrics]\nport = 9400\n"
        '[servers.extrabsp]\nhost = "192.0.2.50"\n' + body
    )
    return path


def targets(done: subprocess.CompletedProcess[str]) -> dict[str, list[str]]:
    assert done.returncode == 0, done.stderr
    return {e["labels"]["server"]: e["targets"] for e in json.loads(done.stdout)}


def test_the_sheets_servers_then_the_configs_become_targets(tmp_path):
    got = targets(gpumon("--config", str(config(tmp_path)), "prometheus-targets"))
    assert list(got) == sorted([*seed_servers(), "extrabsp"])
    assert got["ganbsp"] == ["ganbsp:9400"]  # the name is the host, [metrics] port the port
    assert got["extrabsp"] == ["192.0.2.50:9400"]  # [servers] host wins


def test_without_servers_from_sheet_only_the_configs_servers(tmp_path):
    path = config(tmp_path, '[servers.v6bsp]\nhost = "2001:db8::7"\n[servers.me]\nlocal = true\n',
                  from_sheet=False)  # fmt: skip
    got = targets(gpumon("--config", str(path), "prometheus-targets"))
    assert got == {
        "extrabsp": ["192.0.2.50:9400"],
        "me": ["127.0.0.1:9400"],
        "v6bsp": ["[2001:db8::7]:9400"],
    }


def test_the_file_is_replaced_atomically_readable_by_prometheus_under_umask_077(tmp_path):
    path = config(tmp_path)
    out = tmp_path / "prometheus" / "gpumon-targets.json"
    out.parent.mkdir()
    done = subprocess.run(
        [str(GPUMON), "--config", str(path), "prometheus-targets", "--out", str(out)],
        capture_output=True,
        text=True,
        preexec_fn=lambda: os.umask(0o077),  # the central units' UMask
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{out}: 13 targets written"
    assert oct(out.stat().st_mode & 0o777) == "0o644"
    assert len(json.loads(out.read_text())) == 13
    assert os.listdir(out.parent) == ["gpumon-targets.json"]  # no temporary file left


def test_an_unchanged_fleet_leaves_the_file_alone(tmp_path):
    path, out = config(tmp_path), tmp_path / "t.json"
    assert gpumon("--config", str(path), "prometheus-targets", "--out", str(out)).returncode == 0
    before = out.stat()
    done = gpumon("--config", str(path), "prometheus-targets", "--out", str(out))
    assert done.returncode == 0 and done.stdout.strip() == f"{out}: 13 targets, unchanged"
    after = out.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def test_a_sheet_that_cannot_be_read_leaves_the_file_as_it_was(tmp_path):
    path, out = config(tmp_path), tmp_path / "t.json"
    assert gpumon("--config", str(path), "prometheus-targets", "--out", str(out)).returncode == 0
    kept = out.read_bytes()
    (tmp_path / "sheet.xlsx").write_bytes(b"PK\x03\x04 not really a workbook")
    done = gpumon("--config", str(path), "prometheus-targets", "--out", str(out))
    assert done.returncode == 3
    assert "the targets file is left as it was" in done.stderr
    assert "Traceback" not in done.stderr
    assert out.read_bytes() == kept


def test_a_sheet_without_a_server_column_is_exit_4_and_the_file_stays(tmp_path):
    path, out = config(tmp_path), tmp_path / "t.json"
    out.write_text("[]\n")
    workbook = openpyxl.Workbook()
    workbook.active["A1"] = "nothing like a header"
    workbook.save(tmp_path / "sheet.xlsx")
    done = gpumon("--config", str(path), "prometheus-targets", "--out", str(out))
    assert done.returncode == 4 and out.read_text() == "[]\n"


def test_an_unwritable_out_is_exit_1_naming_it(tmp_path):
    out = tmp_path / "no-such-dir" / "t.json"
    done = gpumon("--config", str(config(tmp_path)), "prometheus-targets", "--out", str(out))
    assert done.returncode == EXIT_WRITE
    assert f"{out}: cannot write the targets file (No such file or directory)" in done.stderr


def rename_in_sheet(tmp_path: Path, names: dict[str, str]) -> None:
    path = tmp_path / "sheet.xlsx"
    workbook = openpyxl.load_workbook(path)
    sheet = workbook.active
    for row in sheet.iter_rows():
        for cell in row:
            if cell.value in names:
                cell.value = names[cell.value]
    workbook.save(path)


def test_the_poll_rules_decide_which_sheet_names_prometheus_scrapes(tmp_path):
    path = config(tmp_path, "")
    text = path.read_text().replace(
        "servers_from_sheet = true", 'servers_from_sheet = true\nsheet_names = ["*bsp"]'
    )
    path.write_text(text)
    rename_in_sheet(tmp_path, {"mlbsp": "intranet.example.org", "annbsp": "192.0.2.99"})
    done = gpumon("--config", str(path), "prometheus-targets")
    got = targets(done)
    assert "intranet.example.org" not in got and "192.0.2.99" not in got
    assert "'intranet.example.org'" in done.stderr and "'192.0.2.99'" in done.stderr


@pytest.mark.parametrize(
    "hostile",
    [
        'gan"bsp',
        "gan bsp",
        "gan/../bsp",
        "gan\nbsp",
        "서버bsp",
        "x" * 300 + "bsp",
        "-bsp",
        "bsp:22",
    ],
)
def test_a_sheet_name_that_is_no_host_name_is_left_out_with_a_warning(tmp_path, hostile):
    path = config(tmp_path)
    rename_in_sheet(tmp_path, {"ganbsp": hostile})
    done = gpumon("--config", str(path), "prometheus-targets")
    got = targets(done)  # still valid JSON
    assert hostile.strip() not in got and "hcpbsp" in got
    assert "is not a server name (letters, digits, '.', '-', '_'); row left alone" in done.stderr


def test_a_configured_name_that_is_no_host_name_needs_a_host(tmp_path):
    path = config(tmp_path, '[servers."gpu server"]\nuser = "lab"\n', from_sheet=False)
    done = gpumon("--config", str(path), "prometheus-targets")
    assert "gpu server" not in targets(done)
    assert (
        "not a target: 'gpu server' — not a host name Prometheus can scrape; give it a "
        "[servers.NAME] table with host = the address"
    ) in done.stderr
