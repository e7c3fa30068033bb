"""Ctrl-C ends a command at once — exit 130, no traceback, nothing written — even while a
server holds the sweep by never saying a word; a reader that goes away early (`| head`) ends it
quietly (141, no BrokenPipe traceback)."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from clikit import GPUMON, clean_env, local_config

from harness.sshd import SilentListener

STUCK_S = 60  # every stage deadline: far longer than the test waits


@pytest.fixture
def silent() -> Iterator[SilentListener]:
    listener = SilentListener("127.0.0.1")  # accepts TCP, never sends the SSH banner
    yield listener
    listener.close()


def stuck_config(folder: Path, listener: SilentListener) -> Path:
    extra = (
        f'[serve]\ninterval_s = 0.5\n[servers.silent]\nhost = "{listener.address}"\n'
        f"port = {listener.port}\n"
    )
    path = local_config(folder, state_dir=folder / "state", extra=extra)
    text = path.read_text().replace(
        "servers_from_sheet = false\n",
        "servers_from_sheet = false\n"
        f"handshake_timeout_s = {STUCK_S}\nsweep_timeout_s = {STUCK_S * 2}\n"
        f'ssh_config = "{folder}/no-ssh-config"\n',
    )
    path.write_text(text)
    return path


class Running:
    """A gpumon process whose stderr is read as it comes."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.proc = subprocess.Popen(
            [str(GPUMON), *args],
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.err: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.err.append(line)

    def wait_for(self, text: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.err):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"{text!r} never came:\n{''.join(self.err)}")
            time.sleep(0.02)

    def interrupt(self) -> tuple[int, float]:
        """SIGINT, as the terminal sends on Ctrl-C: (exit status, seconds until it exited)."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGINT)
        code = self.proc.wait(timeout=30)
        took = time.monotonic() - started
        self._reader.join(5)
        return code, took

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
        assert self.proc.stdout is not None
        self.proc.stdout.close()


# Stuck at the banner on the silent server: what --debug says as that stage begins.
AT_BANNER = "silent: banner (deadline"


def interrupted_at_the_banner(
    command: list[str], tmp_path: Path, silent: SilentListener, base_env: dict[str, str]
) -> tuple[int, float, str]:
    """Start ``gpumon --debug COMMAND`` against the silent server, Ctrl-C it once it waits
    for the banner: (exit status, seconds it took to stop, its stderr)."""
    config = stuck_config(tmp_path / "c", silent)
    argv = ["--debug", "--config", str(config), *command]
    run = Running(argv, clean_env(tmp_path, base_env), tmp_path)
    try:
        run.wait_for(AT_BANNER)
        code, took = run.interrupt()
    finally:
        run.kill()
    return code, took, "".join(run.err)


@pytest.mark.parametrize("command", [["push"], ["status"], ["status", "--json"]])
def test_ctrl_c_while_a_server_is_silent_exits_at_once_with_130(
    command, tmp_path, silent, no_nvml_env
):
    code, took, err = interrupted_at_the_banner(command, tmp_path, silent, no_nvml_env)
    assert code == 130
    assert took < 3, f"took {took:.1f} s to stop"  # not the 60 s banner deadline
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert "gpumon: interrupted" in err.splitlines()
    assert "timed out" not in err  # the sweep was stopped, not timed out
    assert not (tmp_path / "c" / "sheet.xlsx").exists()  # nothing written for half a sweep
    leftovers = [p.name for p in (tmp_path / "c").iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_ctrl_c_stops_serve_at_once_during_a_stuck_push_without_writing(
    tmp_path, silent, no_nvml_env
):
    code, took, err = interrupted_at_the_banner(["serve"], tmp_path, silent, no_nvml_env)
    assert (code, "Traceback" in err) == (130, False), err
    assert took < 3, f"took {took:.1f} s to stop"
    # The push in progress never wrote the sheet (its sweep was not cut short into OFFs).
    assert not (tmp_path / "c" / "sheet.xlsx").exists()


def test_ctrl_c_before_anything_is_polled_is_130_too(tmp_path, no_nvml_env):
    config = local_config(tmp_path / "c", state_dir=tmp_path / "state")
    run = Running(["--config", str(config), "status", "--watch", "30"],
                  clean_env(tmp_path, no_nvml_env), tmp_path)  # fmt: skip
    try:
        assert run.proc.stdout is not None
        run.proc.stdout.readline()  # the first refresh is out: now waiting for the next
        code, took = run.interrupt()
    finally:
        run.kill()
    assert code == 130 and took < 3
    assert "Traceback" not in "".join(run.err)


def test_status_json_into_a_closed_pipe_ends_quietly_with_141(tmp_path, no_nvml_env):
    config = local_config(tmp_path / "c", state_dir=tmp_path / "state")
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before gpumon writes a byte (`| true`)
    try:
        done = subprocess.run(
            [str(GPUMON), "--config", str(config), "status", "--json"],
            env=clean_env(tmp_path, no_nvml_env),
            cwd=tmp_path,
            stdout=write_end,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            timeout=120,
        )
    finally:
        os.close(write_end)
    assert done.returncode == 141
    assert done.stderr == ""  # no BrokenPipeError traceback, no "Exception ignored in"


def test_status_json_piped_into_head_prints_no_traceback(tmp_path, no_nvml_env):
    config = local_config(tmp_path / "c", state_dir=tmp_path / "state")
    done = subprocess.run(
        ["bash", "-c", f'"{GPUMON}" --config "{config}" status --json | head -c 10; '
         'echo " status=${PIPESTATUS[0]}"'],
        env=clean_env(tmp_path, no_nvml_env),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )  # fmt: skip
    assert done.stdout.startswith('{\n  "polle')
    assert done.stdout.split("status=")[1].strip() in ("0", "141")  # 141 if head left first
    assert done.stderr == ""
