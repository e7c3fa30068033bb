"""Each server's state from Prometheus instead of SSH: ``[source] kind = "prometheus"``.

``PrometheusSource(config).sweep(names)`` gives one ServerResult per name, in order — the
interface push uses for the SSH Poller — from ONE instant query (``POST /api/v1/query``) per
sweep, whatever the fleet size: every series the sheet needs (gpumon agents' metrics,
dcgm-exporter's, and ``up``) of the servers named, selected by the ``[source] server_label``
label (``server``, as ``gpumon prometheus-targets`` sets it: the name as the sheet writes it, or
in lower case).

Per server, the series of one scrape target are read back into a Report (docs/metrics.md says
which metric holds which field) and go through the same bounds as a Report over SSH
(``gpumon_agent.bounds``): Prometheus' answers are untrusted input too — an exporter may send
huge numbers, NaN, 50,000-character labels, or leave series out.

- A gpumon agent's target: the Report as the agent had it for what the sheet's cells, Health and
  `gpumon status` show (AGENT_METRICS), less what metrics do not carry (pids, full command lines
  — the program is there —, text progress of claims, logged-in users). The health warnings are
  the agent's own (``gpumon_health_warning``), worded again by ``gpumon_agent.health``.
- Only dcgm-exporter's series: an ON server marked degraded, without processes, users or claims,
  which Health says (``DCGM_ONLY``).
- ``up == 0`` and nothing else: OFF, Prometheus cannot scrape it; no series at all: OFF, not in
  Prometheus; Prometheus unreachable or answering nonsense: every server OFF saying so (as an
  SSH sweep from a box that lost its network). A query Prometheus refuses as malformed is a
  config error (``[source] selector``).

Nothing here prints or exits; errors are ServerResults or ConfigError.
"""

from __future__ import annotations

import functools
import ipaddress
import json
import logging
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from gpumon.config import Config, ConfigError, server_key
from gpumon.poll import result as codes
from gpumon.poll.answer import bounded, trim
from gpumon.poll.lastseen import LastSeen, remember
from gpumon.poll.result import ServerResult, mark_stale
from gpumon.poll.transport import PollFailure
from gpumon_agent.bounds import cut
from gpumon_agent.report import (
    GPU_OK,
    ClaimFileProblem,
    ClaimInfo,
    Gpu,
    GpuProcess,
    HealthWarning,
    Host,
    Nvml,
    Report,
    utc_iso,
)

MAX_ANSWER_BYTES = 256 * 2**20  # ~600 series of an 8-GPU server are ~250 KB of JSON: 1000 servers
LABEL_CHARS = 4096  # a label value longer than this is cut on reading (bounds cut further)
MAX_NAME_CHARS = 253  # longer is not a host name: not asked for
MIB = 2**20
SOURCE_PROMETHEUS = "prometheus"  # Report.source of a Report read back from an agent's metrics
SOURCE_DCGM = "dcgm-exporter"
DCGM_NOTE = "dcgm-exporter only: no processes, users or claims"

