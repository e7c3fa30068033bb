"""The Report is the contract: it round-trips through JSON, and a reader refuses what it cannot
trust with a message that says where and why."""

import json

import pytest

from gpumon_agent.report import (
    MAX_REPORT_BYTES,
    ClaimInfo,
    Gpu,
    GpuProcess,
    Host,
    Report,
    ReportError,
    parse_utc_iso,
    utc_iso,
)


def sample_report() -> Report:
    return Report(
        generated_at=utc_iso(1700000000),
        host=Host(hostname="gpu1", primary_ip="192.0.2.7", load_avg=[1.0, 0.5, 0.25]),
        gpus=[
            Gpu(
                index=0,
                uuid="GPU-0",
                memory_used_bytes=1 << 30,
                processes=[GpuProcess(pid=42, user="alice", command="python train.py")],
                claims=[
                    ClaimInfo(
                        job="kws ch32",
                        user="alice",
                        pid=42,
                        started_at=utc_iso(0),
                        progress={"epoch": 3, "loss": 0.25},
                    )
                ],
            )
        ],
    )


def test_report_round_trips_through_json():
    report = sample_report()
    assert Report.from_json(report.to_json()) == report


def test_reader_ignores_fields_it_does_not_know():
    data = sample_report().to_dict()
    data["future_field"] = {"x": 1}
    data["gpus"][0]["fan_pct"] = 40
    assert Report.from_dict(data) == sample_report()


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: d.update(version=3), "schema version 3"),
        (lambda d: d.update(schema="other"), "schema is 'other'"),
        (
            lambda d: d["gpus"][0].update(memory_used_bytes="lots"),
            "report.gpus[0].memory_used_bytes: expected an integer",
        ),
        (lambda d: d["host"].pop("hostname"), "report.host: missing required field 'hostname'"),
        (lambda d: d.update(gpus={}), "report.gpus: expected an array"),
    ],
)
def test_reader_names_the_bad_field(mutate, message):
    data = sample_report().to_dict()
    mutate(data)
    with pytest.raises(ReportError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Report.from_dict(data)


def test_unknown_processes_round_trip_as_null_distinct_from_none():
    report = sample_report()
    unknown = Gpu(index=1, processes_error="nvmlDeviceGetComputeRunningProcesses_v3: x")
    report.gpus.append(unknown)
    data = json.loads(report.to_json())
    assert data["version"] == 2
    assert data["gpus"][1]["processes"] is None
    assert data["gpus"][1]["unclaimed_use"] is None
    assert data["gpus"][0]["processes"] != []
    back = Report.from_json(report.to_json())
    assert back == report
    assert back.gpus[1].processes is None and back.gpus[1].processes_error.endswith(": x")


def test_a_version_1_report_from_an_older_agent_still_reads():
    # What agent 0.1.0 (schema 1) wrote: lists always, booleans always, no processes_error.
    v1 = {
        "schema": "gpumon.report",
        "version": 1,
        "generated_at": "2019-03-14T06:26:45Z",
        "source": "daemon",
        "host": {"hostname": "hcpbsp", "addresses": [], "users": []},
        "nvml": {"available": True},
        "gpus": [
            {
                "index": 0,
                "state": "ok",
                "processes": [{"pid": 7, "kind": "compute", "user": "lww", "command": "python"}],
                "claims": [],
                "unclaimed_use": True,
                "claimed_idle": False,
            },
            {"index": 1, "state": "ok", "processes": [], "unclaimed_use": False},
        ],
    }
    report = Report.from_dict(v1)
    assert report.version == 1
    busy, idle = report.gpus
    assert [p.user for p in busy.processes] == ["lww"] and busy.unclaimed_use is True
    assert (idle.processes, idle.processes_error, idle.unclaimed_use) == ([], None, False)
    assert report.host.users == []


@pytest.mark.parametrize("version", [0, 3, True, 2.0, "2", None])
def test_a_version_this_reader_does_not_know_is_refused(version):
    data = sample_report().to_dict()
    data["version"] = version
    with pytest.raises(ReportError, match="this reader understands 1, 2"):
        Report.from_dict(data)


def test_reader_refuses_text_that_is_not_json_or_too_large():
    with pytest.raises(ReportError, match="not JSON"):
        Report.from_json("Welcome to gpu1!\n{")
    with pytest.raises(ReportError, match="larger than"):
        Report.from_json(" " * (MAX_REPORT_BYTES + 1))


def test_times_are_utc_iso_with_z():
    assert utc_iso(0) == "1970-01-01T00:00:00Z"
    assert parse_utc_iso("1970-01-01T00:00:00Z").timestamp() == 0
    assert json.loads(sample_report().to_json())["generated_at"].endswith("Z")
