"""Running the real `gpumon-agent` command in subprocesses, against the fake NVML library, for the
daemon / report / metrics / systemd tests."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from gpumon_agent.report import Report

# The installed console script: what the poller runs over SSH and what systemd starts.
AGENT = Path(sys.executable).with_name("gpumon-agent")


def agent_env(base: Mapping[str, str], state_dir: Path) -> dict[str, str]:
    """``base`` (e.g. FakeNvml.env()) with the agent's own variables pinned for a test."""
    env = {k: v for k, v in base.items() if not k.startswith("GPUMON_")}
    env["GPUMON_STATE_DIR"] = str(state_dir)
    env.pop("JOURNAL_STREAM", None)
    return env


def report_json(
    env: Mapping[str, str], *args: str, timeout: float = 60
) -> tuple[Report, subprocess.CompletedProcess]:
    """`gpumon-agent report --json ARGS`: the parsed Report and the finished process."""
    done = subprocess.run(
        [str(AGENT), "report", "--json", *args],
        env=dict(env),
        capture_output=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr.decode()
    return Report.from_json(done.stdout), done


def wait_for(
    what: str, probe: Callable[[], Any], timeout: float = 20.0, every: float = 0.05
) -> Any:
    """Poll ``probe`` until it returns something truthy; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"timed out after {timeout} s waiting for {what} (last: {last!r})")


class Daemon:
    """`gpumon-agent run` in a subprocess; stderr goes to a file the test can read."""

    def __init__(
        self,
        env: Mapping[str, str],
        state_dir: Path,
        args: Sequence[str] = ("--interval", "0.2"),
        preexec_fn: Callable[[], None] | None = None,
        argv: Sequence[str] | None = None,
    ) -> None:
        self.state_dir = Path(state_dir)
        self.snapshot = self.state_dir / "report.json"
        self.log_path = self.state_dir.parent / f"{self.state_dir.name}-daemon.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "wb")  # noqa: SIM115 -- lives as long as the daemon
        self.started = time.time()
        self.proc = subprocess.Popen(
            list(argv) if argv is not None else [str(AGENT), "run", *args],
            env=dict(env),
            stdout=subprocess.DEVNULL,
            stderr=self._log,
            preexec_fn=preexec_fn,
        )

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_snapshot(self, timeout: float = 30.0) -> Report:
        def probe() -> Report | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log()}")
            try:
                if self.snapshot.stat().st_mtime < self.started - 1:
                    return None  # an earlier daemon's
                return Report.from_json(self.snapshot.read_bytes())
            except FileNotFoundError:
                return None

        return wait_for(f"a snapshot from this daemon in {self.snapshot}", probe, timeout)

    def metrics_port(self, timeout: float = 30.0) -> int:
        pattern = re.compile(r"serving Prometheus metrics on http://[^ ]*:(\d+)/metrics")

        def probe() -> int | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited {self.proc.returncode}:\n{self.log()}")
            m = pattern.search(self.log())
            return int(m.group(1)) if m else None

        return wait_for("the metrics listener", probe, timeout)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def __enter__(self) -> Daemon:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()


def imported_modules(importtime_stderr: str) -> set[str]:
    """Module names from `-X importtime` / PYTHONPROFILEIMPORTTIME output."""
    names = set()
    for line in importtime_stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            if name != "package":
                names.add(name)
    return names


def snapshot_files(state_dir: Path) -> list[str]:
    return sorted(os.listdir(state_dir))


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())
