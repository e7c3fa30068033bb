"""/metrics under the shipped unit's TasksMax=32: 60 idle local connections (any local user can
open them) must not lock a real Prometheus scrape out. The daemon runs as its own user with
RLIMIT_NPROC set to the unit's TasksMax (both bound the user's tasks, threads included)."""

from __future__ import annotations

import re
import socket
import time
import urllib.request
from pathlib import Path

from agent_proc import wait_for

from gpumon_agent.metrics import REQUEST_TIMEOUT_S
from harness.timing import SLACK_S


def threads(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^Threads:\s+(\d+)", status, re.M).group(1))


def test_60_idle_connections_do_not_break_a_real_scrape_under_tasks_max(deployment):
    assert deployment.tasks_max == 32
    daemon = deployment.start_agent("--metrics", "127.0.0.1:0", nproc=deployment.tasks_max)
    port = int(
        wait_for(
            "the metrics listener",
            lambda: re.search(r"metrics on http://127\.0\.0\.1:(\d+)/", deployment.agent_log()),
        ).group(1)
    )
    idle = []
    try:
        for _ in range(60):
            idle.append(socket.create_connection(("127.0.0.1", port), timeout=5))
        time.sleep(0.5)  # the server has seen them all
        started = time.monotonic()
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            assert r.status == 200
            body = r.read().decode()
        # Not queued behind the idle ones (each would hold it up to REQUEST_TIMEOUT_S).
        assert time.monotonic() - started < 0 + SLACK_S
        assert re.search(r"^gpumon_nvml_up(\{[^}]*\})? 1\.0$", body, re.M)
        assert threads(daemon.pid) < 8  # connections cost sockets, not threads
        assert daemon.poll() is None

        # Idle connections are closed once their time is up.
        idle[0].settimeout(REQUEST_TIMEOUT_S + 10)
        waited = time.monotonic()
        assert idle[0].recv(1) == b""
        assert time.monotonic() - waited < REQUEST_TIMEOUT_S + SLACK_S
    finally:
        for sock in idle:
            sock.close()
    assert "Traceback" not in deployment.agent_log()
