"""Prometheus exposition of the daemon's latest Report (`gpumon-agent run --metrics [ADDR:]PORT`).

prometheus_client is optional (`pip install 'gpumon-agent[metrics]'`) and imported only when
/metrics is asked for. Values come from the Report the daemon last wrote, so /metrics and
`report --json` never disagree. A value the agent could not read is left out, not exported as 0.

Metric names (all gauges unless noted; per-GPU ones carry labels ``gpu`` (index) and ``uuid``):

- ``gpumon_gpu_utilization_percent``, ``gpumon_gpu_utilization_mean_percent`` (over the window),
  ``gpumon_gpu_memory_utilization_percent``
- ``gpumon_gpu_memory_used_bytes``, ``gpumon_gpu_memory_total_bytes``
- ``gpumon_gpu_temperature_celsius``, ``gpumon_gpu_power_watts``, ``gpumon_gpu_power_limit_watts``
- ``gpumon_gpu_processes`` (count), ``gpumon_gpu_claims`` (live claims),
  ``gpumon_gpu_unclaimed_use`` / ``gpumon_gpu_claimed_idle`` (0/1), ``gpumon_gpu_ok`` (1 when the
  GPU answers), ``gpumon_gpu_info`` (1; labels ``name``, ``pci_bus_id``, ``state``)
- ``gpumon_host_load_average{period="1m|5m|15m"}``, ``gpumon_host_cpu_percent``,
  ``gpumon_host_memory_used_bytes``, ``gpumon_host_memory_total_bytes``,
  ``gpumon_host_swap_used_bytes``, ``gpumon_host_disk_root_used_bytes``,
  ``gpumon_host_disk_root_total_bytes``, ``gpumon_host_logged_in_users``
- ``gpumon_nvml_up`` (1 when NVML answers), ``gpumon_warnings{code}`` (active health warnings),
  ``gpumon_claim_errors`` (unreadable claim files)
- ``gpumon_report_age_seconds`` (now − generated_at of the values served),
  ``gpumon_last_sample_ok`` (0/1), ``gpumon_sample_duration_seconds``,
  ``gpumon_nvml_hung_calls`` (NVML calls past their deadline, not returned: a wedged driver),
  ``gpumon_samples_total`` and ``gpumon_sample_errors_total`` (counters),
  ``gpumon_agent_info{version,driver_version}``
- plus prometheus_client's ``process_*`` metrics of the daemon itself (RSS, CPU seconds, fds).

Must stay importable on Python 3.8.
"""

from __future__ import annotations

import ipaddress
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator, List, Optional, Tuple

from gpumon_agent.report import GPU_OK, Report, parse_utc_iso

if TYPE_CHECKING:  # pragma: no cover
    from gpumon_agent.daemon import DaemonState

DEFAULT_ADDR = "127.0.0.1"


class MetricsError(Exception):
    pass


def parse_listen(spec: str) -> Tuple[str, int]:
    """``PORT`` (loopback), ``ADDR:PORT`` or ``[V6ADDR]:PORT``; addresses must be numeric (no
    name lookups), port 0 picks a free one."""
    text = spec.strip()
    host = DEFAULT_ADDR
    port_text = text
    if text.startswith("["):
        close = text.find("]")
        if close < 0 or text[close + 1 : close + 2] != ":":
            raise MetricsError(_bad_listen(spec))
        host, port_text = text[1:close], text[close + 2 :]
    elif ":" in text:
        host, _, port_text = text.rpartition(":")
    if host == "localhost":
        host = DEFAULT_ADDR
    try:
        ipaddress.ip_address(host)
        port = int(port_text)
    except ValueError:
        raise MetricsError(_bad_listen(spec)) from None
    if not 0 <= port <= 65535:
        raise MetricsError(_bad_listen(spec))
    return host, port


def _bad_listen(spec: str) -> str:
    return (
        f"--metrics {spec!r}: give PORT (served on 127.0.0.1), ADDR:PORT or [IPV6]:PORT with a "
        "numeric address, e.g. --metrics 9835"
    )