# dcgm-exporter's fields gpumon reads (its default counters; units: %, MiB, °C, W).
DCGM_METRICS = (
    "DCGM_FI_DEV_GPU_UTIL",
    "DCGM_FI_DEV_FB_USED",
    "DCGM_FI_DEV_FB_FREE",
    "DCGM_FI_DEV_GPU_TEMP",
    "DCGM_FI_DEV_POWER_USAGE",
)
# The agent's metrics the Report is read back from (agent/gpumon_agent/metrics.py): what the
# sheet's cells, their Health and `gpumon status` use. The rest (power, memory bus, boot time,
# per-user memory, ...) stays in Prometheus for dashboards: at 500 servers each per-GPU metric is
# 4,000 series, ~1 MB of every answer.
HOST_VALUES = {  # metric -> (Host field, scale: the Report's percent from a 0-1 ratio)
    "gpumon_host_cpus": ("cpu_count", 0),
    "gpumon_host_memory_used_ratio": ("memory_percent", 100),
    "gpumon_host_swap_total_bytes": ("swap_total_bytes", 0),
    "gpumon_host_swap_used_ratio": ("swap_percent", 100),
    "gpumon_host_disk_root_used_ratio": ("disk_root_percent", 100),
}
GPU_VALUES = {  # metric -> (Gpu field, scale); scale 0: an integer as it is, 1: a float
    "gpumon_gpu_utilization_ratio": ("utilization_pct", 100),
    "gpumon_gpu_utilization_mean_ratio": ("utilization_mean_pct", 100),
    "gpumon_gpu_memory_used_bytes": ("memory_used_bytes", 0),
    "gpumon_gpu_memory_total_bytes": ("memory_total_bytes", 0),
    "gpumon_gpu_temperature_celsius": ("temperature_c", 1),
}
AGENT_METRICS = (
    "gpumon_report_timestamp_seconds",
    "gpumon_agent_info",
    "gpumon_nvml_up",
    "gpumon_nvml_error_info",
    "gpumon_host_info",
    "gpumon_host_load_average",
    "gpumon_host_gpus_expected",
    *HOST_VALUES,
    "gpumon_health_warning",
    "gpumon_claim_error_info",
    "gpumon_gpu_info",
    *GPU_VALUES,
    "gpumon_gpu_throttle_reasons",
    "gpumon_gpu_throttled",
    "gpumon_gpu_processes",
    "gpumon_gpu_user_processes",
    "gpumon_gpu_unclaimed_use",
    "gpumon_gpu_claimed_idle",
    "gpumon_claim_info",
    "gpumon_claim_started_timestamp_seconds",
    "gpumon_claim_progress",
    "gpumon_cpu_claim_info",
    "gpumon_cpu_claim_started_timestamp_seconds",
)
_RE2_SPECIAL = set("\\.+*?()|[]{}^$")
log = logging.getLogger(__name__)


@dataclass
class Sample:
    name: str
    labels: dict[str, str]
    value: float  # as Prometheus sent it: may be NaN or infinite (the bounds refuse those)


@dataclass
class Target:
    """The series one scrape target (job, instance) gave for one server, by metric name."""

    job: str
    instance: str
    by_name: dict[str, list[Sample]] = field(default_factory=dict)
    up: float | None = None

    def add(self, sample: Sample) -> None:
        self.by_name.setdefault(sample.name, []).append(sample)

    @property
    def samples(self) -> list[Sample]:
        return [s for found in self.by_name.values() for s in found]

    def named(self, name: str) -> list[Sample]:
        return self.by_name.get(name, [])

    def first(self, name: str) -> Sample | None:
        found = self.by_name.get(name)
        return found[0] if found else None

    @property
    def agent(self) -> bool:
        return "gpumon_report_timestamp_seconds" in self.by_name

    @property
    def dcgm(self) -> bool:
        return any(name in self.by_name for name in DCGM_METRICS)


@dataclass
class SweepStats:
    """What the sweeps so far cost Prometheus (bench/prometheus_push.py prints them)."""

    requests: int = 0
    answer_bytes: int = 0
    series: int = 0
    seconds: float = 0.0


