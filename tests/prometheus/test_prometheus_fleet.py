"""The fleet on Prometheus, end to end: real agents on the fake NVML serve /metrics on
127.0.0.2-4, a stand-in dcgm-exporter answers on 127.0.0.5 (dcgm-exporter's real names, labels
and units), nothing answers on 127.0.0.6; `gpumon prometheus-targets` writes the targets file;
a real Prometheus (the shipped scrape config and rules, made fast) scrapes them every second.
Then the sheet is fed from Prometheus and, for the same agents, over SSH (the sshd fleet serving
the very snapshots the agents' /metrics are made from), and the cells are compared.

The agents sample once (interval 3600 s after the workloads are in place), so /metrics and the
snapshot hold one and the same Report for the whole module.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pwd
import re
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from promkit import gpumon, sheet_rows

from gpumon.config import SheetConfig, load
from gpumon.poll import result as codes
from gpumon.poll.prometheus import PrometheusSource
from gpumon.push import push
from gpumon_agent.command import short_command
from gpumon_agent.report import Report, parse_utc_iso
from harness.agents import AgentFleet, SimAgent, snapshot_behaviour
from harness.exporters import DcgmGpu, StaticExporter, dcgm_exposition
from harness.fakenvml import PROCESS_QUERIES, FakeProcess, FakeState, make_gpu
from harness.prometheus import DASHBOARD, PrometheusServer, shipped_config
from harness.sshd import Fleet, ensure_test_user, free_port

pytestmark = pytest.mark.slow

GiB = 1 << 30
AGENT_SERVERS = ("ganbsp", "hcpbsp", "trlbsp")
DCGM_SERVER, DOWN_SERVER = "lstmbbsp", "drlbsp"


@dataclass
class Deployment:
    fleet: AgentFleet
    prometheus: PrometheusServer
    dcgm: StaticExporter
    work: Path
    config_path: Path
    targets: Path
    test_user: str | None

    def config(self):
        return load(str(self.config_path))

    def snapshot(self, name: str) -> Report:
        return Report.from_json(self.fleet.agent(name).snapshot.read_bytes())


def write_config(path: Path, work: Path, url: str, port: int, extra: str = "") -> None:
    servers = [*AGENT_SERVERS, DCGM_SERVER, DOWN_SERVER]
    tables = "".join(
        f'\n[servers.{name}]\nhost = "127.0.0.{2 + i}"\n' for i, name in enumerate(servers)
    )
    path.write_text(
        f'state_dir = "{work}/state-prometheus"\n\n'
        f'[sheet]\nbackend = "xlsx"\npath = "{work}/prometheus.xlsx"\nadd_rows = true\n\n'
        "[poll]\nservers_from_sheet = false\nstale_after_s = 86400\n\n"
        f'[source]\nkind = "prometheus"\nurl = "{url}"\ntimeout_s = 20\n\n'
        f"[metrics]\nport = {port}\n" + tables + extra
    )


@pytest.fixture(scope="module")
def deployment(
    tmp_path_factory: pytest.TempPathFactory, isolated_home: Path
) -> Iterator[Deployment]:
    work = tmp_path_factory.mktemp("prometheus-fleet")
    fleet = AgentFleet()
    dcgm = prometheus = None
    try:
        gan = fleet.add(
            "ganbsp",
            FakeState(
                gpus=[
                    make_gpu(0, utilization_gpu=80, memory_used=30 * GiB, temperature=60),
                    make_gpu(1, utilization_gpu=35, memory_used=2 * GiB, temperature=91),
                ]
            ),
        )
        hcp = fleet.add(
            "hcpbsp",
            FakeState(
                gpus=[
                    make_gpu(0, utilization_gpu=5),
                    make_gpu(1, lost=True),
                    make_gpu(2, memory_used=79 * GiB, errors=dict.fromkeys(PROCESS_QUERIES, 3)),
                ]
            ),
        )
        fleet.add(
            "trlbsp",
            FakeState(
                gpus=[
                    make_gpu(
                        0,
                        name="NVIDIA GeForce RTX 2080 Ti",
                        memory_total=11 * GiB,
                        throttle_reasons=0x40 | 0x4,  # hw_thermal, power_cap
                    )
                ]
            ),
            dcgm_names=True,
        )
        fleet.port = free_port([a.address for a in fleet.agents] + ["127.0.0.5", "127.0.0.6"])
        fleet.start(interval=0.5)  # makes the claims registries

        user = None
        if os.geteuid() == 0:
            user = ensure_test_user()[0].pw_name
        uid = pwd.getpwnam(user).pw_uid if user else None
        trainer = fleet.trainer(gan, "0", "kws")
        notebooks = [fleet.workload("jupyter.py", user=uid) for _ in range(2)]
        unclaimed = fleet.workload("jupyter.py")
        gan.nvml.state.gpus[0].compute_processes = [FakeProcess(trainer, 4 * GiB)]
        gan.nvml.state.gpus[1].compute_processes = [FakeProcess(p, GiB) for p in notebooks]
        gan.nvml.write()
        hcp.nvml.state.gpus[0].compute_processes = [FakeProcess(unclaimed, 512 << 20)]
        hcp.nvml.write()
        _wait_for_workloads(fleet, gan, hcp)
        fleet.restart(interval=3600)  # one sample each, from now on

        gpus = [DcgmGpu(0, "GPU-dcgm-0", 42, 2048, 20480, 55, 72.5)]
        gpus.append(DcgmGpu(1, "GPU-dcgm-1", 0, 0, 22528, 31, 16.0))
        dcgm = StaticExporter("127.0.0.5", fleet.port, dcgm_exposition(DCGM_SERVER, gpus))

        targets = work / "targets.json"
        prometheus = PrometheusServer(work / "prometheus", "")
        config_path = work / "gpumon.toml"
        write_config(config_path, work, prometheus.url, fleet.port)
        done = gpumon("--config", str(config_path), "prometheus-targets", "--out", str(targets))
        assert done.returncode == 0, done.stderr
        prometheus.config_path.write_text(shipped_config(prometheus.workdir, targets))
        prometheus.start()
        deployment = Deployment(fleet, prometheus, dcgm, work, config_path, targets, user)
        _wait_for_scrapes(deployment)
        yield deployment
    finally:
        if prometheus is not None:
            prometheus.stop()
        if dcgm is not None:
            dcgm.close()
        fleet.close()


def _wait_for_workloads(fleet: AgentFleet, gan: SimAgent, hcp: SimAgent) -> None:
    def ready() -> bool:
        g = Report.from_json(gan.snapshot.read_bytes())
        h = Report.from_json(hcp.snapshot.read_bytes())
        return (
            len(g.gpus[0].claims) == 1
            and len(g.gpus[0].processes or []) == 1
            and len(g.gpus[1].processes or []) == 2
            and len(h.gpus[0].processes or []) == 1
        )

    PrometheusServer.wait("the workloads in the agents' reports", ready, 30)


def _wait_for_scrapes(d: Deployment) -> None:
    def scraped() -> bool:
        targets = d.prometheus.targets()
        done = [t for t in targets if not t["lastScrape"].startswith("0001")]
        return len(done) == 5 and len(d.prometheus.query("user:gpumon_gpu_hours_used:24h")) > 0

    d.prometheus.wait("every target scraped and the rules evaluated", scraped, 60)


# --- the targets file ---------------------------------------------------------------------


def test_prometheus_scrapes_the_targets_gpumon_prometheus_targets_writes(deployment):
    entries = json.loads(deployment.targets.read_text())
    assert [e["labels"]["server"] for e in entries] == sorted([*AGENT_SERVERS, DCGM_SERVER,
                                                               DOWN_SERVER])  # fmt: skip
    assert entries[1] == {
        "targets": [f"127.0.0.2:{deployment.fleet.port}"],
        "labels": {"server": "ganbsp"},
    }
    assert oct(deployment.targets.stat().st_mode & 0o777) == "0o644"  # Prometheus' own user

    health = {t["labels"]["server"]: t["health"] for t in deployment.prometheus.targets()}

    assert health == {
        "ganbsp": "up",
        "hcpbsp": "up",
        "trlbsp": "up",
        DCGM_SERVER: "up",
        DOWN_SERVER: "down",
    }


def test_a_server_added_to_the_config_is_scraped_once_the_file_is_rewritten(deployment):
    bigger = deployment.work / "bigger.toml"
    write_config(
        bigger,
        deployment.work,
        deployment.prometheus.url,
        deployment.fleet.port,
        '\n[servers.newbsp]\nhost = "127.0.0.7"\n',
    )
    try:
        done = gpumon(
            "--config", str(bigger), "prometheus-targets", "--out", str(deployment.targets)
        )
        assert done.returncode == 0 and "6 targets written" in done.stdout

        def listed() -> bool:
            return "newbsp" in {t["labels"]["server"] for t in deployment.prometheus.targets()}

        deployment.prometheus.wait("Prometheus to pick up the rewritten targets file", listed, 30)
    finally:
        done = gpumon(
            "--config", str(deployment.config_path), "prometheus-targets",
            "--out", str(deployment.targets),
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
    deployment.prometheus.wait(
        "the removed target to go",
        lambda: "newbsp" not in {t["labels"]["server"] for t in deployment.prometheus.targets()},
        30,
    )
    assert not list(deployment.work.glob(".targets.json*"))  # no temporary file left


# --- the source's queries ----------------------------------------------------------------


def test_the_query_the_source_makes_reads_back_what_each_agent_reports(deployment):
    with PrometheusSource(deployment.config()) as source:
        results = source.sweep(list(AGENT_SERVERS))
        assert source.stats.requests == 1

    for result in results:
        want = deployment.snapshot(result.name)
        got = result.report
        assert result.on and result.reason_code is None, result.reason
        assert got is not None
        assert got.generated_at == want.generated_at
        assert got.agent_version == want.agent_version
        assert got.nvml.available == want.nvml.available
        assert got.nvml.driver_version == want.nvml.driver_version
        for field in ("hostname", "primary_ip", "load_avg", "cpu_count", "memory_percent",
                      "swap_total_bytes", "swap_percent", "disk_root_percent"):  # fmt: skip
            assert getattr(got.host, field) == getattr(want.host, field), field
        assert [(w.code, w.gpu_index, w.message) for w in got.warnings] == [
            (w.code, w.gpu_index, w.message) for w in want.warnings
        ]
        assert len(got.gpus) == len(want.gpus)
        for g, w in zip(got.gpus, want.gpus):
            for field in ("index", "uuid", "name", "pci_bus_id", "state", "error",
                          "utilization_pct", "utilization_mean_pct", "memory_used_bytes",
                          "memory_total_bytes", "temperature_c", "throttle_reasons",
                          "processes_error", "unclaimed_use", "claimed_idle"):  # fmt: skip
                assert getattr(g, field) == getattr(w, field), (result.name, g.index, field)
            assert _who(g) == _who(w)
            assert [(c.job, c.user, c.started_at, c.progress) for c in g.claims] == [
                (c.job, c.user, c.started_at, c.progress) for c in w.claims
            ]


def _who(gpu) -> Counter | None:
    if gpu.processes is None:
        return None
    return Counter((p.user, short_command(p.command)) for p in gpu.processes)


def test_the_fleet_under_test_has_what_the_cells_must_show(deployment):
    """The comparison below means something only if the fleet has claims, processes of two
    users, unknown processes, a lost GPU, throttling and warnings."""
    gan, hcp, trl = (deployment.snapshot(n) for n in AGENT_SERVERS)
    assert gan.gpus[0].claims[0].progress == {"epoch": 3, "epochs": 30, "loss": 0.25}
    assert gan.gpus[1].unclaimed_use and hcp.gpus[0].unclaimed_use
    assert {p.user for p in gan.gpus[0].processes + gan.gpus[1].processes} >= {"root"}
    assert hcp.gpus[1].state == "lost" and hcp.gpus[2].processes is None
    assert trl.gpus[0].throttle_reasons == ["power_cap", "hw_thermal"]
    codes_seen = {w.code for r in (gan, hcp, trl) for w in r.warnings}
    assert {"gpu_temperature_high", "gpu_lost", "gpu_memory_high", "gpu_thermal_throttle"} <= (
        codes_seen
    )


def test_one_query_per_sweep_whatever_the_number_of_servers(deployment):
    names = [*AGENT_SERVERS, DCGM_SERVER, DOWN_SERVER, "nosuchbsp"]
    before = deployment.prometheus.http_requests()
    with PrometheusSource(deployment.config()) as source:
        for _ in range(3):
            source.sweep(names)
        assert source.stats.requests == 3
    assert deployment.prometheus.http_requests() - before == 3  # Prometheus' own count


def test_a_server_prometheus_has_nothing_about_is_off_saying_so(deployment):
    with PrometheusSource(deployment.config()) as source:
        (result,) = source.sweep(["nosuchbsp"])
    assert not result.on and result.reason_code == codes.NO_METRICS
    assert "no series in Prometheus with server='nosuchbsp'" in result.reason


def test_status_and_check_read_the_fleet_from_prometheus(deployment):
    done = gpumon("--config", str(deployment.config_path), "status", "--json")
    assert done.returncode == 1, done.stderr  # one server is OFF
    servers = {s["name"]: s for s in json.loads(done.stdout)["servers"]}
    port = deployment.fleet.port
    assert servers["ganbsp"]["on"]
    assert servers["ganbsp"]["destination"] == f"127.0.0.2:{port} via Prometheus (job gpumon)"
    assert servers[DCGM_SERVER]["on"] and servers[DCGM_SERVER]["degraded"]
    assert not servers[DOWN_SERVER]["on"]

    done = gpumon("--config", str(deployment.config_path), "-v", "status")
    url = deployment.prometheus.url
    assert f"Prometheus {url}: 5 servers in " in done.stderr
    assert "(1 queries, " in done.stderr
    assert (
        f"{DOWN_SERVER}: OFF via 127.0.0.6:{port} via Prometheus (job gpumon) (scrape_failed"
        in (done.stderr)
    )

    done = gpumon("--config", str(deployment.config_path), "check")
    assert done.returncode == 1
    assert f"ganbsp: ON via 127.0.0.2:{port} via Prometheus (job gpumon) (agent " in done.stdout
    assert (
        f"{DOWN_SERVER}: OFF: Prometheus cannot scrape it: up = 0 for 127.0.0.6:{port} (job "
        "gpumon) — is drlbsp up, and its agent serving --metrics" in done.stdout
    )


# --- the sheet, fed from Prometheus and over SSH ---------------------------------------------


@pytest.fixture(scope="module")
def both_sheets(deployment: Deployment):
    """The same three agents pushed into two new workbooks: over SSH (the sshd fleet answering
    with the agents' own snapshots) and from Prometheus (the real CLI)."""
    ssh = Fleet()
    try:
        for name in AGENT_SERVERS:
            ssh.add(name, behaviour=snapshot_behaviour(deployment.fleet.agent(name)))
        ssh.start()
        ssh_config = ssh.config(deployment.work, stale_after_s=86400.0)
        ssh_config.state_dir = str(deployment.work / "state-ssh")
        ssh_config.sheet = SheetConfig(
            backend="xlsx", path=str(deployment.work / "ssh.xlsx"), add_rows=True
        )
        assert push(ssh_config) == 0
    finally:
        ssh.close()
    started = time.time()
    done = gpumon("--config", str(deployment.config_path), "push")
    assert done.returncode == 0, done.stderr
    return sheet_rows(ssh_config), sheet_rows(deployment.config()), started


def test_a_push_fed_from_prometheus_writes_the_cells_a_push_over_ssh_writes(both_sheets):
    over_ssh, from_prometheus, started = both_sheets
    compared = 0
    for key, ssh_row in over_ssh.items():
        prom_row = from_prometheus[key]
        for header, text in ssh_row.items():
            if header == "Time":
                for value in (text, prom_row[header]):
                    if value:  # the name row: when each push saw the server
                        assert abs(time.mktime(time.strptime(value, "%Y-%m-%d %H:%M:%S"))
                                   - started) < 120  # fmt: skip
                continue
            assert prom_row[header] == text, (key, header)
            compared += bool(text)
    assert compared >= 30
    assert set(over_ssh) <= set(from_prometheus)


def test_the_compared_cells_show_people_claims_and_trouble(both_sheets):
    _, rows, _ = both_sheets
    gan0, gan1 = rows[("ganbsp", 0)], rows[("ganbsp", 1)]
    assert gan0["ON/OFF"] == "ON" and gan0["GPU util"] == "80%"
    assert gan0["Running"] == f"root: {Path(sys.executable).name} train.py"
    assert gan0["Job"] == "kws (root) epoch 3/30, loss 0.25"
    assert gan1["Running"].endswith("python3 jupyter.py ×2")
    health = gan0["Health"]
    assert "GPU 1 at 91 °C" in health and "GPU 1 used without a claim" in health
    hcp = rows[("hcpbsp", 0)]["Health"]
    assert "GPU 1 lost" in hcp and "GPU 2 processes unknown" in hcp
    assert rows[("hcpbsp", 2)]["Running"] == "?"
    assert "throttled for heat (hw_thermal)" in rows[("trlbsp", 0)]["Health"]


def test_dcgm_exporter_alone_gives_an_on_server_without_people_and_health_says_so(both_sheets):
    _, rows, _ = both_sheets
    first, second = rows[(DCGM_SERVER, 0)], rows[(DCGM_SERVER, 1)]
    assert first["ON/OFF"] == "ON"
    assert first["GPU util"] == "42%" and first["GPU memory"] == "2/22 GiB"
    assert first["Running"] == second["Running"] == "?"  # unknown, never "nobody"
    assert first["Job"] == ""
    assert first["Health"] == "dcgm-exporter only: no processes, users or claims"


def test_a_server_prometheus_cannot_scrape_is_off_with_the_reason(deployment):
    with PrometheusSource(deployment.config()) as source:
        (result,) = source.sweep([DOWN_SERVER])
    assert not result.on and result.reason_code == codes.SCRAPE_FAILED
    port = deployment.fleet.port
    assert result.reason == f"Prometheus cannot scrape it: up = 0 for 127.0.0.6:{port} (job gpumon)"
    assert result.address == "127.0.0.6"


# --- what Prometheus holds: names, rules, the dashboard --------------------------------------


def test_the_targets_server_label_wins_and_the_agents_copy_is_dropped(deployment):
    assert deployment.prometheus.query('count({exported_server!=""})') == []
    series = deployment.prometheus.query('gpumon_gpu_info{server="ganbsp"}')
    assert {s["metric"]["gpu"] for s in series} == {"0", "1"}


def test_dcgm_names_are_scraped_for_the_agent_that_exports_them(deployment):
    found = deployment.prometheus.query("DCGM_FI_DEV_FB_USED")
    assert {s["metric"]["server"] for s in found} == {"trlbsp", DCGM_SERVER}
    trl = next(s for s in found if s["metric"]["server"] == "trlbsp")
    assert trl["metric"]["modelName"] == "NVIDIA GeForce RTX 2080 Ti"
    assert trl["metric"]["device"] == "nvidia0" and trl["metric"]["UUID"].startswith("GPU-")


def test_recording_rules_give_gpus_per_user_and_utilization_per_server(deployment):
    prom = deployment.prometheus
    used = {
        s["metric"]["user"]: float(s["value"][1]) for s in prom.query("user:gpumon_gpus_used:count")
    }
    expected = {"root": 2.0}  # the trainer on ganbsp 0, the unclaimed job on hcpbsp 0
    if deployment.test_user:
        expected[deployment.test_user] = 1.0  # two notebooks on ganbsp 1
    else:
        expected = {"root": 3.0}
    assert used == expected
    claimed = prom.query("user:gpumon_gpus_claimed:count")
    assert [(s["metric"]["user"], s["value"][1]) for s in claimed] == [("root", "1")]
    per_server = {
        s["metric"]["server"]: float(s["value"][1])
        for s in prom.query("server:gpumon_gpu_utilization:avg")
    }
    assert per_server["ganbsp"] == pytest.approx((0.80 + 0.35) / 2)
    hours = prom.query("user:gpumon_gpu_hours_used:24h")
    assert {s["metric"]["user"] for s in hours} == set(used)


def dashboard_exprs() -> list[str]:
    data = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in data["panels"] for t in p.get("targets", [])]
    for var in data["templating"]["list"]:
        if var["type"] == "query":
            exprs.append(var["definition"].removeprefix("label_values(").split(",")[0])
    return exprs


