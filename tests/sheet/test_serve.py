"""`gpumon serve`: pushes on an interval with the poller and backend kept open; stops cleanly."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from pathlib import Path

import openpyxl
from sheetkit import gpu, on

from gpumon.config import Config, PollConfig, ServerEntry, SheetConfig
from gpumon.fleet import push_lock
from gpumon.serve import Service
from gpumon.sheet.xlsx import XlsxBackend

GPUMON = Path(sys.executable).with_name("gpumon")


def write_config(tmp_path: Path, interval: float = 0.4) -> Path:
    config = tmp_path / "gpumon.toml"
    config.write_text(
        f"""
state_dir = "{tmp_path / "state"}"
[poll]
servers_from_sheet = false
[sheet]
path = "sheet.xlsx"
add_rows = true
[serve]
interval_s = {interval}
[servers.box]
local = true
"""
    )
    return config


def start(tmp_path: Path, config: Path, no_nvml_env: dict) -> tuple[subprocess.Popen, Path]:
    log = tmp_path / "serve.log"
    env = dict(no_nvml_env, HOME=str(tmp_path), GPUMON_STATE_DIR=str(tmp_path / "agent"))
    proc = subprocess.Popen(
        [str(GPUMON), "--config", str(config), "serve"],
        stdout=subprocess.DEVNULL,
        stderr=log.open("w"),
        env=env,
        cwd=tmp_path,
    )
    return proc, log


def wait_for(log: Path, text: str, count: int, timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        content = log.read_text()
        if content.count(text) >= count:
            return content
        time.sleep(0.05)
    raise AssertionError(f"{count} x {text!r} not logged within {timeout} s:\n{log.read_text()}")


def test_serve_pushes_repeatedly_then_stops_on_sigterm(tmp_path, no_nvml_env):
    proc, log = start(tmp_path, write_config(tmp_path), no_nvml_env)
    try:
        wait_for(log, "push: ", 3)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
        proc.wait()
    text = log.read_text()
    lines = [line for line in text.splitlines() if "push: " in line]
    assert "1 servers, 1 ON, 0 OFF" in lines[0]
    assert "wrote" in lines[0] and " s" in lines[0]
    assert "SIGTERM: stopping after the push in progress" in text
    assert "stopped after" in text
    sheet = openpyxl.load_workbook(tmp_path / "sheet.xlsx").active
    assert (sheet["A8"].value, sheet["G8"].value) == ("box", "ON")


def test_serve_keeps_going_when_a_push_fails_and_ctrl_c_stops_it_with_130(tmp_path, no_nvml_env):
    (tmp_path / "sheet.xlsx").write_bytes(b"not a workbook")
    proc, log = start(tmp_path, write_config(tmp_path), no_nvml_env)
    try:
        wait_for(log, "push failed", 2)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130  # 128 + SIGINT, as after any Ctrl-C
    finally:
        proc.kill()
        proc.wait()
    assert (tmp_path / "sheet.xlsx").read_bytes() == b"not a workbook"
    text = log.read_text()
    assert "gpumon: interrupted" in text and "Traceback" not in text


class CountingPoller:
    def __init__(self) -> None:
        self.sweeps = 0

    def sweep(self, names):
        self.sweeps += 1
        return [on(name, [gpu(0)]) for name in names]


def test_service_reuses_one_poller_and_skips_a_push_while_the_lock_is_held(tmp_path, caplog):
    config = Config(
        path=str(tmp_path / "gpumon.toml"),
        state_dir=str(tmp_path / "state"),
        poll=PollConfig(servers_from_sheet=False),
        sheet=SheetConfig(path="sheet.xlsx", add_rows=True),
        servers={"box": ServerEntry("box")},
    )
    poller = CountingPoller()
    service = Service(config, XlsxBackend(tmp_path / "sheet.xlsx"), poller)
    caplog.set_level(logging.INFO, logger="gpumon.serve")
    service.push()
    service.push()
    assert poller.sweeps == 2
    with push_lock(config):
        service.push()
    assert poller.sweeps == 2
    assert "push skipped: another gpumon push is running" in caplog.text
    assert service.wait_idle(1.0)
