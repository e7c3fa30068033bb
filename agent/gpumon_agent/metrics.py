"""Prometheus exposition of the daemon's latest Report (`gpumon-agent run --metrics [ADDR:]PORT`).

prometheus_client is optional (`pip install 'gpumon-agent[metrics]'`) and imported only when
/metrics is asked for. Values come from the Report the daemon last wrote, so /metrics and
`report --json` never disagree. A value the agent could not read is left out, not exported as 0.

docs/metrics.md lists every metric and label, and the cardinality bound (MAX_PROCESS_GROUPS,
MAX_CLAIMS_PER_GPU, MAX_PROGRESS_KEYS, MAX_CLAIM_ERRORS, LABEL_CHARS below): processes are
exported by user and program, never by pid. ``dcgm_names`` (GPUMON_METRICS_DCGM_NAMES) adds
dcgm-exporter's names and labels for the fields gpumon has. The answer's own cost is exported
(``gpumon_scrape_duration_seconds`` and friends, from ScrapeStats).

The listener is one thread over ``selectors`` (``MetricsServer``), not a thread per connection:
idle connections cannot use up the unit's ``TasksMax``; each has ``REQUEST_TIMEOUT_S`` to send its
request and read the answer, and at most ``MAX_CONNECTIONS`` stay open.

Must stay importable on Python 3.8.
"""

from __future__ import annotations

import ipaddress
import time
from typing import TYPE_CHECKING, Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

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


def start_server(
    state: DaemonState, host: str, port: int, dcgm_names: bool = False
) -> MetricsServer:
    """Serves /metrics from a daemon thread; returns the server (``.shutdown()``,
    ``.server_close()``, ``.server_address``). ``dcgm_names``: dcgm-exporter's names too."""
    try:
        from prometheus_client import CollectorRegistry, ProcessCollector
    except ImportError:
        raise MetricsError(
            "--metrics needs prometheus_client: pip install 'gpumon-agent[metrics]'"
        ) from None
    import threading

    registry = CollectorRegistry(auto_describe=True)
    stats = ScrapeStats()
    registry.register(ReportCollector(state, dcgm_names=dcgm_names, stats=stats))
    ProcessCollector(registry=registry)
    server = MetricsServer(registry, host, port, stats)
    thread = threading.Thread(target=server.serve_forever, name="metrics", daemon=True)
    thread.start()
    return server


class ScrapeStats:
    """What answering /metrics has cost so far (the answer being built reports the ones before)."""

    def __init__(self) -> None:
        self.scrapes = 0
        self.seconds_total = 0.0
        self.last_seconds: Optional[float] = None
        self.last_bytes: Optional[int] = None

    def record(self, seconds: float, size: int) -> None:
        self.scrapes += 1
        self.seconds_total += seconds
        self.last_seconds, self.last_bytes = seconds, size


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

    def __init__(
        self, registry: Any, host: str, port: int, stats: Optional[ScrapeStats] = None
    ) -> None:
        import selectors
        import socket

        self.registry = registry
        self.stats = stats if stats is not None else ScrapeStats()
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
        began = time.monotonic()
        try:
            body = encoder(self.registry)
        except Exception as e:  # a bug must cost this answer, not the listener thread
            import logging

            logging.getLogger("gpumon_agent").exception("building /metrics failed")
            return _response(500, "text/plain", f"cannot build /metrics: {e}\n".encode())
        self.stats.record(time.monotonic() - began, len(body))
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
_REASONS[500] = "Internal Server Error"


