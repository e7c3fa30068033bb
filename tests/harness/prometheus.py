"""A real Prometheus (Debian's ``prometheus`` package) on loopback, for tests and benchmarks.

``PrometheusServer(workdir, config_yaml)`` starts ``prometheus`` with its data in a temporary
folder under ``workdir``, listening on 127.0.0.1 only, and waits until it is ready. The config is
usually the shipped ``deploy/prometheus/prometheus.yml`` made fast (``shipped_config``): 1 s
scrapes and rule evaluations, the targets file and the rules in ``workdir``, and no Alertmanager.
``promtool`` and ``amtool`` come with the packages (scripts/test.sh installs them).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness.paths import REPO

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
PROMTOOL = shutil.which("promtool") or "/usr/bin/promtool"
AMTOOL = shutil.which("amtool") or "/usr/bin/amtool"
DEPLOY = REPO / "deploy" / "prometheus"
SHIPPED_CONFIG = DEPLOY / "prometheus.yml"
SHIPPED_RULES = DEPLOY / "gpumon.rules.yml"
SHIPPED_TARGETS = "/etc/prometheus/gpumon-targets.json"
DASHBOARD = REPO / "deploy" / "grafana" / "gpumon-fleet.json"


def require(tool: str) -> str:
    """The tool's path, or a failure saying how to get it (CI installs it: scripts/test.sh)."""
    if not os.access(tool, os.X_OK):
        raise FileNotFoundError(
            f"{tool} not found: apt-get install prometheus prometheus-alertmanager "
            "(scripts/test.sh does)"
        )
    return tool


def free_port(address: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


def shipped_config(
    workdir: Path, targets: Path, interval: str = "1s", fast_hours: bool = True
) -> str:
    """The shipped prometheus.yml, fast: scrapes and rules every ``interval``, the targets file
    at ``targets``, its rules copied into ``workdir`` (group intervals made ``interval`` too,
    the GPU-hours subqueries stepping by the second), and no Alertmanager (the alerts are
    tested by promtool)."""
    text = SHIPPED_CONFIG.read_text()
    assert SHIPPED_TARGETS in text and "15s" in text and "127.0.0.1:9093" in text
    text = text.replace(SHIPPED_TARGETS, str(targets)).replace("15s", interval)
    text = text.replace("scrape_timeout: 10s", f"scrape_timeout: {interval}")
    alerting = text.index("alerting:")
    text = text[:alerting] + text[text.index("scrape_configs:") :]
    rules = SHIPPED_RULES.read_text()
    for shipped in ("interval: 1m", "interval: 5m"):
        assert shipped in rules
        rules = rules.replace(shipped, f"interval: {interval}")
    # The GPU-hours rules' subqueries step by the minute (aligned to the clock): by the second,
    # so a test sees them within seconds; the same sum, in hours.
    # (86,400 steps per evaluation: right for a test's few series, not for a benchmark's fleet.)
    assert rules.count("[24h:1m]) / 60") == 2
    if fast_hours:
        rules = rules.replace("[24h:1m]) / 60", "[24h:1s]) / 3600")
    (workdir / "gpumon.rules.yml").write_text(rules)
    return text


class PrometheusServer:
    def __init__(self, workdir: Path, config: str, port: int | None = None) -> None:
        require(PROMETHEUS)
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config_path = self.workdir / "prometheus.yml"
        self.config_path.write_text(config)
        self.data = self.workdir / "data"
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.workdir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> PrometheusServer:
        log = open(self.log_path, "ab")  # noqa: SIM115 -- kept for the process
        self.proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={self.config_path}",
                f"--storage.tsdb.path={self.data}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--web.enable-lifecycle",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()
        self.wait("Prometheus ready", lambda: self._ready(), timeout)
        return self

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise RuntimeError(f"prometheus exited {self.proc.returncode}:\n{self.log()[-3000:]}")
        try:
            with urllib.request.urlopen(self.url + "/-/ready", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def get(self, path: str, **params: str) -> Any:
        """``data`` of a GET on the HTTP API; raises on an error status."""
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=30) as r:
            body = json.loads(r.read())
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        return self.get("/api/v1/query", query=expr)["result"]

    def metric_names(self) -> set[str]:
        return set(self.get("/api/v1/label/__name__/values"))

    def targets(self) -> list[dict[str, Any]]:
        return self.get("/api/v1/targets", state="active")["activeTargets"]

    def http_requests(self, handler: str = "/api/v1/query") -> float:
        """Prometheus' own count of the requests this API handler answered (its /metrics)."""
        from prometheus_client.parser import text_string_to_metric_families

        with urllib.request.urlopen(self.url + "/metrics", timeout=30) as r:
            text = r.read().decode()
        return sum(
            s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
            if s.name == "prometheus_http_requests_total" and s.labels.get("handler") == handler
        )

    @staticmethod
    def wait(what: str, probe: Callable[[], Any], timeout: float = 30.0, every: float = 0.2) -> Any:
        deadline = time.monotonic() + timeout
        last: Any = None
        while time.monotonic() < deadline:
            last = probe()
            if last:
                return last
            time.sleep(every)
        raise AssertionError(f"timed out after {timeout:g} s waiting for {what} (last: {last!r})")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None

    def __enter__(self) -> PrometheusServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def run_tool(*argv: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    require(argv[0])
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=120, cwd=cwd)
