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

The listener is one thread over ``selectors`` (``MetricsServer``), not a thread per connection:
idle connections cannot use up the unit's ``TasksMax``; each has ``REQUEST_TIMEOUT_S`` to send its
request and read the answer, and at most ``MAX_CONNECTIONS`` stay open.

Must stay importable on Python 3.8.
"""

from __future__ import annotations

import ipaddress
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Tuple

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


# One thread serves every connection: idle or slow clients cost a socket each, never a thread,
# so 60 idle local connections cannot use up the unit's TasksMax=32 and lock real scrapes out.
REQUEST_TIMEOUT_S = 10.0  # to send the request and read the answer, from the connect
MAX_CONNECTIONS = 64  # open at once; a new one beyond this closes the oldest
MAX_REQUEST_BYTES = 8192  # request line and headers


def start_server(state: DaemonState, host: str, port: int) -> MetricsServer:
    """Serves /metrics from a daemon thread; returns the server (``.shutdown()``,
    ``.server_close()``, ``.server_address``)."""
    try:
        from prometheus_client import CollectorRegistry, ProcessCollector
    except ImportError:
        raise MetricsError(
            "--metrics needs prometheus_client: pip install 'gpumon-agent[metrics]'"
        ) from None
    import threading

    registry = CollectorRegistry(auto_describe=True)
    registry.register(ReportCollector(state))
    ProcessCollector(registry=registry)
    server = MetricsServer(registry, host, port)
    thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
    thread.start()
    return server


class _Connection:
    __slots__ = ("deadline", "inbox", "outbox", "sock")

    def __init__(self, sock: Any, deadline: float) -> None:
        self.sock = sock
        self.deadline = deadline
        self.inbox = b""
        self.outbox = b""


class MetricsServer:
    """A minimal HTTP/1.0 server for GET/HEAD /metrics on one thread (``selectors``).

    Each connection has REQUEST_TIMEOUT_S from its connect to send a request (at most
    MAX_REQUEST_BYTES of head) and take the answer, then it is closed; at most MAX_CONNECTIONS
    are open (a new one closes the oldest). The answer is prometheus_client's exposition in the
    format the client's Accept header asks for (text or OpenMetrics)."""

    def __init__(self, registry: Any, host: str, port: int) -> None:
        import selectors
        import socket

        self.registry = registry
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self.listener.bind((host, port))
            self.listener.listen(128)
            self.listener.setblocking(False)
        except OSError as e:
            self.listener.close()
            raise MetricsError(
                f"cannot serve /metrics on {host}:{port}: {e.strerror or e}"
            ) from None
        self.server_address = self.listener.getsockname()
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ, None)
        self.connections: Dict[int, _Connection] = {}
        self._stop = False
        self._waker_r, self._waker_w = socket.socketpair()
        self._waker_r.setblocking(False)
        self.selector.register(self._waker_r, selectors.EVENT_READ, "wake")
        self._stopped: Any = None

    def serve_forever(self) -> None:
        import threading

        self._stopped = threading.Event()
        try:
            while not self._stop:
                now = time.monotonic()
                timeout = min([c.deadline for c in self.connections.values()], default=now + 1)
                for key, mask in self.selector.select(max(0.0, min(timeout - now, 1.0))):
                    if key.data == "wake":
                        continue
                    if key.data is None:
                        self._accept()
                    else:
                        self._serve(key.data, mask)
                now = time.monotonic()
                for conn in [c for c in self.connections.values() if c.deadline <= now]:
                    self._close(conn)
        finally:
            self._stopped.set()

    def shutdown(self) -> None:
        self._stop = True
        try:
            self._waker_w.send(b"x")
        except OSError:
            pass
        if self._stopped is not None:
            self._stopped.wait(5)

    def server_close(self) -> None:
        for conn in list(self.connections.values()):
            self._close(conn)
        for sock in (self.listener, self._waker_r, self._waker_w):
            sock.close()
        self.selector.close()

    def _accept(self) -> None:
        import selectors

        for _ in range(MAX_CONNECTIONS):  # take what is queued, a bounded batch at a time
            try:
                sock, _addr = self.listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError:  # out of file descriptors, a reset before accept: try later
                return
            if len(self.connections) >= MAX_CONNECTIONS:
                self._close(min(self.connections.values(), key=lambda c: c.deadline))
            sock.setblocking(False)
            conn = _Connection(sock, time.monotonic() + REQUEST_TIMEOUT_S)
            self.connections[sock.fileno()] = conn
            self.selector.register(sock, selectors.EVENT_READ, conn)

    def _serve(self, conn: _Connection, mask: int) -> None:
        import selectors

        try:
            if mask & selectors.EVENT_READ and not conn.outbox:
                data = conn.sock.recv(4096)
                if not data:
                    self._close(conn)
                    return
                conn.inbox += data
                end = conn.inbox.find(b"\r\n\r\n")
                if end < 0 and len(conn.inbox) > MAX_REQUEST_BYTES:
                    conn.outbox = _response(431, "text/plain", b"request head too large\n")
                elif end >= 0:
                    conn.outbox = self._answer(conn.inbox[:end])
                else:
                    return
                self.selector.modify(conn.sock, selectors.EVENT_WRITE, conn)
            if mask & selectors.EVENT_WRITE or conn.outbox:
                sent = conn.sock.send(conn.outbox)
                conn.outbox = conn.outbox[sent:]
                if not conn.outbox:
                    self._close(conn)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close(conn)

    def _answer(self, head: bytes) -> bytes:
        lines = head.decode("latin-1").split("\r\n")
        parts = lines[0].split()
        if len(parts) != 3 or not parts[2].startswith("HTTP/"):
            return _response(400, "text/plain", b"bad request\n")
        method, target = parts[0], parts[1]
        if method not in ("GET", "HEAD"):
            return _response(405, "text/plain", b"GET /metrics\n")
        path = target.split("?", 1)[0]
        if path not in ("/metrics", "/"):
            return _response(404, "text/plain", b"not found: try /metrics\n")
        accept = ""
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "accept":
                accept = value.strip()
        from prometheus_client.exposition import choose_encoder

        encoder, content_type = choose_encoder(accept)
        body = encoder(self.registry)
        return _response(200, content_type, body, head_only=method == "HEAD")

    def _close(self, conn: _Connection) -> None:
        self.connections.pop(conn.sock.fileno(), None)
        try:
            self.selector.unregister(conn.sock)
        except (KeyError, ValueError):
            pass
        conn.sock.close()


_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed"}
_REASONS[431] = "Request Header Fields Too Large"


def _response(code: int, content_type: str, body: bytes, head_only: bool = False) -> bytes:
    head = (
        f"HTTP/1.0 {code} {_REASONS[code]}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + (b"" if head_only else body)


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
