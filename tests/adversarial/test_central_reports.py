"""Every Report is untrusted at the central side: one bad value costs that value or that server
("bad output: …" naming the field), never another server and never the push. Issue 8, "Every
Report is untrusted at the central side"."""

from __future__ import annotations

import copy
import datetime as dt
import json
import math
import os
from collections.abc import Iterator
from pathlib import Path

import openpyxl
import pytest
from central_kit import ScriptedPoller, gpu, on, seed_grid, seed_workbook
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpumon.config import SheetConfig
from gpumon.fleet import open_poller, push_once
from gpumon.poll import result as codes
from gpumon.poll.answer import bounded, interpret
from gpumon.poll.result import ServerResult
from gpumon.poll.transport import CommandOutput, PollFailure
from gpumon.sheet.cells import render
from gpumon.sheet.grid import _UNCELLABLE, CELL_MAX_CHARS
from gpumon.sheet.layout import read_layout
from gpumon.sheet.plan import plan
from gpumon.sheet.xlsx import XlsxBackend
from gpumon_agent import bounds
from gpumon_agent.report import (
    MAX_REPORT_BYTES,
    ClaimInfo,
    GpuProcess,
    Report,
    ReportError,
    utc_iso,
)
from harness.sheets_fixtures import GoogleEnv, google_fixture, sheets_server_fixture  # noqa: F401
from harness.sshd import REPORT_AS_WRITTEN, Fleet, canned_report

HUGE_INT = 10**400 - 1  # 400 digits: float(HUGE_INT) raises OverflowError


def report_dict(name: str = "hcpbsp", address: str = "127.0.0.2", gpus: int = 2) -> dict:
    report = canned_report(name, address, gpus=gpus, generated_at=utc_iso())
    report.gpus[0].claims = [
        ClaimInfo(job="kws", user="niv", pid=1000, started_at=utc_iso(), progress={"epoch": 3})
    ]
    return report.to_dict()


def answer(data: dict | str) -> CommandOutput:
    text = data if isinstance(data, str) else json.dumps(data)
    return CommandOutput(exit_status=0, stdout=text.encode(), stderr=b"")


def bad_output(data: dict | str) -> str:
    with pytest.raises(PollFailure) as caught:
        interpret(answer(data), "gpumon-agent report --json")
    assert caught.value.code == codes.BAD_OUTPUT
    return caught.value.reason


# --- each bound, named for the attack ---------------------------------------------------------


def test_a_400_digit_memory_used_bytes_is_bad_output_naming_the_field():
    data = report_dict()
    data["gpus"][0]["memory_used_bytes"] = HUGE_INT
    reason = bad_output(data)
    assert reason.startswith("bad output: report.gpus[0].memory_used_bytes: ")
    assert "out of range" in reason and len(reason) < 200


@pytest.mark.parametrize(
    "where, value",
    [
        (("gpus", 0, "utilization_pct"), float("nan")),
        (("gpus", 0, "temperature_c"), float("inf")),
        (("gpus", 0, "utilization_mean_pct"), 1e308),
        (("gpus", 0, "memory_total_bytes"), -1),
        (("host", "memory_used_bytes"), 2**70),
        (("host", "load_avg"), [1.0, float("-inf"), 0.0]),
        (("gpus", 0, "processes", 0, "pid"), 2**64),
        (("interval_s"), -2.0),
    ],
)
def test_non_finite_or_absurd_numbers_are_bad_output_naming_the_field(where, value):
    data = report_dict()
    where = where if isinstance(where, tuple) else (where,)
    target = data
    for key in where[:-1]:
        target = target[key]
    target[where[-1]] = value
    path = "report" + "".join(f"[{k}]" if isinstance(k, int) else f".{k}" for k in where)
    assert bad_output(data).startswith(f"bad output: {path}")