def start_server(state: DaemonState, host: str, port: int) -> Any:
    """Serves /metrics from a daemon thread; returns the server (``.shutdown()``,
    ``.server_address``)."""
    try:
        from prometheus_client import CollectorRegistry, ProcessCollector, make_wsgi_app
    except ImportError:
        raise MetricsError(
            "--metrics needs prometheus_client: pip install 'gpumon-agent[metrics]'"
        ) from None
    import socket
    import socketserver
    import threading
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    registry = CollectorRegistry(auto_describe=True)
    registry.register(ReportCollector(state))
    ProcessCollector(registry=registry)

    class Server(socketserver.ThreadingMixIn, WSGIServer):
        daemon_threads = True
        address_family = socket.AF_INET6 if ":" in host else socket.AF_INET

    class QuietHandler(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # scrapes are not news
            pass

    try:
        server = make_server(host, port, make_wsgi_app(registry), Server, QuietHandler)
    except OSError as e:
        raise MetricsError(f"cannot serve /metrics on {host}:{port}: {e.strerror or e}") from None
    thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
    thread.start()
    return server


class ReportCollector:
    """A prometheus_client collector over the daemon's latest Report."""

    def __init__(self, state: DaemonState, clock: Callable[[], float] = time.time) -> None:
        self.state = state
        self.clock = clock

    def describe(self) -> List[Any]:
        return []  # names depend on what the Report holds; no up-front description

    def collect(self) -> Iterator[Any]:
        return iter(families(self.state, self.clock()))


def families(state: DaemonState, now: float) -> List[Any]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    out: List[Any] = []
    report = state.report  # one read: the daemon replaces it whole

    def gauge(name: str, doc: str, labels: Optional[List[str]] = None) -> Any:
        fam = GaugeMetricFamily(name, doc, labels=labels or [])
        out.append(fam)
        return fam

    samples = CounterMetricFamily("gpumon_samples", "Samples taken since the daemon started.")
    samples.add_metric([], state.samples)
    errors = CounterMetricFamily("gpumon_sample_errors", "Samples that failed (values kept).")
    errors.add_metric([], state.sample_errors)
    out.extend([samples, errors])
    gauge("gpumon_last_sample_ok", "1 when the latest sample succeeded.").add_metric(
        [], 1.0 if state.sample_ok else 0.0
    )
    gauge("gpumon_sample_duration_seconds", "How long the latest sample took.").add_metric(
        [], state.sample_seconds
    )
    gauge(
        "gpumon_nvml_hung_calls", "NVML calls past their deadline that have not returned."
    ).add_metric([], float(state.hung_nvml_calls))
    if report is None:
        return out

    gauge("gpumon_report_age_seconds", "Seconds since the values served were sampled.").add_metric(
        [], max(0.0, now - parse_utc_iso(report.generated_at).timestamp())
    )
    gauge(
        "gpumon_agent_info", "The agent's version and the NVIDIA driver's.", ["version", "driver"]
    ).add_metric([report.agent_version or "", report.nvml.driver_version or ""], 1.0)
    gauge("gpumon_nvml_up", "1 when NVML answered the latest sample.").add_metric(
        [], 1.0 if report.nvml.available else 0.0
    )

    by_code = {}
    for w in report.warnings:
        by_code[w.code] = by_code.get(w.code, 0) + 1
    warn = gauge("gpumon_warnings", "Active health warnings, by code.", ["code"])
    for code, n in sorted(by_code.items()):
        warn.add_metric([code], float(n))
    gauge("gpumon_claim_errors", "Claim files that could not be read.").add_metric(
        [], float(len(report.claim_errors))
    )

    _host_families(report, gauge)
    _gpu_families(report, gauge)
    return out


def _host_families(report: Report, gauge: Any) -> None:
    h = report.host
    if h.load_avg:
        load = gauge("gpumon_host_load_average", "Load average.", ["period"])
        for period, value in zip(("1m", "5m", "15m"), h.load_avg):
            load.add_metric([period], value)
    for name, doc, value in (
        ("gpumon_host_cpu_percent", "CPU use over the last interval, %.", h.cpu_percent),
        ("gpumon_host_cpu_count", "Logical CPUs.", h.cpu_count),
        ("gpumon_host_memory_used_bytes", "Memory in use.", h.memory_used_bytes),
        ("gpumon_host_memory_total_bytes", "Memory installed.", h.memory_total_bytes),
        ("gpumon_host_swap_used_bytes", "Swap in use.", h.swap_used_bytes),
        ("gpumon_host_swap_total_bytes", "Swap configured.", h.swap_total_bytes),
        ("gpumon_host_disk_root_used_bytes", "Used bytes on /.", h.disk_root_used_bytes),
        ("gpumon_host_disk_root_total_bytes", "Size of /.", h.disk_root_total_bytes),
    ):
        if value is not None:
            gauge(name, doc).add_metric([], float(value))
    if h.users is not None:  # None: not read
        gauge("gpumon_host_logged_in_users", "Distinct users logged in.").add_metric(
            [], float(len({u.name for u in h.users}))
        )


_GPU_VALUES = (
    ("utilization_pct", "gpumon_gpu_utilization_percent", "GPU utilization as NVML last saw it."),
    ("utilization_mean_pct", "gpumon_gpu_utilization_mean_percent", "GPU utilization, mean."),
    ("memory_utilization_pct", "gpumon_gpu_memory_utilization_percent", "Memory bus busy, %."),
    ("memory_used_bytes", "gpumon_gpu_memory_used_bytes", "GPU memory in use."),
    ("memory_total_bytes", "gpumon_gpu_memory_total_bytes", "GPU memory installed."),
    ("temperature_c", "gpumon_gpu_temperature_celsius", "GPU core temperature."),
    ("power_w", "gpumon_gpu_power_watts", "Power draw."),
    ("power_limit_w", "gpumon_gpu_power_limit_watts", "Power limit."),
)


def _gpu_families(report: Report, gauge: Any) -> None:
    labels = ["gpu", "uuid"]
    gpus = [(g, [str(g.index), g.uuid or ""]) for g in report.gpus]
    for attr, name, doc in _GPU_VALUES:
        fam = None
        for g, lv in gpus:
            value = getattr(g, attr)
            if value is None:
                continue
            if fam is None:
                fam = gauge(name, doc, labels)
            fam.add_metric(lv, float(value))
    if not gpus:
        return
    info = gauge("gpumon_gpu_info", "1 per GPU.", [*labels, "name", "pci_bus_id", "state"])
    ok = gauge("gpumon_gpu_ok", "1 when the GPU answers NVML.", labels)
    procs = gauge("gpumon_gpu_processes", "Processes on the GPU.", labels)
    claims = gauge("gpumon_gpu_claims", "Live claims on the GPU.", labels)
    unclaimed = gauge("gpumon_gpu_unclaimed_use", "1 when a process runs without a claim.", labels)
    idle = gauge("gpumon_gpu_claimed_idle", "1 when claimed but idle too long.", labels)
    for g, lv in gpus:
        info.add_metric([*lv, g.name or "", g.pci_bus_id or "", g.state], 1.0)
        ok.add_metric(lv, 1.0 if g.state == GPU_OK else 0.0)
        # Unknown (None) is left out: Prometheus must not read "no process" into "not listed".
        if g.processes is not None:
            procs.add_metric(lv, float(len(g.processes)))
        claims.add_metric(lv, float(len(g.claims)))
        if g.unclaimed_use is not None:
            unclaimed.add_metric(lv, 1.0 if g.unclaimed_use else 0.0)
        if g.claimed_idle is not None:
            idle.add_metric(lv, 1.0 if g.claimed_idle else 0.0)
