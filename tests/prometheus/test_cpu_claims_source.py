"""CPU-only claims come back from /metrics: the agent's ``gpumon_cpu_claim_*`` series, read as
the Prometheus source reads them, give the Report's ``cpu_claims`` again, so the Job cell says
the same whether the server was read over SSH or through Prometheus."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gpumon.poll.prometheus import Sample, Target, agent_report
from gpumon_agent.daemon import DaemonState
from gpumon_agent.metrics import ReportCollector
from gpumon_agent.report import ClaimInfo, Gpu, Host, Nvml, Report, utc_iso


def scraped(report: Report) -> Target:
    """The agent's answer for ``report``, as samples of one target (as a query returns them)."""
    state = DaemonState()
    state.report = report
    state.sample_ok = True
    registry = CollectorRegistry()
    registry.register(ReportCollector(state, clock=lambda: 1_700_000_010))
    target = Target(job="gpumon", instance="127.0.0.2:9835")
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            target.add(Sample(s.name, dict(s.labels), s.value))
    return target


def test_cpu_claims_read_back_from_the_agents_series_by_start_time():
    report = Report(
        generated_at=utc_iso(1_700_000_000),
        host=Host(hostname="hcpbsp"),
        nvml=Nvml(available=True),
        gpus=[Gpu(index=0, uuid="GPU-a", processes=[])],
    )
    report.cpu_claims = [
        ClaimInfo(job="prep", user="niv", pid=9, started_at=utc_iso(1_699_999_000)),
        ClaimInfo(job="kws ch32", user="lww", pid=7, started_at=utc_iso(1_699_990_000)),
        ClaimInfo(job="kws ch32", user="lww", pid=8, started_at=utc_iso(1_699_995_000)),
    ]
    got = agent_report(scraped(report))
    assert [(c.user, c.job, c.started_at) for c in got.cpu_claims] == [
        ("lww", "kws ch32", utc_iso(1_699_990_000)),  # the pair's earliest start, twice
        ("lww", "kws ch32", utc_iso(1_699_990_000)),
        ("niv", "prep", utc_iso(1_699_999_000)),
    ]
    assert got.gpus[0].claims == []


def test_an_agent_without_cpu_claim_series_reads_as_none():
    report = Report(generated_at=utc_iso(1_700_000_000), host=Host(hostname="hcpbsp"))
    target = scraped(report)
    for name in ("gpumon_cpu_claims", "gpumon_cpu_claim_info"):
        target.by_name.pop(name, None)  # an agent from before CPU claims
    assert agent_report(target).cpu_claims == []