class PrometheusSource:
    """``sweep(names)`` / ``close()``, as the SSH Poller, reading Prometheus' answers."""

    def __init__(self, config: Config) -> None:
        import requests

        self.config = config
        self.source = config.source
        self.url = (self.source.url or "").rstrip("/") + "/api/v1/query"
        self.session = requests.Session()
        self.session.trust_env = False  # the URL in the config is what is dialled, no proxy
        self.session.headers["User-Agent"] = "gpumon"
        self.last_seen = LastSeen(config.state_path("last-seen.json"))
        self.stats = SweepStats()
        self._closed = False

    def __enter__(self) -> PrometheusSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._closed = True
        self.session.close()

    def sweep(self, names: list[str], progress: Any = None) -> list[ServerResult]:
        """One result per name, same order (a name given twice is asked once)."""
        if self._closed:
            raise RuntimeError("PrometheusSource.sweep after close()")
        started = time.monotonic()
        polled_at = utc_iso()
        unique = list(dict.fromkeys(names))
        asked = [n for n in unique if _askable(n)]
        results: dict[str, ServerResult] = {}
        try:
            by_server = self._query(asked) if asked else {}
        except PollFailure as e:
            for name in unique:
                results[name] = self._off(name, polled_at, e.code, e.reason, e.stage)
        else:
            for name in unique:
                if name not in asked:
                    results[name] = self._off(
                        name,
                        polled_at,
                        codes.CONFIG_ERROR,
                        f"not asked of Prometheus: a {len(name)}-character name is not a server "
                        "name",
                        "prometheus",
                    )
                    continue
                targets = by_server.get(server_key(name), {})
                results[name] = self._result(name, polled_at, list(targets.values()))
        elapsed = time.monotonic() - started
        for result in results.values():
            result.elapsed_s = elapsed
        remember(self.last_seen, results)
        if log.isEnabledFor(logging.INFO):  # -v: what the sweep cost, and each server's outcome
            log.info(
                "Prometheus %s: %d servers in %.1f ms (%d queries, %d series, %.1f MB so far)",
                self.source.url, len(unique), elapsed * 1000, self.stats.requests,
                self.stats.series, self.stats.answer_bytes / 1e6,
            )  # fmt: skip
            for name in unique:
                r = results[name]
                outcome = "ON" if r.on else "OFF"
                why = f" ({r.reason_code}: {r.reason})" if r.reason_code else ""
                log.info("%s: %s via %s%s", name, outcome, r.destination, why)
        if progress is not None:
            for done, name in enumerate(unique, 1):
                progress(done, len(unique), results[name])
        return [results[name] for name in names]

    # --- asking Prometheus ------------------------------------------------------------------

    def query_text(self, names: Iterable[str]) -> str:
        """The one PromQL instant query a sweep of ``names`` makes."""
        metrics = "|".join(("up", *AGENT_METRICS, *DCGM_METRICS))
        # Each name as written (the targets file's spelling) and in lower case (a host's own
        # name): a plain alternation of literals, which Prometheus matches as a set — a
        # case-insensitive regex would be tried against every label value, O(servers²).
        spellings = dict.fromkeys(v for n in names for v in (n.strip(), n.strip().lower()))
        servers = "|".join(_re2_literal(v) for v in spellings)
        matchers = [
            f"__name__=~{_promql_string(metrics)}",
            f"{self.source.server_label}=~{_promql_string(servers)}",
        ]
        if self.source.selector.strip():
            matchers.append(self.source.selector.strip().strip(","))
        return "{" + ", ".join(matchers) + "}"

    def _query(self, names: list[str]) -> dict[str, dict[tuple[str, str], Target]]:
        import requests
        import urllib3

        query = self.query_text(names)
        began = time.monotonic()
        where = f"Prometheus at {self.source.url}"
        self.stats.requests += 1
        try:
            response = self.session.post(
                self.url, data={"query": query}, timeout=self.source.timeout_s, stream=True
            )
            try:
                body = _read_bounded(response, MAX_ANSWER_BYTES, self.source.timeout_s)
            finally:
                response.close()
        except (requests.Timeout, urllib3.exceptions.TimeoutError):
            raise PollFailure(
                codes.SOURCE_FAILED,
                f"no answer from {where} within {self.source.timeout_s:g} s ([source] timeout_s)",
                "prometheus",
            ) from None
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as e:
            raise PollFailure(
                codes.SOURCE_FAILED, f"cannot ask {where}: {_reason(e)}", "prometheus"
            ) from None
        finally:
            self.stats.seconds += time.monotonic() - began
        if body is None:
            raise PollFailure(
                codes.SOURCE_FAILED,
                f"{where} answered more than {MAX_ANSWER_BYTES // 2**20} MiB — narrow "
                "[source] selector",
                "prometheus",
            )
        self.stats.answer_bytes += len(body)
        data = _json(body, response.status_code, where)
        if response.status_code in (400, 422) and data.get("errorType") == "bad_data":
            raise ConfigError(
                f"{self.config.origin}: {where} refused the query: "
                f"{trim(str(data.get('error', '')))} — check [source] selector and server_label"
            )
        if response.status_code != 200 or data.get("status") != "success":
            said = trim(str(data.get("error") or data.get("status") or ""))
            raise PollFailure(
                codes.SOURCE_FAILED,
                f"{where} answered HTTP {response.status_code}" + (f": {said}" if said else ""),
                "prometheus",
            )
        return self._group(data.get("data"), where)

    def _group(self, data: Any, where: str) -> dict[str, dict[tuple[str, str], Target]]:
        if not isinstance(data, dict) or data.get("resultType") != "vector":
            raise PollFailure(
                codes.SOURCE_FAILED,
                f"{where} answered something other than an instant vector",
                "prometheus",
            )
        rows = data.get("result")
        if not isinstance(rows, list):
            raise PollFailure(
                codes.SOURCE_FAILED, f"{where} answered without a result list", "prometheus"
            )
        label = self.source.server_label
        out: dict[str, dict[tuple[str, str], Target]] = {}
        keys: dict[str, str] = {}  # label value -> server key (a few hundred, asked 64,000 times)
        for row in rows:
            sample = _sample(row)
            if sample is None or label not in sample.labels:
                continue  # malformed: costs that series only
            self.stats.series += 1
            value = sample.labels[label]
            key = keys.get(value)
            if key is None:
                key = keys[value] = server_key(value)
            ident = (sample.labels.get("job", ""), sample.labels.get("instance", ""))
            target = out.setdefault(key, {}).setdefault(ident, Target(*ident))
            if sample.name == "up":
                target.up = sample.value
            else:
                target.add(sample)
        return out

    # --- one server -------------------------------------------------------------------------

    def _result(self, name: str, polled_at: str, targets: list[Target]) -> ServerResult:
        agents = sorted(
            (t for t in targets if t.agent),
            key=lambda t: (-_finite(t.first("gpumon_report_timestamp_seconds")), t.job, t.instance),
        )
        dcgm = sorted((t for t in targets if t.dcgm), key=lambda t: (t.job, t.instance))
        chosen = agents[0] if agents else dcgm[0] if dcgm else None
        if chosen is None:
            down = sorted((t for t in targets if t.up is not None and t.up != 1), key=_ident)
            if down:
                t = down[0]
                reason = (
                    f"Prometheus cannot scrape it: up = {t.up:g} for {t.instance or '?'} "
                    f"(job {t.job or '?'})"
                )
                return self._off(name, polled_at, codes.SCRAPE_FAILED, reason, "scrape", t)
            if targets:
                t = sorted(targets, key=_ident)[0]
                reason = (
                    f"Prometheus scrapes {t.instance or '?'} (job {t.job or '?'}) but has no "
                    "gpumon or dcgm-exporter metrics from it — is the agent run with --metrics?"
                )
                return self._off(name, polled_at, codes.NO_METRICS, reason, "prometheus", t)
            reason = (
                f"no series in Prometheus with {self.source.server_label}={name!r} — is it in "
                "the targets file (`gpumon prometheus-targets`)?"
            )
            return self._off(name, polled_at, codes.NO_METRICS, reason, "prometheus")
        result = ServerResult(
            name=name,
            destination=_destination(chosen),
            on=False,
            polled_at=polled_at,
            stage="prometheus",
            address=_address(chosen.instance),
        )
        try:
            report = bounded(agent_report(chosen) if chosen.agent else dcgm_report(chosen))
        except PollFailure as e:
            result.reason_code, result.reason, result.stage = e.code, e.reason, e.stage
            return result
        except (ValueError, OverflowError, TypeError) as e:  # a value no agent sends
            result.reason_code = codes.BAD_OUTPUT
            result.reason = f"bad output from Prometheus: {trim(str(e))}"
            return result
        result.on, result.report, result.stage = True, report, None
        if chosen.agent:
            mark_stale(result, report, self.config.poll.stale_after_s)
        else:
            result.degraded = True
            result.reason_code, result.reason = codes.DCGM_ONLY, DCGM_NOTE
        return result

    def _off(
        self,
        name: str,
        polled_at: str,
        code: str,
        reason: str,
        stage: str | None,
        target: Target | None = None,
    ) -> ServerResult:
        return ServerResult(
            name=name,
            destination=_destination(target) if target else "prometheus",
            on=False,
            polled_at=polled_at,
            reason_code=code,
            reason=reason,
            stage=stage,
            address=_address(target.instance) if target else None,
        )


