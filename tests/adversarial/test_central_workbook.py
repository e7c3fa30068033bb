"""Attacks on the workbook through text the servers send: a job name or command line holding what
no cell can hold (U+FFFF, a lone surrogate — argv byte 0xff arrives as U+DCFF), and a workbook
that cannot be parsed. Issue 8, "The workbook and the sheet"."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import openpyxl
import pytest
from central_kit import (
    GPUMON,
    ScriptedPoller,
    gpu,
    gpumon,
    no_traceback,
    on,
    process,
    seed_workbook,
)

from gpumon.config import Config, PollConfig, SheetConfig
from gpumon.fleet import push_once
from gpumon.sheet.grid import CELL_MAX_CHARS, REPLACEMENT, CellWrite, cell_text
from gpumon.sheet.xlsx import XlsxBackend
from gpumon_agent.report import ClaimInfo
from harness.fakenvml import FakeProcess, FakeState, make_gpu
from harness.sheets_fixtures import GoogleEnv, google_fixture, sheets_server_fixture  # noqa: F401

HOSTILE_JOB = b"job\xff\xef\xbf\xbf"  # a 0xff byte, then U+FFFF in UTF-8
HOSTILE_ARG = b"arg\xff\xef\xbf\xbf"
SLEEPER = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(120)"


def test_cell_text_replaces_what_no_cell_holds_and_keeps_the_rest():
    assert cell_text("a\uffffb\udcffc\ufffed\x07e") == "a\ufffdb\ufffdc\ufffdd\ufffde"
    assert cell_text("tab\tnew\nline 😀 한국어") == "tab\tnew\nline 😀 한국어"
    assert len(cell_text("x" * 100_000)) == CELL_MAX_CHARS
    assert cell_text(3) == 3


@contextlib.contextmanager
def hostile_claim(tmp_path: Path, fake_nvml, job: bytes = HOSTILE_JOB):
    """For real: `gpumon claim --gpus 0 --job JOB -- CMD $'arg\\xff\\uffff'` holding GPU 0 of
    a fake NVML that lists CMD's process; yields the environment to run gpumon in."""
    nvml = fake_nvml(FakeState.with_gpus(1))
    env = nvml.env()
    env.update(
        HOME=str(tmp_path / "home"),
        GPUMON_STATE_DIR=str(tmp_path / "agent"),
        GPUMON_CLAIMS_DIR=str(tmp_path / "claims"),
    )
    env.pop("GPUMON_CONFIG", None)
    pid_file = tmp_path / "pid"
    argv = [str(Path(sys.executable).with_name("gpumon")).encode(), b"claim", b"--gpus", b"0"]
    argv += [b"--job", job, b"--", sys.executable.encode(), b"-c", SLEEPER.encode()]
    argv += [str(pid_file).encode(), HOSTILE_ARG]
    claim = subprocess.Popen(argv, env=env)
    try:
        deadline = time.monotonic() + 30
        while not (pid_file.exists() and pid_file.read_text()):
            assert time.monotonic() < deadline and claim.poll() is None, "claim did not start"
            time.sleep(0.05)
        worker = int(pid_file.read_text())
        nvml.write(FakeState(gpus=[make_gpu(0, compute_processes=[FakeProcess(worker)])]))
        yield env
    finally:
        claim.kill()
        claim.wait()


def test_a_claimed_job_and_a_command_line_with_byte_ff_and_U_FFFF_keep_the_workbook_readable(
    tmp_path, fake_nvml
):
    """`gpumon push` (the embedded default) twice beside such a claim. Before the fix the first
    push saved a workbook openpyxl could not read, and every later push exited 1 with a
    traceback."""
    with hostile_claim(tmp_path, fake_nvml) as env:
        work = tmp_path / "work"
        work.mkdir()
        for _ in range(2):
            done = gpumon("push", env=env, cwd=work)
            assert done.returncode == 0, done.stderr
            no_traceback(done)
            sheet = openpyxl.load_workbook(work / "gpumon-sheet.xlsx").active
            header = [c.value for c in sheet[7]]
            job = sheet.cell(8, header.index("Job") + 1).value
            assert job.startswith(f"job{REPLACEMENT}{REPLACEMENT} (")


def test_gpumon_status_prints_no_terminal_escape_and_no_lone_surrogate_from_a_job_name(
    tmp_path, fake_nvml
):
    """Beyond the list: the table printed job names raw — an OSC/CSI escape sequence (retitle,
    clear the screen) reached the admin's terminal, and the 0xff byte went out as it came."""
    with hostile_claim(tmp_path, fake_nvml, job=b"\x1b]0;owned\x07\x1b[2Jjob\xff") as env:
        env = dict(env, LANG="C.UTF-8", LC_ALL="C.UTF-8")
        env.pop("PYTHONIOENCODING", None)
        done = subprocess.run(
            [str(GPUMON), "status"], env=env, cwd=tmp_path, capture_output=True, timeout=120
        )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    assert b"Traceback" not in done.stderr
    assert b"\x1b" not in done.stdout and b"\xff" not in done.stdout
    assert "job\ufffd".encode() in done.stdout