_NOT_METRICS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless",
    "bool", "offset", "inf", "nan",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads: identifiers that are not functions,
    keywords, label names or string contents."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges and subqueries
    names = set()
    for m in re.finditer(r"(?<![\w:$])([A-Za-z_:][\w:]*)\s*(\()?", text):
        if m.group(2) is None and m.group(1).lower() not in _NOT_METRICS:
            names.add(m.group(1))
    return names


def test_the_metric_name_finder_finds_what_an_expression_reads():
    expr = (
        'sum by (user) (rate(gpumon_a_total{x="y(z)"}[5m])) / on(user) group_left '
        "user:gpumon_b:count or vector(0) > bool 1"
    )
    assert metric_names(expr) == {"gpumon_a_total", "user:gpumon_b:count"}


def test_the_dashboard_reads_only_metrics_that_exist_in_a_real_scrape(deployment):
    exist = deployment.prometheus.metric_names()
    exprs = dashboard_exprs()
    used = set().union(*(metric_names(e) for e in exprs))
    assert len(used) >= 15
    assert used - exist == set()
    for expr in exprs:  # and each one is PromQL this Prometheus accepts
        deployment.prometheus.query(expr.replace("$server", ".*"))


def test_the_reports_the_module_compares_stay_one_sample(deployment):
    """Guard for the comparison: had an agent sampled again, the two sides could differ."""
    for name in AGENT_SERVERS:
        report = deployment.snapshot(name)
        assert time.time() - parse_utc_iso(report.generated_at).timestamp() < 3000
        assert dataclasses.asdict(report)["interval_s"] == 3600.0