# --- reading a Report back from an agent's series ------------------------------------------


def agent_report(target: Target) -> Report:
    """The Report a gpumon agent's metrics describe (before the bounds)."""
    stamp = target.first("gpumon_report_timestamp_seconds")
    assert stamp is not None
    info = target.first("gpumon_agent_info")
    host_info = target.first("gpumon_host_info")
    host = Host(hostname=_text(host_info, "hostname") or _text(host_info, "server") or "?")
    host.primary_ip = _text(host_info, "primary_ip") or None
    loads = {s.labels.get("period"): s.value for s in target.named("gpumon_host_load_average")}
    if all(p in loads for p in ("1m", "5m", "15m")):
        host.load_avg = [loads["1m"], loads["5m"], loads["15m"]]
    for metric, (attr, scale) in HOST_VALUES.items():
        sample = target.first(metric)
        if sample is not None:
            setattr(host, attr, _scaled(sample.value, scale))
    nvml_up = target.first("gpumon_nvml_up")
    nvml = Nvml(available=bool(nvml_up and nvml_up.value == 1))
    nvml.driver_version = _text(info, "driver_version") or None
    why = target.first("gpumon_nvml_error_info")
    if why is not None and not nvml.available:
        nvml.error_code = why.labels.get("code") or None
        nvml.error = why.labels.get("error") or None
    report = Report(
        generated_at=_time(stamp.value),
        host=host,
        source=SOURCE_PROMETHEUS,
        agent_version=_text(info, "version") or None,
        nvml=nvml,
    )
    report.gpus = _gpus(target)
    report.claim_errors = [
        ClaimFileProblem(path=s.labels.get("file", "?"), error=s.labels.get("error", "?"))
        for s in sorted(target.named("gpumon_claim_error_info"), key=lambda s: s.labels.get("file"))
    ]
    report.cpu_claims = _cpu_claims(target)
    report.warnings = _warnings(target, report)
    return report