def test_nan_and_infinity_tokens_in_the_json_text_are_bad_output():
    text = json.dumps(report_dict()).replace('"utilization_pct": 14.0', '"utilization_pct": NaN')
    assert "NaN" in text
    assert "report.gpus[0].utilization_pct: nan is not a finite number" in bad_output(text)


def test_a_50000_character_primary_ip_is_bad_output_not_a_cell():
    data = report_dict()
    data["host"]["primary_ip"] = "1" * 50_000
    reason = bad_output(data)
    assert reason.startswith("bad output: report.host.primary_ip: ") and "not an IP" in reason
    assert len(reason) < 200


@pytest.mark.parametrize("address", ["192.0.2.300", "localhost", "192.0.2.1; rm -rf /", ""])
def test_a_primary_ip_that_is_not_an_address_is_bad_output(address):
    data = report_dict()
    data["host"]["primary_ip"] = address
    assert "report.host.primary_ip" in bad_output(data)


def test_addresses_of_the_host_are_validated_too():
    data = report_dict()
    data["host"]["addresses"] = [{"interface": "eno1", "address": "x" * 99, "family": "inet"}]
    assert "report.host.addresses[0].address" in bad_output(data)


@pytest.mark.parametrize("index", [1000, 5000, -1, 2**40])
def test_gpu_indices_the_sheet_cannot_hold_are_bad_output(index):
    data = report_dict()
    data["gpus"][1]["index"] = index
    assert bad_output(data).startswith("bad output: report.gpus[1].index: ")


def test_a_warning_about_an_implausible_gpu_index_is_bad_output():
    data = report_dict()
    data["warnings"] = [{"code": "gpu_lost", "message": "gone", "gpu_index": 10**6}]
    assert "report.warnings[0].gpu_index" in bad_output(data)


def test_text_from_gpu_server_users_is_cut_never_refused():
    """Command lines, job names, user names and claim files come from users: cutting them costs
    only their tail, so no user can turn a server OFF in the sheet."""
    data = report_dict()
    data["gpus"][0]["processes"][0]["command"] = "python " + "x" * 50_000
    data["gpus"][0]["processes"][0]["user"] = "u" * 10_000
    data["gpus"][0]["claims"][0]["job"] = "j" * 10_000
    data["claim_errors"] = [{"path": "/run/gpumon/claims/" + "p" * 9000, "error": "e" * 9000}]
    data["notes"] = ["n" * 5000] * 100
    report = interpret(answer(data), "gpumon-agent report --json")
    process = report.gpus[0].processes[0]
    assert len(process.command) == 4096 and process.command.endswith("…")
    assert len(process.user) == 256
    assert len(report.gpus[0].claims[0].job) == 256
    assert len(report.claim_errors[0].path) == 4096 and len(report.claim_errors[0].error) == 1000
    assert len(report.notes) == 64 and all(len(n) == 1000 for n in report.notes)


def test_lists_are_capped_never_refused():
    data = report_dict()
    many = data["gpus"][0]["processes"][0]
    data["gpus"][0]["processes"] = [dict(many, pid=i) for i in range(5000)]
    data["host"]["users"] = [{"name": f"u{i}"} for i in range(3000)]
    data["host"]["load_avg"] = [0.1] * 100
    report = interpret(answer(data), "gpumon-agent report --json")
    assert len(report.gpus[0].processes) == 1024
    assert len(report.host.users) == 256 and len(report.host.load_avg) == 3


def test_claim_progress_keeps_a_few_scalars_and_turns_the_rest_into_short_text():
    data = report_dict()
    progress = {f"k{i}": i for i in range(100)}
    progress.update(k0=HUGE_INT, k1=float("inf"), k2=[[[[1]]]], k3="s" * 999, k4={"a": {"b": 1}})
    data["gpus"][0]["claims"][0]["progress"] = progress
    cleaned = interpret(answer(data), "gpumon-agent report --json").gpus[0].claims[0].progress
    assert len(cleaned) == bounds.MAX_PROGRESS_KEYS
    assert cleaned["k0"] == "out of range" and cleaned["k1"] == "inf"
    assert cleaned["k2"] == "[[[[1]]]]" and len(cleaned["k3"]) == bounds.MAX_PROGRESS_TEXT
    assert cleaned["k4"] == '{"a":{"b":1}}' and cleaned["k5"] == 5


