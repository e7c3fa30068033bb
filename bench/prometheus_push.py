"""The fleet on Prometheus: what a push fed from Prometheus costs at 500 servers, beside a push
over SSH of the fleet this machine can hold, in the same run; and what one scrape of an 8-GPU
agent costs the agent.

1. **Scrape cost**: a real `gpumon-agent run --metrics` on 8 fake GPUs (tests/harness/
   fakenvml.py), each with two real processes of two users and four GPUs claimed through the real
   hook. GET /metrics N times: latency p50, answer size and series, and the agent's own
   figure (`gpumon_scrape_duration_seconds`), beside a GET of a 404 path on the same listener
   (the HTTP round trip alone) and the agent's sample time (`gpumon_sample_duration_seconds`).
2. **500 servers from Prometheus**: a real Prometheus (Debian's) scraping 500 file_sd targets —
   every one its own `server`, pointing at 20 small loopback endpoints that serve an 8-GPU
   agent's answer (made by the agent's own exporter from a full Report) — then `gpumon push`
   with `[source] kind = "prometheus"` into an .xlsx sheet of 500 × 8 rows: the requests to
   Prometheus (gpumon's count and Prometheus' own `prometheus_http_requests_total`), the answer,
   the sweep's and the push's wall time (steady pushes, after the adopting one).
3. **Beside it, SSH**: the same push over SSH of 64 servers (4 real sshd × 16 loopback
   addresses, tests/harness/sshd.py, each `cat`ting the same 8-GPU Report) — what this 2-core
   machine holds — and the Prometheus-fed push of those same 64 servers, for a like-for-like
   ratio.

    .venv/bin/python bench/prometheus_push.py [--servers 500] [--ssh-servers 64] [--runs 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "agent"))

from prometheus_client import CollectorRegistry, generate_latest  # noqa: E402
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from gpumon.config import SheetConfig, load  # noqa: E402
from gpumon.fleet import open_poller, push_once  # noqa: E402
from gpumon.poll.prometheus import PrometheusSource  # noqa: E402
from gpumon.sheet.backends import open_backend  # noqa: E402
from gpumon_agent.daemon import DaemonState  # noqa: E402
from gpumon_agent.metrics import ReportCollector  # noqa: E402
from gpumon_agent.report import (  # noqa: E402
    ClaimInfo,
    Gpu,
    GpuProcess,
    HealthWarning,
    Host,
    Nvml,
    Report,
    utc_iso,
)
from harness.agents import AgentFleet  # noqa: E402
from harness.fakenvml import FakeProcess, FakeState, make_gpu  # noqa: E402
from harness.prometheus import PrometheusServer, shipped_config  # noqa: E402
from harness.sshd import REPORT_AS_WRITTEN, Fleet  # noqa: E402

GiB = 1 << 30
ENDPOINTS = 20


def p50(samples: list[float]) -> float:
    return statistics.median(samples)


# --- 1. the scrape cost of one agent ---------------------------------------------------------


def scrape_cost(work: Path, calls: int) -> None:
    fleet = AgentFleet()
    try:
        agent = fleet.add(
            "bench8", FakeState(gpus=[make_gpu(i, utilization_gpu=10 * i) for i in range(8)])
        )
        fleet.start(interval=0.5)
        other = None
        if os.geteuid() == 0:
            from harness.sshd import ensure_test_user

            other = ensure_test_user()[0].pw_uid
        trainer = fleet.trainer(agent, "0,1,2,3", "bench")
        for i, gpu in enumerate(agent.nvml.state.gpus):
            pids = [trainer] if i < 4 else [fleet.workload()]
            pids.append(fleet.workload(user=other))
            gpu.compute_processes = [FakeProcess(pid, GiB) for pid in pids]
        agent.nvml.write()
        PrometheusServer.wait(
            "16 processes in the agent's report",
            lambda: (
                sum(
                    len(g.processes or [])
                    for g in Report.from_json(agent.snapshot.read_bytes()).gpus
                )
                == 16
            ),
            30,
        )
        fleet.restart(interval=2.0)  # the default interval: samples go on during the scrapes
        url = f"http://{agent.instance}"
        with urllib.request.urlopen(url + "/metrics", timeout=10) as r:
            r.read()  # the first answer, before the timed ones
        metrics, missing = [], []
        for _ in range(calls):  # interleaved, so both see the same load
            for path, out in (("/metrics", metrics), ("/nope", missing)):
                started = time.perf_counter()
                try:
                    with urllib.request.urlopen(url + path, timeout=10) as r:
                        body = r.read()
                except urllib.error.HTTPError as e:
                    e.read()
                out.append(time.perf_counter() - started)
                if path == "/metrics":
                    text = body.decode()
        values = {
            s.name: s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
        series = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
        # The agent's own mean over every answer it built (the counters, not one noisy last one).
        own = values["gpumon_scrape_duration_seconds_total"] / values["gpumon_scrapes_total"]
        sample = values["gpumon_sample_duration_seconds"]
        print(f"\n1. one agent, 8 GPUs, 16 processes of 2 users, 4 GPUs claimed ({calls} GETs)")
        print(f"   /metrics answer: {len(body)} bytes, {series} series")
        print(f"   GET /metrics p50 {p50(metrics) * 1000:.2f} ms (p90 "
              f"{statistics.quantiles(metrics, n=10)[-1] * 1000:.2f} ms)")  # fmt: skip
        print(f"   baseline GET /nope (404, same listener) p50 {p50(missing) * 1000:.2f} ms: "
              f"{p50(metrics) / p50(missing):.1f}x")  # fmt: skip
        print(f"   the agent's own figure for building it (mean): {own * 1000:.2f} ms; "
              f"one sample of the 8 GPUs: {sample * 1000:.2f} ms")  # fmt: skip
        print(f"   at a 15 s scrape interval: {own / 15 * 100:.3f} % of a core")
    finally:
        fleet.close()


# --- a full 8-GPU report, and what its agent serves ------------------------------------------


def full_report(name: str) -> Report:
    gpus = []
    for i in range(8):
        processes = [
            GpuProcess(pid=1000 + i, user="lww", command="/usr/bin/python3 -u train.py --lr 0.1",
                       gpu_memory_bytes=20 * GiB),
            GpuProcess(pid=2000 + i, user="niv", command="jupyter-lab --no-browser",
                       gpu_memory_bytes=2 * GiB),
        ]  # fmt: skip
        claims = (
            [ClaimInfo(job="kws", user="lww", pid=1000 + i, started_at=utc_iso(time.time() - 3600),
                       progress={"epoch": 3, "epochs": 30, "loss": 0.25})]
            if i < 4 else []
        )  # fmt: skip
        gpus.append(
            Gpu(
                index=i,
                uuid=f"GPU-{i:08x}-1111-2222-3333-{i:012x}",
                name="NVIDIA A100-SXM4-80GB",
                pci_bus_id=f"00000000:{0x07 + 0x10 * i:02X}:00.0",
                utilization_pct=float(10 * i),
                utilization_mean_pct=float(10 * i),
                memory_utilization_pct=5.0,
                memory_used_bytes=22 * GiB,
                memory_total_bytes=80 * GiB,
                temperature_c=60.0,
                power_w=250.0,
                power_limit_w=400.0,
                throttle_reasons=["power_cap"] if i == 7 else [],
                processes=processes,
                claims=claims,
                unclaimed_use=i >= 4,
                claimed_idle=False,
            )
        )
    return Report(
        generated_at=utc_iso(),
        host=Host(
            hostname=name,
            primary_ip="192.0.2.10",
            load_avg=[3.0, 3.5, 4.0],
            cpu_count=64,
            cpu_percent=40.0,
            memory_total_bytes=512 * GiB,
            memory_used_bytes=100 * GiB,
            memory_percent=20.0,
            disk_root_total_bytes=1000 * GiB,
            disk_root_used_bytes=400 * GiB,
            disk_root_percent=40.0,
            users=[],
        ),
        agent_version="0.1.0",
        interval_s=2.0,
        window_s=60.0,
        nvml=Nvml(available=True, driver_version="550.54.15"),
        gpus=gpus,
        warnings=[HealthWarning(code="gpu_memory_high", message="x", gpu_index=3)],
    )


def agent_text(name: str) -> str:
    report = full_report(name)
    report.generated_at = utc_iso()
    state = DaemonState()
    state.report = report
    registry = CollectorRegistry()
    registry.register(ReportCollector(state))
    return generate_latest(registry).decode()


# --- 2 and 3: pushes ------------------------------------------------------------------------


def config_text(work: Path, sheet: str, names: list[str], url: str | None) -> str:
    source = f'[source]\nkind = "prometheus"\nurl = "{url}"\ntimeout_s = 60\n' if url else ""
    tables = "".join(f'[servers.{n}]\nhost = "192.0.2.1"\n' for n in names)
    return (
        f'state_dir = "{work}/state-{sheet}"\n'
        f'[sheet]\nbackend = "xlsx"\npath = "{work}/{sheet}.xlsx"\nadd_rows = true\n'
        "[poll]\nservers_from_sheet = false\nstale_after_s = 604800\n" + source + tables
    )


def timed_pushes(config, runs: int) -> dict[str, float]:
    """The adopting push, then ``runs`` steady ones: p50 of sweep and push, and what the source
    counted."""
    backend = open_backend(config)
    poller = open_poller(config)
    try:
        outcome = push_once(config, backend, poller, add_rows=True)  # adopt: rows, anchors
        assert all(r.on for r in outcome.results), [r.reason for r in outcome.results][:3]
        sweeps, pushes, cpu = [], [], []
        for _ in range(runs):
            started, began = time.perf_counter(), time.process_time()
            results = poller.sweep(outcome.names)
            sweeps.append(time.perf_counter() - started)
            cpu.append(time.process_time() - began)  # gpumon's own CPU, all its threads
            assert all(r.on for r in results)
            started = time.perf_counter()
            outcome = push_once(config, backend, poller, add_rows=True)
            pushes.append(time.perf_counter() - started)
        stats = getattr(poller, "stats", None)
        return {
            "sweep": p50(sweeps),
            "cpu": p50(cpu),
            "push": p50(pushes),
            "cells": float(len(outcome.changes)),
            "requests": float(stats.requests) if stats else 0.0,
            "bytes": float(stats.answer_bytes) if stats else 0.0,
            "series": float(stats.series) if stats else 0.0,
            "sweeps": float(1 + 2 * runs),
        }
    finally:
        poller.close()
        backend.close()


# The stand-in agents run in a process of their own: their 50 answers a second must not count
# as gpumon's CPU, nor take its GIL.
EXPORTERS = """
import sys
sys.path.insert(0, sys.argv[1])
from harness.exporters import StaticExporter
text = open(sys.argv[2]).read()
servers = [StaticExporter(f"127.0.0.{2 + i}", 0, text) for i in range(int(sys.argv[3]))]
print(" ".join(f"{s.address}:{s.port}" for s in servers), flush=True)
sys.stdin.read()  # until the benchmark closes it
"""


def prometheus_fleet(work: Path, names: list[str], runs: int) -> dict[str, float]:
    text = work / "agent.txt"
    text.write_text(agent_text("bench"))
    exporters = subprocess.Popen(
        [sys.executable, "-c", EXPORTERS, str(ROOT / "tests"), str(text), str(ENDPOINTS)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    prometheus = PrometheusServer(work / f"prometheus-{len(names)}", "")
    try:
        assert exporters.stdout is not None
        endpoints = exporters.stdout.readline().split()
        assert len(endpoints) == ENDPOINTS, endpoints
        targets = work / f"targets-{len(names)}.json"
        entries = [
            {"targets": [endpoints[i % ENDPOINTS]], "labels": {"server": name}}
            for i, name in enumerate(names)
        ]
        targets.write_text(json.dumps(entries))
        prometheus.config_path.write_text(
            shipped_config(prometheus.workdir, targets, interval="10s", fast_hours=False)
        )
        prometheus.start()
        prometheus.wait(
            f"{len(names)} targets scraped",
            lambda: len(prometheus.query('up{job="gpumon"} == 1')) == len(names),
            120,
        )
        path = work / f"prometheus-{len(names)}.toml"
        path.write_text(config_text(work, f"prom{len(names)}", names, prometheus.url))
        config = load(str(path))
        before = prometheus.http_requests()
        figures = timed_pushes(config, runs)
        figures["prometheus_requests"] = prometheus.http_requests() - before
        with PrometheusSource(config) as source:
            figures["query_chars"] = float(len(source.query_text(names)))
        return figures
    finally:
        prometheus.stop()
        assert exporters.stdin is not None
        exporters.stdin.close()
        exporters.wait(30)


def ssh_fleet(work: Path, count: int, runs: int) -> dict[str, float]:
    fleet = Fleet()
    try:
        for i in range(count):
            name = f"ssh{i:03d}"
            report = full_report(name)
            report.generated_at = utc_iso()
            fleet.add(name, behaviour=REPORT_AS_WRITTEN, report=report)
        fleet.start()
        config = fleet.config(work, stale_after_s=1e9, concurrency=64, sweep_timeout_s=60.0)
        config.state_dir = str(work / "state-ssh")
        config.sheet = SheetConfig(backend="xlsx", path=str(work / "ssh.xlsx"), add_rows=True)
        return timed_pushes(config, runs)
    finally:
        fleet.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", type=int, default=500)
    parser.add_argument("--ssh-servers", type=int, default=64)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--calls", type=int, default=200)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="gpumon-bench-prom-"))
    try:
        scrape_cost(work, args.calls)
        big = [f"gpu{i:03d}" for i in range(args.servers)]
        small = [f"gpu{i:03d}" for i in range(args.ssh_servers)]
        prom_big = prometheus_fleet(work, big, args.runs)
        prom_small = prometheus_fleet(work, small, args.runs)
        ssh = ssh_fleet(work, args.ssh_servers, args.runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)

    per_sweep = prom_big["requests"] / prom_big["sweeps"]
    print(f"\n2./3. steady pushes into an .xlsx sheet, 8 GPU rows per server, p50 of {args.runs}")
    print(f"{'':34} {'sweep s':>8} {'cpu s':>6} {'push s':>8} {'requests/sweep':>15} "
          f"{'answer':>10}")  # fmt: skip
    for label, f in (
        (f"Prometheus, {args.servers} servers", prom_big),
        (f"Prometheus, {args.ssh_servers} servers", prom_small),
        (f"SSH, {args.ssh_servers} servers (4 sshd)", ssh),
    ):
        requests = (
            f"{f['requests'] / f['sweeps']:.0f}" if f["requests"] else f"{args.ssh_servers} execs"
        )
        answer = f"{f['bytes'] / f['sweeps'] / 1e6:.1f} MB" if f["bytes"] else ""
        print(f"{label:34} {f['sweep']:8.3f} {f['cpu']:6.3f} {f['push']:8.3f} {requests:>15} "
              f"{answer:>10}")  # fmt: skip
    print(f"   Prometheus counted {prom_big['prometheus_requests']:.0f} /api/v1/query requests "
          f"for {prom_big['sweeps']:.0f} sweeps at {args.servers} servers "
          f"({per_sweep:.0f} per sweep); the query is {prom_big['query_chars']:.0f} characters, "
          f"the answer {prom_big['series'] / prom_big['sweeps']:.0f} series")  # fmt: skip
    print("   cpu: gpumon's own CPU time during the sweep (Prometheus' and sshd's are not in it)")
    print(f"   sweep ratio Prometheus/SSH at {args.ssh_servers} servers: "
          f"{prom_small['sweep'] / ssh['sweep']:.2f}x; Prometheus at {args.servers} vs SSH at "
          f"{args.ssh_servers}: {prom_big['sweep'] / ssh['sweep']:.2f}x the time for "
          f"{args.servers / args.ssh_servers:.1f}x the servers")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