def _cpu_claims(target: Target) -> list[ClaimInfo]:
    """CPU-only claims back from ``gpumon_cpu_claim_info`` (``n`` per series), by start."""
    started = {
        (s.labels.get("user", "?"), s.labels.get("job_name", "?")): s.value
        for s in target.named("gpumon_cpu_claim_started_timestamp_seconds")
    }
    claims: list[tuple[float, str, ClaimInfo]] = []
    for s in target.named("gpumon_cpu_claim_info"):
        user, job = s.labels.get("user", "?"), s.labels.get("job_name", "?")
        when = started.get((user, job))
        for _ in range(_count(s.value)):
            claim = ClaimInfo(
                job=job, user=user, pid=0, started_at=_time(when) if when is not None else ""
            )
            claims.append((_finite_value(when), job, claim))
    return [c for _, _, c in sorted(claims, key=lambda x: x[:2])]


def _gpus(target: Target) -> list[Gpu]:
    gpus: dict[str, Gpu] = {}
    for s in target.named("gpumon_gpu_info"):
        index = s.labels.get("gpu", "")
        if index in gpus or not index.isdigit():
            continue  # a duplicate, or no index the sheet could show
        gpus[index] = Gpu(
            index=int(index),
            uuid=s.labels.get("uuid") or None,
            name=s.labels.get("name") or None,
            pci_bus_id=s.labels.get("pci_bus_id") or None,
            state=s.labels.get("state") or GPU_OK,
            error=s.labels.get("error") or None,
            processes_error=s.labels.get("processes_error") or None,
        )

    def each(metric: str) -> Iterable[tuple[Gpu, Sample]]:
        for s in target.named(metric):
            gpu = gpus.get(s.labels.get("gpu", ""))
            if gpu is not None:
                yield gpu, s

    for metric, (attr, scale) in GPU_VALUES.items():
        for gpu, s in each(metric):
            setattr(gpu, attr, _scaled(s.value, scale))
    throttled: dict[int, list[str]] = {}
    for gpu, s in each("gpumon_gpu_throttled"):
        throttled.setdefault(gpu.index, []).append(s.labels.get("reason", "?"))
    for gpu, _s in each("gpumon_gpu_throttle_reasons"):
        gpu.throttle_reasons = _throttle_order(throttled.get(gpu.index, []))
    for gpu, s in each("gpumon_gpu_unclaimed_use"):
        gpu.unclaimed_use = s.value == 1
    for gpu, s in each("gpumon_gpu_claimed_idle"):
        gpu.claimed_idle = s.value == 1
    _processes(gpus, each)
    _claims(gpus, each)
    return sorted(gpus.values(), key=lambda g: g.index)