def test_a_report_nested_too_deeply_is_bad_output_not_a_recursion_error():
    text = "[" * 200_000 + "]" * 200_000
    assert len(text) < MAX_REPORT_BYTES
    assert "nested too deeply" in bad_output(text)
    deep = report_dict()
    deep["gpus"][0]["claims"][0]["progress"] = json.loads("[" * 500 + "]" * 500)
    deep_text = json.dumps(deep)
    deep_text = deep_text.replace('"progress": [' + "[" * 499, '"progress": {"x": ' + "[" * 500)
    deep_text = deep_text.replace("]" * 500, "]" * 500 + "}", 1)
    report = interpret(answer(deep_text), "gpumon-agent report --json")
    assert len(report.gpus[0].claims[0].progress["x"]) <= bounds.MAX_PROGRESS_TEXT


def test_a_report_built_centrally_is_held_to_the_same_bounds():
    """Agentless reports are built here from nvidia-smi and ps output, not decoded: the poller
    bounds them too."""
    report = canned_report("box", "127.0.0.2", generated_at=utc_iso())
    report.gpus[0].memory_used_bytes = HUGE_INT
    with pytest.raises(PollFailure, match=r"report\.gpus\[0\]\.memory_used_bytes"):
        bounded(report)
    report = canned_report("box", "127.0.0.2", generated_at=utc_iso())
    report.gpus[0].processes = [GpuProcess(pid=1, command="c" * 9999)]
    assert len(bounded(report).gpus[0].processes[0].command) == 4096


def test_the_agent_side_reader_gets_the_bounds_too():
    data = report_dict()
    data["gpus"][0]["power_w"] = float("nan")
    with pytest.raises(ReportError, match=r"report\.gpus\[0\]\.power_w"):
        Report.from_dict(data)


def test_a_value_render_cannot_show_costs_its_server_never_the_push():
    """Defence in depth below the bounds: a report built in-process without them."""
    grid = seed_grid()
    layout = read_layout(grid)
    broken = gpu(0)
    broken.memory_used_bytes = HUGE_INT  # never through the decoder
    results = [on("hcpbsp", [broken]), on("ganbsp", [gpu(0)])]
    the_plan = plan(grid, layout, results)
    assert any("hcpbsp" in w and "OverflowError" in w for w in the_plan.warnings)
    assert {c.server for c in the_plan.changes} == {"ganbsp"}


# --- for real: a hostile agent among healthy ones, over SSH -----------------------------------


@pytest.fixture(scope="module")
def hostile_fleet(tmp_path_factory) -> Iterator[Fleet]:
    home = tmp_path_factory.mktemp("home")
    saved = {k: os.environ.get(k) for k in ("HOME", "SSH_AUTH_SOCK")}
    os.environ["HOME"] = str(home)
    os.environ.pop("SSH_AUTH_SOCK", None)
    fleet = Fleet()
    for name in ("hcpbsp", "ganbsp", "trlbsp"):
        fleet.add(name, behaviour=REPORT_AS_WRITTEN)
    fleet.start()
    try:
        yield fleet
    finally:
        fleet.close()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def serve_raw(fleet: Fleet, name: str, data: dict) -> None:
    server = fleet.server(name)
    path = fleet.root / "reports" / f"{server.address}.json"
    path.write_text(json.dumps(data) + "\n")  # one line, as the agent prints it
    path.chmod(0o644)