def _response(code: int, content_type: str, body: bytes, head_only: bool = False) -> bytes:
    head = (
        f"HTTP/1.0 {code} {_REASONS[code]}\r\nContent-Type: {content_type}\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + (b"" if head_only else body)


# --- what /metrics says ----------------------------------------------------------------------

# Cardinality: what one agent's answer holds at most, whatever its users do (docs/metrics.md).
LABEL_CHARS = 128  # a label value (user, job, command, GPU name, ...) is cut to this
ERROR_CHARS = 200  # error texts in labels
MAX_PROCESS_GROUPS = 8  # (user, command) series per GPU; beyond, the smallest are folded
MAX_CLAIMS_PER_GPU = 4  # claim series per GPU (gpumon_gpu_claims still counts them all)
MAX_CPU_CLAIMS = 16  # CPU-only claim series per server (gpumon_cpu_claims counts them all)
MAX_PROGRESS_KEYS = 6  # numeric progress values per claim
MAX_CLAIM_ERRORS = 4  # unreadable claim files named one by one (gpumon_claim_errors counts all)
FOLDED = "…"  # user and command of the series that holds the groups beyond the bound
MIB = 2**20
# Progress keys the sheet shows first (gpumon.sheet.cells.format_progress): exported first.
KNOWN_PROGRESS = ("epoch", "epochs", "step", "steps", "percent", "pct")


class ReportCollector:
    """A prometheus_client collector over the daemon's latest Report."""

    def __init__(
        self,
        state: DaemonState,
        clock: Callable[[], float] = time.time,
        dcgm_names: bool = False,
        stats: Optional[ScrapeStats] = None,
    ) -> None:
        self.state = state
        self.clock = clock
        self.dcgm_names = dcgm_names
        self.stats = stats

    def describe(self) -> List[Any]:
        return []  # names depend on what the Report holds; no up-front description

    def collect(self) -> Iterator[Any]:
        return iter(families(self.state, self.clock(), self.dcgm_names, self.stats))


Labels = Tuple[Tuple[str, str], ...]


class _Families:
    """Metric families in the order first used; a family appears only once it has a sample,
    and every sample of one family has the same label names."""

    def __init__(self) -> None:
        self.families: Dict[str, Any] = {}

    def gauge(self, name: str, doc: str, labels: Labels, value: Optional[float]) -> None:
        self._add("gauge", name, doc, labels, value)

    def counter(self, name: str, doc: str, labels: Labels, value: float) -> None:
        self._add("counter", name, doc, labels, value)

    def _add(self, kind: str, name: str, doc: str, labels: Labels, value: Optional[float]) -> None:
        if value is None:  # unknown: left out, never 0
            return
        family = self.families.get(name)
        if family is None:
            from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

            names = [k for k, _ in labels]
            if kind == "counter":  # prometheus_client appends _total itself
                family = CounterMetricFamily(name[: -len("_total")], doc, labels=names)
            else:
                family = GaugeMetricFamily(name, doc, labels=names)
            self.families[name] = family
        family.add_metric([v for _, v in labels], float(value))

    def out(self) -> List[Any]:
        return list(self.families.values())


def families(
    state: DaemonState,
    now: float,
    dcgm_names: bool = False,
    stats: Optional[ScrapeStats] = None,
) -> List[Any]:
    out = _Families()
    report = state.report  # one read: the daemon replaces it whole
    server = (("server", _label(report.host.hostname if report else _hostname())),)

    out.counter(
        "gpumon_samples_total", "Samples taken since the daemon started.", server, state.samples
    )
    out.counter(
        "gpumon_sample_errors_total",
        "Samples that failed (values kept).",
        server,
        state.sample_errors,
    )
    out.gauge(
        "gpumon_last_sample_ok",
        "1 when the latest sample succeeded.",
        server,
        1.0 if state.sample_ok else 0.0,
    )
    out.gauge(
        "gpumon_sample_duration_seconds",
        "How long the latest sample took.",
        server,
        state.sample_seconds,
    )
    out.gauge(
        "gpumon_nvml_hung_calls",
        "NVML calls past their deadline that have not returned.",
        server,
        float(state.hung_nvml_calls),
    )
    if stats is not None:
        out.counter(
            "gpumon_scrapes_total", "/metrics answers built before this one.", server, stats.scrapes
        )
        out.counter(
            "gpumon_scrape_duration_seconds_total",
            "Time spent building those answers.",
            server,
            stats.seconds_total,
        )
        out.gauge(
            "gpumon_scrape_duration_seconds",
            "How long the previous answer took to build.",
            server,
            stats.last_seconds,
        )
        out.gauge(
            "gpumon_scrape_size_bytes", "Size of the previous answer.", server, stats.last_bytes
        )
    if report is None:
        return out.out()

    generated = _timestamp(report.generated_at)
    out.gauge(
        "gpumon_report_timestamp_seconds",
        "When the values served were sampled (Unix time).",
        server,
        generated,
    )
    out.gauge(
        "gpumon_report_age_seconds",
        "Seconds since the values served were sampled.",
        server,
        None if generated is None else max(0.0, now - generated),
    )
    out.gauge(
        "gpumon_sample_interval_seconds",
        "The daemon's sampling interval.",
        server,
        report.interval_s,
    )
    out.gauge(
        "gpumon_utilization_window_seconds",
        "Window of the *_mean_ratio values.",
        server,
        report.window_s,
    )
    version = (("version", _label(report.agent_version or "")),)
    driver = (("driver_version", _label(report.nvml.driver_version or "")),)
    out.gauge(
        "gpumon_agent_info",
        "The agent's version and the NVIDIA driver's.",
        server + version + driver,
        1.0,
    )
    out.gauge(
        "gpumon_nvml_up",
        "1 when NVML answered the latest sample.",
        server,
        1.0 if report.nvml.available else 0.0,
    )
    if not report.nvml.available and (report.nvml.error or report.nvml.error_code):
        why = (
            ("code", _label(report.nvml.error_code or "")),
            ("error", _label(report.nvml.error or "", ERROR_CHARS)),
        )
        out.gauge("gpumon_nvml_error_info", "Why NVML cannot be used.", server + why, 1.0)

    folded: Dict[str, int] = {}
    _host(out, report, server, state)
    _warnings(out, report, server)
    _claim_errors(out, report, server, folded)
    _cpu_claims(out, report, server)
    _gpus(out, report, server, folded)
    for what, count in sorted(folded.items()):
        out.gauge(
            "gpumon_metrics_folded",
            "Entries beyond the cardinality bound, folded or counted only.",
            (*server, ("what", what)),
            float(count),
        )
    if dcgm_names:
        _dcgm(out, report)
    return out.out()


def _host(out: _Families, report: Report, server: Labels, state: DaemonState) -> None:
    h = report.host
    ids = (("hostname", _label(h.hostname)), ("primary_ip", _label(h.primary_ip or "")))
    out.gauge("gpumon_host_info", "1; the host's name and primary address.", (*server, *ids), 1.0)
    out.gauge(
        "gpumon_host_boot_timestamp_seconds",
        "When the host booted (Unix time).",
        server,
        _timestamp(h.boot_time),
    )
    for period, value in zip(("1m", "5m", "15m"), h.load_avg or []):
        out.gauge("gpumon_host_load_average", "Load average.", (*server, ("period", period)), value)
    for name, doc, value in (
        ("gpumon_host_cpus", "Logical CPUs.", h.cpu_count),
        (
            "gpumon_host_cpu_utilization_ratio",
            "CPU busy over the last interval, 0-1.",
            _ratio(h.cpu_percent),
        ),
        ("gpumon_host_memory_used_bytes", "Memory in use.", h.memory_used_bytes),
        ("gpumon_host_memory_total_bytes", "Memory installed.", h.memory_total_bytes),
        (
            "gpumon_host_memory_used_ratio",
            "Memory not available, 0-1 (psutil's percent).",
            _ratio(h.memory_percent),
        ),
        ("gpumon_host_swap_used_bytes", "Swap in use.", h.swap_used_bytes),
        ("gpumon_host_swap_total_bytes", "Swap configured.", h.swap_total_bytes),
        ("gpumon_host_swap_used_ratio", "Swap in use, 0-1.", _ratio(h.swap_percent)),
        ("gpumon_host_disk_root_used_bytes", "Used bytes on /.", h.disk_root_used_bytes),
        ("gpumon_host_disk_root_total_bytes", "Size of /.", h.disk_root_total_bytes),
        ("gpumon_host_disk_root_used_ratio", "/ in use, 0-1.", _ratio(h.disk_root_percent)),
        (
            "gpumon_host_gpus_expected",
            "The most GPUs seen since boot (fewer: gpu_count_dropped).",
            state.expected_gpus,
        ),
    ):
        out.gauge(name, doc, server, value)
    if h.users is not None:  # None: not read
        out.gauge(
            "gpumon_host_logged_in_users",
            "Distinct users logged in.",
            server,
            float(len({u.name for u in h.users})),
        )


def _warnings(out: _Families, report: Report, server: Labels) -> None:
    seen = set()
    for w in report.warnings:
        key = (_label(w.code), "" if w.gpu_index is None else str(w.gpu_index))
        if key in seen:
            continue
        seen.add(key)
        out.gauge(
            "gpumon_health_warning",
            "1 per active health warning (gpu empty: host-wide).",
            (*server, ("code", key[0]), ("gpu", key[1])),
            1.0,
        )


def _claim_errors(out: _Families, report: Report, server: Labels, folded: Dict[str, int]) -> None:
    import os

    errors = report.claim_errors
    out.gauge(
        "gpumon_claim_errors", "Claim files that could not be read.", server, float(len(errors))
    )
    for e in errors[:MAX_CLAIM_ERRORS]:
        what = (("file", _label(os.path.basename(e.path))), ("error", _label(e.error, ERROR_CHARS)))
        out.gauge(
            "gpumon_claim_error_info",
            "1 per unreadable claim file (the first few).",
            (*server, *what),
            1.0,
        )
    if len(errors) > MAX_CLAIM_ERRORS:
        folded["claim_errors"] = len(errors) - MAX_CLAIM_ERRORS


_GPU_VALUES = (
    ("utilization_pct", "gpumon_gpu_utilization_ratio", "GPU busy as NVML last saw it, 0-1.", 100),
    ("utilization_mean_pct", "gpumon_gpu_utilization_mean_ratio", "GPU busy, window mean.", 100),
    ("memory_utilization_pct", "gpumon_gpu_memory_utilization_ratio", "Memory bus busy, 0-1.", 100),
    ("memory_used_bytes", "gpumon_gpu_memory_used_bytes", "GPU memory in use.", 1),
    ("memory_total_bytes", "gpumon_gpu_memory_total_bytes", "GPU memory installed.", 1),
    ("temperature_c", "gpumon_gpu_temperature_celsius", "GPU core temperature.", 1),
    ("power_w", "gpumon_gpu_power_watts", "Power draw.", 1),
    ("power_limit_w", "gpumon_gpu_power_limit_watts", "Power limit.", 1),
)


def _gpus(out: _Families, report: Report, server: Labels, folded: Dict[str, int]) -> None:
    for g in report.gpus:
        base = (
            ("gpu", str(g.index)),
            ("uuid", _label(g.uuid or "")),
            ("name", _label(g.name or "")),
            *server,
        )
        detail = (
            ("pci_bus_id", _label(g.pci_bus_id or "")),
            ("state", _label(g.state)),
            ("error", _label(g.error or "", ERROR_CHARS)),
            ("processes_error", _label(g.processes_error or "", ERROR_CHARS)),
        )
        out.gauge("gpumon_gpu_info", "1 per GPU: its state and errors.", base + detail, 1.0)
        out.gauge(
            "gpumon_gpu_ok",
            "1 when the GPU answers NVML (state ok).",
            base,
            1.0 if g.state == GPU_OK else 0.0,
        )
        for attr, name, doc, per in _GPU_VALUES:
            value = getattr(g, attr)
            out.gauge(name, doc, base, None if value is None else float(value) / per)
        if g.throttle_reasons is not None:  # None: unknown
            out.gauge(
                "gpumon_gpu_throttle_reasons",
                "Active throttle reasons (count).",
                base,
                float(len(g.throttle_reasons)),
            )
            for reason in dict.fromkeys(g.throttle_reasons):
                out.gauge(
                    "gpumon_gpu_throttled",
                    "1 per active throttle reason.",
                    (*base, ("reason", _label(reason))),
                    1.0,
                )
        # Unknown (None) is left out: Prometheus must not read "no process" into "not listed".
        if g.processes is not None:
            out.gauge(
                "gpumon_gpu_processes", "Processes on the GPU.", base, float(len(g.processes))
            )
            groups, beyond = process_groups(g.processes)
            for (user, command), (count, memory) in groups:
                who = (*base, ("user", user), ("command", command))
                out.gauge(
                    "gpumon_gpu_user_processes", "Processes by user and program.", who, float(count)
                )
                out.gauge(
                    "gpumon_gpu_user_memory_used_bytes",
                    "GPU memory of those processes (where NVML says).",
                    who,
                    None if memory is None else float(memory),
                )
            if beyond:
                folded["process_groups"] = folded.get("process_groups", 0) + beyond
        out.gauge("gpumon_gpu_claims", "Live claims on the GPU.", base, float(len(g.claims)))
        for attr, name, doc in (
            ("unclaimed_use", "gpumon_gpu_unclaimed_use", "1 when a process runs without a claim."),
            ("claimed_idle", "gpumon_gpu_claimed_idle", "1 when claimed but idle too long."),
        ):
            verdict = getattr(g, attr)
            out.gauge(name, doc, base, None if verdict is None else float(verdict))
        out.gauge(
            "gpumon_gpu_idle_since_timestamp_seconds",
            "When the last process left the GPU (Unix time).",
            base,
            _timestamp(g.idle_since),
        )
        _claims(out, g.claims, base, folded)


def process_groups(
    processes: Sequence[Any],
) -> Tuple[List[Tuple[Tuple[str, str], Tuple[int, Optional[int]]]], int]:
    """Processes grouped by (user, program), sorted; at most MAX_PROCESS_GROUPS groups — beyond
    that the largest MAX_PROCESS_GROUPS - 1 are kept and the rest are one (FOLDED, FOLDED)
    group. Returns the groups and how many were folded."""
    from gpumon_agent.command import short_command

    groups: Dict[Tuple[str, str], List[Any]] = {}
    for p in processes:
        key = (_label(p.user), _label(short_command(p.command)))
        entry = groups.setdefault(key, [0, None])
        entry[0] += 1
        if p.gpu_memory_bytes is not None:
            entry[1] = (entry[1] or 0) + p.gpu_memory_bytes
    ordered = sorted((k, (v[0], v[1])) for k, v in groups.items())
    if len(ordered) <= MAX_PROCESS_GROUPS:
        return ordered, 0
    ranked = sorted(ordered, key=lambda kv: (-kv[1][0], -(kv[1][1] or 0), kv[0]))
    kept, rest = ranked[: MAX_PROCESS_GROUPS - 1], ranked[MAX_PROCESS_GROUPS - 1 :]
    memories = [m for _, (_, m) in rest if m is not None]
    fold = (sum(n for _, (n, _) in rest), sum(memories) if memories else None)
    return [*sorted(kept), ((FOLDED, FOLDED), fold)], len(rest)


def _cpu_claims(out: _Families, report: Report, server: Labels) -> None:
    """CPU-only claims: their own series, without GPU labels, so that the GPU claim series keep
    meaning "one per claimed GPU" (``count by (user) (gpumon_claim_info)``)."""
    merged: Dict[Tuple[str, str], List[Any]] = {}  # (user, job) -> [count, earliest start]
    for c in report.cpu_claims:
        key = (_label(c.user), _label(c.job))
        if key not in merged and len(merged) >= MAX_CPU_CLAIMS:
            continue  # gpumon_cpu_claims still counts them all
        started = _timestamp(c.started_at)
        entry = merged.setdefault(key, [0, started])
        entry[0] += 1
        if started is not None and (entry[1] is None or started < entry[1]):
            entry[1] = started
    out.gauge("gpumon_cpu_claims", "Live CPU-only claims.", server, float(len(report.cpu_claims)))
    for (user, job), (count, started) in sorted(merged.items()):
        who = (*server, ("user", user), ("job_name", job))
        out.gauge(
            "gpumon_cpu_claim_info", "Live CPU-only claims by user and job.", who, float(count)
        )
        out.gauge(
            "gpumon_cpu_claim_started_timestamp_seconds",
            "When the CPU-only claim began (Unix time).",
            who,
            started,
        )


def _claims(out: _Families, claims: Sequence[Any], base: Labels, folded: Dict[str, int]) -> None:
    merged: Dict[Tuple[str, str], List[Any]] = {}  # (user, job) -> [count, started, progress]
    for c in claims:
        key = (_label(c.user), _label(c.job))
        if key not in merged and len(merged) >= MAX_CLAIMS_PER_GPU:
            folded["claims"] = folded.get("claims", 0) + 1
            continue
        started = _timestamp(c.started_at)
        entry = merged.setdefault(key, [0, started, c.progress])
        entry[0] += 1
        if started is not None and (entry[1] is None or started < entry[1]):
            entry[1] = started
    for (user, job), (count, started, progress) in merged.items():
        who = (*base, ("user", user), ("job_name", job))
        out.gauge("gpumon_claim_info", "Live claims by user and job on the GPU.", who, float(count))
        out.gauge(
            "gpumon_claim_started_timestamp_seconds",
            "When the claim began (Unix time).",
            who,
            started,
        )
        for key, value in numeric_progress(progress):
            out.gauge(
                "gpumon_claim_progress",
                "The trainer's numeric progress values.",
                (*who, ("key", key)),
                value,
            )


def numeric_progress(progress: Dict[str, Any]) -> List[Tuple[str, float]]:
    """The claim's finite numeric progress values, the sheet's known keys first, then by name;
    at most MAX_PROGRESS_KEYS (text, booleans and NaN are not numbers to graph)."""
    import math

    numbers = {}
    for key, value in progress.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        try:
            number = float(value)
        except OverflowError:
            continue
        if math.isfinite(number):
            numbers[_label(str(key), 64)] = number
    known = [k for k in KNOWN_PROGRESS if k in numbers]
    order = known + sorted(k for k in numbers if k not in known)
    return [(k, numbers[k]) for k in order[:MAX_PROGRESS_KEYS]]


def _dcgm(out: _Families, report: Report) -> None:
    """dcgm-exporter's names, units and labels (its default counters) for what gpumon has."""
    host = (("Hostname", _label(report.host.hostname)),)
    driver = report.nvml.driver_version
    for g in report.gpus:
        labels = (
            ("gpu", str(g.index)),
            ("UUID", _label(g.uuid or "")),
            ("pci_bus_id", _label(g.pci_bus_id or "")),
            ("device", f"nvidia{g.index}"),
            ("modelName", _label(g.name or "")),
            *host,
            ("DCGM_FI_DRIVER_VERSION", _label(driver or "")),
        )
        used, total = g.memory_used_bytes, g.memory_total_bytes
        free = None if used is None or total is None else max(0, total - used)
        for name, doc, value in (
            ("DCGM_FI_DEV_GPU_UTIL", "GPU utilization (in %).", g.utilization_pct),
            ("DCGM_FI_DEV_FB_FREE", "Framebuffer memory free (in MiB).", _mib(free)),
            ("DCGM_FI_DEV_FB_USED", "Framebuffer memory used (in MiB).", _mib(used)),
            ("DCGM_FI_DEV_GPU_TEMP", "GPU temperature (in C).", g.temperature_c),
            ("DCGM_FI_DEV_POWER_USAGE", "Power draw (in W).", g.power_w),
        ):
            out.gauge(name, doc, labels, value)


def _timestamp(text: Optional[str]) -> Optional[float]:
    """A Report time as Unix time; None when absent or unreadable (left out, never a crash)."""
    if not text:
        return None
    try:
        return parse_utc_iso(text).timestamp()
    except (ValueError, OverflowError):
        return None


def _mib(size: Optional[int]) -> Optional[float]:
    return None if size is None else float(round(size / MIB))


def _ratio(percent: Optional[float]) -> Optional[float]:
    return None if percent is None else percent / 100.0


def _label(text: str, chars: int = LABEL_CHARS) -> str:
    from gpumon_agent.bounds import cut

    return cut(text, chars)


def _hostname() -> str:
    import socket

    return socket.gethostname()