def _processes(gpus: dict[str, Gpu], each: Any) -> None:
    """Processes back from the per-(user, program) counts: ``n`` entries per group, without
    pids or memory."""
    groups: dict[int, list[tuple[str, str, int]]] = {}
    for gpu, s in each("gpumon_gpu_user_processes"):
        count = _count(s.value)
        groups.setdefault(gpu.index, []).append(
            (s.labels.get("user", "?"), s.labels.get("command", "?"), count)
        )
    for gpu, s in each("gpumon_gpu_processes"):
        total = _count(s.value)
        processes: list[GpuProcess] = []
        for user, command, count in sorted(groups.get(gpu.index, [])):
            processes += [
                GpuProcess(pid=0, user=user, command=command)
                for _ in range(min(count, total - len(processes)))
            ]
        processes += [GpuProcess(pid=0) for _ in range(max(0, total - len(processes)))]
        gpu.processes = processes


def _claims(gpus: dict[str, Gpu], each: Any) -> None:
    started = {
        (gpu.index, s.labels.get("user", "?"), s.labels.get("job_name", "?")): s.value
        for gpu, s in each("gpumon_claim_started_timestamp_seconds")
    }
    progress: dict[tuple[int, str, str], dict[str, Any]] = {}
    for gpu, s in each("gpumon_claim_progress"):
        key = (gpu.index, s.labels.get("user", "?"), s.labels.get("job_name", "?"))
        progress.setdefault(key, {})[s.labels.get("key", "?")] = _progress_number(s.value)
    claims: dict[int, list[tuple[float, str, ClaimInfo]]] = {}
    for gpu, s in each("gpumon_claim_info"):
        user, job = s.labels.get("user", "?"), s.labels.get("job_name", "?")
        key = (gpu.index, user, job)
        when = started.get(key)
        values = progress.get(key, {})
        ordered = {k: values[k] for k in _progress_order(values)}
        for _ in range(_count(s.value)):
            claim = ClaimInfo(
                job=job,
                user=user,
                pid=0,
                started_at=_time(when) if when is not None else "",
                progress=dict(ordered),
            )
            claims.setdefault(gpu.index, []).append((_finite_value(when), job, claim))
    for gpu in gpus.values():
        # The agent lists a GPU's claims by start time.
        gpu.claims = [c for _, _, c in sorted(claims.get(gpu.index, []), key=lambda x: x[:2])]


def _warnings(target: Target, report: Report) -> list[HealthWarning]:
    """The agent's active warnings (``gpumon_health_warning``), worded by gpumon_agent.health
    from the values read back; a warning it does not word again keeps its code's meaning."""
    from gpumon_agent.health import HEALTH_CODES, evaluate

    active: list[tuple[str, int | None]] = []
    for s in target.named("gpumon_health_warning"):
        code, gpu = s.labels.get("code", "?"), s.labels.get("gpu", "")
        key = (code, int(gpu) if gpu.isdigit() else None)
        if key not in active:
            active.append(key)
    expected = target.first("gpumon_host_gpus_expected")
    previous = _count(expected.value) if expected is not None else None
    worded = evaluate(report, previous)
    out = [w for w in worded if (w.code, w.gpu_index) in active]
    have = {(w.code, w.gpu_index) for w in out}
    for code, gpu in active:
        if (code, gpu) not in have:
            meaning = HEALTH_CODES.get(code, code)
            message = meaning if gpu is None else f"GPU {gpu}: {meaning}"
            out.append(HealthWarning(code=code, message=message, gpu_index=gpu))
    return out


