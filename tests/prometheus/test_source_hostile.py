"""Prometheus' answers are untrusted input: what a hostile or broken exporter can make a real
Prometheus say (huge numbers, NaN, 50,000-character labels, missing series, another server's
name), what a broken Prometheus or a proxy in front of it can answer (not JSON, errors, too
much, too slowly), and what sheet editors can put in the names asked for. Each costs that value
or that server — or, for Prometheus itself, says so on every server — never the push."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from promkit import gpumon

from gpumon.config import ConfigError, load
from gpumon.poll import prometheus as source_module
from gpumon.poll import result as codes
from gpumon.poll.prometheus import PrometheusSource
from gpumon_agent.daemon import DaemonState
from gpumon_agent.metrics import ReportCollector
from gpumon_agent.report import Gpu, GpuProcess, Host, Nvml, Report, utc_iso
from harness.exporters import StaticExporter
from harness.prometheus import PrometheusServer, free_port, shipped_config

pytestmark = pytest.mark.slow


def exposition(hostname: str, **gpu: object) -> str:
    """What a gpumon agent with one GPU (and ``gpu`` fields) would serve."""
    values = dict(
        index=0,
        uuid=f"GPU-{hostname}",
        name="NVIDIA A100",
        utilization_pct=50.0,
        memory_used_bytes=4 << 30,
        memory_total_bytes=80 << 30,
        temperature_c=40.0,
        processes=[GpuProcess(pid=7, user="lww", command="python3 train.py")],
    )
    values.update(gpu)
    report = Report(
        generated_at=utc_iso(),
        host=Host(hostname=hostname, primary_ip="192.0.2.9"),
        agent_version="0.1.0",
        nvml=Nvml(available=True, driver_version="550.54.15"),
        gpus=[Gpu(**values)],  # type: ignore[arg-type]
    )
    state = DaemonState()
    state.report = report
    registry = CollectorRegistry()
    registry.register(ReportCollector(state))
    return generate_latest(registry).decode()


def replace_value(text: str, metric: str, value: str) -> str:
    out = []
    for line in text.splitlines():
        if line.startswith(metric + "{"):
            line = line.rsplit(" ", 1)[0] + " " + value
        out.append(line)
    return "\n".join(out) + "\n"


LONG = "x" * 50_000


def exporters_text() -> dict[str, str]:
    """server name → what its target answers."""
    ok = exposition("okbsp")
    return {
        "okbsp": ok,
        "hugebsp": replace_value(exposition("hugebsp"), "gpumon_gpu_memory_used_bytes", "1e+300"),
        "nanbsp": replace_value(exposition("nanbsp"), "gpumon_gpu_temperature_celsius", "NaN"),
        "infbsp": replace_value(exposition("infbsp"), "gpumon_gpu_utilization_ratio", "+Inf"),
        "timebsp": replace_value(exposition("timebsp"), "gpumon_report_timestamp_seconds", "1e20"),
        "longbsp": exposition(
            "longbsp",
            name=LONG,
            processes=[GpuProcess(pid=1, user=LONG, command=LONG)],
        ).replace(f'"{LONG[:127]}…"', f'"{LONG}"'),  # the agent cuts; this exporter does not
        "manybsp": replace_value(exposition("manybsp"), "gpumon_gpu_processes", "1e9"),
        "sparsebsp": "\n".join(
            line
            for line in exposition("sparsebsp").splitlines()
            if line.startswith(("gpumon_report_timestamp_seconds", "gpumon_gpu_info"))
        )
        + "\n",
        "oddgpubsp": exposition("oddgpubsp")
        + 'gpumon_gpu_info{gpu="-1",state="ok"} 1\ngpumon_gpu_info{gpu="abc",state="ok"} 1\n'
        + 'gpumon_gpu_utilization_ratio{gpu="7"} 0.5\n',
        "bigindexbsp": exposition("bigindexbsp", index=99999),
        # Says it is okbsp: the target's label wins, its own becomes exported_server.
        "impostorbsp": replace_value(
            exposition("okbsp", uuid="GPU-impostor"), "gpumon_gpu_utilization_ratio", "0.99"
        ),
    }


@dataclass
class Hostile:
    prometheus: PrometheusServer
    config_path: Path
    work: Path

    def source(self) -> PrometheusSource:
        return PrometheusSource(load(str(self.config_path)))


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hostile]:
    work = tmp_path_factory.mktemp("hostile")
    texts = exporters_text()
    exporters = []
    prometheus = PrometheusServer(work / "prometheus", "")
    try:
        entries = []
        for name, text in texts.items():
            exporter = StaticExporter("127.0.0.1", 0, text)
            exporters.append(exporter)
            target = f"127.0.0.1:{exporter.port}"
            entries.append({"targets": [target], "labels": {"server": name}})
        targets = work / "targets.json"
        targets.write_text(json.dumps(entries))
        prometheus.config_path.write_text(shipped_config(prometheus.workdir, targets))
        prometheus.start()
        prometheus.wait(
            "every hostile target scraped",
            lambda: len(prometheus.query("up == 1")) == len(texts),
            60,
        )
        config_path = work / "gpumon.toml"
        write_config(config_path, work, prometheus.url, list(texts))
        yield Hostile(prometheus, config_path, work)
    finally:
        prometheus.stop()
        for exporter in exporters:
            exporter.close()


def write_config(path: Path, work: Path, url: str, names: list[str], timeout_s: float = 10) -> None:
    tables = "".join(f'\n[servers."{n}"]\nhost = "192.0.2.1"\n' for n in names)
    path.write_text(
        f'state_dir = "{work}/state"\n\n'
        f'[sheet]\nbackend = "xlsx"\npath = "{work}/sheet.xlsx"\nadd_rows = true\n\n'
        "[poll]\nservers_from_sheet = false\n\n"
        f'[source]\nkind = "prometheus"\nurl = "{url}"\ntimeout_s = {timeout_s}\n' + tables
    )


def sweep(hostile: Hostile, *names: str):
    with hostile.source() as source:
        results = source.sweep(list(names))
        assert source.stats.requests == 1
    return {r.name: r for r in results}


def test_a_healthy_server_beside_hostile_ones_is_read_as_usual(hostile):
    names = list(exporters_text())
    got = sweep(hostile, *names)
    ok = got["okbsp"]
    assert ok.on and ok.reason_code is None
    assert ok.report.gpus[0].uuid == "GPU-okbsp"  # not the impostor's
    assert ok.report.gpus[0].utilization_pct == 50.0
    assert [(p.user, p.command) for p in ok.report.gpus[0].processes] == [
        ("lww", "python3 train.py")
    ]


@pytest.mark.parametrize(
    "name, field",
    [
        ("hugebsp", "report.gpus[0].memory_used_bytes: 1e+300 is out of range"),
        ("nanbsp", "report.gpus[0].temperature_c: nan is not a finite number"),
        ("infbsp", "report.gpus[0].utilization_pct: inf is not a finite number"),
        ("bigindexbsp", "report.gpus[0].index: 99999 is out of range (0 to 999)"),
    ],
)
def test_an_absurd_value_turns_only_its_server_off_naming_the_field(hostile, name, field):
    result = sweep(hostile, name, "okbsp")[name]
    assert not result.on and result.reason_code == codes.BAD_OUTPUT
    assert field in result.reason


def test_a_time_no_clock_shows_turns_its_server_off(hostile):
    result = sweep(hostile, "timebsp")["timebsp"]
    assert not result.on and result.reason_code == codes.BAD_OUTPUT
    assert "1e+20 is not a time" in result.reason


def test_fifty_thousand_character_labels_are_cut_not_refused(hostile):
    result = sweep(hostile, "longbsp")["longbsp"]
    assert result.on, result.reason
    gpu = result.report.gpus[0]
    assert len(gpu.name) == 128 and gpu.name.endswith("…")
    assert len(gpu.processes[0].user) <= 256


def test_a_billion_processes_are_capped_at_what_a_report_may_hold(hostile):
    result = sweep(hostile, "manybsp")["manybsp"]
    assert result.on
    assert len(result.report.gpus[0].processes) == 1024


def test_missing_series_are_unknown_values_not_zeros(hostile):
    result = sweep(hostile, "sparsebsp")["sparsebsp"]
    assert result.on
    gpu = result.report.gpus[0]
    assert gpu.utilization_pct is None and gpu.memory_used_bytes is None
    assert gpu.processes is None and gpu.unclaimed_use is None  # unknown, not "nobody"


def test_gpu_series_without_a_usable_index_are_ignored(hostile):
    result = sweep(hostile, "oddgpubsp")["oddgpubsp"]
    assert result.on
    assert [g.index for g in result.report.gpus] == [0]


def test_an_exporter_cannot_speak_for_another_server(hostile):
    impostor = sweep(hostile, "impostorbsp")["impostorbsp"]
    assert impostor.on and impostor.report.gpus[0].uuid == "GPU-impostor"
    assert hostile.prometheus.query('count({exported_server!=""})') == []


@pytest.mark.parametrize(
    "name",
    [".*", "okbsp|hugebsp", 'x"} or vector(1) #', "a\\", "ok.sp", "(?i)", "서버", "o\nk"],
)
def test_names_from_the_sheet_are_literal_in_the_query(hostile, name):
    got = sweep(hostile, name, "okbsp")
    assert not got[name].on and got[name].reason_code == codes.NO_METRICS
    assert got["okbsp"].on


def test_names_that_cannot_be_a_label_are_not_asked(hostile):
    odd = ["s" * 300, "bad\udcffname", "   "]
    with hostile.source() as source:
        results = source.sweep([*odd, "okbsp"])
    assert [r.on for r in results] == [False, False, False, True]
    assert all(r.reason_code == codes.CONFIG_ERROR for r in results[:3])


def test_names_are_matched_without_case_as_host_names_are(hostile):
    assert sweep(hostile, "OKBSP")["OKBSP"].on


# --- Prometheus itself (or what answers in its place) ---------------------------------------


class FakePrometheus:
    """An HTTP server on 127.0.0.1 answering /api/v1/query as told: (status, body, delay)."""

    def __init__(self) -> None:
        self.status, self.body, self.delay, self.drip = 200, b"{}", 0.0, 0.0
        self.cut = False  # promise more bytes than are sent, then close
        self.requests = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                outer.requests += 1
                length = int(self.headers.get("Content-Length", 0))
                self.rfile.read(length)
                time.sleep(outer.delay)
                try:
                    self.send_response(outer.status)
                    self.send_header("Content-Type", "application/json")
                    size = len(outer.body) * (2 if outer.cut else 1)
                    self.send_header("Content-Length", str(size))
                    self.end_headers()
                    if outer.drip:
                        for i in range(0, len(outer.body), 16):
                            self.wfile.write(outer.body[i : i + 16])
                            self.wfile.flush()
                            time.sleep(outer.drip)
                    else:
                        self.wfile.write(outer.body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def answer(self, body: object, status: int = 200) -> None:
        self.status = status
        self.body = body if isinstance(body, bytes) else json.dumps(body).encode()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def fake(tmp_path: Path) -> Iterator[tuple[FakePrometheus, Path]]:
    server = FakePrometheus()
    config = tmp_path / "gpumon.toml"
    write_config(config, tmp_path, server.url, ["ganbsp", "hcpbsp"], timeout_s=2)
    yield server, config
    server.close()


def fake_sweep(config: Path) -> list:
    with PrometheusSource(load(str(config))) as source:
        return source.sweep(["ganbsp", "hcpbsp"])


def vector(*rows: object) -> dict:
    return {"status": "success", "data": {"resultType": "vector", "result": list(rows)}}


def assert_all_off(results: list, *words: str) -> None:
    assert [r.on for r in results] == [False, False]
    for r in results:
        assert r.reason_code == codes.SOURCE_FAILED and r.stage == "prometheus"
        for word in words:
            assert word in r.reason, r.reason


def test_a_proxy_page_instead_of_json_says_so_on_every_server(fake):
    server, config = fake
    server.answer(b"<html><body>502 Bad Gateway</body></html>", status=502)
    assert_all_off(fake_sweep(config), "answered HTTP 502 that is not JSON", "502 Bad Gateway")


def test_a_prometheus_error_says_so_on_every_server(fake):
    server, config = fake
    server.answer({"status": "error", "errorType": "unavailable", "error": "TSDB not ready"}, 503)
    assert_all_off(fake_sweep(config), "answered HTTP 503: TSDB not ready")


def test_a_query_prometheus_refuses_is_a_config_error(fake):
    server, config = fake
    server.answer({"status": "error", "errorType": "bad_data", "error": "parse error"}, 400)
    with pytest.raises(ConfigError, match=r"refused the query: parse error — check \[source\]"):
        fake_sweep(config)


def test_the_push_exits_2_when_prometheus_refuses_the_query(fake):
    server, config = fake
    server.answer({"status": "error", "errorType": "bad_data", "error": "1:2: parse error"}, 400)
    done = gpumon("--config", str(config), "push")
    assert done.returncode == 2 and "refused the query: 1:2: parse error" in done.stderr
    assert "Traceback" not in done.stderr


def test_an_answer_larger_than_the_limit_is_not_read_to_the_end(fake, monkeypatch):
    server, config = fake
    monkeypatch.setattr(source_module, "MAX_ANSWER_BYTES", 1 << 20)
    server.answer(b'{"status": "success", "data": "' + b"x" * (2 << 20) + b'"}')
    assert_all_off(fake_sweep(config), "answered more than 1 MiB")


def test_a_connection_cut_mid_answer_says_so_on_every_server(fake):
    server, config = fake
    server.answer(vector())
    server.cut = True
    assert_all_off(fake_sweep(config), "cannot ask Prometheus at")


def test_no_answer_is_off_within_the_timeout(fake):
    server, config = fake
    server.delay = 10
    started = time.monotonic()
    assert_all_off(fake_sweep(config), "within 2 s ([source] timeout_s)")
    assert time.monotonic() - started < 5


def test_an_answer_dripped_slowly_is_cut_at_the_timeout(fake):
    server, config = fake
    server.answer(vector(*[{"metric": {"__name__": "up", "server": "ganbsp"}, "value": [1, "1"]}]
                         * 200))  # fmt: skip
    server.drip = 0.05  # 16 bytes every 50 ms: each read is quick, the whole is not
    started = time.monotonic()
    assert_all_off(fake_sweep(config), "within 2 s")
    assert time.monotonic() - started < 6


@pytest.mark.parametrize(
    "body",
    [
        {"status": "success", "data": {"resultType": "matrix", "result": []}},
        {"status": "success", "data": {"resultType": "vector", "result": {"a": 1}}},
        {"status": "success"},
        [1, 2, 3],
        b"[" * 100_000 + b"]" * 100_000,
    ],
    ids=["matrix", "result-not-a-list", "no-data", "not-an-object", "deep-nesting"],
)
def test_a_malformed_answer_says_so_on_every_server(fake, body):
    server, config = fake
    server.answer(body)
    results = fake_sweep(config)
    assert [r.on for r in results] == [False, False]
    assert all(r.reason_code == codes.SOURCE_FAILED for r in results)


def test_malformed_series_cost_themselves_only(fake):
    server, config = fake
    good = exposition("ganbsp")
    rows = []
    for line in good.splitlines():
        if line.startswith("#"):
            continue
        head, value = line.rsplit(" ", 1)
        name, _, labels = head.partition("{")
        metric = {"__name__": name, "server": "ganbsp", "job": "gpumon", "instance": "x:1"}
        for pair in labels.rstrip("}").split('",'):
            if "=" in pair:
                k, v = pair.split("=", 1)
                metric[k] = v.strip('"')
        rows.append({"metric": metric, "value": [1.0, value]})
    rows += [
        {"metric": {"__name__": "gpumon_gpu_temperature_celsius", "server": "ganbsp", "gpu": 1}},
        {"metric": "nonsense", "value": [1, "1"]},
        {"metric": {"__name__": "gpumon_gpu_power_watts", "server": "ganbsp"}, "value": "1"},
        {"metric": {"__name__": "gpumon_gpu_power_watts", "server": "ganbsp"}, "value": [1, "x"]},
        {"metric": {"__name__": "gpumon_gpu_power_watts", "server": "ganbsp"}, "value": [1, 5]},
        {"metric": {"server": "ganbsp"}, "value": [1, "1"]},
        17,
    ]
    server.answer(vector(*rows))
    results = {r.name: r for r in fake_sweep(config)}
    assert results["ganbsp"].on, results["ganbsp"].reason
    assert results["ganbsp"].report.gpus[0].temperature_c == 40.0
    assert results["hcpbsp"].reason_code == codes.NO_METRICS


def test_prometheus_down_is_off_on_every_server_and_the_push_still_writes(tmp_path):
    port = free_port()  # nothing listens there
    config = tmp_path / "gpumon.toml"
    write_config(config, tmp_path, f"http://127.0.0.1:{port}", ["ganbsp"])
    (result,) = PrometheusSource(load(str(config))).sweep(["ganbsp"])
    assert not result.on and result.reason_code == codes.SOURCE_FAILED
    assert result.reason == f"cannot ask Prometheus at http://127.0.0.1:{port}: connection refused"

    done = gpumon("--config", str(config), "push")
    assert done.returncode == 0, done.stderr
    assert "1 servers, 0 ON, 1 OFF (ganbsp: cannot ask Prometheus" in done.stdout