@pytest.mark.slow
def test_a_hostile_agent_costs_only_its_own_server_over_ssh(hostile_fleet: Fleet, tmp_path: Path):
    """hcpbsp sends a 400-digit memory_used_bytes, ganbsp a 50,000-character primary_ip; before
    the fix the first stopped the whole push (no server's cells written) and the second was
    written into the IP cell. trlbsp is healthy and must be written all the same."""
    fleet = hostile_fleet
    for name in ("hcpbsp", "ganbsp", "trlbsp"):
        address = fleet.server(name).address
        data = report_dict(name, address, gpus=1)
        if name == "hcpbsp":
            data["gpus"][0]["memory_used_bytes"] = HUGE_INT
        if name == "ganbsp":
            data["host"]["primary_ip"] = "9" * 50_000
        serve_raw(fleet, name, data)
    path = seed_workbook(tmp_path / "sheet.xlsx")
    config = fleet.config(tmp_path)
    config.sheet = SheetConfig(path=str(path), time_zone="Asia/Seoul")
    config.poll.servers_from_sheet = False
    poller = open_poller(config)
    try:
        outcome = push_once(config, XlsxBackend(path, time_zone="Asia/Seoul"), poller)
    finally:
        poller.close()
    off = {r.name: r.reason for r in outcome.off}
    assert set(off) == {"hcpbsp", "ganbsp"}
    assert off["hcpbsp"].startswith("bad output: report.gpus[0].memory_used_bytes:")
    assert off["ganbsp"].startswith("bad output: report.host.primary_ip:")
    sheet = openpyxl.load_workbook(path).active
    header = [c.value for c in sheet[7]]
    rows = {sheet.cell(r, 1).value: r for r in range(8, sheet.max_row + 1)}
    ip, status, health = (header.index(k) + 1 for k in ("IP", "ON/OFF", "Health"))
    assert sheet.cell(rows["trlbsp"], status).value == "ON"
    assert sheet.cell(rows["trlbsp"], ip).value == "192.0.2.4"
    assert sheet.cell(rows["hcpbsp"], status).value == "OFF"
    assert "memory_used_bytes" in sheet.cell(rows["hcpbsp"], health).value
    assert sheet.cell(rows["ganbsp"], status).value == "OFF"
    assert len(str(sheet.cell(rows["ganbsp"], ip).value)) < 40  # the seed's value, kept


def test_google_gets_its_batch_when_one_agent_is_hostile(google: GoogleEnv):
    """Google refuses a whole batch for one cell over its limit: the hostile IP never gets there,
    so the healthy server's cells are written."""
    hostile = report_dict("hcpbsp", "127.0.0.2", gpus=1)
    hostile["host"]["primary_ip"] = "1" * 50_000
    results = [
        _result("hcpbsp", hostile),
        _result("ganbsp", report_dict("ganbsp", "127.0.0.3", gpus=1)),
    ]
    push_once(google.config, google.backend(), ScriptedPoller(results))
    assert google.server.take_invalid() == []
    rows = {line[0]: line for line in google.values()[7:] if line and line[0]}
    assert rows["ganbsp"][5:7] == ["192.0.2.3", "ON"]
    assert rows["hcpbsp"][6] == "OFF"


def _result(name: str, data: dict) -> ServerResult:
    """What the poller makes of an agent's answer (the real interpret)."""
    now = utc_iso()
    try:
        report = interpret(answer(data), "gpumon-agent report --json")
    except PollFailure as e:
        return ServerResult(name, name, False, now, reason_code=e.code, reason=e.reason)
    return ServerResult(name, name, True, now, report=report)


# --- property: mutated Reports through decode, render and plan --------------------------------

_HOSTILE_TEXT = st.sampled_from(
    ["\udcff", "\uffff", "\ufffe", "\x00", "\x1b[2J", "=IMPORTXML(1)", "", "é"]
) | st.integers(min_value=40_000, max_value=70_000).map(lambda n: "x" * n)
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**400), max_value=10**400),
    st.integers(min_value=-5, max_value=2000),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=20),
    _HOSTILE_TEXT,
    st.builds(lambda a, b: a + b, st.text(max_size=5), _HOSTILE_TEXT),
)
_JSON = st.recursive(
    _SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)