# --- from dcgm-exporter's series alone -------------------------------------------------------


def dcgm_report(target: Target) -> Report:
    """A Report from dcgm-exporter's metrics: GPUs and their values, nothing about people."""
    gpus: dict[str, Gpu] = {}
    hostname = None
    driver = None
    values: dict[str, dict[str, float]] = {}
    for s in target.samples:
        if s.name not in DCGM_METRICS:
            continue
        index = s.labels.get("gpu", "")
        if not index.isdigit():
            continue
        hostname = hostname or s.labels.get("Hostname")
        driver = driver or s.labels.get("DCGM_FI_DRIVER_VERSION")
        gpu = gpus.setdefault(
            index,
            Gpu(
                index=int(index),
                uuid=s.labels.get("UUID") or None,
                name=s.labels.get("modelName") or None,
                pci_bus_id=s.labels.get("pci_bus_id") or None,
            ),
        )
        values.setdefault(index, {}).setdefault(s.name, s.value)
        assert gpu is not None
    for index, got in values.items():
        gpu = gpus[index]
        gpu.utilization_pct = got.get("DCGM_FI_DEV_GPU_UTIL")
        gpu.temperature_c = got.get("DCGM_FI_DEV_GPU_TEMP")
        gpu.power_w = got.get("DCGM_FI_DEV_POWER_USAGE")
        used, free = got.get("DCGM_FI_DEV_FB_USED"), got.get("DCGM_FI_DEV_FB_FREE")
        gpu.memory_used_bytes = None if used is None else _integer(used * MIB)
        if used is not None and free is not None:
            gpu.memory_total_bytes = _integer((used + free) * MIB)
    ip = _address(target.instance)
    return Report(
        generated_at=utc_iso(),
        host=Host(hostname=hostname or target.instance or "?", primary_ip=ip),
        source=SOURCE_DCGM,
        nvml=Nvml(available=True, driver_version=driver),
        gpus=sorted(gpus.values(), key=lambda g: g.index),
        notes=[DCGM_NOTE],
    )


# --- small readers ---------------------------------------------------------------------------


def _read_bounded(response: Any, limit: int, timeout_s: float) -> bytes | None:
    """The body (decompressed), or None when it is larger than ``limit``; the whole read within
    about ``timeout_s`` more. requests' timeout bounds each wait, not the sum, so a server
    dripping a byte at a time is cut here: urllib3 2's ``read1`` returns after one receive."""
    import requests

    raw = response.raw
    read1 = getattr(raw, "read1", None)
    chunks, size = [], 0
    deadline = time.monotonic() + timeout_s
    while True:
        if read1 is not None:
            chunk = read1(64 * 1024, decode_content=True)
        else:  # urllib3 1.x: reads block until the amount is in, so ask for little at a time
            chunk = raw.read(4096, decode_content=True)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if time.monotonic() > deadline:
            raise requests.Timeout("the answer took too long")


def _json(body: bytes, status: int, where: str) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        preview = trim(body[:80])
        said = f": {preview}" if preview else ""
        raise PollFailure(
            codes.SOURCE_FAILED,
            f"{where} answered HTTP {status} that is not JSON{said}",
            "prometheus",
        ) from None
    if not isinstance(data, dict):
        raise PollFailure(
            codes.SOURCE_FAILED, f"{where} answered JSON that is not an object", "prometheus"
        )
    return data