def test_a_command_line_with_a_lone_surrogate_is_written_replaced_into_the_xlsx(tmp_path):
    path = seed_workbook(tmp_path / "sheet.xlsx")
    config = Config(
        path=str(tmp_path / "gpumon.toml"),
        state_dir=str(tmp_path / "state"),
        poll=PollConfig(servers_from_sheet=True),
        sheet=SheetConfig(path="sheet.xlsx", time_zone="Asia/Seoul"),
    )
    hostile = gpu(0, processes=[process("lww", "/usr/bin/\udcff\uffff --x")])
    backend = XlsxBackend(path)
    for _ in range(2):
        outcome = push_once(config, backend, ScriptedPoller([on("hcpbsp", [hostile])]))
    assert outcome.changes == []  # the replaced text reads back as written: no rewrite each push
    sheet = openpyxl.load_workbook(path).active
    header = [c.value for c in sheet[7]]
    assert sheet.cell(8, header.index("Running") + 1).value == f"lww: {REPLACEMENT}{REPLACEMENT}"


def test_the_xlsx_backend_replaces_uncellable_text_whoever_hands_it_over(tmp_path):
    path = seed_workbook(tmp_path / "sheet.xlsx")
    backend = XlsxBackend(path)
    backend.read()
    backend.write([CellWrite(row=7, col=5, value="\udcff" * 3 + "x" * 40_000, anchor="hcpbsp|")])
    value = openpyxl.load_workbook(path).active["F8"].value
    assert value.startswith(REPLACEMENT * 3) and len(value) == CELL_MAX_CHARS


def _workbook_with_raw_U_FFFF(path: Path) -> bytes:
    """A workbook whose sheet XML holds U+FFFF as a character: what the old code saved."""
    seed_workbook(path)
    book = openpyxl.load_workbook(path)
    book.active["C8"] = "PLACEHOLDER"
    book.save(path)
    with zipfile.ZipFile(path) as archive:
        parts = {name: archive.read(name) for name in archive.namelist()}
    for name, data in parts.items():
        parts[name] = data.replace(b"PLACEHOLDER", b"job\xef\xbf\xbf")
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in parts.items():
            archive.writestr(name, data)
    return path.read_bytes()


@pytest.mark.parametrize("command", [["push"], ["push", "--dry-run"], ["status"], ["check"]])
def test_an_unparseable_workbook_is_exit_3_naming_the_file_never_a_traceback_never_overwritten(
    tmp_path, command
):
    path = tmp_path / "sheet.xlsx"
    before = _workbook_with_raw_U_FFFF(path)
    with pytest.raises(Exception):  # noqa: B017 - openpyxl itself cannot read it
        openpyxl.load_workbook(path)
    config = tmp_path / "gpumon.toml"
    config.write_text(
        f'state_dir = "{tmp_path / "state"}"\n'
        "[poll]\nservers_from_sheet = true\n"
        '[sheet]\npath = "sheet.xlsx"\n'
        "[servers.box]\nlocal = true\n"
    )
    env = dict(os.environ, HOME=str(tmp_path))
    done = gpumon("--config", str(config), *command, env=env, cwd=tmp_path)
    no_traceback(done)
    if command[0] == "push":
        assert done.returncode == 3
    assert f"{path}: not a readable .xlsx workbook" in done.stderr + done.stdout
    assert path.read_bytes() == before
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.startswith(".sheet.xlsx")]
    assert leftovers == []


def test_google_gets_no_lone_surrogate_and_no_cell_over_its_limit(google: GoogleEnv):
    """Google refuses a whole request for one lone surrogate (invalid JSON text) or for one cell
    over 50,000 characters; the local server does the same, and fails the test if it saw one."""
    claim = ClaimInfo(job="job\udcff\uffff" + "j" * 60_000, user="lww", pid=1, started_at="x")
    hostile = gpu(0, processes=[process("lww", "\udcff")], claims=[claim])
    backend = google.backend()
    push_once(google.config, backend, ScriptedPoller([on("hcpbsp", [hostile])]))
    assert google.server.take_invalid() == []
    row = google.values()[7]
    header = google.values()[6]
    job = row[header.index("Job")]
    assert job.startswith(f"job{REPLACEMENT}{REPLACEMENT}")
    assert row[header.index("Running")] == f"lww: {REPLACEMENT}"