def _paths(value, prefix=()):
    """Every place in a JSON document that a mutation can replace."""
    yield prefix
    if isinstance(value, dict):
        for key, child in value.items():
            yield from _paths(child, (*prefix, key))
    elif isinstance(value, list):
        for i, child in enumerate(value):
            yield from _paths(child, (*prefix, i))


def _replace(document, path, value):
    if not path:
        return value
    target = document
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return document


_BASE = report_dict(gpus=2)
_BASE_PATHS = list(_paths(_BASE))


_EXTREME_NUMBERS = st.one_of(
    st.integers(min_value=-(10**400), max_value=10**400),
    st.sampled_from([-1, 2**63, 2**64, 10**20, 1000, 5000]),
    st.floats(allow_nan=True, allow_infinity=True),
)


def _mutation(draw, old):
    """A value of the same shape gone wrong (mostly), or any JSON at all."""
    if draw(st.integers(min_value=0, max_value=3)) == 0:
        return draw(_JSON)
    if isinstance(old, bool) or old is None:
        return draw(_SCALARS)
    if isinstance(old, (int, float)):
        return draw(_EXTREME_NUMBERS)
    if isinstance(old, str):
        return draw(_HOSTILE_TEXT | st.builds(lambda a, b: a + b, st.just(old), _HOSTILE_TEXT))
    if isinstance(old, list):
        item = old[0] if old else draw(_SCALARS)
        return [copy.deepcopy(item)] * draw(st.integers(min_value=0, max_value=3000))
    return draw(_JSON)


@st.composite
def mutated_reports(draw):
    document = copy.deepcopy(_BASE)
    for _ in range(draw(st.integers(min_value=1, max_value=4))):
        paths = list(_paths(document))
        path = paths[draw(st.integers(min_value=0, max_value=len(paths) - 1))]
        old = document
        for key in path:
            old = old[key]
        document = _replace(document, path, _mutation(draw, old))
    return document


def _cell_safe(value) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    if not isinstance(value, str):
        return True
    return len(value) <= CELL_MAX_CHARS and not _UNCELLABLE.search(value)


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(document=mutated_reports())
def test_property_any_mutated_report_costs_at_most_its_server(document):
    """Whatever an agent sends: decoding gives a Report or a ReportError (never another
    exception), and render and plan of that Report beside a healthy server never raise, write
    only cell-safe values, and always write the healthy server."""
    try:
        text = json.dumps(document)
    except (ValueError, TypeError):
        return  # not representable as JSON text at all: no agent can send it
    try:
        report = Report.from_json(text)
    except ReportError:
        result = ServerResult("hcpbsp", "x", False, utc_iso(), reason="bad output")
    else:
        result = ServerResult("hcpbsp", "x", True, utc_iso(), report=report)
        render(result, dt.timezone.utc, {0, 1})
    healthy = on("ganbsp", [gpu(0, util=50.0)], polled_at=utc_iso())
    grid = seed_grid()
    the_plan = plan(grid, read_layout(grid), [result, healthy], add_rows=True)
    assert not any("could not be made" in w for w in the_plan.warnings), the_plan.warnings
    assert all(_cell_safe(w.value) for w in the_plan.writes)
    assert any(c.server == "ganbsp" and c.column == "util" for c in the_plan.changes)
    if the_plan.setup is not None:
        for new in the_plan.setup.new_rows:
            assert all(g is None or 0 <= g <= bounds.MAX_GPU_INDEX for g in new.gpus)


def test_the_property_starts_from_a_report_that_decodes():
    assert Report.from_json(json.dumps(_BASE)).gpus[0].claims[0].job == "kws"
    assert len(_BASE_PATHS) > 50