def _sample(row: Any) -> Sample | None:
    """One series of the answer, or None when it is malformed (it costs itself only). Hot: it
    runs for every series (64,000 at 500 servers), so it reuses the answer's own label dict."""
    if type(row) is not dict:
        return None
    metric, value = row.get("metric"), row.get("value")
    if type(metric) is not dict or type(value) is not list or len(value) != 2:
        return None
    text = value[1]
    if type(text) is not str or len(text) > 64:
        return None
    try:
        number = float(text)  # "NaN", "+Inf" included: the bounds judge them
    except ValueError:
        return None
    for k, v in metric.items():
        if type(v) is not str:
            return None
        if len(v) > LABEL_CHARS or len(k) > 256:
            metric = {cut(k, 256): cut(v, LABEL_CHARS) for k, v in metric.items()}
            break
    name = metric.pop("__name__", "")
    return Sample(name=name, labels=metric, value=number) if name else None


def _askable(name: str) -> bool:
    text = name.strip()
    if not text or len(text) > MAX_NAME_CHARS:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: no label can hold it
        return False
    return True


def _re2_literal(text: str) -> str:
    return "".join("\\" + c if c in _RE2_SPECIAL else c for c in text)


def _promql_string(text: str) -> str:
    """A double-quoted PromQL string (Go's escapes; non-ASCII kept as UTF-8)."""
    return json.dumps(text, ensure_ascii=False)


def _scaled(value: float, scale: int) -> Any:
    if scale == 0:
        return _integer(value)
    if scale == 1 or not math.isfinite(value):
        return value
    # The agent divided a percentage by 100; undo it without a 1e-14 tail (90.00000000000001).
    return round(value * scale, 9)


def _integer(value: float) -> Any:
    """An integral finite value as int (bytes, counts); anything else as it is, for the bounds
    to judge (NaN, 1e308, 2.5 bytes)."""
    if math.isfinite(value) and value.is_integer() and abs(value) < 2**63:
        return int(value)
    return value


def _count(value: float) -> int:
    """A count of things to make (processes, claims): at most what the bounds let through."""
    if not math.isfinite(value) or value < 0:
        return 0
    return int(min(value, 1024))


def _progress_number(value: float) -> Any:
    if math.isfinite(value) and value.is_integer() and abs(value) < 2**53:
        return int(value)  # the trainer's epoch 3, not 3.0
    return value


def _progress_order(values: dict[str, Any]) -> list[str]:
    from gpumon_agent.metrics import KNOWN_PROGRESS

    known = [k for k in KNOWN_PROGRESS if k in values]
    return known + sorted(k for k in values if k not in known)


def _throttle_order(reasons: list[str]) -> list[str]:
    """In the order the agent lists them (NVML's bit order), unknown names after."""
    if not reasons:
        return []
    rank = _throttle_rank()
    unique = list(dict.fromkeys(reasons))
    return sorted(unique, key=lambda r: (rank.get(r, len(rank)), r))


@functools.lru_cache(maxsize=1)
def _throttle_rank() -> dict[str, int]:
    from gpumon_agent.nvml import THROTTLE_REASONS

    return {name: i for i, (_bit, name) in enumerate(THROTTLE_REASONS)}


def _time(value: float) -> str:
    if not math.isfinite(value) or not 0 <= value < 2**33:
        raise ValueError(f"{value!r} is not a time")
    return utc_iso(value)


def _text(sample: Sample | None, label: str) -> str:
    return sample.labels.get(label, "") if sample is not None else ""


def _finite(sample: Sample | None) -> float:
    return _finite_value(sample.value if sample is not None else None)


def _finite_value(value: float | None) -> float:
    return value if value is not None and math.isfinite(value) else 0.0


def _ident(target: Target) -> tuple[str, str]:
    return (target.job, target.instance)


def _destination(target: Target) -> str:
    return f"{target.instance or '?'} via Prometheus (job {target.job or '?'})"


def _address(instance: str) -> str | None:
    """The IP of a ``host:port`` / ``[v6]:port`` instance label, when it is one."""
    host = instance
    if host.startswith("["):
        host = host[1 : host.find("]")] if "]" in host else ""
    elif host.count(":") == 1:
        host = host.partition(":")[0]
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


def _reason(error: Exception) -> str:
    text = str(error)
    for marker in ("Connection refused", "Name or service not known", "timed out"):
        if marker in text:
            return marker.lower()
    return trim(text, 200)
